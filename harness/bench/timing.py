"""The timed call: Workload (setup, timed run, checks after), the timed loop with its clocks and
L2 flush, and how many repeats to run."""

from __future__ import annotations

import random
import statistics
import time
from typing import Optional

import torch

from harness.bench.checks import ShapeData, judge_grads, judge_output, sample_inputs
from harness.cases import DTYPES
from harness.contract import Implementation
from harness.tolerance import BACKWARD_FACTOR, FORWARD_FACTOR, baselines

L2_FLUSH_BYTES = 256 * 2 ** 20
DEFAULT_REPEATS = {"cpu": 7, "cuda": 20}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 3}
SLOW_CALL_S = 0.5  # on CPU, calls slower than this get 3 repeats unless --repeats is given
# CUDA events against the wall clock around the same synchronised call: flagged above both.
CLOCK_DISAGREE_RATIO, CLOCK_DISAGREE_MS = 2.0, 0.1
_clock = time.perf_counter  # bound now: a kernel that patches time.perf_counter cannot slow our clock


class Workload:
    """One timed call. ``setup()`` (untimed) makes fresh clones of the inputs (and, for backward,
    runs the forward); ``run(args)`` is what is timed; ``after(args, out)`` (untimed) checks the
    inputs were not written; ``verify(out)`` checks a timed output against the reference."""

    def __init__(self, impl: Implementation, data: ShapeData, backward: bool = False,
                 forward_factor: float = FORWARD_FACTOR, backward_factor: float = BACKWARD_FACTOR):
        self.impl, self.data, self.backward = impl, data, backward
        self.forward_factor, self.backward_factor = forward_factor, backward_factor
        self.dout = None
        if backward:
            if data.exact:  # the check's cotangent: timed gradients compare with the cached reference
                self.dout = data.cotangent()
            else:
                g = torch.Generator().manual_seed(data.seed + 3)
                s = data.shape
                self.dout = torch.randn(s.B, s.H, s.L, s.E, generator=g).to(DTYPES[data.dtype]).to(data.device)

    def setup(self):
        d = self.data
        q, k, v = d.q.clone(), d.k.clone(), d.v.clone()
        if not self.backward:
            return (q, k, v)
        q.requires_grad_(True)
        k.requires_grad_(True)
        v.requires_grad_(True)
        out = self.impl(q, k, v, **d.kwargs)
        return (q, k, v, out)

    def fresh(self, i: int):
        """(args, originals): new random q, k, v for timed repeat ``i`` (forward only), made
        outside the timed region; the originals are kept to check the call did not write them."""
        d = self.data
        s = d.shape
        g = torch.Generator(device=d.device).manual_seed(d.seed * 7919 + 1009 * (i + 1) + 17)
        dt = DTYPES[d.dtype]
        mk = lambda *sh: torch.randn(*sh, generator=g, device=d.device, dtype=torch.float32).to(dt)  # noqa: E731
        orig = (mk(s.B, s.H, s.L, s.E), mk(s.B, s.Hkv, s.S, s.E), mk(s.B, s.Hkv, s.S, s.E))
        return tuple(t.clone() for t in orig), orig

    def check_fresh(self, orig, out, i: int):
        """Sampled rows of a timed output made from fresh inputs against the float64 reference of
        those rows. Raises PropertyViolation."""
        inp, take = sample_inputs(self.data.full_case, *orig)
        return judge_output(self.impl, take(out.detach()), inp, inp.reference(), baselines(inp), inp.logit_absmax(),
                            self.forward_factor,
                            f"output of timed repeat {i + 1} (fresh inputs; sampled rows of {self.data.shape.label()}): "
                            "a kernel right on the inputs it was checked on but not on new values replays or caches "
                            "answers, and")

    def run(self, args):
        if not self.backward:
            q, k, v = args
            return self.impl(q, k, v, **self.data.kwargs)
        q, k, v, out = args
        return torch.autograd.grad(out, (q, k, v), self.dout)

    def after(self, args, out, originals=None):
        """Raise PropertyViolation when the call wrote into its inputs or returned nonsense."""
        from harness.probes import PropertyViolation

        d = self.data
        for name, got, orig in zip("qkv", args[:3], originals or (d.q, d.k, d.v)):
            if not torch.equal(got.detach(), orig):
                raise PropertyViolation(f"the timed call modified its input {name}")
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if not isinstance(o, torch.Tensor):
                raise PropertyViolation(f"the timed call returned {type(o).__name__}, not a tensor")
        if not self.backward:
            from harness.integrity import not_plain_tensor

            why = not_plain_tensor(out)  # a deferred tensor does its work after the timer stops
            if why:
                raise PropertyViolation(f"the timed call {why}")
        if not self.backward:
            want = (d.shape.B, d.shape.H, d.shape.L, d.shape.E)
            if tuple(out.shape) != want or out.dtype != d.q.dtype:
                raise PropertyViolation(f"timed output has shape {tuple(out.shape)} {out.dtype}, "
                                        f"expected {want} {d.q.dtype}")

    def verify(self, out):
        """Check one output produced inside the timed loop."""
        from harness.probes import PropertyViolation

        d = self.data
        if self.backward:
            for name, g, t in zip(("dq", "dk", "dv"), out, (d.q, d.k, d.v)):
                if g is None or tuple(g.shape) != tuple(t.shape) or not bool(torch.isfinite(g).all()):
                    raise PropertyViolation(f"timed backward: {name} is missing, misshapen or not finite")
            if not d.exact:  # gradients of a configuration too large for the reference: sanity only
                return None
            judge_grads(out, d, self.backward_factor, "inside the timed loop")
            return None
        out = out.detach()
        if d.exact:
            return judge_output(self.impl, out, d.inputs, d.ref, d.baseline, d.logit_absmax,
                                self.forward_factor, "output inside the timed loop")
        inp, take = sample_inputs(d.full_case, d.q, d.k, d.v)
        return judge_output(self.impl, take(out), inp, inp.reference(), baselines(inp), inp.logit_absmax(),
                            self.forward_factor, f"output inside the timed loop (sampled rows of {d.shape.label()})")


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_workload(w: Workload, repeats: int, warmup: int, seed: Optional[int] = None) -> tuple:
    """Warm up, then time ``repeats`` calls. Returns (times in ms, the index of the repeat on the
    checked inputs). Raises PropertyViolation when a timed output is wrong; :func:`timed_loop`
    gives the details without raising."""
    r = timed_loop(w, repeats, warmup, seed)
    if r["errors"]:
        raise r["errors"][0]
    return r["times"], r["pick"]


def timed_loop(w: Workload, repeats: int, warmup: int, seed: Optional[int] = None) -> dict:
    """Warm up, then time ``repeats`` calls; every output made inside the loop is checked after
    its timing (see the :mod:`harness.bench` docstring). Returns {"times" (ms, the clock reported), "pick",
    "errors" (PropertyViolations, in repeat order), "event_ms", "wall_ms" (CUDA), "fresh"
    (repeats on fresh inputs)}."""
    from harness.probes import PropertyViolation

    device = w.data.device
    pick = random.Random(seed).randrange(repeats)
    for _ in range(warmup):
        args = w.setup()
        out = w.run(args)
        _sync(device)
        w.after(args, out)
        del args, out
    times, wall, errors, kept, fresh = [], [], [], None, 0
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if device == "cuda" else None
    for i in range(repeats):
        orig = None
        if w.backward or i == pick:
            args = w.setup()
        else:
            args, orig = w.fresh(i)
            fresh += 1
        if device == "cuda":
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            w0 = _clock()
            start.record()
            out = w.run(args)
            end.record()
            torch.cuda.synchronize()  # the whole device: work left on another stream is waited for
            wall.append((_clock() - w0) * 1e3)
            times.append(start.elapsed_time(end))
        else:
            t0 = _clock()
            out = w.run(args)
            times.append((_clock() - t0) * 1e3)
        try:
            w.after(args, out, orig)
            if orig is not None:
                w.check_fresh(orig, out, i)
        except PropertyViolation as e:
            errors.append(e)
        if i == pick:
            kept = out
        del args, out, orig
    del flush
    if not errors:
        try:
            w.verify(kept)
        except PropertyViolation as e:
            errors.append(e)
    res = {"times": times, "pick": pick, "errors": errors, "fresh": fresh, "event_ms": None, "wall_ms": None}
    if wall:
        res["event_ms"], res["wall_ms"] = list(times), wall
        ev, wl = statistics.median(times), statistics.median(wall)
        if wl > CLOCK_DISAGREE_RATIO * ev and wl - ev > CLOCK_DISAGREE_MS:
            res["times"] = wall  # the conservative clock
            res["clock_flag"] = (f"CUDA events ({ev:.3g} ms median) disagree with the wall clock around a whole-device "
                                 f"synchronize ({wl:.3g} ms): work outside the timed stream (a side stream) or a "
                                 "patched Event.elapsed_time; the wall clock is reported")
    return res


def plan_repeats(w: Workload, repeats: Optional[int] = None, warmup: Optional[int] = None,
                 first_call_s: Optional[float] = None) -> tuple:
    """(repeats, warm-up calls). Without an explicit count: 20 on CUDA, 7 on CPU, or 3 when one
    call takes longer than SLOW_CALL_S on CPU. ``first_call_s``: an untimed call already made
    (e.g. the peak-memory call), which then counts as one warm-up; without it one is made here."""
    device = w.data.device
    wu = DEFAULT_WARMUP.get(device, 1) if warmup is None else max(0, warmup)
    if repeats is not None:
        return max(1, repeats), (wu if first_call_s is None else max(0, wu - 1))
    if first_call_s is None:
        t = time.perf_counter()
        args = w.setup()
        out = w.run(args)
        _sync(device)
        first_call_s = time.perf_counter() - t
        w.after(args, out)
    n = 3 if (device != "cuda" and first_call_s > SLOW_CALL_S) else DEFAULT_REPEATS.get(device, 7)
    return n, max(0, wu - 1)
