"""The implementation contract: what the harness may call, and what it may ask of it.

Every implementation is seen by the harness as a callable with exactly torch SDPA's signature
and semantics::

    fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
       enable_gqa=False)

plus a :class:`Capabilities` record that says which cases may be generated for it. Kernels with
other conventions are wrapped in an adapter (see :class:`Adapter`) that translates the call and
declares what it supports; cases outside the declaration are reported ``unsupported``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

ALL_DTYPES = ("float32", "bfloat16", "float16")
ALL_MASK_KINDS = ("none", "bool", "float")
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
# Call conventions a kernel may be written to: torch SDPA's (the default) and flash-attn 2.x's
# public functions (harness.flash.convention reads which of its three from the parameters).
APIS = ("sdpa", "flash_attn")
# Built-in names written to flash_attn's convention (harness.builtins): no @flash_attn needed.
FLASH_BUILTINS = ("flex-flash",)


def split_api(spec: str) -> tuple:
    """``"file.py:fn@flash_attn"`` -> ``("file.py:fn", "flash_attn")``; no suffix: the SDPA contract.
    (A string function: the command line reads it before anything heavy is imported.)"""
    base, sep, api = spec.rpartition("@")
    if sep and api in APIS:
        return base, api
    return spec, "flash_attn" if spec in FLASH_BUILTINS else "sdpa"


def with_api(spec: str, api: str) -> str:
    """``spec`` naming its call convention (unchanged for the SDPA contract or when it already does)."""
    if api in (None, "sdpa") or split_api(spec)[1] != "sdpa":
        return spec
    return f"{spec}@{api}"


class LoadError(Exception):
    """A spec string could not be turned into an implementation (CLI exit status 2)."""


class Unsupported(NotImplementedError):
    """Raised by the harness (or an implementation) for a case outside the declared contract."""


@dataclass(frozen=True)
class Capabilities:
    """What an implementation declares it can do. The generators only draw cases inside it.

    ``causal`` is the alignment of ``is_causal=True`` when L != S: ``"top_left"`` (torch SDPA,
    ``tril``) or ``"bottom_right"`` (FlashAttention >= 2.1), or ``None`` when ``is_causal`` is not
    supported at all. ``fully_masked_rows`` is the declared output for a query row with no visible
    key: ``"zero"`` (the reference's definition), ``"uniform"`` (finfo.min additive masking) or
    ``None`` (undefined: such rows are never generated except by the fingerprint, which only
    reports what it sees). ``cross_attention=False`` declares a self-attention-only kernel: every
    case has L == S.
    """

    devices: tuple = ("cpu", "cuda")
    dtypes: tuple = ALL_DTYPES
    head_dims: Optional[tuple] = None  # None: any head dim up to max_head_dim
    max_head_dim: Optional[int] = None
    value_dim_differs: bool = True  # Ev != E allowed
    mask_kinds: tuple = ALL_MASK_KINDS
    causal: Optional[str] = "top_left"
    gqa: bool = True
    autograd: bool = True
    max_seq_len: Optional[int] = None
    fully_masked_rows: Optional[str] = "zero"
    deterministic: bool = True
    cross_attention: bool = True  # False: self-attention only, L == S (vision transformers)
    # Variants of flash_attn-convention kernels (see harness.flash): each False/empty means not
    # supported, and its cases are reported unsupported, never pass.
    window: bool = False  # window_size=(left, right), FlashAttention's meaning
    softcap: bool = False  # softcap > 0: cap * tanh(score / cap) on the scaled score
    alibi: bool = False  # alibi_slopes (H,) or (B, H): bias -slope * |i + S - L - j|
    sinks: bool = False  # learnable_sink (H,): a logit per head in the denominator, no value
    lse: bool = False  # returns the natural-log LSE per row (return_attn_probs / return_softmax_lse)
    empty_row_lse: str = "-inf"  # LSE of a row with no visible key: "-inf" or "+inf" (FA2's CUDA kernels)
    fp8: tuple = ()  # FP8 input dtypes taken with per-tensor q/k/v_descale
    paged: bool = False  # block_table with k_cache/v_cache (num_blocks, page_size, Hkv, E)
    cache_append: bool = False  # new k, v appended into the cache in place
    num_splits: bool = False  # num_splits > 1 (split-KV decode) accepted
    page_sizes: Optional[tuple] = None  # None: any page size

    def __post_init__(self):
        if self.causal not in (None, "top_left", "bottom_right"):
            raise ValueError(f"causal must be 'top_left', 'bottom_right' or None, not {self.causal!r}")
        bad = set(self.dtypes) - set(ALL_DTYPES)
        if bad:
            raise ValueError(f"unknown dtypes {sorted(bad)}; known: {ALL_DTYPES}")
        bad = set(self.mask_kinds) - set(ALL_MASK_KINDS)
        if bad:
            raise ValueError(f"unknown mask kinds {sorted(bad)}; known: {ALL_MASK_KINDS}")
        bad = set(self.fp8) - set(FP8_DTYPES)
        if bad:
            raise ValueError(f"unknown fp8 dtypes {sorted(bad)}; known: {FP8_DTYPES}")
        if self.empty_row_lse not in ("-inf", "+inf"):
            raise ValueError(f"empty_row_lse must be '-inf' or '+inf', not {self.empty_row_lse!r}")

    def replace(self, **kw) -> "Capabilities":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def head_dim_ok(self, e: int) -> bool:
        if self.head_dims is not None and e not in self.head_dims:
            return False
        return self.max_head_dim is None or e <= self.max_head_dim

    def why_not(self, *, device=None, dtype=None, mask_kind=None, is_causal=False, gqa=False,
                autograd=False, seq_len=None, head_dim=None, value_dim_differs=False,
                fully_masked_rows=False, cross=False) -> Optional[str]:
        """The reason a case is outside this contract, or None when it is inside."""
        if device is not None and device not in self.devices:
            return f"device {device} not in {list(self.devices)}"
        if dtype is not None and dtype not in self.dtypes:
            return f"dtype {dtype} not in {list(self.dtypes)}"
        if mask_kind is not None and mask_kind not in self.mask_kinds:
            return f"{mask_kind} masks not supported"
        if is_causal and self.causal is None:
            return "is_causal not supported"
        if gqa and not self.gqa:
            return "GQA not supported"
        if autograd and not self.autograd:
            return "no autograd support declared"
        if seq_len is not None and self.max_seq_len is not None and seq_len > self.max_seq_len:
            return f"sequence length {seq_len} > max {self.max_seq_len}"
        if head_dim is not None and not self.head_dim_ok(head_dim):
            return f"head dim {head_dim} not supported"
        if value_dim_differs and not self.value_dim_differs:
            return "Ev != E not supported"
        if fully_masked_rows and self.fully_masked_rows is None:
            return "fully masked rows are undefined for this implementation"
        if cross and not self.cross_attention:
            return "self-attention only (L == S): cross-attention not supported"
        return None


def capabilities(**kw) -> Callable:
    """Decorator declaring a plain callable's capabilities::

        @harness.capabilities(dtypes=("float32",), autograd=False)
        def my_attention(query, key, value, attn_mask=None, ...): ...
    """

    caps = Capabilities(**kw)

    def deco(fn):
        fn.__harness_capabilities__ = caps
        return fn

    return deco


class Adapter:
    """Base class for kernels with other conventions.

    Subclasses set ``capabilities`` and implement ``__call__`` with the SDPA signature, translating
    layouts, causal alignment, masks or varlen inputs into the kernel's own call. Raise
    ``NotImplementedError`` for anything the kernel cannot express: the harness records the case
    as ``unsupported``.
    """

    capabilities: Capabilities = Capabilities()
    name: Optional[str] = None

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, enable_gqa=False):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Implementation:
    name: str
    spec: str
    fn: Callable
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""
    declared: bool = True  # False: a plain callable that declared nothing (the default contract)
    # For a kernel written to another call convention (api "flash_attn"): fn is the SDPA-shaped
    # adapter the SDPA suites call, native the kernel in its own convention (harness.flash).
    api: str = "sdpa"
    native: Optional[object] = None

    def __call__(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        # The harness always calls with keywords and dropout_p=0.0: the contract is SDPA's.
        return self.fn(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal,
                       scale=scale, enable_gqa=enable_gqa)


def declaration_hint(impl, **fields) -> str:
    """What to write so that the behaviour just seen is inside the contract, for a failure
    message: a plain callable that declared nothing gets the one-line decorator to add (it never
    declared what it is held to), a declared one the fields to change."""
    args = ", ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v!r}" for k, v in fields.items())
    if isinstance(impl.fn, Adapter):
        return f"if that is intended, declare it on the adapter: capabilities = Capabilities(..., {args})"
    if not getattr(impl, "declared", True):
        return (f"{impl.name} declares no capabilities, so it is held to the default contract; if that is "
                f"intended, declare it with @harness.capabilities({args})")
    return f"its declared capabilities say otherwise; if that is intended, declare {args}"
