"""The bottleneck-BERT model family: config, modules, heads, counting and transformers interop."""

import transformers

from . import remote_modeling
from .configuration import PRESETS, QKV_SOURCES, SlimBertConfig, preset
from .convert import NotExpressibleError, from_transformers, to_transformers, why_not_expressible
from .counting import Counts, count
from .modeling import (SlimBertForMaskedLM, SlimBertForPreTraining, SlimBertForQuestionAnswering,
                       SlimBertForSequenceClassification, SlimBertModel, SlimBertModelOutput,
                       SlimBertPreTrainedModel)
from .remote import AUTO_CLASSES

# Auto-class registration: AutoModel*.from_pretrained() opens a saved slimbert model once slimbert is imported.
# transformers prefers registered classes to a folder's own code even with trust_remote_code=True, so these are
# the classes that code opens (remote_modeling.py: the same models, whose forward takes transformers' keywords).
# Otherwise sentence-transformers, which passes return_dict, would fail in any process that imported slimbert.
transformers.AutoConfig.register("slimbert", SlimBertConfig, exist_ok=True)
for auto, name in AUTO_CLASSES.items():
    getattr(transformers, auto).register(SlimBertConfig, getattr(remote_modeling, name), exist_ok=True)

__all__ = ["PRESETS", "QKV_SOURCES", "Counts", "NotExpressibleError", "SlimBertConfig", "SlimBertForMaskedLM",
           "SlimBertForPreTraining", "SlimBertForQuestionAnswering", "SlimBertForSequenceClassification",
           "SlimBertModel", "SlimBertModelOutput", "SlimBertPreTrainedModel", "count", "from_transformers",
           "preset", "to_transformers", "why_not_expressible"]
