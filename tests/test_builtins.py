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
