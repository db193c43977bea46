"""T. Throughput (opt-in): correctness-checked timings of prefill and decode shapes.

    pytest --pyargs harness.suites.test_throughput --impl sdpa [--device cuda] [--benchmark-json out.json]
    ATTN_HARNESS_BENCH_SHAPES=default pytest --pyargs harness.suites.test_throughput --impl sdpa

The shapes come from ``ATTN_HARNESS_BENCH_SHAPES`` (a preset of :mod:`harness.bench` or its LIST
syntax; default ``small``, scaled down on CPU). Every test first checks the kernel on the shape
against the float64 reference (a wrong kernel fails here and is never timed), then times it with
pytest-benchmark using the same :class:`harness.bench.Workload` as ``attn-harness bench``: fresh
input clones per round (made in the untimed setup), the inputs compared with the originals after
every round, and the output of one randomly chosen round checked against the reference.
``extra_info`` carries TFLOP/s, GB/s (decode), fraction of this machine's peak and peak memory.

Nothing here asserts on wall-clock time. Without pytest-benchmark (not installed, ``-p
no:benchmark``, ``--benchmark-disable``, or under xdist) the tests skip with the reason.
On CUDA, pytest-benchmark's own timer is used with ``torch.cuda.synchronize`` inside the timed
call and the L2 flush in the untimed setup; ``attn-harness bench`` uses CUDA events instead.
"""

import os
import random

import pytest

from harness import bench

SHAPES_ENV = "ATTN_HARNESS_BENCH_SHAPES"
_data_slot: dict = {}
_peaks: dict = {}


def pytest_generate_tests(metafunc):
    if "shape" not in metafunc.fixturenames:
        return
    device = metafunc.config.getoption("--device", default=None) or "cpu"
    try:
        shapes = bench.parse_shapes(os.environ.get(SHAPES_ENV, "small"), device)
    except ValueError as e:
        raise pytest.UsageError(f"{SHAPES_ENV}: {e}")
    metafunc.parametrize("shape", shapes, ids=[s.spec().replace(":", "-") for s in shapes])


def _data(shape, dtype, device):
    """One ShapeData at a time: the reference is shared by the implementations and dtypes that
    run the same shape back to back, and big shapes do not pile up in memory."""
    key = (shape, dtype, device)
    if key not in _data_slot:
        _data_slot.clear()
        _data_slot[key] = bench.ShapeData(shape, dtype, device)
    return _data_slot[key]


def _machine_peak(device, dtype):
    if (device, dtype) not in _peaks:
        _peaks[(device, dtype)] = bench.machine_peak(device, dtype)
    return _peaks[(device, dtype)]


def _benchmark(request):
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        pytest.skip("skip: pytest-benchmark is not installed: no timings taken")
    try:
        bm = request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        pytest.skip("skip: the pytest-benchmark plugin is disabled (-p no:benchmark): no timings taken")
    if getattr(bm, "disabled", False):
        pytest.skip("skip: pytest-benchmark is disabled (--benchmark-disable, or running under xdist): "
                    "no timings taken")
    return bm


def _throughput(target, shape, request, backward):
    why = bench.why_unsupported(target.impl, shape, target.dtype, target.device, backward)
    if why:
        pytest.skip(f"unsupported: {why}")
    bm = _benchmark(request)
    data = _data(shape, target.dtype, target.device)
    target.cases += 1
    target.last_case = data.case
    # The timed shape goes into the result (also when the check fails): `compare` keys on it.
    where = dict(shape=shape.to_dict(), mode=shape.mode, direction="backward" if backward else "forward")
    target.record(**where)
    target.record(bench.check_forward(target.impl, data, target.forward_factor), **where)
    if backward:
        target.record(bench.check_backward(target.impl, data, target.backward_factor), **where)

    w = bench.Workload(target.impl, data, backward, target.forward_factor, target.backward_factor)
    mem, mem_method, first_s = bench.peak_memory(w)  # untimed; counts as a warm-up call
    rounds, warmup = bench.plan_repeats(w, first_call_s=first_s)
    pick = warmup + random.randrange(rounds)  # the round whose output is checked
    device = target.device
    flush = None
    if device == "cuda":
        import torch

        flush = torch.empty(bench.L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    state = {"calls": 0, "last": None, "kept": None}

    def setup():
        if state["last"] is not None:  # the previous round, checked outside the timed call
            w.after(*state["last"])
            state["last"] = None
        args = w.setup()
        if flush is not None:
            flush.zero_()
            bench._sync(device)
        return (args,), {}

    def run(args):
        out = w.run(args)
        bench._sync(device)
        state["last"] = (args, out)
        if state["calls"] == pick:
            state["kept"] = out
        state["calls"] += 1

    bm.group = shape.label() + (" backward" if backward else "")
    bm.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if state["last"] is not None:
        w.after(*state["last"])
    w.verify(state["kept"])
    del flush

    median_ms = bm.stats.stats.median * 1e3
    tflops = bench.tflops_of(shape, median_ms, backward)
    gbps = bench.gbps_of(shape, target.dtype, median_ms) if shape.mode == "decode" else None
    peak = _machine_peak(device, target.dtype)
    frac = gbps / peak["copy_gbps"] if gbps is not None else tflops / peak["matmul_tflops"]
    info = {"impl": target.impl.name, "mode": shape.mode, "direction": "backward" if backward else "forward",
            "shape": shape.to_dict(), "dtype": target.dtype, "device": device, "median_ms": median_ms,
            "tflops": tflops, "gbps": gbps, "fraction_of_peak": frac, "peak_mem_bytes": mem,
            "peak_mem_method": mem_method, "flops_formula": bench.flops_formula(shape, backward),
            "bytes_formula": bench.BYTES_FORMULA + ", GB = 1e9 bytes", "machine_peak": peak}
    bm.extra_info.update(info)
    target.record(median_ms=median_ms, tflops=tflops, gbps=gbps, fraction_of_peak=frac, peak_mem_bytes=mem)


def test_throughput(target, shape, request):
    """Forward pass: checked against the reference on the shape, then timed (TFLOP/s, GB/s)."""
    _throughput(target, shape, request, backward=False)


def test_throughput_backward(target, shape, request):
    """Backward pass of the prefill shapes: gradients checked, then the backward alone timed."""
    if shape.mode != "prefill":
        pytest.skip("skip: backward is timed for prefill shapes only")
    _throughput(target, shape, request, backward=True)
