"""Built-ins on older torch: what the package promises for torch>=2.4 without a 2.4 wheel here."""

import pytest
import torch

from harness import builtins


def test_sdpa_without_enable_gqa_declares_it_unsupported(monkeypatch):
    # torch 2.4's SDPA has no enable_gqa: the wrapper must drop the argument, and GQA cases must be
    # unsupported (NotImplementedError) rather than a TypeError that would read as a kernel error.
    monkeypatch.setattr(builtins, "SDPA_HAS_GQA", False)
    real = torch.nn.functional.scaled_dot_product_attention

    def old_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

    monkeypatch.setattr(builtins.F, "scaled_dot_product_attention", old_sdpa)
    fn = builtins._sdpa()
    q = torch.randn(1, 2, 3, 8)
    assert torch.equal(fn(q, q, q, enable_gqa=False), real(q, q, q))
    with pytest.raises(NotImplementedError):
        fn(q, q[:, :1], q[:, :1], enable_gqa=True)


def test_flex_availability_reason_names_the_missing_module(monkeypatch):
    import builtins as py

    real_import = py.__import__

    def no_flex(name, *a, **kw):
        if name.startswith("torch.nn.attention.flex_attention"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(py, "__import__", no_flex)
    assert "flex_attention" in builtins._flex_reason()


def test_sdpa_nonpositive_scale_declaration_stays_measured():
    """The `sdpa` built-in declares scales <= 0 outside its contract because torch's default CPU
    dispatch returns NaN rows for is_causal at scale 0 or below (the math path is right). When a
    torch release fixes it this test fails: drop the declaration then."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 16, generator=g) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        right = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.0)
    assert torch.isfinite(right).all()
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.0)
    assert torch.isnan(got).any(), "torch's default SDPA is right at scale 0 now: remove nonpositive_scale=False"
    assert builtins.BUILTINS["sdpa"][1].nonpositive_scale is False
    assert builtins.BUILTINS["sdpa-math"][1].nonpositive_scale is True
