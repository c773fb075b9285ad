"""The bottleneck-BERT model family: config, modules, heads, counting and transformers interop."""

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                          AutoModelForQuestionAnswering, AutoModelForSequenceClassification)

from .configuration import PRESETS, QKV_SOURCES, SlimBertConfig, preset
from .convert import NotExpressibleError, from_transformers, to_transformers, why_not_expressible
from .counting import Counts, count
from .modeling import (SlimBertForMaskedLM, SlimBertForPreTraining, SlimBertForQuestionAnswering,
                       SlimBertForSequenceClassification, SlimBertModel, SlimBertModelOutput,
                       SlimBertPreTrainedModel)

# Auto-class registration: AutoModel*.from_pretrained() opens a saved slimbert model once slimbert is imported.
AutoConfig.register("slimbert", SlimBertConfig, exist_ok=True)
for auto, cls in [(AutoModel, SlimBertModel), (AutoModelForMaskedLM, SlimBertForMaskedLM),
                  (AutoModelForPreTraining, SlimBertForPreTraining),
                  (AutoModelForSequenceClassification, SlimBertForSequenceClassification),
                  (AutoModelForQuestionAnswering, SlimBertForQuestionAnswering)]:
    auto.register(SlimBertConfig, cls, exist_ok=True)

__all__ = ["PRESETS", "QKV_SOURCES", "Counts", "NotExpressibleError", "SlimBertConfig", "SlimBertForMaskedLM",
           "SlimBertForPreTraining", "SlimBertForQuestionAnswering", "SlimBertForSequenceClassification",
           "SlimBertModel", "SlimBertModelOutput", "SlimBertPreTrainedModel", "count", "from_transformers",
           "preset", "to_transformers", "why_not_expressible"]
