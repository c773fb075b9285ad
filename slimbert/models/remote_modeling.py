"""The classes a saved folder's `auto_map` opens: slimbert's models with the forward transformers' callers use.

models/remote.py writes this file into a saved folder as `modeling_slimbert.py`, beside `modeling_slimbert_core.py`
(a copy of slimbert's modeling.py). It only changes how `forward` is called. Where slimbert is imported, the Auto
classes open folders with these same classes (models/__init__.py registers them). The models slimbert builds
itself keep modeling.py's strict forward. Code written for any Hugging Face model (sentence-transformers,
pipelines, Trainer, user code) passes keyword arguments a stock BERT accepts, and these classes handle them as
follows:

- `return_dict`: honoured. False returns a tuple of the output's fields that are set, in order, as
  transformers' models do. None uses `config.return_dict`.
- `output_hidden_states`: honoured. None uses `config.output_hidden_states`. It gives the embedding output and
  then every block's output.
- `output_attentions`: honoured. None uses `config.output_attentions`. `attentions` holds, per block, the
  softmax of the masked scores (B x A x T x T): the attention probabilities *before* attention dropout. In eval
  mode these are exactly what the model uses; in training, stock BERT's are after dropout.
- `head_mask`, `inputs_embeds`, and the packed-sequence inputs (`cu_seq_lens_q`, `cu_seq_lens_k`,
  `max_length_q`, `max_length_k`, `seq_idx`): accepted when None, refused with a ValueError otherwise.
  Ignoring any of them would silently change the result.
- `token_type_ids`, `position_ids`, the heads' labels, and slimbert's `output_attention_scores` and
  `num_layers`: passed through to the strict forward.
- Any other keyword is accepted as None or False, the "off" values generic callers pass (`use_cache=False`,
  `cache_position=None`, ...), and ignored. Any other value is refused with a TypeError naming it, as the strict
  forward refuses it: it may be a misspelt argument (`attention_masks=...`) whose value would be silently dropped.

`accepts_loss_kwargs = False`: Trainer then scales the loss for gradient accumulation itself. Otherwise it would
pass `num_items_in_batch` and expect the model to normalise by it, which these heads do not do.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .modeling import SlimBertForMaskedLM as StrictForMaskedLM
from .modeling import SlimBertForPreTraining as StrictForPreTraining
from .modeling import SlimBertForQuestionAnswering as StrictForQuestionAnswering
from .modeling import SlimBertForSequenceClassification as StrictForSequenceClassification
from .modeling import SlimBertHeadOutput, SlimBertModelOutput
from .modeling import SlimBertModel as StrictModel

# Inputs with a meaning these models cannot give them: a value other than None is refused, with the reason.
REFUSED = {
    "head_mask": "slimbert models do not mask attention heads at inference; prune heads instead",
    "inputs_embeds": "the embedding runs its 3-gram convolution on the word table's lookup; pass input_ids",
    **{k: "packed (flattened) sequences are not supported; pass padded input_ids with an attention_mask"
       for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")},
}
# transformers' keywords the strict forwards do not take: keyword-only here, after the strict parameters.
HF_KEYWORDS = ("head_mask", "inputs_embeds", "output_attentions", "return_dict")


@dataclass
class SlimBertModelOutputWithAttentions(SlimBertModelOutput):
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SlimBertHeadOutputWithAttentions(SlimBertHeadOutput):
    attentions: tuple[torch.Tensor, ...] | None = None


def lenient(strict_forward):
    """`strict_forward` (a forward of modeling.py) with the module docstring's rules. The signature is the strict
    one with None defaults for `input_ids` and `output_hidden_states`, then transformers' keywords and `**kwargs`:
    callers that read it (sentence-transformers, Trainer, pipelines) find the labels and keywords they look for."""
    strict = inspect.signature(strict_forward)
    names = [p.name for p in strict.parameters.values()][1:]              # without self
    known = {*names, *HF_KEYWORDS, *REFUSED}
    params = [p.replace(default=None, annotation=f"{p.annotation} | None")
              if p.name in ("input_ids", "output_hidden_states") else p for p in strict.parameters.values()]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in HF_KEYWORDS]
    signature = strict.replace(parameters=params + [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)],
                               return_annotation=inspect.Signature.empty)

    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = {**bound.arguments.pop("kwargs"), **bound.arguments}
        del given["self"]
        name = type(self).__name__
        unknown = sorted(k for k, v in given.items() if k not in known and v is not None and v is not False)
        if unknown:
            raise TypeError(f"{name}.forward() got an unexpected keyword argument {', '.join(map(repr, unknown))} "
                            "(keywords it has no use for are accepted only as None or False)")
        for key, why in REFUSED.items():
            if given.get(key) is not None:
                raise ValueError(f"{name}.forward got {key}: {why}")
        if given["input_ids"] is None:
            raise ValueError(f"{name}.forward needs input_ids (inputs_embeds is not supported)")
        config = self.config
        pick = lambda key, default: default if given[key] is None else given[key]  # noqa: E731 - None: config's
        attentions = pick("output_attentions", config.output_attentions)
        as_dict = pick("return_dict", getattr(config, "return_dict", True))
        call = {k: given[k] for k in names} | {
            "output_hidden_states": bool(pick("output_hidden_states", config.output_hidden_states)),
            "output_attention_scores": given["output_attention_scores"] or bool(attentions)}
        out = strict_forward(self, **call)
        fields = {k: v for k, v in out.items() if k != "attention_scores" or given["output_attention_scores"]}
        if attentions:
            fields["attentions"] = tuple(s.softmax(-1) for s in out.attention_scores)
        wrapped = (SlimBertModelOutputWithAttentions if isinstance(out, SlimBertModelOutput)
                   else SlimBertHeadOutputWithAttentions)(**fields)
        return wrapped if as_dict else wrapped.to_tuple()

    forward.__signature__ = signature
    forward.__doc__ = strict_forward.__doc__
    return forward


class LenientForward:
    """Marks the auto_map's classes. Trainer reads `accepts_loss_kwargs`: these heads do not normalise the loss by
    `num_items_in_batch`."""

    accepts_loss_kwargs = False


class SlimBertModel(LenientForward, StrictModel):
    forward = lenient(StrictModel.forward)


class SlimBertForMaskedLM(LenientForward, StrictForMaskedLM):
    forward = lenient(StrictForMaskedLM.forward)


class SlimBertForPreTraining(LenientForward, StrictForPreTraining):
    forward = lenient(StrictForPreTraining.forward)


class SlimBertForSequenceClassification(LenientForward, StrictForSequenceClassification):
    forward = lenient(StrictForSequenceClassification.forward)


class SlimBertForQuestionAnswering(LenientForward, StrictForQuestionAnswering):
    forward = lenient(StrictForQuestionAnswering.forward)
