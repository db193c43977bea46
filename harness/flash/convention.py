"""flash-attn 2.x's call conventions: which function a kernel is written to, how it is called,
and the SDPA-shaped view of it through which every SDPA suite runs on it.

Which of the three is read from the parameters: ``cu_seqlens_q`` -> ``flash_attn_varlen_func``,
``k_cache`` -> ``flash_attn_with_kvcache``, otherwise ``flash_attn_func``. The harness calls with
flash_attn's own keywords and passes a variant's keyword only when the case uses it (a kernel
written to the public signature accepts all of them): ``softmax_scale``, ``causal``,
``window_size``, ``softcap``, ``alibi_slopes``, ``learnable_sink`` (FlashAttention-3/4's name),
``q_descale``/``k_descale``/``v_descale``, ``num_splits``, and ``return_attn_probs=True``
(func, varlen) or ``return_softmax_lse=True`` (kvcache) when it reads the LSE.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from harness.contract import Adapter, Capabilities, Implementation, LoadError

MODE_NAMES = {"func": "flash_attn_func", "varlen": "flash_attn_varlen_func", "kvcache": "flash_attn_with_kvcache"}
REQUIRED = {"func": ("q", "k", "v"), "varlen": ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"),
            "kvcache": ("q", "k_cache", "v_cache")}
# The keyword each declared variant is passed by.
VARIANT_PARAMS = {"window": "window_size", "softcap": "softcap", "alibi": "alibi_slopes",
                  "sinks": "learnable_sink", "num_splits": "num_splits", "paged": "block_table",
                  "cache_append": "k"}


def parameters(fn: Callable) -> list:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def mode_of(fn: Callable) -> str:
    """``func``, ``varlen`` or ``kvcache``, read from the function's parameter names."""
    params = parameters(fn)
    if "cu_seqlens_q" in params:
        return "varlen"
    if "k_cache" in params:
        return "kvcache"
    return "func"


def check_signature(fn: Callable, mode: str, caps: Capabilities, spec: str) -> None:
    """A load error naming the parameter that a declared feature needs and the function lacks."""
    params = parameters(fn)
    if not params or any(p for p in params if inspect.signature(fn).parameters[p].kind == inspect.Parameter.VAR_KEYWORD):
        return  # **kwargs or no signature to read: the calls will tell
    need = list(REQUIRED[mode]) + ["softmax_scale", "causal"]
    for field, name in VARIANT_PARAMS.items():
        if getattr(caps, field):
            need.append(name)
    if caps.lse:
        need.append("return_softmax_lse" if mode == "kvcache" else "return_attn_probs")
    if caps.fp8:
        need += ["q_descale", "k_descale", "v_descale"]
    missing = [p for p in need if p not in params]
    if missing:
        raise LoadError(f"{spec}: written to {MODE_NAMES[mode]} (read from its parameters) but has no parameter "
                        f"{', '.join(missing)}; declare only the variants it takes, with flash_attn's names")


@dataclass
class FlashKernel:
    """A kernel in its own convention, as the flash suites call it."""

    fn: Callable
    mode: str
    caps: Capabilities
    name: str

    @property
    def convention(self) -> str:
        return MODE_NAMES[self.mode]


def sdpa_capabilities(caps: Capabilities, mode: str) -> Capabilities:
    """What the SDPA view can express: no dense masks (flash_attn takes none), causal aligned
    bottom-right, fully masked rows zero; no autograd through a KV cache."""
    return caps.replace(mask_kinds=("none",), causal=caps.causal and "bottom_right", fully_masked_rows="zero",
                        autograd=caps.autograd and mode != "kvcache")


class FlashAsSdpa(Adapter):
    """The SDPA contract on top of a flash_attn-convention kernel: (B, H, L, E) <-> (B, L, H, E),
    a batch packed for varlen, a cache of exactly S keys for kvcache. Dense masks are not
    expressible (NotImplementedError: those cases are unsupported)."""

    def __init__(self, kernel: FlashKernel):
        self.kernel = kernel
        self.capabilities = sdpa_capabilities(kernel.caps, kernel.mode)
        self.name = kernel.name

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        if attn_mask is not None:
            raise NotImplementedError(f"{self.kernel.convention} takes no dense attn_mask")
        if key.shape[1] != query.shape[1] and not enable_gqa:
            raise NotImplementedError("different head counts without enable_gqa")
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, L, H, E)
        kw = {"softmax_scale": scale, "causal": bool(is_causal)}
        B, L, H, _ = q.shape
        S = k.shape[1]
        if self.kernel.mode == "varlen":
            cu_q = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=q.device)
            cu_k = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=q.device)
            out = self.kernel.fn(q=q.reshape(B * L, H, -1), k=k.reshape(B * S, k.shape[2], -1),
                                 v=v.reshape(B * S, v.shape[2], -1), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                 max_seqlen_q=L, max_seqlen_k=S, **kw)
            out = _first(out).reshape(B, L, H, -1)
        elif self.kernel.mode == "kvcache":
            seqlens = torch.full((B,), S, dtype=torch.int32, device=q.device)
            if self.kernel.caps.paged:  # one page of S slots per sequence: a paged-only kernel reads it too
                kw["block_table"] = torch.arange(B, dtype=torch.int32, device=q.device).view(B, 1)
            out = _first(self.kernel.fn(q=q, k_cache=k.contiguous().clone(), v_cache=v.contiguous().clone(),
                                        cache_seqlens=seqlens, **kw))
        else:
            out = _first(self.kernel.fn(q=q, k=k, v=v, **kw))
        return out.transpose(1, 2)


def _first(r):
    return r[0] if isinstance(r, (tuple, list)) else r


def implementation(impl: Implementation) -> Implementation:
    """``impl`` (loaded from a spec) seen as a flash_attn-convention kernel: ``native`` for the
    flash suites, an SDPA view as ``fn`` for the rest."""
    fn = impl.fn
    mode = mode_of(fn)
    caps = impl.capabilities
    if not impl.declared:  # flash_attn's own defaults: bottom-right causal, the rest undeclared
        caps = caps.replace(causal="bottom_right")
    elif caps.causal == "top_left":
        caps = caps.replace(causal="bottom_right")  # the default field value; flash_attn is bottom-right
    check_signature(fn, mode, caps, impl.spec)
    kernel = FlashKernel(fn, mode, caps, impl.name)
    view = FlashAsSdpa(kernel)
    return Implementation(name=impl.name, spec=impl.spec, fn=view, capabilities=view.capabilities,
                          description=impl.description or f"{MODE_NAMES[mode]} convention", declared=impl.declared,
                          api="flash_attn", native=kernel)
