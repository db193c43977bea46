"""Built-in implementations, addressed by name in spec strings."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from harness.contract import Capabilities, Implementation, LoadError
from harness.reference import attention_reference


def _reference(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    if dropout_p:
        raise NotImplementedError("the reference has no dropout")
    out = attention_reference(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                              scale=scale, enable_gqa=enable_gqa)
    return out.to(query.dtype)


def _sdpa_has_gqa() -> bool:
    # enable_gqa arrived in torch 2.5; the package supports torch>=2.4.
    try:
        F.scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 8),) * 3, enable_gqa=False)
        return True
    except TypeError:
        return False


SDPA_HAS_GQA = _sdpa_has_gqa()


def _sdpa() -> Callable:
    if SDPA_HAS_GQA:
        return F.scaled_dot_product_attention

    def sdpa_without_gqa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
        if enable_gqa:
            raise NotImplementedError("this torch's SDPA has no enable_gqa (torch < 2.5)")
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)

    return sdpa_without_gqa


def _sdpa_backend(backend_name: str) -> Callable:
    sdpa = _sdpa()

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    fn.__name__ = f"sdpa_{backend_name.lower()}"
    return fn


def _flex(compiled: bool) -> Callable:
    """FlexAttention with the dense SDPA mask expressed as a score_mod (bool: -inf where False;
    float: added) and is_causal as a mask_mod-style score_mod."""
    state = {}

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        from torch.nn.attention.flex_attention import flex_attention

        if dropout_p:
            raise NotImplementedError("FlexAttention has no dropout")
        if attn_mask is not None and is_causal:
            raise ValueError("pass either attn_mask or is_causal, not both")
        if compiled and "fa" not in state:
            state["fa"] = torch.compile(flex_attention, dynamic=False)
        fa = state.get("fa", flex_attention)
        B, H, L, _ = query.shape
        S = key.shape[-2]
        score_mod = None
        if attn_mask is not None:
            m = attn_mask
            while m.dim() < 4:
                m = m.unsqueeze(0)
            m = m.expand(B, H, L, S)
            if m.dtype == torch.bool:
                score_mod = lambda s, b, h, qi, ki: torch.where(m[b, h, qi, ki], s, -float("inf"))
            else:
                score_mod = lambda s, b, h, qi, ki: s + m[b, h, qi, ki].to(s.dtype)
        elif is_causal:
            score_mod = lambda s, b, h, qi, ki: torch.where(ki <= qi, s, -float("inf"))
        out = fa(query, key, value, score_mod=score_mod, scale=scale, enable_gqa=enable_gqa)
        # Flex returns NaN-free zeros for rows with no visible key, matching the reference.
        return out

    return fn


def _flex_reason() -> Optional[str]:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return f"needs torch.nn.attention.flex_attention (torch >= 2.5; this is {torch.__version__})"
    return None


def _cuda_reason() -> Optional[str]:
    return None if torch.cuda.is_available() else "needs CUDA (torch.cuda.is_available() is False)"


def _backend_reason(name: str) -> Optional[str]:
    r = _cuda_reason()
    if r:
        return r
    flags = {"FLASH_ATTENTION": torch.backends.cuda.flash_sdp_enabled,
             "EFFICIENT_ATTENTION": torch.backends.cuda.mem_efficient_sdp_enabled,
             "CUDNN_ATTENTION": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)}
    if not flags[name]():
        return f"{name} backend disabled in this torch build"
    return None


# name -> (factory, capabilities, description, availability reason or None)
_CPU_CUDA = ("cpu", "cuda")
_GPU_HALF = ("bfloat16", "float16")
BUILTINS: dict = {
    "reference": (lambda: _reference, Capabilities(autograd=False),
                  "float64 chunked online-softmax reference (harness.reference)", lambda: None),
    "sdpa": (_sdpa, Capabilities(gqa=SDPA_HAS_GQA),
             "torch.nn.functional.scaled_dot_product_attention, default dispatch", lambda: None),
    "sdpa-math": (lambda: _sdpa_backend("MATH"), Capabilities(gqa=SDPA_HAS_GQA),
                  "SDPA restricted to the MATH backend", lambda: None),
    "flex": (lambda: _flex(compiled=torch.cuda.is_available()),
             Capabilities(autograd=torch.cuda.is_available()),
             "torch FlexAttention (eager on CPU: no backward there; torch.compile on CUDA)", _flex_reason),
    # flash_attn_func's convention (contract.FLASH_BUILTINS): checked by the flash suites too
    "flex-flash": (lambda: __import__("harness.flash.flex", fromlist=["make"]).make(),
                   Capabilities(autograd=torch.cuda.is_available(), causal="bottom_right", window=True, softcap=True,
                                alibi=True, sinks=True, lse=True),
                   "torch FlexAttention behind flash_attn_func's signature (windows, soft-cap, ALiBi, sinks, LSE)",
                   _flex_reason),
    "sdpa-flash": (lambda: _sdpa_backend("FLASH_ATTENTION"),
                   Capabilities(devices=("cuda",), dtypes=_GPU_HALF, max_head_dim=256, value_dim_differs=False,
                                mask_kinds=("none",)),
                   "SDPA FLASH_ATTENTION backend (CUDA, fp16/bf16, no dense masks)",
                   lambda: _backend_reason("FLASH_ATTENTION")),
    "sdpa-efficient": (lambda: _sdpa_backend("EFFICIENT_ATTENTION"), Capabilities(devices=("cuda",), gqa=SDPA_HAS_GQA),
                       "SDPA EFFICIENT_ATTENTION backend (CUDA)", lambda: _backend_reason("EFFICIENT_ATTENTION")),
    "sdpa-cudnn": (lambda: _sdpa_backend("CUDNN_ATTENTION"),
                   Capabilities(devices=("cuda",), dtypes=_GPU_HALF, max_head_dim=128, value_dim_differs=False,
                                gqa=False),
                   "SDPA CUDNN_ATTENTION backend (CUDA, fp16/bf16)", lambda: _backend_reason("CUDNN_ATTENTION")),
}


def available() -> list[tuple[str, bool, str]]:
    """(name, available here, description or the reason it is not)."""
    rows = []
    for name, (_, _, desc, reason) in BUILTINS.items():
        r = reason()
        rows.append((name, r is None, desc if r is None else r))
    return rows


def get(name: str) -> Implementation:
    factory, caps, desc, reason = BUILTINS[name]
    r = reason()
    if r is not None:
        raise LoadError(f"{name}: not available on this machine: {r}")
    return Implementation(name=name, spec=name, fn=factory(), capabilities=caps, description=desc)
