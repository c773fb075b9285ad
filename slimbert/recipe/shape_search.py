"""Latency-aware shape search: the largest student that answers within a latency budget on this machine.

FLOPs do not rank students on a CPU: MobileBERT's 24 thin blocks are bound by per-op overhead, so a shape with
4x fewer FLOPs than BERT_BASE may be only 1.2x faster where both run at their best. The search therefore times
real candidates: every shape on the grid (layers, inter and intra widths, heads, FFN stacking and size, Q/K/V
source) inside the paper's attention/FFN band and the parameter/FLOP budgets is counted exactly, and candidates
are timed with random weights on the named runtime and precision by a `Timer` the caller injects (recipe/ does
not know how to export; the CLI passes an export-backed, per-machine cached one). The solver is pure over
(shape -> params, ms).

Search: a spread sample of the candidates (at most `sample`, across the parameter range) is timed first: it
draws the frontier and gives anchors. From those timings a two-term latency model is fitted (ms per op-layer,
the per-op overhead, plus ms per GFLOP) and used only to ORDER the rest: families (layers, inter width, heads,
Q/K/V source, FFN count and F/I fixed; only the intra width I varies) whose largest predicted fit is biggest come
first, families predicted not to fit at all last. In each, a binary search over I finds the family's largest shape
that fits; families that cannot beat the best so far are skipped, and so is any shape at least as big in every
dimension as one already timed too slow. Every answer is a measured timing, never a prediction; the search is exact
when latency grows with each dimension on its own (it need not grow with the parameter count: 24 thin layers can
be slower than 12 wide ones), and the model only decides what a capped search (`max_timed`) times first. The
answer says when that cap stopped it. `min_params` keeps only shapes at least that large (e.g. "as big as the
MobileBERT preset, but fast here").

A student cut from its source (student.init: prune_from_source) keeps the source's block, so its grid is another:
depth, hidden width, heads and FFN width, each at most the source's, with no attention/FFN band; a family there
varies only in the FFN width. It is timed as the stock model of the source's type it is saved and exported as.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Callable, Protocol

import numpy as np
from transformers import PretrainedConfig

from ..models import SlimBertConfig
from ..models.counting import count_config
from .balance import FFN_MULTIPLES, BalanceResult


@dataclass(frozen=True)
class LatencySpec:
    runtime: str
    precision: str
    batch: int = 1
    seq: int = 128
    threads: int = 2


class Timer(Protocol):
    def __call__(self, config: PretrainedConfig, spec: LatencySpec) -> float:
        """Median milliseconds of one forward pass of a random-weight model with this config: a SlimBertConfig
        for a bottleneck student, the stock config of the source's type (BertConfig, RobertaConfig) for a student
        cut from its source (what each is saved and exported as)."""


@dataclass(frozen=True)
class Axes:
    layers: tuple[int, ...]
    inter_sizes: tuple[int, ...]
    heads: tuple[int, ...]
    qkv_from: tuple[str, ...]
    stacked: tuple[int, ...]


def shape_of(config: SlimBertConfig) -> dict:
    return {"layers": config.num_hidden_layers, "inter_size": config.hidden_size,
            "intra_size": config.intra_bottleneck_size, "heads": config.num_attention_heads,
            "stacked": config.num_feedforward_networks, "ffn_size": config.intermediate_size,
            "qkv_from": config.qkv_source}


def candidates(base: SlimBertConfig, axes: Axes, *, ratio: float, tolerance: float, max_params: float | None,
               max_flops: float | None, seq_len: int, min_params: float | None = None
               ) -> tuple[list[tuple[SlimBertConfig, dict]], int]:
    """(config, row) for every grid shape inside the ratio band and budgets (and at least min_params), sorted by
    parameters (descending); and how many shapes the grid had."""
    rows, n = [], 0
    for layers in sorted(set(axes.layers)):
        for inter in sorted(set(axes.inter_sizes)):
            for heads in sorted(set(axes.heads)):
                step = lcm(heads, 16)
                for qkv in axes.qkv_from:
                    for intra in range(step, inter + 1, step):
                        for stacked in sorted(set(axes.stacked)):
                            for m in FFN_MULTIPLES:
                                n += 1
                                cfg = SlimBertConfig(**{
                                    **base.to_diff_dict(), "num_hidden_layers": layers, "hidden_size": inter,
                                    "num_attention_heads": heads, "qkv_source": qkv, "intra_bottleneck_size": intra,
                                    "num_feedforward_networks": stacked, "intermediate_size": m * intra,
                                    "embedding_size": min(base.embedding_size, inter)})
                                c = count_config(cfg, seq_len=seq_len)
                                if abs(c.attention_ffn_ratio - ratio) > tolerance:
                                    continue
                                if (max_params is not None and c.total_params > max_params) or \
                                        (max_flops is not None and c.total_flops > max_flops) or \
                                        (min_params is not None and c.total_params < min_params):
                                    continue
                                rows.append((cfg, {**shape_of(cfg), "ratio": c.attention_ffn_ratio,
                                                   "params": c.total_params, "flops": c.total_flops}))
    rows.sort(key=lambda r: (-r[1]["params"], abs(r[1]["ratio"] - ratio), r[1]["flops"]))
    return rows, n


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), both ends included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def op_layers(row: dict) -> int:
    """A shape's count of per-op-overhead units: each layer runs its attention block (about 3 units of small
    ops: projections, softmax, bottlenecks) and each stacked FFN."""
    return row["layers"] * (row["stacked"] + 3)


def fit_latency_model(points: list[tuple[dict, float]]) -> Callable[[dict], float] | None:
    """ms ~ a * op_layers + b * GFLOPs, fitted by least squares with a, b >= 0 on (row, measured ms) points;
    None with fewer than two points. Only orders the search: every answer is still a measured timing."""
    if len(points) < 2:
        return None
    x = np.array([[op_layers(r), r["flops"] / 1e9] for r, _ in points], dtype=float)
    y = np.array([t for _, t in points], dtype=float)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    if (coef < 0).any():  # non-negative least squares over two terms: the better single-term fit
        fits = []
        for j in (0, 1):
            c = float(x[:, j] @ y / max(float(x[:, j] @ x[:, j]), 1e-12))
            fits.append((float(((x[:, j] * c - y) ** 2).sum()), j, c))
        _, j, c = min(fits)
        coef = np.zeros(2)
        coef[j] = max(c, 0.0)
    a, b = float(coef[0]), float(coef[1])
    return lambda row: a * op_layers(row) + b * row["flops"] / 1e9


def solve_latency(base: SlimBertConfig, axes: Axes, spec: LatencySpec, timer: Timer, *, budget_ms: float,
                  ratio: float | None, tolerance: float, max_params: float | None, max_flops: float | None,
                  seq_len: int, sample: int = 12, max_timed: int = 40,
                  min_params: float | None = None) -> BalanceResult:
    """The largest candidate (by parameters) whose timed latency is within `budget_ms`; ValueError when none is."""
    target = ratio if ratio is not None else 0.5   # the paper's band: 0.4-0.6 with the default tolerance
    rows, considered = candidates(base, axes, ratio=target, tolerance=tolerance, max_params=max_params,
                                  max_flops=max_flops, seq_len=seq_len, min_params=min_params)
    floor = f", at least {min_params / 1e6:.2f}M params" if min_params is not None else ""
    if not rows:
        raise ValueError(f"no shape on the grid ({considered} searched) has an attention/FFN ratio within "
                         f"{target} +- {tolerance} and fits the budgets{floor}; widen the axes or the tolerance")
    return _search(rows, considered, spec, timer, BOTTLENECK, budget_ms=budget_ms, sample=sample,
                   max_timed=max_timed, where=f"in the attention/FFN band {target} +- {tolerance}{floor}",
                   smaller="fewer layers, narrower inter_sizes")


@dataclass(frozen=True)
class CutAxes:
    """The widths a student cut from its source may take: its own block, so one FFN, Q/K/V from the block input."""
    layers: tuple[int, ...]
    inter_sizes: tuple[int, ...]
    heads: tuple[int, ...] | None   # None: each width's fewest heads no wider than the source's (see cut_heads)
    ffn_sizes: tuple[int, ...]
    head_dim: int                   # the source's head width: a cut keeps whole heads or narrows them, never widens
    max_heads: int                  # the source's heads


def cut_heads(inter: int, axes: CutAxes) -> list[int]:
    """The head counts a width `inter` can be cut to: heads that divide it (a stock encoder's heads are inter / heads
    wide), at most the source's, none wider than the source's heads (the pruner keeps or narrows them). Given no
    heads, the fewest such: the source's head width where it divides the width (384 -> 6 heads of 64)."""
    ok = [h for h in range(1, axes.max_heads + 1) if inter % h == 0 and inter // h <= axes.head_dim]
    if axes.heads:
        return sorted(set(axes.heads) & set(ok))
    return ok[:1]


def cut_candidates(base: SlimBertConfig, axes: CutAxes, *, max_params: float | None, max_flops: float | None,
                   seq_len: int, min_params: float | None = None) -> tuple[list[tuple[SlimBertConfig, dict]], int]:
    """(config, row) for every cut shape (layers x width x heads x FFN width) inside the budgets, sorted by
    parameters (descending); and how many shapes the grid had. `base` is the source-block student
    (recipe/resolve.py's _source_block_student): only depth and widths change."""
    rows, n = [], 0
    for layers in sorted(set(axes.layers)):
        for inter in sorted(set(axes.inter_sizes)):
            for heads in cut_heads(inter, axes):
                for ffn in sorted(set(axes.ffn_sizes)):
                    n += 1
                    cfg = SlimBertConfig(**{**base.to_diff_dict(), "num_hidden_layers": layers, "hidden_size": inter,
                                            "embedding_size": inter, "intra_bottleneck_size": inter,
                                            "num_attention_heads": heads, "intermediate_size": ffn})
                    c = count_config(cfg, seq_len=seq_len)
                    if (max_params is not None and c.total_params > max_params) or \
                            (max_flops is not None and c.total_flops > max_flops) or \
                            (min_params is not None and c.total_params < min_params):
                        continue
                    rows.append((cfg, {**shape_of(cfg), "ratio": c.attention_ffn_ratio, "params": c.total_params,
                                       "flops": c.total_flops, "cut": True}))
    rows.sort(key=lambda r: (-r[1]["params"], r[1]["flops"]))
    return rows, n


def solve_cut_latency(base: SlimBertConfig, axes: CutAxes, spec: LatencySpec, timer: Timer, *, budget_ms: float,
                      max_params: float | None, max_flops: float | None, seq_len: int, sample: int = 12,
                      max_timed: int = 40, min_params: float | None = None,
                      source_shape: tuple[int, int, int, int] | None = None) -> BalanceResult:
    """The largest student cut from its source (by parameters) whose timed latency is within `budget_ms`.
    No attention/FFN band: the source's own block sets the balance, and only its depth and widths are cut.
    `source_shape` (layers, width, heads, FFN width): the answer says when it is the source itself."""
    rows, considered = cut_candidates(base, axes, max_params=max_params, max_flops=max_flops, seq_len=seq_len,
                                      min_params=min_params)
    floor = f", at least {min_params / 1e6:.2f}M params" if min_params is not None else ""
    if not rows:
        raise ValueError(f"no cut shape ({considered} searched) fits the budgets{floor}; widen the axes or the "
                         "budgets")
    result = _search(rows, considered, spec, timer, CUT, budget_ms=budget_ms, sample=sample, max_timed=max_timed,
                     where=f"cut from the source{floor}", smaller="fewer layers, narrower inter_sizes or ffn_sizes")
    if source_shape == (result.layers, result.inter_size, result.heads, result.ffn_size):
        result.reason += "; that is the source's own shape: it answers within the budget uncut"
    return result


@dataclass(frozen=True)
class Grid:
    """How a grid's shapes group for the search: `family` keys the shapes that differ only in the one width
    latency grows with (the bisection runs over it); a shape at least as big in every `grows` dimension as
    another, with the same `same` dimensions, cannot be faster."""
    family: Callable[[dict], tuple]
    grows: tuple[str, ...]
    same: tuple[str, ...]


FAMILY = ("layers", "inter_size", "heads", "qkv_from", "stacked")  # with F / I: a family varies only in I
BOTTLENECK = Grid(family=lambda r: tuple(r[k] for k in FAMILY) + (r["ffn_size"] // r["intra_size"],),
                  grows=("layers", "inter_size", "intra_size", "stacked", "ffn_size"), same=("heads", "qkv_from"))
CUT = Grid(family=lambda r: (r["layers"], r["inter_size"], r["heads"]), grows=("layers", "inter_size", "ffn_size"),
           same=("heads",))


def _search(rows: list[tuple[SlimBertConfig, dict]], considered: int, spec: LatencySpec, timer: Timer, grid: Grid, *,
            budget_ms: float, sample: int, max_timed: int, where: str, smaller: str) -> BalanceResult:
    """The largest of `rows` (sorted by parameters, descending) timed within `budget_ms` (see the module's
    docstring for the order); NoShapeFits when none is."""
    timed: dict[int, float] = {}

    def ms(i: int) -> float:
        if i not in timed:
            timed[i] = float(timer(rows[i][0], spec))
        return timed[i]

    for i in spread(len(rows), min(sample, max_timed)):
        ms(i)
    slow = [i for i in timed if timed[i] > budget_ms]
    fits = [i for i in timed if timed[i] <= budget_ms]
    best = min(fits) if fits else None  # rows are sorted by parameters, descending: the lowest index is largest
    truncated = False
    families: dict[tuple, list[int]] = {}
    for i, (_, r) in enumerate(rows):
        families.setdefault(grid.family(r), []).append(i)
    # Order the families by where the model predicts their largest fit (the biggest first); families predicted
    # not to fit at all come last, largest first. Within one, latency grows with the varying width, so a binary
    # search finds its largest shape that fits. A family that cannot beat the best so far is skipped.
    predict = fit_latency_model([(rows[i][1], t) for i, t in timed.items()])
    predicted_fit = {i for i, (_, r) in enumerate(rows) if predict is not None and predict(r) <= budget_ms}

    def order(members: list[int]) -> tuple:
        if predict is None:
            return (0, min(members))
        fit = [i for i in members if i in predicted_fit]
        return (0, min(fit)) if fit else (1, min(members))

    for members in sorted(families.values(), key=order):
        if best is not None and min(members) >= best:
            continue
        todo = [i for i in sorted(members, reverse=True)  # smallest first, only shapes larger than the best
                if (best is None or i < best) and not any(_dominates(rows[i][1], rows[j][1], grid) for j in slow)]
        lo, hi = -1, len(todo)  # todo[:lo + 1] fit, todo[hi:] do not
        # First the predicted boundary and its neighbour (two timings when the model is right); without a
        # prediction the smallest shape, which often rules the whole family out. Then bisection.
        guess = max((k for k, i in enumerate(todo) if i in predicted_fit), default=0)
        probes = [guess]
        while hi - lo > 1:
            mid = probes.pop(0) if probes else (lo + hi) // 2
            if not lo < mid < hi:
                continue
            if todo[mid] not in timed and len(timed) >= max_timed:
                truncated = True
                break
            if ms(todo[mid]) <= budget_ms:
                lo = mid
                if mid == guess:
                    probes.append(mid + 1)
            else:
                hi = mid
                slow.append(todo[mid])
                if mid == guess:
                    probes.append(mid - 1)
        if lo >= 0 and (best is None or todo[lo] < best):
            best = todo[lo]
        if truncated:
            break
    frontier = [{**rows[i][1], "ms": round(timed[i], 3), "fits": timed[i] <= budget_ms, "chosen": i == best}
                for i in sorted(timed)]
    if best is None:
        fastest = sorted(timed, key=timed.get)[:3]
        desc = "; ".join(_describe(rows[i][1], timed[i]) for i in fastest)
        raise NoShapeFits(frontier, f"no candidate answers within {budget_ms:g} ms on {spec.runtime} "
                                    f"{spec.precision} (batch {spec.batch} x seq {spec.seq}, {spec.threads} threads; "
                                    f"timed {len(timed)} of {len(rows)} shapes {where}); fastest: {desc}. Raise "
                                    f"latency_ms or allow smaller shapes ({smaller})",
                          spec=spec.__dict__.copy(), budget_ms=budget_ms)
    row = rows[best][1]
    cap = f"; the scan stopped at max_timed={max_timed}, so a larger shape may fit" if truncated else ""
    reason = (f"largest of {len(rows)} shapes {where} (of {considered} searched; {len(timed)} timed{cap}) within "
              f"{budget_ms:.4g} ms on {spec.runtime} {spec.precision}, batch {spec.batch} x seq {spec.seq}, "
              f"{spec.threads} threads: {_describe(row, timed[best])}")
    return BalanceResult(intra_size=row["intra_size"], stacked=row["stacked"], ffn_size=row["ffn_size"],
                         ratio=row["ratio"], params=row["params"], flops=row["flops"], considered=considered,
                         feasible=len(rows), reason=reason,
                         alternatives=[f for f in frontier if f["fits"] and not f["chosen"]][:5],
                         layers=row["layers"], inter_size=row["inter_size"], heads=row["heads"],
                         qkv_from=row["qkv_from"], latency_ms=round(timed[best], 3), budget_ms=budget_ms,
                         spec=spec.__dict__.copy(), frontier=frontier)


class NoShapeFits(ValueError):
    """No candidate answered within the budget; `frontier` holds every shape that was timed (none fits), so a
    caller can still show what was measured."""

    def __init__(self, frontier: list[dict], message: str, spec: dict | None = None, budget_ms: float | None = None):
        super().__init__(message)
        self.frontier, self.spec, self.budget_ms = frontier, spec, budget_ms


def _dominates(a: dict, b: dict, grid: Grid = BOTTLENECK) -> bool:
    """a is at least as big as b in every dimension that grows (the same in the others): it cannot be faster."""
    return all(a[k] == b[k] for k in grid.same) and all(a[k] >= b[k] for k in grid.grows)


def _describe(row: dict, ms: float) -> str:
    if row.get("cut"):
        return (f"L={row['layers']} H={row['inter_size']} heads={row['heads']} F={row['ffn_size']}: "
                f"{row['params'] / 1e6:.2f}M params, {ms:.2f} ms")
    return (f"L={row['layers']} H={row['inter_size']} I={row['intra_size']} heads={row['heads']} N={row['stacked']} "
            f"F={row['ffn_size']} qkv={row['qkv_from']}: {row['params'] / 1e6:.2f}M params, ratio "
            f"{row['ratio']:.3f}, {ms:.2f} ms")

