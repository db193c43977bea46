"""This machine's measured peak (best matmul, best copy) and the ceiling it puts on any timing."""

from __future__ import annotations

import functools
import time
from typing import Optional

import torch

from harness.bench.formulas import gbps_of, kv_bytes, tflops_of
from harness.bench.shapes import Shape
from harness.bench.timing import L2_FLUSH_BYTES, _sync
from harness.cases import DTYPES

# A measured peak is a best-of-a-few on a machine other work may share; a kernel can land a bit
# above it without cheating, never 100x (a pointer-keyed cache once timed at 116x on CPU).
PEAK_MARGIN = 1.5
# On CPU a decode working set that fits in cache is legitimately read faster than the DRAM copy
# peak (nothing flushes CPU caches between repeats); the bytes/s ceiling applies above this size.
CPU_BYTES_CEILING_MIN = L2_FLUSH_BYTES


def machine_peak(device: str, dtype: str) -> dict:
    """This machine's achievable peak, measured now: best of a few same-dtype square matmuls
    (TFLOP/s) and of a large copy (GB/s, read + write bytes, GB = 1e9)."""
    dt = DTYPES[dtype]
    n = 8192 if device == "cuda" else 2048
    nbytes = (2 ** 30 if device == "cuda" else L2_FLUSH_BYTES)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)

    def best(fn, reps):
        fn()
        _sync(device)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        return min(ts)

    t_mm = best(lambda: a @ b, 5 if device == "cuda" else 3)
    del a, b
    extra = {}
    if dt != torch.float32:  # half matmuls can be slower than float32 ones on CPU: the ceiling takes the best
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        extra["matmul_float32_tflops"] = 2.0 * n ** 3 / best(lambda: a @ b, 5 if device == "cuda" else 3) / 1e12
        del a, b
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t_cp = best(functools.partial(dst.copy_, src), 5 if device == "cuda" else 3)
    del src, dst
    return {**extra, "matmul_tflops": 2.0 * n ** 3 / t_mm / 1e12, "copy_gbps": 2.0 * nbytes / t_cp / 1e9,
            "matmul": f"{n}x{n} @ {n}x{n} {dtype}, 2*n^3 FLOPs, best of repeats",
            "copy": f"{nbytes / 2 ** 20:.0f} MiB device copy, read + write bytes, best of repeats"}


def ceiling_violation(shape: "Shape", dtype: str, device: str, median_ms: float, backward: bool,
                      peak: Optional[dict]) -> Optional[str]:
    """Why a timing is impossible on this machine (None when it is not): FLOP/s above the best
    matmul measured in the same run, or decode bytes/s above the best copy, times PEAK_MARGIN."""
    if not peak:
        return None
    why = []
    tf = tflops_of(shape, median_ms, backward)
    ceiling = max(v for v in (peak.get("matmul_tflops"), peak.get("matmul_float32_tflops")) if v) if (
        peak.get("matmul_tflops") or peak.get("matmul_float32_tflops")) else None
    if ceiling and tf > PEAK_MARGIN * ceiling:
        why.append(f"{tf:.3g} TFLOP/s is {tf / ceiling:.3g}x this machine's measured peak of {ceiling:.3g} TFLOP/s "
                   f"({peak.get('matmul', 'matmul')})")
    if shape.mode == "decode" and peak.get("copy_gbps") and (device == "cuda" or kv_bytes(shape, dtype) >= CPU_BYTES_CEILING_MIN):
        gb = gbps_of(shape, dtype, median_ms)
        if gb > PEAK_MARGIN * peak["copy_gbps"]:
            why.append(f"{gb:.3g} GB/s of K and V is {gb / peak['copy_gbps']:.3g}x the measured copy peak of "
                       f"{peak['copy_gbps']:.3g} GB/s ({peak.get('copy', 'copy')})")
    if not why:
        return None
    return ("faster than the hardware: " + "; ".join(why) + f" (allowance {PEAK_MARGIN:g}x). No timing is recorded: "
            "the kernel does its work outside the timed call (before it, on another stream or thread, or not at all) "
            "or the timer was tampered with")
