"""Choose the student's intra width, FFN count and FFN size from a ratio target and a budget.

The paper searched this by hand (Table 3): ~25M-parameter students, best when attention/FFN parameters
are 0.4-0.6. This solver makes that search a recipe knob: every (I, N, F) on a grid is counted exactly
(the same formulas as `slimbert.count`), the ones inside the ratio band and the budgets are kept, and
the largest (it uses the budget best) wins, ties going to the ratio closest to the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import lcm

from ..models import SlimBertConfig
from ..models.counting import count_config

FFN_MULTIPLES = (2, 3, 4)  # F = m * I; the paper's students use 4


@dataclass
class BalanceResult:
    intra_size: int
    stacked: int
    ffn_size: int
    ratio: float
    params: int
    flops: int
    considered: int
    feasible: int
    reason: str
    alternatives: list[dict] = field(default_factory=list)
    # the latency search (shape_search.py) also chooses these, and says what it measured; None otherwise
    layers: int | None = None
    inter_size: int | None = None
    heads: int | None = None
    qkv_from: str | None = None
    latency_ms: float | None = None
    budget_ms: float | None = None
    spec: dict | None = None
    frontier: list[dict] | None = None

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("intra_size", "stacked", "ffn_size", "ratio", "params", "flops",
                                             "considered", "feasible", "reason", "alternatives")}
        for k in ("layers", "inter_size", "heads", "qkv_from", "latency_ms", "budget_ms", "spec", "frontier"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


def solve(base: SlimBertConfig, *, ratio: float | None, tolerance: float, max_params: float | None,
          max_flops: float | None, stacked: list[int], seq_len: int) -> BalanceResult:
    """Raise ValueError (with the closest misses) when nothing fits."""
    step = lcm(base.num_attention_heads, 16)
    rows = []
    for intra in range(step, base.hidden_size + 1, step):
        for n in sorted(set(stacked)):
            for m in FFN_MULTIPLES:
                cfg = SlimBertConfig(**{**base.to_diff_dict(), "intra_bottleneck_size": intra,
                                        "num_feedforward_networks": n, "intermediate_size": m * intra})
                c = count_config(cfg, seq_len=seq_len)
                rows.append(dict(intra_size=intra, stacked=n, ffn_size=m * intra, ratio=c.attention_ffn_ratio,
                                 params=c.total_params, flops=c.total_flops))
    target = ratio if ratio is not None else 0.5

    def fits(r):
        return ((ratio is None or abs(r["ratio"] - ratio) <= tolerance)
                and (max_params is None or r["params"] <= max_params)
                and (max_flops is None or r["flops"] <= max_flops))

    ok = [r for r in rows if fits(r)]
    if not ok:
        def miss(r):  # how far outside the constraints, in relative terms
            m = 0.0
            if ratio is not None:
                m += max(0.0, abs(r["ratio"] - ratio) - tolerance) / max(tolerance, 1e-9)
            if max_params is not None:
                m += max(0.0, r["params"] / max_params - 1)
            if max_flops is not None:
                m += max(0.0, r["flops"] / max_flops - 1)
            return m
        near = sorted(rows, key=miss)[:3]
        desc = "; ".join(f"I={r['intra_size']} N={r['stacked']} F={r['ffn_size']}: ratio {r['ratio']:.3f}, "
                         f"{r['params'] / 1e6:.2f}M params, {r['flops'] / 1e9:.2f} GFLOPs" for r in near)
        raise ValueError(f"no intra width / FFN stacking fits (searched {len(rows)} shapes with inter width "
                         f"{base.hidden_size}, {base.num_hidden_layers} layers); closest: {desc}. Loosen the "
                         "ratio tolerance or raise the budget")
    ok.sort(key=lambda r: (-r["params"], abs(r["ratio"] - target)))
    best = ok[0]
    limits = []
    if max_params is not None:
        limits.append(f"<= {max_params / 1e6:.2f}M params")
    if max_flops is not None:
        limits.append(f"<= {max_flops / 1e9:.2f} GFLOPs at seq {seq_len}")
    if ratio is not None:
        limits.append(f"attention/FFN ratio {ratio} +- {tolerance}")
    reason = (f"largest of {len(ok)} shapes (of {len(rows)} searched) with {' and '.join(limits)}: "
              f"I={best['intra_size']}, N={best['stacked']}, F={best['ffn_size']} gives ratio "
              f"{best['ratio']:.3f}, {best['params'] / 1e6:.2f}M params, {best['flops'] / 1e9:.2f} GFLOPs")
    return BalanceResult(**best, considered=len(rows), feasible=len(ok), reason=reason, alternatives=ok[1:6])
