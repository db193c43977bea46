"""The float64 reference against a direct formula, hand-worked values and its memory bound."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.reference import (attention_naive, attention_reference, attention_weights_reference,
                               causal_bool)


def test_exercise1_two_token_sequence_by_hand():
    """Seed exercise 1: scaled dot-product attention for a two-token sequence, E = 2.

    Q = K = I (2x2), V = [[1, 2], [3, 4]], scale 1/sqrt(2):
      scores = [[0.70711, 0], [0, 0.70711]]
      row 0: exp(0.70711) = 2.02811, weights = [2.02811, 1] / 3.02811 = [0.66976, 0.33024]
             out = 0.66976 * [1, 2] + 0.33024 * [3, 4] = [1.66048, 2.66048]
      row 1: weights = [0.33024, 0.66976], out = [2.33952, 3.33952]
    """
    q = torch.eye(2).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    out = attention_reference(q, q, v)
    want = torch.tensor([[1.66048, 2.66048], [2.33952, 3.33952]], dtype=torch.float64)
    assert torch.allclose(out[0, 0], want, atol=1e-4)
    w = attention_weights_reference(q, q)
    assert torch.allclose(w[0, 0], torch.tensor([[0.66976, 0.33024], [0.33024, 0.66976]], dtype=torch.float64), atol=1e-4)
    # Exercise 2 by hand: with a causal mask token 0 sees only itself.
    out_c = attention_reference(q, q, v, is_causal=True)
    assert torch.allclose(out_c[0, 0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(out_c[0, 0, 1], want[1], atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
@pytest.mark.parametrize("masking", ["none", "bool", "float", "causal", "causal_br"])
def test_chunked_matches_direct_formula(chunk, masking):
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, L, S, E, Ev = 2, 4, 2, 5, 11, 8, 6
    q = torch.randn(B, H, L, E, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, S, E, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, Hkv, S, Ev, generator=g, dtype=torch.float64)
    kw = dict(enable_gqa=True, scale=0.37)
    if masking == "bool":
        kw["attn_mask"] = torch.rand(B, 1, L, S, generator=g) > 0.3
    elif masking == "float":
        kw["attn_mask"] = torch.randn(1, H, 1, S, generator=g, dtype=torch.float64)
    elif masking.startswith("causal"):
        kw["is_causal"] = True
    align = "bottom_right" if masking == "causal_br" else "top_left"
    got = attention_reference(q, k, v, chunk=chunk, causal_alignment=align, **kw)
    want = attention_naive(q, k, v, causal_alignment=align, **kw)
    assert torch.allclose(got, want, atol=1e-12)


def test_fully_masked_row_is_zero_and_lse_is_minus_inf():
    q = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False], [False, False], [True, True]])
    out, lse = attention_reference(q, q[:, :, :2], q[:, :, :2], attn_mask=mask, return_lse=True)
    assert torch.equal(out[0, 0, 1], torch.zeros(4, dtype=torch.float64))
    assert lse[0, 0, 1] == float("-inf") and torch.isfinite(lse[0, 0, [0, 2]]).all()


def test_masks_before_softmax_with_huge_forbidden_logits():
    """A forbidden key with a logit of 1e6 gets exactly zero weight (mask before softmax)."""
    q = torch.ones(1, 1, 1, 2)
    k = torch.tensor([[1.0, 1.0], [1e6, 1e6]]).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 1.0], [99.0, 99.0]]).view(1, 1, 2, 2)
    out = attention_reference(q, k, v, attn_mask=torch.tensor([[True, False]]))
    assert torch.equal(out[0, 0, 0], torch.ones(2, dtype=torch.float64))


def test_nan_in_masked_value_slot_does_not_reach_the_reference():
    q = torch.randn(1, 1, 2, 4)
    k = torch.randn(1, 1, 3, 4)
    v = torch.randn(1, 1, 3, 4)
    v[0, 0, 2] = float("nan")
    out = attention_reference(q, k, v, attn_mask=torch.tensor([[True, True, False], [True, True, True]]))
    assert torch.isfinite(out[0, 0, 0]).all() and torch.isnan(out[0, 0, 1]).all()


def test_causal_alignments():
    assert causal_bool(2, 4).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]
    assert causal_bool(2, 4, "bottom_right").int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_32k_reference_streams_keys_without_the_score_matrix():
    """L=2048, S=32768: the float64 score matrix alone would be 512 MiB; the chunked reference
    must stay far below that (peak RSS measured in a fresh process)."""
    code = textwrap.dedent("""
        import resource, torch
        from harness.reference import attention_reference
        torch.manual_seed(0)
        q = torch.randn(1, 1, 2048, 16); k = torch.randn(1, 1, 32768, 16); v = torch.randn(1, 1, 32768, 16)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = attention_reference(q, k, v, is_causal=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(out).all()
        print((after - before) / 1024)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew_mib = float(r.stdout.strip().splitlines()[-1])
    assert grew_mib < 200, f"reference grew RSS by {grew_mib:.0f} MiB: it materialises the scores"
