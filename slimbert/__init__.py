"""slimbert: MobileBERT's compression recipe as a general tool.

Public API (heavy imports happen on first use, so `slimbert --help` stays fast):
    count(model_or_config, seq_len=128)   parameters and FLOPs per component
    to_transformers(model)                the same network as stock transformers MobileBERT
    from_transformers(hf_model)           a stock MobileBERT as a slimbert model
    SlimBertConfig, preset(name)          the architecture family and the paper's presets
    compress(recipe, teacher=...)         run a recipe, optionally with your own teacher
    Teacher, ModuleTeacher, as_teacher    the teacher protocol and its adapters
    build_ib_teacher, fidelity            an inverted-bottleneck teacher from a pretrained source
    register_teacher(name, factory)       a custom teacher a recipe names with teacher.plugin
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "count": "slimbert.models", "to_transformers": "slimbert.models", "from_transformers": "slimbert.models",
    "SlimBertConfig": "slimbert.models", "preset": "slimbert.models", "PRESETS": "slimbert.models",
    "SlimBertModel": "slimbert.models", "SlimBertForMaskedLM": "slimbert.models",
    "SlimBertForPreTraining": "slimbert.models", "SlimBertForSequenceClassification": "slimbert.models",
    "SlimBertForQuestionAnswering": "slimbert.models", "NotExpressibleError": "slimbert.models",
    "compress": "slimbert.api",
    "Teacher": "slimbert.teacher.adapters", "TeacherOutput": "slimbert.teacher.adapters",
    "ModuleTeacher": "slimbert.teacher.adapters", "HFEncoderTeacher": "slimbert.teacher.adapters",
    "TeacherError": "slimbert.teacher.adapters", "as_teacher": "slimbert.teacher.adapters",
    "build_ib_teacher": "slimbert.teacher.build", "fidelity": "slimbert.teacher.build",
    "IBTeacher": "slimbert.teacher.build",
    "register_teacher": "slimbert.plugins",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimbert' has no attribute {name!r}")
