"""student.copy_embeddings with a teacher passed through the Python API: every table or a named refusal, and
RoBERTa's padding offset on positions."""

import pytest
import torch

from slimbert.models import SlimBertConfig, SlimBertForMaskedLM
from slimbert.teacher.adapters import as_teacher
from slimbert.transfer.init import EmbeddingCopyError, copy_embeddings


def _tiny_roberta():
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    c = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
    return RobertaModel(c)


def _student(embedding_size: int, trigram: bool) -> SlimBertForMaskedLM:
    c = SlimBertConfig(vocab_size=99, embedding_size=embedding_size, trigram_input=trigram, hidden_size=32,
                       use_bottleneck=False, intra_bottleneck_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_feedforward_networks=1, normalization_type="layer_norm",
                       max_position_embeddings=64, type_vocab_size=1, pad_token_id=1)
    return SlimBertForMaskedLM(c)


def test_copies_every_table_and_shifts_roberta_positions():
    roberta = _tiny_roberta()
    student = _student(32, False)
    copy_embeddings(as_teacher(roberta), student)
    mine, theirs = student.slimbert.embeddings, roberta.embeddings
    torch.testing.assert_close(mine.word_embeddings.weight, theirs.word_embeddings.weight)
    torch.testing.assert_close(mine.token_type_embeddings.weight, theirs.token_type_embeddings.weight)
    # RoBERTa's first real position is row padding_idx + 1 = 2: it is the student's row 0
    torch.testing.assert_close(mine.position_embeddings.weight, theirs.position_embeddings.weight[2:66])
    assert not torch.equal(mine.position_embeddings.weight[0], theirs.position_embeddings.weight[0])
    # the same token at the same place embeds alike (before the encoder)
    ids = torch.tensor([[0, 5, 7, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(mine(ids), theirs(input_ids=ids), rtol=1e-5, atol=1e-5)


def test_refuses_a_word_table_of_another_shape_by_name():
    student = _student(16, True)
    before = student.slimbert.embeddings.position_embeddings.weight.clone()
    with pytest.raises(EmbeddingCopyError, match=r"student.copy_embeddings: the teacher's word_embeddings table "
                                                 r"is \(99, 32\), the student's \(99, 16\)"):
        copy_embeddings(as_teacher(_tiny_roberta()), student)
    # nothing copied: no half-copied student
    torch.testing.assert_close(student.slimbert.embeddings.position_embeddings.weight, before)
