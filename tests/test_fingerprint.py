"""Direct tests of ``harness.fingerprint``: each probe's classification of known behaviours.

The fingerprint suite gates on these answers (a detected value that contradicts the declaration
fails), so each classifier is pinned on the correct fixtures and on the planted bug that shows
each other answer (bottom-right causal, inverted polarity, ignored masks, NaN rows, a missing or
ignored scale, tiled GQA, split-K nondeterminism). ``fingerprint()`` itself is pinned for what it
does around the probes: entries outside the capabilities are ``unsupported`` and a kernel that
raises is reported, never propagated.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

from harness import fingerprint as F
from harness.contract import Capabilities, Implementation
from harness.fixtures import correct, planted, thirdparty


def impl(fn, name=None, caps=None):
    name = name or getattr(fn, "__name__", type(fn).__name__)
    caps = caps or getattr(fn, "capabilities", None) or getattr(fn, "__harness_capabilities__", Capabilities())
    return Implementation(name, name, fn, caps)


SDPA_LIKE = {
    "causal_alignment": "top_left",
    "mask_polarity": "true=keep",
    "fully_masked_rows": "zero",
    "default_scale": "1/sqrt(E)",
    "explicit_scale_honoured": True,
    "gqa_mapping": "interleave",
    "deterministic": True,
}


@pytest.mark.parametrize("fn", [correct.naive, correct.tiled_online, correct.float64])
def test_correct_kernels_have_the_sdpa_fingerprint(fn):
    assert F.fingerprint(impl(fn)) == SDPA_LIKE


def test_torch_sdpa_has_the_sdpa_fingerprint_except_where_torch_defines_otherwise():
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return Fn.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                               enable_gqa=enable_gqa)

    fp = F.fingerprint(impl(sdpa))
    # torch's own answer for a row with no visible key depends on the backend and version;
    # every other entry is the contract's definition.
    assert {k: v for k, v in fp.items() if k != "fully_masked_rows"} == \
        {k: v for k, v in SDPA_LIKE.items() if k != "fully_masked_rows"}
    assert fp["fully_masked_rows"] in ("zero", "nan")


PLANTED_FINGERPRINTS = [
    ("causal_bottom_right", {"causal_alignment": "bottom_right"}),
    ("causal_leaks_next", {"causal_alignment": "other: [[1, 1, 0, 0], [1, 1, 1, 0]]"}),
    ("inverted_bool_polarity", {"mask_polarity": "true=mask", "fully_masked_rows": "other"}),
    ("padding_mask_ignored", {"mask_polarity": "ignored", "fully_masked_rows": "other"}),
    ("bool_mask_added_as_float", {"mask_polarity": "ignored", "fully_masked_rows": "other"}),
    ("fully_masked_rows_nan", {"fully_masked_rows": "nan"}),
    ("missing_scale", {"default_scale": "1", "explicit_scale_honoured": False}),
    ("ignored_scale_arg", {"explicit_scale_honoured": False}),
    ("gqa_tiled", {"gqa_mapping": "tile"}),
    ("nondeterministic_split_k", {"deterministic": False}),
]


@pytest.mark.parametrize("name,differs", PLANTED_FINGERPRINTS, ids=[n for n, _ in PLANTED_FINGERPRINTS])
def test_planted_bugs_are_classified(name, differs):
    # the bug shows in its own entries only: the others keep the contract's answers
    assert F.fingerprint(impl(getattr(planted, name), name)) == {**SDPA_LIKE, **differs}


def test_is_causal_ignored_reads_as_none():
    def no_causal(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return Fn.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=enable_gqa)

    assert F.causal_alignment(impl(no_causal)) == "none"


def test_uniform_and_bottom_right_declarations_are_detected():
    assert F.fully_masked_rows(impl(correct.finfo_min_additive)) == "uniform"
    fp = F.fingerprint(impl(thirdparty.bottom_right_uniform_float64))
    assert (fp["causal_alignment"], fp["fully_masked_rows"]) == ("bottom_right", "uniform")


def test_gqa_mapping_other_names_what_each_head_read():
    def head0_only(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        H = q.shape[1]
        return Fn.scaled_dot_product_attention(q, k[:, :1].expand(-1, H, -1, -1), v[:, :1].expand(-1, H, -1, -1))

    assert F.gqa_mapping(impl(head0_only)) == "other: [0, 0, 0, 0]"


def test_capabilities_decide_which_entries_are_probed():
    fa = correct.FlashLayoutAdapter()
    fp = F.fingerprint(impl(fa, "flash_layout"))
    assert fp["mask_polarity"] == fp["fully_masked_rows"] == "unsupported"  # no dense masks declared
    assert fp["causal_alignment"] == "bottom_right" and fp["gqa_mapping"] == "interleave"
    # caps passed explicitly govern the selection, whatever the implementation carries
    fp = F.fingerprint(impl(correct.naive), caps=Capabilities(gqa=False, causal=None))
    assert fp["gqa_mapping"] == fp["causal_alignment"] == "unsupported"
    assert fp["default_scale"] == "1/sqrt(E)"
    # a self-attention-only kernel has no L != S alignment to detect
    assert F.fingerprint(impl(correct.naive, caps=Capabilities(cross_attention=False)))["causal_alignment"] == "unsupported"


def test_a_raising_kernel_is_reported_not_propagated():
    def boom(q, k, v, **kw):
        raise RuntimeError("boom")

    fp = F.fingerprint(impl(boom))
    assert set(fp) == set(SDPA_LIKE)
    assert all(v.startswith("error: ImplementationError: ") and "boom" in v for v in fp.values()), fp
    assert all(len(v) <= 200 for v in fp.values())


def test_a_kernel_that_supports_nothing_is_unsupported_everywhere():
    def nothing(q, k, v, **kw):
        raise NotImplementedError("CUDA only")

    assert set(F.fingerprint(impl(nothing)).values()) == {"unsupported"}


def test_probe_cases_are_inside_the_default_contract():
    # The gate tests report these cases as counterexamples: they must be what actually ran.
    for name, case in F.CASES.items():
        assert case.fit(Capabilities(), "float32", "cpu") == case, name
        assert F.case_for(name) == case
    assert F.case_for("default_scale", "bfloat16").dtype == "bfloat16"


def test_case_for_fits_to_the_capabilities_or_is_unsupported():
    got = F.case_for("default_scale", caps=Capabilities(head_dims=(8, 20)))
    assert (got.E, got.Ev) == (20, 8)  # E 16 -> the nearest allowed; Ev 8 is allowed as it is
    with pytest.raises(pytest.skip.Exception, match="unsupported: the deterministic probe"):
        F.case_for("deterministic", caps=Capabilities(max_seq_len=8))


def test_fully_masked_rows_names_both_shapes_when_they_differ():
    def nan_when_square(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        out = correct.naive(q, k, v, attn_mask, 0.0, is_causal, scale, enable_gqa)
        if q.shape[-2] == k.shape[-2]:
            out = torch.where(out == 0, torch.full_like(out, float("nan")), out)
        return out

    assert F.fully_masked_rows(impl(nan_when_square)) == "zero (L=2, S=3), nan (L=3, S=3)"
    # fitted to L == S, both probes are the same shape: probed once
    assert F.fully_masked_rows(impl(nan_when_square, caps=Capabilities(cross_attention=False))) == "nan"
