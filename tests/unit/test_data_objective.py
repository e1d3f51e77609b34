"""The objective variants of the paper's Table 3 as batch transforms (data.batch.apply_objective)."""

from __future__ import annotations

import typing

import pytest
import torch

from hrm_text.config import TrainConfig, load_config
from hrm_text.data.batch import IGNORE_INDEX, OBJECTIVES, apply_objective, pack_rows

X = IGNORE_INDEX


def _batch():
    # row: [10 11 12 | 13 14] [20 21 | 22] pad pad   (instruction | response)
    return pack_rows([[([10, 11, 12], [13, 14]), ([20, 21], [22])]], row_len=10)


def test_prefix_lm_is_the_packed_layout_unchanged() -> None:
    b = _batch()
    out = apply_objective(b, "prefix_lm")
    assert out.labels.tolist() == [[X, X, 13, 14, X, X, 22, X, X, X]]
    assert out.is_prefix.tolist() == [[True, True, True, False, False, True, True, False, False, False]]


def test_causal_response_keeps_labels_and_drops_the_prefix() -> None:
    b = _batch()
    out = apply_objective(b, "causal_response")
    assert out.labels.tolist() == b.labels.tolist()
    assert not out.is_prefix.any()
    assert out.input_ids.tolist() == b.input_ids.tolist() and out.doc_ids.tolist() == b.doc_ids.tolist()
    assert b.is_prefix.any()  # the input batch is not modified in place


def test_causal_full_labels_every_next_token_inside_each_example() -> None:
    b = _batch()
    out = apply_objective(b, "causal_full")
    # never across the example boundary (14 -> 20), never into or out of the padding
    assert out.labels.tolist() == [[11, 12, 13, 14, X, 21, 22, X, X, X]]
    assert not out.is_prefix.any()
    # the response labels of the response-only objective are a subset of the full-text labels
    resp = b.labels != X
    assert torch.equal(out.labels[resp], b.labels[resp])
    assert out.num_loss_tokens == 6 and b.num_loss_tokens == 3


def test_causal_full_with_a_row_filled_to_the_end() -> None:
    b = pack_rows([[([5, 6], [7, 8])]], row_len=4)
    assert apply_objective(b, "causal_full").labels.tolist() == [[6, 7, 8, X]]


def test_unknown_objective_is_refused_and_config_lists_the_same_names() -> None:
    with pytest.raises(ValueError, match="unknown objective"):
        apply_objective(_batch(), "bogus")
    assert typing.get_args(typing.get_type_hints(TrainConfig)["objective"]) == OBJECTIVES
    assert load_config(None, ["train.objective=causal_full"]).train.objective == "causal_full"
    with pytest.raises(ValueError, match="train.objective"):
        load_config(None, ["train.objective=causal"])
