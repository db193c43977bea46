"""Check then time: one (implementation, shape) in bench_one, every pair in run_bench."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from harness.bench.checks import ShapeData, check_backward, check_forward, why_unsupported
from harness.bench.formulas import flops_formula, gbps_of, scores_bytes, tflops_of
from harness.bench.memory import peak_memory
from harness.bench.peak import ceiling_violation, machine_peak
from harness.bench.shapes import Shape
from harness.bench.stats import robust_stats
from harness.bench.timing import Workload, plan_repeats, timed_loop
from harness.contract import Implementation
from harness.tolerance import BACKWARD_FACTOR, FORWARD_FACTOR


@dataclass
class Outcome:
    status: str  # "ok" | "fail" | "error" | "unsupported"
    entry: Optional[dict] = None  # the throughput entry (status ok)
    message: str = ""
    comparison: Optional[dict] = None
    duration_s: float = 0.0


def _shape_dict(shape: Shape) -> dict:
    return shape.to_dict()


def bench_one(impl: Implementation, data: ShapeData, *, backward: bool = False, repeats: Optional[int] = None,
              warmup: Optional[int] = None, forward_factor: float = FORWARD_FACTOR,
              backward_factor: float = BACKWARD_FACTOR, peak: Optional[dict] = None,
              seed: Optional[int] = None) -> Outcome:
    """Check, then time one implementation on one shape. Never raises for the kernel's faults."""
    import pytest

    from harness.probes import ImplementationError, PropertyViolation

    t0 = time.time()
    shape, dtype, device = data.shape, data.dtype, data.device
    why = why_unsupported(impl, shape, dtype, device, backward)
    if why:
        return Outcome("unsupported", message=why, duration_s=time.time() - t0)
    try:
        cmp = check_forward(impl, data, forward_factor)
        if backward:
            cmp = check_backward(impl, data, backward_factor)
        w = Workload(impl, data, backward, forward_factor, backward_factor)
        mem, mem_method, first_s = peak_memory(w)  # also the first warm-up call
        n, wu = plan_repeats(w, repeats, warmup, first_s)
        loop = timed_loop(w, n, wu, seed)
        times = loop["times"]
        impossible = ceiling_violation(shape, dtype, device, robust_stats(times)["median_ms"], backward, peak)
        if impossible:
            raise PropertyViolation(impossible)
        if loop["errors"]:
            raise loop["errors"][0]
    except pytest.skip.Exception as e:
        return Outcome("unsupported", message=str(e.msg if hasattr(e, "msg") else e).replace("unsupported: ", "", 1),
                       duration_s=time.time() - t0)
    except PropertyViolation as e:
        return Outcome("fail", message=str(e), duration_s=time.time() - t0)
    except ImplementationError as e:
        return Outcome("error", message=str(e), duration_s=time.time() - t0)
    except Exception as e:  # a crash in setup/backward/timing is the implementation's error too
        return Outcome("error", message=f"{type(e).__name__}: {e}", duration_s=time.time() - t0)
    st = robust_stats(times)
    tf = tflops_of(shape, st["median_ms"], backward)
    gb = gbps_of(shape, dtype, st["median_ms"]) if shape.mode == "decode" else None
    frac = None
    if peak:
        if shape.mode == "decode" and gb is not None and peak.get("copy_gbps"):
            frac = gb / peak["copy_gbps"]
        elif peak.get("matmul_tflops"):
            frac = tf / peak["matmul_tflops"]
    entry = {
        "impl": impl.name, "spec": impl.spec, "mode": shape.mode, "shape": _shape_dict(shape), "dtype": dtype,
        "device": device, "median_ms": st["median_ms"], "iqr_ms": st["iqr_ms"], "repeats": st["repeats"],
        "tflops": tf, "gbps": gb, "peak_mem_bytes": mem, "fraction_of_peak": frac,
        "flops_formula": flops_formula(shape, backward),
        # extras (not part of the keys `attn-harness compare` relies on)
        "direction": "backward" if backward else "forward", "outliers_dropped": st["dropped"],
        "peak_mem_method": mem_method, "scores_bytes": scores_bytes(shape, dtype),
        "checked_at": _shape_dict(data.check), "check_ratio": cmp.worst_ratio if cmp else None,
        "fresh_input_repeats": loop["fresh"], "flags": [loop["clock_flag"]] if loop.get("clock_flag") else [],
    }
    if loop.get("wall_ms"):
        entry["event_median_ms"] = statistics.median(loop["event_ms"])
        entry["wall_median_ms"] = statistics.median(loop["wall_ms"])
    return Outcome("ok", entry=entry, comparison=cmp.to_dict() if cmp else None, duration_s=time.time() - t0)


def run_bench(impls: list, shapes: list, *, device: str = "cpu", dtype: str = "float32", backward: bool = False,
              repeats: Optional[int] = None, warmup: Optional[int] = None, seed: int = 0,
              forward_factor: float = FORWARD_FACTOR, backward_factor: float = BACKWARD_FACTOR,
              report: Optional[dict] = None, on_result: Optional[Callable[[dict, Implementation, Shape, str, Outcome], None]] = None) -> dict:
    """Check and time every implementation on every shape; fills and returns the report dict."""
    from harness import report as R

    rep = report if report is not None else R.new_report({"device": device, "dtype": dtype}, device=device)
    rep.setdefault("throughput", [])
    rep.setdefault("bench_failures", [])
    rep.setdefault("bench_unsupported", [])
    rep["shapes"] = [{"mode": s.mode, **s.to_dict()} for s in shapes]
    rep["machine_peak"] = machine_peak(device, dtype)
    records = {i.spec: {"name": i.name, "spec": i.spec, "verdict": "pass", "description": i.description,
                        "capabilities": i.capabilities.to_dict(), "duration_s": 0.0, "log": None, "problem": None,
                        "results": []} for i in impls}
    rep["implementations"] = list(records.values())
    for shape in shapes:
        data = ShapeData(shape, dtype, device, seed)
        directions = [False] + ([True] if backward and shape.mode == "prefill" else [])
        for impl in impls:
            for bw in directions:
                oc = bench_one(impl, data, backward=bw, repeats=repeats, warmup=warmup,
                               forward_factor=forward_factor, backward_factor=backward_factor,
                               peak=rep["machine_peak"], seed=seed)
                direction = "backward" if bw else "forward"
                rec = {"impl": impl.name, "spec": impl.spec, "mode": shape.mode, "direction": direction,
                       "shape": shape.to_dict(), "dtype": dtype, "device": device, "message": oc.message}
                if oc.status == "ok":
                    rep["throughput"].append(oc.entry)
                elif oc.status in ("fail", "error"):
                    rep["bench_failures"].append({**rec, "status": oc.status})
                else:
                    rep["bench_unsupported"].append(rec)
                r = records[impl.spec]
                r["duration_s"] = round(r["duration_s"] + oc.duration_s, 3)
                r["results"].append({
                    "suite": "throughput", "property": f"correctness[{shape.spec()}{':backward' if bw else ''}]",
                    "tier": "gate", "dtype": dtype, "device": device, "impl": impl.spec,
                    "status": {"ok": "pass"}.get(oc.status, oc.status), "cases": 1, "worst": oc.comparison or {},
                    "message": oc.message, "counterexample": None, "counterexample_text": None,
                    "repro": "" if oc.status in ("ok", "unsupported") else
                    f"attn-harness bench --impl {impl.spec} --device {device} --dtype {dtype} --shapes {shape.spec()}"
                    + (" --backward" if bw else ""),
                    "seed": seed, "duration_s": round(oc.duration_s, 3),
                    "doc": "checked against the float64 reference before timing"})
                if on_result:
                    on_result(rep, impl, shape, direction, oc)
        del data
    for r in records.values():
        sts = [x["status"] for x in r["results"]]
        if any(s in ("fail", "error") for s in sts):
            r["verdict"] = "fail"
        elif sts and all(s == "unsupported" for s in sts):
            r["verdict"] = "unsupported"
    return rep
