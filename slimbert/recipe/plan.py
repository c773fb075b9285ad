"""The plan: what a run will build and do, as plain data (printed by `slimbert plan`, saved as plan.json)."""

from __future__ import annotations

from ..models.counting import count_config
from ..transfer.strategies import strategy
from .resolve import Resolved


def _arch(config, seq_len: int, kind: str) -> dict:
    c = count_config(config, seq_len=seq_len)
    return {"kind": kind, "params": {**c.params, "total": c.total_params, "encoder": c.encoder_params},
            "flops": {**c.flops, "total": c.total_flops}, "attention_ffn_ratio": round(c.attention_ffn_ratio, 4),
            "shape": {"layers": config.num_hidden_layers, "inter": config.hidden_size,
                      "intra": config.true_hidden_size, "heads": config.num_attention_heads,
                      "ffn": [config.intermediate_size, config.num_feedforward_networks],
                      "embedding": config.embedding_size, "qkv_from": config.qkv_source,
                      "norm": config.normalization_type, "activation": config.hidden_act}}


def stage_rows(r: Resolved) -> list[dict]:
    rows = []
    for i, st in enumerate(r.recipe.transfer):
        row = {"index": i, "kind": st.kind, "name": st.name or f"{i}-{st.kind}", "batch_size": st.batch_size,
               "lr": st.optimizer.lr, "optimizer": st.optimizer.name, "schedule": st.schedule,
               "warmup_steps": st.warmup_steps}
        own = strategy(st).plan_row(st, r.student_config.num_hidden_layers)
        losses = own.pop("losses")
        row.update(own)
        if st.freeze:
            row["frozen"] = list(st.freeze)
        if st.lr_multipliers:
            row["lr_multipliers"] = dict(st.lr_multipliers)
        row["losses"] = losses
        rows.append(row)
    return rows


def layer_rows(r: Resolved) -> list[dict]:
    seq = r.recipe.data.seq_len
    layerwise = [st for st in r.recipe.transfer if hasattr(st, "losses")]
    weights = layerwise[0].losses.model_dump() if layerwise else {}
    rows = []
    chosen_later = r.recipe.layer_map == "importance"  # the run measures which source layers to keep
    for i, j in enumerate(r.layer_map, start=1):
        rows.append({"student_layer": i, "teacher_layer": "by importance" if chosen_later else j,
                     "student_shape": [seq, r.student_config.hidden_size],
                     "teacher_shape": [seq, r.teacher_feature_width],
                     "projection": r.teacher_config is None and r.teacher_feature_width != r.student_config.hidden_size,
                     "heads": [r.teacher_heads, r.student_config.num_attention_heads],
                     "losses": {k: weights[k] for k in ("feature_map", "feature_mean", "feature_var", "attention")
                                if k in weights}})
    return rows


def build_plan(r: Resolved) -> dict:
    seq = r.recipe.data.seq_len
    teacher = (_arch(r.teacher_config, seq, "inverted_bottleneck") if r.teacher_config is not None
               else _arch(r.source.as_config(), seq, "source"))
    plan = {"name": r.recipe.name, "recipe": str(r.file), "seq_len": seq,
            "source": {"model": str(r.source_path), "type": r.source.model_type, "layers": r.source.num_layers,
                       "hidden": r.source.hidden_size, "heads": r.source.num_heads, "mlm_head": r.source.has_mlm_head},
            "teacher": teacher, "student": _arch(r.student_config, seq, "student"),
            "balance": r.balance.as_dict() if r.balance else None,
            "layer_map": layer_rows(r), "stages": stage_rows(r), "notes": list(r.notes)}
    t, s = plan["teacher"], plan["student"]
    plan["compression"] = {"params": round(t["params"]["total"] / s["params"]["total"], 2),
                           "encoder_params": round(t["params"]["encoder"] / max(1, s["params"]["encoder"]), 2),
                           "flops": round(t["flops"]["total"] / s["flops"]["total"], 2)}
    return plan
