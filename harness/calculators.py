"""Back-of-envelope calculators for attention: KV-cache memory and prefill/decode cost.

These back the seed lesson's exercise 6 (KV-cache bytes for a small model), exercise 8
(compare prefill and decode attention cost) and common mistake 8 (underestimating
KV-cache memory).

Everything here is arithmetic on shapes; nothing touches a GPU. The numbers are
*attention only* (QK^T and PV plus the unavoidable Q/K/V/O traffic). Projections, MLPs,
softmax exponentials, masking and kernel overheads are deliberately left out, so the
times reported are lower bounds from a simple roofline, not predictions.

Public API
----------
- ``bytes_per_element(dtype) -> int``
- ``kv_cache_bytes(layers, kv_heads, head_dim, seq, batch, dtype) -> int``
- ``attention_cost(heads, kv_heads, head_dim, seq, batch, dtype, causal=True, device=None)
  -> AttentionCost`` (``.prefill`` and ``.decode`` are ``WorkloadCost``)
- ``attention_flops(B, H, L, S, D, causal=False) -> int`` (also what ``attn-harness bench`` counts)
- ``roofline(flops, bytes_moved, device) -> (bound, time_s)``
- ``DEVICES`` / ``get_device(name)`` -> ``DevicePeak``
- ``MODELS`` / ``get_model(name)`` -> ``ModelPreset``
- The ``kv-cache`` and ``cost`` subcommands live in :mod:`harness.cli.cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

__all__ = [
    "DTYPE_BYTES",
    "DevicePeak",
    "DEVICES",
    "ModelPreset",
    "MODELS",
    "WorkloadCost",
    "AttentionCost",
    "bytes_per_element",
    "kv_cache_bytes",
    "attention_cost",
    "attention_flops",
    "roofline",
    "get_device",
    "get_model",
    "KV_CACHE_FORMULA",
    "PREFILL_FLOPS_FORMULA",
    "DECODE_FLOPS_FORMULA",
    "PREFILL_BYTES_FORMULA",
    "DECODE_BYTES_FORMULA",
]

# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "float8": 1,
    "fp8": 1,
    "int8": 1,
}


def bytes_per_element(dtype: object) -> int:
    """Bytes per element for a dtype name (``"bf16"``, ``"float32"``, ...) or a torch dtype.

    Accepts ``torch.bfloat16`` too (via its string form ``"torch.bfloat16"``).
    Raises ``ValueError`` for anything unknown.
    """
    key = str(dtype).strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    if key.startswith("float8"):  # torch.float8_e4m3fn, float8_e5m2, ...
        key = "float8"
    try:
        return DTYPE_BYTES[key]
    except KeyError:
        known = ", ".join(sorted(DTYPE_BYTES))
        raise ValueError(f"unknown dtype {dtype!r}; known: {known}") from None


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")


# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePeak:
    """Peak throughput of a device: dense matmul TFLOP/s (at bf16 unless noted) and TB/s."""

    name: str
    tflops: float
    tbps: float
    note: str = ""

    @property
    def flops_per_s(self) -> float:
        return self.tflops * 1e12

    @property
    def bytes_per_s(self) -> float:
        return self.tbps * 1e12

    @property
    def ridge(self) -> float:
        """Ridge point in FLOP/byte: intensities above it are compute-bound."""
        return self.flops_per_s / self.bytes_per_s


# Datasheet peaks (decimal units: 1 TFLOP/s = 1e12 FLOP/s, 1 TB/s = 1e12 B/s).
DEVICES: dict[str, DevicePeak] = {
    "h100-sxm": DevicePeak("h100-sxm", 989.0, 3.35, "NVIDIA H100 SXM5 80GB, bf16 dense, HBM3"),
    "h200": DevicePeak("h200", 989.0, 4.8, "NVIDIA H200 SXM 141GB, bf16 dense, HBM3e"),
    "a100-80gb": DevicePeak("a100-80gb", 312.0, 2.04, "NVIDIA A100 80GB SXM, bf16 dense, HBM2e"),
    "l4": DevicePeak("l4", 121.0, 0.3, "NVIDIA L4 24GB, bf16 dense, GDDR6"),
    "cpu-2core": DevicePeak(
        "cpu-2core",
        0.1,
        0.02,
        "rough placeholder for a 2-core CPU VM, not a measurement; order of magnitude only",
    ),
}


@dataclass(frozen=True)
class ModelPreset:
    """Attention shape of a published model, written out by hand from its config."""

    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    note: str = ""


MODELS: dict[str, ModelPreset] = {
    # num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size / heads
    "llama-3-8b": ModelPreset("llama-3-8b", 32, 32, 8, 128, "hidden 4096, GQA 4:1"),
    "llama-3-70b": ModelPreset("llama-3-70b", 80, 64, 8, 128, "hidden 8192, GQA 8:1"),
    "mistral-7b": ModelPreset("mistral-7b", 32, 32, 8, 128, "hidden 4096, GQA 4:1"),
    "gpt2": ModelPreset("gpt2", 12, 12, 12, 64, "n_embd 768, MHA"),
    "all-minilm-l6-v2": ModelPreset(
        "all-minilm-l6-v2",
        6,
        12,
        12,
        32,
        "hidden 384, MHA; an encoder, so it keeps no KV cache in practice (figure is hypothetical)",
    ),
}


def _lookup(table: dict, kind: str, name: str):
    key = str(name).strip().lower()
    try:
        return table[key]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} preset {name!r}; known: {known}") from None


def get_device(name: Union[str, DevicePeak]) -> DevicePeak:
    if isinstance(name, DevicePeak):
        return name
    return _lookup(DEVICES, "device", name)


def get_model(name: Union[str, ModelPreset]) -> ModelPreset:
    if isinstance(name, ModelPreset):
        return name
    return _lookup(MODELS, "model", name)


# --------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------

KV_CACHE_FORMULA = "2 (K and V) x layers x batch x seq x kv_heads x head_dim x bytes_per_element"


def kv_cache_bytes(
    layers: int, kv_heads: int, head_dim: int, seq: int, batch: int, dtype: object
) -> int:
    """Bytes held by the K and V caches: 2 * layers * batch * seq * kv_heads * head_dim * bpe."""
    _check_positive(layers=layers, kv_heads=kv_heads, head_dim=head_dim, seq=seq, batch=batch)
    return 2 * layers * batch * seq * kv_heads * head_dim * bytes_per_element(dtype)


# --------------------------------------------------------------------------------------
# attention cost
# --------------------------------------------------------------------------------------

PREFILL_FLOPS_FORMULA = "4*B*H*L*S*D (QK^T 2*B*H*L*S*D + PV 2*B*H*L*S*D), L = S = seq"
PREFILL_FLOPS_FORMULA_CAUSAL = PREFILL_FLOPS_FORMULA + ", / 2 for causal"
DECODE_FLOPS_FORMULA = "4*B*H*1*S*D (one query row against S cached keys; no causal saving)"
PREFILL_BYTES_FORMULA = "(B*H*L*D [Q] + 2*B*Hkv*S*D [K,V] + B*H*L*D [O]) * bytes_per_element"
DECODE_BYTES_FORMULA = "(B*H*1*D [q] + 2*B*Hkv*S*D [K,V cache] + B*H*1*D [o]) * bytes_per_element"


def attention_flops(B: int, H: int, L: int, S: int, D: int, causal: bool = False) -> int:
    """4*B*H*L*S*D, halved when ``causal``: QK^T and PV at 2 FLOPs per multiply-add. The one FLOP
    count of the package (``harness.bench`` times against it too)."""
    flops = 4 * B * H * L * S * D
    return flops // 2 if causal else flops


@dataclass(frozen=True)
class WorkloadCost:
    """FLOPs, bytes moved and (optionally) roofline verdict for one attention call."""

    name: str
    queries: int  # L
    keys: int  # S
    flops: int
    bytes_moved: int
    flops_formula: str
    bytes_formula: str
    bound: Optional[str] = None  # "compute" / "memory", None without a device
    time_s: Optional[float] = None  # roofline lower bound, None without a device

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte."""
        return self.flops / self.bytes_moved


@dataclass(frozen=True)
class AttentionCost:
    heads: int
    kv_heads: int
    head_dim: int
    seq: int
    batch: int
    dtype: str
    causal: bool
    prefill: WorkloadCost
    decode: WorkloadCost
    device: Optional[DevicePeak] = None

    @property
    def ridge(self) -> Optional[float]:
        return None if self.device is None else self.device.ridge


def roofline(flops: float, bytes_moved: float, device: Union[str, DevicePeak]) -> tuple[str, float]:
    """Return (bound, lower-bound seconds) for a workload on ``device``.

    bound is ``"compute"`` when intensity >= ridge point (peak FLOP/s / peak B/s), else
    ``"memory"``. The time is max(flops / peak FLOP/s, bytes / peak B/s).
    """
    dev = get_device(device)
    t_compute = flops / dev.flops_per_s
    t_memory = bytes_moved / dev.bytes_per_s
    bound = "compute" if flops / bytes_moved >= dev.ridge else "memory"
    return bound, max(t_compute, t_memory)


def attention_cost(
    heads: int,
    kv_heads: int,
    head_dim: int,
    seq: int,
    batch: int,
    dtype: object,
    causal: bool = True,
    device: Union[None, str, DevicePeak] = None,
) -> AttentionCost:
    """Attention-only cost of prefill (L = S = seq) and one decode step (L = 1, S = seq).

    FLOPs count a multiply-add as 2 FLOPs: QK^T and PV each cost 2*B*H*L*S*D. Causal
    prefill is halved (the usual approximation of the exact (L+1)/(2L) fraction); decode
    is never halved since the new token sees the whole cache. Bytes assume Q, K, V are
    read once and O is written once (an ideal fused kernel); K/V use ``kv_heads``.
    """
    _check_positive(heads=heads, kv_heads=kv_heads, head_dim=head_dim, seq=seq, batch=batch)
    if heads % kv_heads != 0:
        raise ValueError(f"kv_heads ({kv_heads}) must divide heads ({heads})")
    bpe = bytes_per_element(dtype)
    dev = None if device is None else get_device(device)
    B, H, Hkv, D, S = batch, heads, kv_heads, head_dim, seq

    def build(name: str, L: int, halve: bool, flops_formula: str, bytes_formula: str):
        flops = attention_flops(B, H, L, S, D, halve)
        nbytes = (B * H * L * D + 2 * B * Hkv * S * D + B * H * L * D) * bpe
        bound = time_s = None
        if dev is not None:
            bound, time_s = roofline(flops, nbytes, dev)
        return WorkloadCost(name, L, S, flops, nbytes, flops_formula, bytes_formula, bound, time_s)

    prefill = build(
        "prefill",
        S,
        causal,
        PREFILL_FLOPS_FORMULA_CAUSAL if causal else PREFILL_FLOPS_FORMULA,
        PREFILL_BYTES_FORMULA,
    )
    decode = build("decode", 1, False, DECODE_FLOPS_FORMULA, DECODE_BYTES_FORMULA)
    return AttentionCost(H, Hkv, D, S, B, str(dtype), causal, prefill, decode, dev)


# --------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------

KIB, MIB, GIB = 2**10, 2**20, 2**30


def _fmt_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.3f} GiB"
    if n >= MIB:
        return f"{n / MIB:.3f} MiB"
    if n >= KIB:
        return f"{n / KIB:.3f} KiB"
    return f"{n:.0f} B"


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.3f} us"
    return f"{s * 1e9:.3f} ns"


def _fmt_count(n: float) -> str:
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} "
