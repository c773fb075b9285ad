"""Latency-aware shape search: the pure solver with fake timers, the recipe section, and one real timing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slimbert.models import count, preset
from slimbert.recipe import RecipeError, build_plan, load_recipe
from slimbert.recipe.shape_search import Axes, LatencySpec, candidates, solve_latency, spread

from conftest import write_recipe

SPEC = LatencySpec("openvino", "int8", 1, 128, 2)
AXES = Axes(layers=(12, 24), inter_sizes=(384, 512), heads=(4,), qkv_from=("inter", "bottleneck"), stacked=(2, 4))


class FakeTimer:
    """ms from the shape: per-op overhead per layer and FFN plus a cost per parameter (monotone in both)."""

    def __init__(self, per_op=0.05, per_mparam=0.2):
        self.per_op, self.per_mparam, self.calls = per_op, per_mparam, []

    def __call__(self, config, spec):
        assert spec == SPEC
        self.calls.append(config)
        ops = config.num_hidden_layers * (config.num_feedforward_networks + 3)
        return ops * self.per_op + count(config).total_params / 1e6 * self.per_mparam


def test_candidates_stay_in_the_band_and_are_counted_exactly():
    rows, n = candidates(preset("mobilebert"), AXES, ratio=0.5, tolerance=0.1, max_params=None, max_flops=None,
                         seq_len=128)
    assert n > len(rows) > 10
    for cfg, row in rows:
        assert 0.4 <= row["ratio"] <= 0.6 and count(cfg).total_params == row["params"]
    assert [r["params"] for _, r in rows] == sorted((r["params"] for _, r in rows), reverse=True)
    assert spread(10, 4) == [0, 3, 6, 9] and spread(3, 5) == [0, 1, 2]


@pytest.mark.parametrize("budget", [4.0, 5.0, 6.5])
def test_solver_picks_the_largest_shape_that_fits(budget):
    base = preset("mobilebert")
    timer = FakeTimer()
    best = solve_latency(base, AXES, SPEC, timer, budget_ms=budget, ratio=None, tolerance=0.1, max_params=None,
                         max_flops=None, seq_len=128, sample=6, max_timed=60)
    # brute force over the same band: the largest shape whose fake latency fits
    rows, _ = candidates(base, AXES, ratio=0.5, tolerance=0.1, max_params=None, max_flops=None, seq_len=128)
    fitting = [r for cfg, r in rows if FakeTimer()(cfg, SPEC) <= budget]
    assert best.params == max(r["params"] for r in fitting)
    assert best.latency_ms <= budget and 0.4 <= best.ratio <= 0.6
    assert len(timer.calls) < len(rows)  # not everything was timed
    chosen = [f for f in best.frontier if f["chosen"]]
    assert len(chosen) == 1 and chosen[0]["params"] == best.params
    assert all(f["ms"] > budget for f in best.frontier if f["params"] > best.params)
    assert "within" in best.reason and f"L={best.layers}" in best.reason
    assert best.as_dict()["spec"]["runtime"] == "openvino"


def test_solver_with_a_non_monotone_timer_still_returns_a_measured_fit():
    def bumpy(config, spec):  # 24-layer shapes are slow whatever their size: overhead, not FLOPs
        return 9.0 if config.num_hidden_layers == 24 else count(config).total_params / 1e6 * 0.2

    best = solve_latency(preset("mobilebert"), AXES, SPEC, bumpy, budget_ms=5.0, ratio=0.5, tolerance=0.1,
                         max_params=None, max_flops=None, seq_len=128, sample=8, max_timed=40)
    assert best.layers == 12 and best.latency_ms <= 5.0


def test_solver_says_what_was_closest_when_nothing_fits(tmp_path):
    from slimbert.export.shape_timer import frontier_chart
    from slimbert.recipe.shape_search import NoShapeFits

    timer = FakeTimer()
    with pytest.raises(NoShapeFits, match="no candidate answers within 0.5 ms on openvino int8.*fastest: L=") as e:
        solve_latency(preset("mobilebert"), AXES, SPEC, timer, budget_ms=0.5, ratio=0.5, tolerance=0.1,
                      max_params=None, max_flops=None, seq_len=128, sample=4)
    # what was timed is still there to show: every timed shape, none fitting, none chosen
    assert len(e.value.frontier) == len(timer.calls) >= 4
    assert not any(f["fits"] or f["chosen"] for f in e.value.frontier)
    png = frontier_chart({"spec": SPEC.__dict__, "frontier": e.value.frontier, "budget_ms": 0.5},
                         [{"name": "BERT_BASE", "params": 110e6, "ms": 30.0, "runtime": "ort", "precision": "fp32"}],
                         tmp_path / "frontier.png")
    assert png.stat().st_size > 1000


def _latency_recipe(tmp_path, tiny_source, shared_data, **balance):
    return write_recipe(tmp_path, tiny_source, shared_data,
                        student={"num_layers": 2, "inter_size": 64, "intra_size": None, "ffn": None, "num_heads": 4,
                                 "embedding": {"size": 32}, "copy_embeddings": False},
                        balance={"latency_ms": 6, "runtime": "openvino", "precision": "int8", "batch": 1, "seq": 128,
                                 "layers": [2, 4], "inter_sizes": [64, 96], "tolerance": 0.15, **balance})


def test_recipe_latency_budget_resolves_the_whole_student(tmp_path, tiny_source, shared_data):
    path = _latency_recipe(tmp_path, tiny_source, shared_data)
    calls = []

    def timer(config, spec):
        calls.append(spec)
        return 1.5 * config.num_hidden_layers + config.hidden_size / 64

    r = load_recipe(path, timer=timer)
    assert calls and calls[0] == LatencySpec("openvino", "int8", 1, 128, 2)
    b = r.balance
    assert 1.5 * b.layers + b.inter_size / 64 <= 6
    cfg = r.student_config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intra_bottleneck_size) == (b.layers, b.inter_size, b.intra_size)
    assert r.recipe.student.num_layers == b.layers and len(r.layer_map) == b.layers
    plan = build_plan(r)
    assert plan["balance"]["frontier"] and plan["student"]["params"]["total"] == b.params
    # without a timer (a caller that cannot export) the budget is refused by name, not ignored
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert [p.path for p in e.value.problems] == ["balance.latency_ms"]


def test_latency_keys_without_a_budget_are_refused(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data,
                        student={"num_layers": 2, "inter_size": 64, "intra_size": None, "ffn": None, "num_heads": 4,
                                 "embedding": {"size": 32}, "copy_embeddings": False},
                        balance={"max_params": 2.2e6, "runtime": "openvino"})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert any("runtime only apply to a latency search" in p.message for p in e.value.problems)


def test_one_real_timing_is_cached_per_machine(tmp_path, monkeypatch):
    from slimbert.export import shape_timer
    from slimbert.models import SlimBertConfig

    timer = shape_timer.ExportTimer(cache_dir=tmp_path, runs=3)
    cfg = SlimBertConfig(vocab_size=1000, embedding_size=32, hidden_size=64, intra_bottleneck_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_feedforward_networks=2)
    spec = LatencySpec("ort", "fp32", 1, 32, 1)
    ms = timer(cfg, spec)
    assert 0 < ms < 1000
    saved = json.loads(timer.file.read_text())
    assert saved["machine"]["cpu"] == timer.cpu.key() and "ort" in saved["machine"]["runtimes"]
    # a second timer on this machine answers from the cache, without exporting anything
    monkeypatch.setattr(shape_timer, "artefact", lambda *a, **k: pytest.fail("re-exported a cached shape"))
    assert shape_timer.ExportTimer(cache_dir=tmp_path)(cfg, spec) == ms
    with pytest.raises(ValueError, match="cannot time on ort bf16: n/a"):
        timer(cfg, LatencySpec("ort", "bf16", 1, 32, 1))


class _Clock:
    """A host whose speed the test sets: each fake run advances the clock by its cost times the slowdown."""

    def __init__(self):
        self.now, self.slowdown = 0.0, 1.0

    def runner(self, ms: float):
        clock = self

        class Runner:
            input_names = ["input_ids", "attention_mask"]

            def run(self, feed):
                clock.now += ms / 1000 * clock.slowdown

        return Runner()


def test_anchored_timings_hold_when_the_host_slows_down(tmp_path, monkeypatch):
    # Two identical shapes timed minutes apart on a shared VM that got 1.5x slower in between: timed alone they
    # differ by 1.5x; timed beside a fixed anchor (a ratio, scaled by the anchor's reference ms) they agree.
    from slimbert.export import runtime, shape_timer
    from slimbert.models import SlimBertConfig

    clock = _Clock()
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock.now)
    monkeypatch.setattr(shape_timer, "artefact", lambda model, rt, prec, folder, seq, slim=True: folder / "m.onnx")
    costs = {"anchor.onnx": 40.0}   # the anchor, e.g. BERT_BASE, 40 ms on the quiet host
    monkeypatch.setattr(runtime, "load_for_timing",
                        lambda rt, path, prec, threads=None: clock.runner(costs.get(Path(path).name, 10.0)))
    spec = LatencySpec("ort", "fp32", 1, 32, 1)

    def cfg(layers):
        return SlimBertConfig(vocab_size=1000, embedding_size=32, hidden_size=64, intra_bottleneck_size=32,
                              num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64)

    alone = shape_timer.ExportTimer(cache_dir=tmp_path / "alone", runs=7)
    anchor = shape_timer.Anchor("bert_base ort fp32", tmp_path / "anchor.onnx", "ort", "fp32", ms=40.0)
    anchored = shape_timer.ExportTimer(cache_dir=tmp_path / "anchored", runs=7, anchor=anchor)
    first = (alone(cfg(2), spec), anchored(cfg(2), spec))
    clock.slowdown = 1.5
    second = (alone(cfg(3), spec), anchored(cfg(3), spec))   # a new shape (not cached) costing the same
    assert first[0] == pytest.approx(10.0) and second[0] == pytest.approx(15.0)
    assert first[1] == pytest.approx(10.0) and second[1] == pytest.approx(10.0)
    # the cache keeps the ratio, keyed by the anchor: a faster host later reads the same answer
    saved = json.loads(anchored.file.read_text())["timings"]
    assert sorted(round(v, 6) for v in saved.values()) == [0.25, 0.25] and all("bert_base" in k for k in saved)
    clock.slowdown = 0.5
    assert shape_timer.ExportTimer(cache_dir=tmp_path / "anchored", anchor=anchor)(cfg(3), spec) == pytest.approx(10.0)


def test_alternating_timing_interleaves_in_blocks():
    from slimbert.export import runtime

    order = []

    class Runner:
        input_names = ["input_ids"]

        def __init__(self, name):
            self.name = name

        def run(self, feed):
            assert feed["input_ids"].shape == (2, 8)
            order.append(self.name)

    a, b = runtime.alternating_median_ms([Runner("a"), Runner("b")], 2, 8, runs=10, warmup=1, block=5)
    # warm-up, then blocks: one untimed call and 5 timed ones, a then b, twice
    assert order == ["a", "b"] + (["a"] * 6 + ["b"] * 6) * 2 and a >= 0 and b >= 0


def _plan_json(tmp_path, tiny_source, shared_data, latency_ms: float, max_timed: int):
    """`slimbert plan --json` of a one-family latency recipe timed for real on ORT fp32, its cache in tmp_path."""
    path = _latency_recipe(tmp_path, tiny_source, shared_data, runtime="ort", precision="fp32", seq=32, threads=1,
                           latency_ms=latency_ms, sample=2, max_timed=max_timed, layers=[2], inter_sizes=[64])
    env = {**__import__("os").environ, "SLIMBERT_LATENCY_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "slimbert.cli", "plan", str(path), "--json", "--no-measure"],
                          capture_output=True, text=True, env=env)


@pytest.mark.e2e
def test_plan_shows_the_frontier_table_and_png(tmp_path, tiny_source, shared_data):
    done = _plan_json(tmp_path, tiny_source, shared_data, latency_ms=1000, max_timed=3)
    assert done.returncode == 0, done.stderr[-2000:]
    b = json.loads(done.stdout)["balance"]
    assert sum(f["chosen"] for f in b["frontier"]) == 1 and b["latency_ms"] <= 1000
    assert Path(b["frontier_png"]).is_file() and Path(b["frontier_png"]).parent == tmp_path / "cache"


def test_a_budget_nothing_meets_is_refused_with_what_was_timed(tmp_path, tiny_source, shared_data):
    # the fake timer says every shape is too slow: load_recipe names the key and carries the timed shapes
    path = _latency_recipe(tmp_path, tiny_source, shared_data, latency_ms=0.5)
    with pytest.raises(RecipeError, match="balance.*impossible balance: no candidate answers within 0.5 ms") as e:
        load_recipe(path, timer=lambda config, spec: 1.0 + config.num_hidden_layers)
    f = e.value.frontier
    assert f["budget_ms"] == 0.5 and f["spec"]["runtime"] == "openvino" and len(f["frontier"]) >= 2
    assert not any(row["fits"] or row["chosen"] for row in f["frontier"])


@pytest.mark.e2e
def test_plan_shows_the_shapes_it_timed_when_none_fits(tmp_path, tiny_source, shared_data):
    done = _plan_json(tmp_path, tiny_source, shared_data, latency_ms=0.0001, max_timed=2)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "balance: impossible balance: no candidate answers within 0.0001 ms" in " ".join(done.stderr.split())
    b = json.loads(done.stdout)["balance"]
    assert b["frontier"] and not any(f["chosen"] or f["fits"] for f in b["frontier"])
    png = Path(b["frontier_png"])
    assert png.is_file() and png.parent == tmp_path / "cache" and png.name.endswith("-none-fits.png")


def test_latency_model_recovers_overhead_and_flop_terms():
    from slimbert.recipe.shape_search import fit_latency_model, op_layers

    rows = [{"layers": l, "stacked": n, "flops": g * 1e9} for l, n, g in ((24, 4, 5.6), (12, 1, 22.4), (3, 1, 5.5))]
    truth = [0.05 * op_layers(r) + 1.5 * r["flops"] / 1e9 for r in rows]
    predict = fit_latency_model(list(zip(rows, truth)))
    probe = {"layers": 6, "stacked": 2, "flops": 3e9}
    assert predict(probe) == pytest.approx(0.05 * 30 + 4.5)
    assert fit_latency_model(list(zip(rows, truth))[:1]) is None
    # a fit that wants a negative term falls back to the better single non-negative term
    flat = fit_latency_model([({"layers": 1, "stacked": 1, "flops": 1e9}, 5.0),
                              ({"layers": 10, "stacked": 1, "flops": 1e9}, 1.0)])
    assert all(flat(r) >= 0 for r in rows)


def test_min_params_floor_and_a_capped_search_spends_its_timings_where_the_fit_is():
    base = preset("mobilebert")
    floor = count(base).total_params
    axes = Axes(layers=(3, 4, 12, 24), inter_sizes=(512, 768), heads=(12,), qkv_from=("inter",), stacked=(1, 4))
    rows, _ = candidates(base, axes, ratio=0.5, tolerance=0.1, max_params=None, max_flops=None, seq_len=128,
                         min_params=floor)
    assert rows and min(r["params"] for _, r in rows) >= floor

    def cpu_like(config, spec):  # per-op overhead per layer plus a cost per FLOP: thin and deep is slow
        from slimbert.models.counting import count_config

        return (0.05 * config.num_hidden_layers * (config.num_feedforward_networks + 3)
                + 1.5 * count_config(config, seq_len=128).total_flops / 1e9)

    fitting = [r for cfg, r in rows if cpu_like(cfg, SPEC) <= 10.0]
    assert fitting, "the fixture should have an answer"
    best = solve_latency(base, axes, SPEC, cpu_like, budget_ms=10.0, ratio=None, tolerance=0.1, max_params=None,
                         max_flops=None, seq_len=128, sample=4, max_timed=12, min_params=floor)
    assert best.params == max(r["params"] for r in fitting)  # found exactly within 12 timings of many shapes
    assert len(best.frontier) <= 12 < len(rows) and "at least 25.36M params" in best.reason
    with pytest.raises(ValueError, match="at least 300.00M params"):
        solve_latency(base, axes, SPEC, cpu_like, budget_ms=10.0, ratio=None, tolerance=0.1, max_params=None,
                      max_flops=None, seq_len=128, min_params=3e8)


def test_min_params_is_a_latency_key_and_cannot_exceed_max_params(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data,
                        student={"num_layers": 2, "inter_size": 64, "intra_size": None, "ffn": None, "num_heads": 4,
                                 "embedding": {"size": 32}, "copy_embeddings": False},
                        balance={"max_params": 2.2e6, "min_params": 3e6})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    messages = " ".join(p.message for p in e.value.problems)
    assert "min_params (3e+06) exceeds max_params (2.2e+06)" in messages


# ---- students cut from their source (student.init: prune_from_source) -----------------------------------------------

def _cut_base():
    from slimbert.models import SlimBertConfig

    # all-MiniLM-L6-v2's block: width 384, 12 heads of 32, FFN 1536, 6 layers
    return SlimBertConfig(vocab_size=30522, embedding_size=384, trigram_input=False, hidden_size=384,
                          use_bottleneck=False, intra_bottleneck_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536, num_feedforward_networks=1, normalization_type="layer_norm",
                          hidden_act="gelu", max_position_embeddings=512, classifier_activation=True)


def _cut_axes():
    from slimbert.recipe.shape_search import CutAxes

    return CutAxes(layers=(3, 4, 5, 6), inter_sizes=(256, 384), heads=None, ffn_sizes=tuple(range(64, 1537, 64)),
                   head_dim=32, max_heads=12)


def _cut_ms(config) -> float:
    # overhead per layer, plus a cost per encoder weight (not the word table): monotone in every cut dimension
    h, f = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (0.15 + (4 * h * h + 2 * h * f) / 1e6 * 1.4)


@pytest.mark.parametrize("budget", [2.0, 6.0, 16.0])
def test_cut_search_picks_the_largest_cut_that_fits(budget):
    from slimbert.recipe.shape_search import cut_candidates, solve_cut_latency

    calls = []

    def timer(config, spec):
        calls.append(config)
        return _cut_ms(config)

    base, axes = _cut_base(), _cut_axes()
    rows, n = cut_candidates(base, axes, max_params=None, max_flops=None, seq_len=128)
    assert n == len(rows) == 4 * 2 * 24
    for cfg, row in rows:  # each keeps the source's head width and block; counted exactly
        assert cfg.num_attention_heads * 32 == cfg.hidden_size == cfg.embedding_size == cfg.intra_bottleneck_size
        assert cfg.num_feedforward_networks == 1 and not cfg.use_bottleneck
        assert count(cfg).total_params == row["params"]
    best = solve_cut_latency(base, axes, SPEC, timer, budget_ms=budget, max_params=None, max_flops=None, seq_len=128,
                             sample=6, max_timed=60, source_shape=(6, 384, 12, 1536))
    fitting = [r for cfg, r in rows if _cut_ms(cfg) <= budget]  # brute force over the same grid
    assert best.params == max(r["params"] for r in fitting) and best.latency_ms <= budget
    assert len(calls) < len(rows) / 3   # bisection per family, not a sweep
    assert f"L={best.layers} H={best.inter_size} heads={best.heads} F={best.ffn_size}" in best.reason
    own = (best.layers, best.inter_size, best.ffn_size) == (6, 384, 1536)
    assert ("the source's own shape" in best.reason) == own
    assert own == (budget == 16.0)  # the source itself takes 15.8 ms here


def test_cut_search_with_heads_skips_widths_they_do_not_divide_and_says_when_nothing_fits():
    from slimbert.recipe.shape_search import CutAxes, NoShapeFits, cut_candidates, solve_cut_latency

    axes = CutAxes(layers=(2,), inter_sizes=(192, 196, 256), heads=(8,), ffn_sizes=(256, 512), head_dim=32,
                   max_heads=12)
    rows, n = cut_candidates(_cut_base(), axes, max_params=None, max_flops=None, seq_len=128)
    assert n == 4 and {r["inter_size"] for _, r in rows} == {192, 256}  # 196 is not 8 heads wide
    assert all(r["heads"] == 8 for _, r in rows)
    with pytest.raises(NoShapeFits, match=r"0.1 ms .*cut from the source.*fastest: L=2 H=192 heads=8 F=256"):
        solve_cut_latency(_cut_base(), axes, SPEC, lambda c, s: _cut_ms(c), budget_ms=0.1, max_params=None,
                          max_flops=None, seq_len=128)


def test_a_cut_keeps_whole_heads_or_narrows_them_never_widens():
    from slimbert.recipe.shape_search import CutAxes, cut_heads

    def axes(heads=None, head_dim=32, max_heads=12):
        return CutAxes(layers=(2,), inter_sizes=(), heads=heads, ffn_sizes=(64,), head_dim=head_dim,
                       max_heads=max_heads)

    assert cut_heads(384, axes()) == [12] and cut_heads(256, axes()) == [8]  # the source's head width where it fits
    assert cut_heads(96, axes()) == [3]                    # not 2 heads of 48: wider than the source's 32
    assert cut_heads(150, axes(head_dim=64)) == [3]        # rounding down would give 2 heads of 75
    assert cut_heads(64, axes(heads=(1, 2, 4))) == [2, 4]  # 1 head of 64 would widen a head of 32
    assert cut_heads(64, axes(heads=(16,), max_heads=8)) == []   # more heads than the source has
    assert cut_heads(383, axes()) == []                    # prime: 1 head of 383 or 383 heads of 1, neither fits
    for inter in range(1, 385):  # whatever the width, what the grid offers the pruner can build
        for h in cut_heads(inter, axes(heads=tuple(range(1, 20)))):
            assert inter % h == 0 and inter // h <= 32 and h <= 12


def _cut_recipe(tmp_path, tiny_source, shared_data, student=None, **balance):
    return write_recipe(tmp_path, tiny_source, shared_data, teacher={"type": "source"},
                        student={"init": "prune_from_source", "num_layers": 2, **(student or {})},
                        transfer=[{"kind": "joint", "steps": 2, "batch_size": 4,
                                   "losses": {"feature_map": 1.0, "attention": 0.0}}],
                        balance={"latency_ms": 3, "runtime": "ort", "precision": "int8", "layers": [1, 2, 3],
                                 "inter_sizes": [32, 64], **balance})


def test_recipe_latency_budget_cuts_the_student_from_its_source(tmp_path, tiny_source, shared_data):
    from transformers import BertConfig

    from slimbert.recipe.shape_search import CutAxes, cut_candidates

    seen = []

    def timer(config, spec):  # the tiny source is a BERT: each cut is timed as the stock BertModel it is saved as
        seen.append(config)
        assert isinstance(config, BertConfig) and spec == LatencySpec("ort", "int8", 1, 128, 2)
        return config.num_hidden_layers * (0.3 + config.hidden_size / 64 + config.intermediate_size / 256)

    r = load_recipe(_cut_recipe(tmp_path, tiny_source, shared_data), timer=timer)
    b, cfg = r.balance, r.student_config
    assert b.layers * (0.3 + b.inter_size / 64 + b.ffn_size / 256) <= 3
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == \
        (b.layers, b.inter_size, b.heads, b.ffn_size)
    assert cfg.hidden_size // cfg.num_attention_heads == 16 and not cfg.use_bottleneck  # the source's head width
    assert b.ffn_size in range(64, 129, 64) and b.ffn_size <= 128  # the default grid: multiples of 64, the source's
    assert r.recipe.student.num_layers == b.layers and len(r.layer_map) == b.layers
    # the largest that fits, by brute force over the whole grid (timed or not), counted as the search counts
    axes = CutAxes(layers=(1, 2, 3), inter_sizes=(32, 64), heads=None, ffn_sizes=(64, 128), head_dim=16, max_heads=4)
    rows, n = cut_candidates(cfg, axes, max_params=None, max_flops=None, seq_len=32)
    fitting = [row["params"] for c, row in rows
               if c.num_hidden_layers * (0.3 + c.hidden_size / 64 + c.intermediate_size / 256) <= 3]
    assert n == 12 and b.params == max(fitting)
    assert build_plan(r)["balance"]["frontier"]


@pytest.mark.parametrize("student, balance, key", [
    ({}, {"stacked": [1, 2]}, "balance.stacked"),                              # the source's block has one FFN
    ({}, {"mha_ffn_ratio": 0.5}, "balance.mha_ffn_ratio"),
    ({}, {"qkv_from": ["bottleneck"]}, "balance.qkv_from"),
    ({}, {"layers": [2, 5]}, "balance.layers"),                                # the tiny source has 4 layers
    ({}, {"ffn_sizes": [64, 256]}, "balance.ffn_sizes"),                       # and FFN 128
    ({"ffn": {"size": 64}}, {}, "student.ffn"),                                # the search chooses it
    ({}, {"heads": [1]}, "balance.heads"),                  # 1 head of 32 or 64 would widen the source's heads of 16
    ({"num_heads": 1}, {}, "student.num_heads"),            # the same, through the student's heads
    ({}, {"inter_sizes": [31, 64]}, "balance.inter_sizes"), # no head count cuts a width of 31 from heads of 16
    ({}, {"heads": [4, 3]}, "balance.heads"),               # 3 heads divide neither 32 nor 64: it would do nothing
])
def test_a_cut_latency_search_refuses_what_it_cannot_do(tmp_path, tiny_source, shared_data, student, balance, key):
    path = _cut_recipe(tmp_path, tiny_source, shared_data, student, **balance)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, timer=lambda c, s: pytest.fail("timed a shape of a refused recipe"))
    assert key in [p.path for p in e.value.problems], e.value.problems


def test_a_source_that_cannot_be_cut_is_refused_before_anything_is_timed(tmp_path, tokenizer, tiny_source,
                                                                          shared_data):
    from transformers import ElectraConfig, ElectraForMaskedLM

    # an ELECTRA is not a block the cut keeps (and its word table is narrower than its blocks)
    source = tmp_path / "electra"
    ElectraForMaskedLM(ElectraConfig(vocab_size=len(tokenizer), embedding_size=32, hidden_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=128)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    path = _cut_recipe(tmp_path, tiny_source, shared_data, layers=[1, 2])
    text = path.read_text().replace(str(tiny_source), str(source))
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, timer=lambda c, s: pytest.fail("timed a shape for a source it cannot cut"))
    assert [p.path for p in e.value.problems] == ["student.init"], e.value.problems
    assert "is a electra: use student.init: random" in e.value.problems[0].message


def test_a_cut_balance_without_a_latency_budget_is_refused_by_name(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data, teacher={"type": "source"},
                        student={"init": "prune_from_source", "num_layers": 2},
                        transfer=[{"kind": "joint", "steps": 2, "batch_size": 4,
                                   "losses": {"feature_map": 1.0, "attention": 0.0}}],
                        balance={"max_params": 1e6})
    with pytest.raises(RecipeError) as e:
        load_recipe(path, timer=lambda c, s: pytest.fail("timed a shape of a refused recipe"))
    assert [(p.path, "add balance.latency_ms" in p.message) for p in e.value.problems] == [("balance", True)]


def test_ffn_sizes_is_refused_for_a_bottleneck_student(tmp_path, tiny_source, shared_data):
    with pytest.raises(RecipeError) as e:
        load_recipe(_latency_recipe(tmp_path, tiny_source, shared_data, ffn_sizes=[64]),
                    timer=lambda c, s: pytest.fail("timed a shape of a refused recipe"))
    assert [p.path for p in e.value.problems] == ["balance.ffn_sizes"]


def test_a_stock_encoder_is_timed_through_the_students_export_and_cached(tmp_path, monkeypatch):
    from transformers import BertConfig

    from slimbert.export import shape_timer

    timer = shape_timer.ExportTimer(cache_dir=tmp_path, runs=3)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    spec = LatencySpec("ort", "int8", 1, 32, 1)
    ms = timer(cfg, spec)
    assert 0 < ms < 1000
    keys = list(json.loads(timer.file.read_text())["timings"])
    assert any(k.startswith('{"model": "encoder:') for k in keys)
    # timed as the export runs a cut student (eager attention: no per-layer IsNaN guard), and keyed by it, so a
    # timing made another way is measured again rather than reused
    assert all('"passes": ["fold_nonorm", "eager_attention", "ort_basic"]' in k for k in keys)
    import onnx
    from transformers import BertModel

    path = shape_timer.artefact(BertModel(cfg).eval(), "ort", "fp32", tmp_path, 32)
    assert "IsNaN" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    monkeypatch.setattr(shape_timer, "artefact", lambda *a, **k: pytest.fail("re-exported a cached shape"))
    assert shape_timer.ExportTimer(cache_dir=tmp_path)(cfg, spec) == ms


@pytest.mark.e2e
def test_plan_times_cut_students_for_real_and_shows_their_own_columns(tmp_path, tiny_source, shared_data):
    path = _cut_recipe(tmp_path, tiny_source, shared_data, latency_ms=1000, runtime="ort", precision="fp32", seq=32,
                       threads=1, layers=[1, 2], inter_sizes=[64], ffn_sizes=[64, 128], sample=2, max_timed=3)
    env = {**__import__("os").environ, "SLIMBERT_LATENCY_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "plan", str(path), "--no-measure"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "timed bert L=2 H=64 heads=4 F=128 on ort fp32" in done.stderr   # the stock BertModel, really timed
    head = next(line for line in done.stdout.splitlines() if "layers" in line and "params" in line)
    assert [c.strip() for c in head.split("┃") if c.strip()][:4] == ["layers", "H", "heads", "F"]
    assert "chosen" in done.stdout and "the source's own shape" not in done.stdout


@pytest.mark.e2e
def test_a_run_cuts_the_student_the_search_chose(tmp_path, tiny_source, shared_data, monkeypatch):
    import slimbert

    monkeypatch.setenv("SLIMBERT_LATENCY_CACHE", str(tmp_path / "cache"))
    path = _cut_recipe(tmp_path, tiny_source, shared_data, latency_ms=1000, runtime="ort", precision="fp32", seq=32,
                       threads=1, layers=[2, 3], inter_sizes=[32, 48], ffn_sizes=[64, 96], sample=2, max_timed=4)
    out = slimbert.compress(path, out=tmp_path / "run")
    config = json.loads((out / "student" / "config.json").read_text())
    init = json.loads((out / "student_init.json").read_text())
    # everything fits 1000 ms: the largest shape on the grid, cut and saved as the stock model it was timed as
    # (with the tiny source's MLM head; the search times the encoder, what a feature extractor deploys)
    assert config["model_type"] == "bert" and "auto_map" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"]) == (3, 48, 3, 96)
    assert len(init["layers"]) == 3
