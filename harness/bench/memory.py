"""Peak memory of one call above its inputs (CUDA allocator stats, torch's CPU profiler on CPU)."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

import torch

from harness.bench.timing import Workload


def _cpu_profiler_peak(fn: Callable[[], object]) -> Optional[int]:
    """Peak of the running sum of torch CPU allocator events during fn() (bytes), or None."""
    from torch.profiler import ProfilerActivity, profile

    saved = None
    try:
        # This torch build's profiler chatters on fd 2; keep the bench output readable.
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        del out
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        evs.sort(key=lambda e: e.start_ns())
        cur = peak = 0
        for e in evs:
            cur += e.nbytes()
            peak = max(peak, cur)
        return int(peak)
    except Exception:
        return None


def peak_memory(w: Workload) -> tuple:
    """(bytes, method, seconds): extra memory allocated during one call above its inputs, and
    the call's wall time (inflated on CPU by the profiler; used only to plan the repeats)."""
    device = w.data.device
    args = w.setup()
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = w.run(args)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        w.after(args, out)
        return int(peak), "torch.cuda.max_memory_allocated", dt
    box = {}

    def call():
        box["out"] = w.run(args)
        return box["out"]

    peak = _cpu_profiler_peak(call)
    dt = time.perf_counter() - t0
    if peak is not None:
        w.after(args, box["out"])
        return peak, "torch.profiler CPU allocator events", dt
    import resource

    args = w.setup()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = w.run(args)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w.after(args, out)
    return int((after - before) * 1024), "ru_maxrss delta (only a new process high-water mark shows)", dt
