"""Mask policies: composition, rendering and round-trips through their one-line specs."""

import pytest
import torch

from harness import masks as M


def test_and_or_compose_like_flex_attention():
    sw = M.and_masks(M.causal(), M.sliding_window(2))
    d = M.render(sw, 1, 1, 4, 4)[0, 0].int().tolist()
    assert d == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    pl = M.prefix_lm(2)
    assert M.render(pl, 1, 1, 4, 4)[0, 0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert M.render(M.or_masks(M.causal(), M.not_mask(M.causal())), 1, 1, 3, 3).all()


@pytest.mark.parametrize("spec", [
    "causal()", "key_padding([2, 3])", "document([2, 3])", "prefix_lm(2)", "sliding_window(3)",
    "rag(1, [2, 2], 1)", 'chat_roles([["system", 2], ["delim", 1], ["tool", 2]])', "shared_prefix(2, [1, 2])",
    "and_masks(causal(), sliding_window(2))",
])
def test_specs_round_trip(spec):
    p = M.from_spec(spec)
    assert M.from_spec(p.spec) == p
    n = p.length or 5
    assert torch.equal(M.render(p, 2, 2, n, n), M.render(M.from_spec(p.spec), 2, 2, n, n))


def test_document_packing_is_block_diagonal_causal():
    d = M.render(M.document([2, 2]), 1, 1, 4, 4)[0, 0].int().tolist()
    assert d == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


def test_rag_chunks_are_isolated_and_the_question_sees_all():
    d = M.render(M.rag(1, [2, 2], 1), 1, 1, 6, 6)[0, 0]
    assert not d[3:5, 1:3].any()  # chunk 2 never reads chunk 1
    assert d[5].all()  # the question reads everything before it


def test_untrusted_turns_never_read_the_system_prompt_even_through_delimiters():
    p = M.chat_roles([["system", 2], ["user", 1], ["delim", 1], ["tool", 2], ["assistant", 1]])
    d = M.render(p, 1, 1, 7, 7)[0, 0]
    assert not d[3:6, 0:3].any()  # delimiter opening the tool turn and the tool turn see no trusted token
    assert d[6].all()  # the assistant sees everything


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mask policy"):
        M.from_spec("nope(1)")
