"""FLOPs and bytes of a benchmark shape, and the throughput figures derived from them.

Torch-free: the FLOP count itself is :func:`harness.calculators.attention_flops`, shared with
``attn-harness cost``."""

from __future__ import annotations

from harness.bench.shapes import Shape
from harness.calculators import attention_flops, bytes_per_element

BACKWARD_FLOP_FACTOR = 2.5
FLOPS_FORMULA = "4*B*H*L*S*E (x0.5 causal; backward = 2.5 x forward)"
BYTES_FORMULA = "2*B*Hkv*S*E*bytes(dtype) (K and V read once)"


def forward_flops(shape: Shape) -> float:
    return float(attention_flops(shape.B, shape.H, shape.L, shape.S, shape.E, shape.causal))


def flops(shape: Shape, backward: bool = False) -> float:
    return forward_flops(shape) * (BACKWARD_FLOP_FACTOR if backward else 1.0)


def flops_formula(shape: Shape, backward: bool = False) -> str:
    s = f"4*B*H*L*S*E = 4*{shape.B}*{shape.H}*{shape.L}*{shape.S}*{shape.E}"
    if shape.causal:
        s += " * 0.5 (causal)"
    if backward:
        s += " * 2.5 (backward)"
    return s + f" = {flops(shape, backward):.4g}"


def kv_bytes(shape: Shape, dtype: str) -> int:
    """Bytes of K and V a decode step must read: 2*B*Hkv*S*E*bytes."""
    return 2 * shape.B * shape.Hkv * shape.S * shape.E * bytes_per_element(dtype)


def scores_bytes(shape: Shape, dtype: str) -> int:
    """Size of a materialised (B, H, L, S) score matrix in the dtype: compare with peak memory."""
    return shape.B * shape.H * shape.L * shape.S * bytes_per_element(dtype)


def tflops_of(shape: Shape, median_ms: float, backward: bool = False) -> float:
    return flops(shape, backward) / (median_ms * 1e-3) / 1e12


def gbps_of(shape: Shape, dtype: str, median_ms: float) -> float:
    return kv_bytes(shape, dtype) / (median_ms * 1e-3) / 1e9
