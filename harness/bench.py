"""Throughput checks for prefill and decode: ``attn-harness bench`` and the opt-in pytest suite
``harness.suites.test_throughput`` share everything in this module.

For each (implementation, shape) the kernel is first checked for correctness (against the float64
chunked reference, with the dtype-aware per-row bound of :mod:`harness.tolerance`); a kernel that
fails gets no throughput entry, only a failure record. Then it is timed:

* forward: fresh input values (new random q, k, v, made outside the timed region) for every
  timed repeat but one, randomly chosen, which gets clones of the checked inputs; a kernel that
  caches or replays answers (by pointer, shape or content) is either honestly timed or wrong.
  Backward repeats get clones of the checked inputs. The inputs are compared with their
  originals after every call (a kernel must not write into them);
* every output produced inside the timed loop is checked after its timing: sampled rows of each
  fresh-input repeat against the float64 reference of those rows, and the whole output of the
  checked-input repeat (sampled rows when the configuration is too big for a full check);
* CPU: ``time.perf_counter`` (bound at import, so a kernel patching ``time`` cannot change it)
  around the call; CUDA: CUDA events, plus a whole-device ``torch.cuda.synchronize`` and the
  independent wall clock around the same call, and a 256 MB buffer zeroed before every repeat
  (L2 flush). When the wall clock's median exceeds the events' by more than 2x and 0.1 ms (work on
  a side stream, a patched ``Event.elapsed_time``), the entry is flagged and reports the wall clock;
* a figure above this machine's peak measured in the same run (FLOP/s over the best matmul,
  decode bytes/s over the best copy, each with a PEAK_MARGIN allowance for measurement noise) is
  rejected: the kernel gets no timing and a failure that says why;
* median and interquartile range after dropping outliers beyond 1.5 IQR.

Metrics (the formulas are repeated in every table and report):

* forward FLOPs = ``4*B*H*L*S*E`` (QK^T and PV, 2 FLOPs per multiply-add), halved for causal;
  backward = 2.5 x forward; TFLOP/s = FLOPs / median time / 1e12;
* decode GB/s = ``2*B*Hkv*S*E*bytes(dtype)`` (K and V read once) / median time / 1e9 (GB = 1e9 B);
* fraction of peak: prefill TFLOP/s over a same-dtype matmul measured in the same run, decode
  GB/s over a large device copy measured in the same run;
* peak memory: the extra bytes allocated during one call above its inputs (output + workspace).
  CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocation events of torch's CPU allocator
  recorded by ``torch.profiler`` (memory allocated outside torch's allocator, e.g. by a
  third-party library's own malloc, is not seen).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from harness.cases import DTYPES, Case, Inputs
from harness.contract import Implementation
from harness.calculators import bytes_per_element
from harness.tolerance import BACKWARD_FACTOR, FORWARD_FACTOR, baselines

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

BACKWARD_FLOP_FACTOR = 2.5
FLOPS_FORMULA = "4*B*H*L*S*E (x0.5 causal; backward = 2.5 x forward)"
BYTES_FORMULA = "2*B*Hkv*S*E*bytes(dtype) (K and V read once)"
# Largest B*H*L*S the exact configuration is checked at (the same-dtype baseline materialises
# the scores); beyond it the check runs on a reduced configuration with the same structure and
# the timed output is checked on sampled rows of the exact configuration.
CHECK_MAX_SCORES = 2 ** 25
CHECK_TIMEOUT_S = 600.0
SAMPLE_ROWS = 16
L2_FLUSH_BYTES = 256 * 2 ** 20
CPU_CAPS = {"prefill_max_len": 2048, "decode_max_len": 16384, "B": 1, "H": 8}
DEFAULT_REPEATS = {"cpu": 7, "cuda": 20}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 3}
SLOW_CALL_S = 0.5  # on CPU, calls slower than this get 3 repeats unless --repeats is given
# A measured peak is a best-of-a-few on a machine other work may share; a kernel can land a bit
# above it without cheating, never 100x (a pointer-keyed cache once timed at 116x on CPU).
PEAK_MARGIN = 1.5
# On CPU a decode working set that fits in cache is legitimately read faster than the DRAM copy
# peak (nothing flushes CPU caches between repeats); the bytes/s ceiling applies above this size.
CPU_BYTES_CEILING_MIN = L2_FLUSH_BYTES
# CUDA events against the wall clock around the same synchronised call: flagged above both.
CLOCK_DISAGREE_RATIO, CLOCK_DISAGREE_MS = 2.0, 0.1
_clock = time.perf_counter  # bound now: a kernel that patches time.perf_counter cannot slow our clock


# --- shapes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    mode: str  # "prefill" (L = S) | "decode" (L = 1)
    B: int
    H: int
    Hkv: int
    L: int
    S: int
    E: int
    causal: bool = False

    def __post_init__(self):
        if self.mode not in ("prefill", "decode"):
            raise ValueError(f"mode must be prefill or decode, not {self.mode!r}")
        if min(self.B, self.H, self.Hkv, self.L, self.S, self.E) < 1:
            raise ValueError(f"every dimension must be >= 1: {self}")
        if self.H % self.Hkv:
            raise ValueError(f"H={self.H} is not a multiple of Hkv={self.Hkv}")

    @property
    def gqa(self) -> bool:
        return self.H != self.Hkv

    def to_dict(self) -> dict:
        return {"B": self.B, "H": self.H, "Hkv": self.Hkv, "L": self.L, "S": self.S, "E": self.E,
                "causal": self.causal}

    def spec(self) -> str:
        """The LIST syntax that gives back this shape."""
        if self.mode == "prefill":
            dims = [self.B, self.H] + ([self.Hkv] if self.gqa else []) + [self.L, self.E]
            return "prefill:" + "x".join(map(str, dims)) + (":causal" if self.causal else "")
        return "decode:" + "x".join(map(str, (self.B, self.H, self.Hkv, self.S, self.E))) + (
            ":causal" if self.causal else "")

    def label(self) -> str:
        heads = f"H{self.H}" + (f"/{self.Hkv}" if self.gqa else "")
        if self.mode == "prefill":
            return f"prefill B{self.B} {heads} L=S={self.L} E{self.E}" + (" causal" if self.causal else "")
        return f"decode B{self.B} {heads} S={self.S} E{self.E}" + (" causal" if self.causal else "")

    def replace(self, **kw) -> "Shape":
        return dataclasses.replace(self, **kw)


def _prefill(B, H, Ls, Es, Hkv=None) -> list:
    return [Shape("prefill", B, H, Hkv or H, L, L, E, c) for L in Ls for E in Es for c in (False, True)]


def _decode(B, H, Hkv, Ss, E=128) -> list:
    return [Shape("decode", B, H, Hkv, 1, S, E, False) for S in Ss]


# Presets as they run on a GPU; on CPU they are scaled down by scale_for_cpu.
PRESETS = {
    "small": _prefill(2, 16, (512, 1024), (64,)) + _decode(4, 32, 8, (1024, 4096)),
    "default": _prefill(2, 16, (512, 2048, 8192, 16384), (64, 128)) + _decode(8, 32, 8, (1024, 8192, 32768, 131072)),
    "gpu-large": _prefill(4, 32, (512, 1024, 2048, 4096, 8192, 16384), (64, 128))
    + _decode(16, 32, 8, (1024, 4096, 16384, 65536, 131072)),
}


def scale_for_cpu(shape: Shape) -> Shape:
    """B=1, H=8 (GQA ratio kept for decode), L and S capped at 2048 for prefill, S at 16k for decode."""
    c = CPU_CAPS
    H = min(shape.H, c["H"])
    group = shape.H // shape.Hkv
    Hkv = max(1, H // group) if shape.gqa else H
    H = Hkv * group if shape.gqa else H
    if shape.mode == "prefill":
        L = min(shape.L, c["prefill_max_len"])
        S = min(shape.S, c["prefill_max_len"])
    else:
        L, S = shape.L, min(shape.S, c["decode_max_len"])
    return shape.replace(B=min(shape.B, c["B"]), H=H, Hkv=Hkv, L=L, S=S)


def _dedupe(shapes) -> list:
    return list(dict.fromkeys(shapes))


def parse_shape(item: str) -> Shape:
    """One LIST item: ``prefill:BxHxLxE``, ``prefill:BxHxHkvxLxE`` or ``decode:BxHxHkvxSxE``,
    optionally followed by ``:causal``."""
    parts = [p.strip() for p in item.strip().split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "causal"):
        raise ValueError(f"bad shape {item!r}: expected MODE:DIMS[:causal], e.g. prefill:1x8x1024x64")
    mode, dims, causal = parts[0], parts[1], len(parts) == 3
    try:
        n = [int(x) for x in dims.lower().split("x")]
    except ValueError:
        raise ValueError(f"bad shape {item!r}: dimensions must be integers joined by 'x'") from None
    if mode == "prefill":
        if len(n) == 4:
            B, H, L, E = n
            Hkv = H
        elif len(n) == 5:
            B, H, Hkv, L, E = n
        else:
            raise ValueError(f"bad shape {item!r}: prefill takes BxHxLxE or BxHxHkvxLxE")
        return Shape("prefill", B, H, Hkv, L, L, E, causal)
    if mode == "decode":
        if len(n) != 5:
            raise ValueError(f"bad shape {item!r}: decode takes BxHxHkvxSxE")
        B, H, Hkv, S, E = n
        return Shape("decode", B, H, Hkv, 1, S, E, causal)
    raise ValueError(f"bad shape {item!r}: mode must be prefill or decode")


def parse_shapes(text: Optional[str], device: str = "cpu") -> list:
    """A preset name (scaled down on CPU) or a comma-separated LIST (used as given)."""
    text = (text or "default").strip()
    if text in PRESETS:
        shapes = PRESETS[text]
        if device != "cuda":
            shapes = [scale_for_cpu(s) for s in shapes]
        return _dedupe(shapes)
    items = [i for i in text.split(",") if i.strip()]
    if not items:
        raise ValueError("no shapes given")
    return _dedupe(parse_shape(i) for i in items)


# --- formulas --------------------------------------------------------------------------------


def forward_flops(shape: Shape) -> float:
    f = 4.0 * shape.B * shape.H * shape.L * shape.S * shape.E
    return f / 2 if shape.causal else f


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


# --- statistics ------------------------------------------------------------------------------

def _quartiles(xs: list) -> tuple:
    s = sorted(xs)
    if len(s) == 1:
        return s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[2]


def robust_stats(times_ms: list) -> dict:
    """Median and IQR after dropping samples beyond 1.5 IQR of the quartiles."""
    if not times_ms:
        raise ValueError("no samples")
    q1, q3 = _quartiles(times_ms)
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    kept = [t for t in times_ms if lo <= t <= hi] or list(times_ms)
    k1, k3 = _quartiles(kept)
    return {"median_ms": statistics.median(kept), "iqr_ms": k3 - k1, "repeats": len(kept),
            "dropped": len(times_ms) - len(kept)}


# --- inputs, reference and checks ------------------------------------------------------------

def check_shape(shape: Shape, max_scores: Optional[int] = None) -> Shape:
    """The configuration the full correctness check runs at: the shape itself when the baseline's
    score matrix is small enough, else B=1, at most 2 kv heads (GQA ratio kept), L and S halved
    (decode: S halved) until it fits. Same E, causal flag and mode."""
    max_scores = CHECK_MAX_SCORES if max_scores is None else max_scores
    if shape.B * shape.H * shape.L * shape.S <= max_scores:
        return shape
    group = shape.H // shape.Hkv
    Hkv = min(shape.Hkv, 2)
    s = shape.replace(B=1, Hkv=Hkv, H=Hkv * group)
    while s.B * s.H * s.L * s.S > max_scores and s.S > 16:
        s = s.replace(L=max(1, s.L // 2), S=s.S // 2) if s.mode == "prefill" else s.replace(S=s.S // 2)
    return s


def why_unsupported(impl: Implementation, shape: Shape, dtype: str, device: str,
                    backward: bool = False) -> Optional[str]:
    """The reason the implementation's declared capabilities exclude this shape (None if inside).
    Unlike Case.fit the shape is never changed: a benchmark must time what it says."""
    caps = impl.capabilities
    why = caps.why_not(device=device, dtype=dtype, is_causal=shape.causal, gqa=shape.gqa,
                       autograd=backward, seq_len=max(shape.L, shape.S), head_dim=shape.E)
    if why is None and shape.causal and shape.L != shape.S and caps.causal != "top_left":
        why = f"causal alignment {caps.causal} differs from the benchmark's top_left for L != S"
    return why


def case_for(shape: Shape, dtype: str, device: str, seed: int = 0, alignment: str = "top_left") -> Case:
    return Case(B=shape.B, H=shape.H, Hkv=shape.Hkv, L=shape.L, S=shape.S, E=shape.E, Ev=shape.E,
                dtype=dtype, device=device, policy="causal()" if shape.causal else "full()",
                mask="is_causal" if shape.causal else "none", alignment=alignment, seed=seed)


def sample_inputs(case: Case, q, k, v, rows_max: int = SAMPLE_ROWS) -> tuple:
    """A small slice of a (possibly huge) configuration that the float64 reference can afford:
    the first and last batch, the query heads of the first and last kv head, up to ``rows_max``
    evenly spaced query rows. Returns (Inputs, index function mapping a full output to the slice)."""
    from harness.reference import causal_bool

    B, H, L, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    bs = sorted({0, B - 1})
    kvs = sorted({0, Hkv - 1})
    hs = [kv * G + g for kv in kvs for g in range(G)]
    rows = sorted({int(round(x)) for x in torch.linspace(0, L - 1, min(L, rows_max)).tolist()})
    dev = q.device
    ib, ih, ikv, ir = (torch.tensor(x, device=dev) for x in (bs, hs, kvs, rows))

    def take(t, heads):
        return t.index_select(0, ib).index_select(1, heads)

    qs = take(q, ih).index_select(2, ir)
    ks, vs = take(k, ikv), take(v, ikv)
    if case.mask == "is_causal":
        mask = causal_bool(L, S, case.alignment, device=dev).index_select(0, ir)
        visible = mask.expand(len(bs), len(hs), len(rows), S)
    else:
        mask = None
        visible = torch.ones(len(bs), len(hs), len(rows), S, dtype=torch.bool, device=dev)
    sub = case.replace(B=len(bs), H=len(hs), Hkv=len(kvs), L=len(rows),
                       mask="bool" if mask is not None else "none", mask_shape="LS")
    inp = Inputs(sub, qs, ks, vs, mask, False, None, len(hs) != len(kvs), visible)
    return inp, (lambda out: take(out, ih).index_select(2, ir))


class ShapeData:
    """Everything about one (shape, dtype, device) that does not depend on the implementation:
    the check inputs with their float64 reference, same-dtype baseline and logit bounds (computed
    once and shared by every implementation), and the timed inputs."""

    def __init__(self, shape: Shape, dtype: str, device: str, seed: int = 0):
        self.shape, self.dtype, self.device, self.seed = shape, dtype, device, seed
        self.check = check_shape(shape)
        self.exact = self.check == shape
        self.case = case_for(self.check, dtype, device, seed)
        self.inputs = self.case.materialize()
        self._ref = self._base = self._absmax = None
        self._grads: dict = {}
        if self.exact:
            self.full_case = self.case
            self.q, self.k, self.v = self.inputs.q, self.inputs.k, self.inputs.v
        else:
            self.full_case = case_for(shape, dtype, device, seed)
            g = torch.Generator(device=device).manual_seed(seed + 1)
            dt = DTYPES[dtype]
            mk = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dt)  # noqa: E731
            self.q = mk(shape.B, shape.H, shape.L, shape.E)
            self.k = mk(shape.B, shape.Hkv, shape.S, shape.E)
            self.v = mk(shape.B, shape.Hkv, shape.S, shape.E)
        self.kwargs = dict(attn_mask=None, is_causal=shape.causal, scale=None, enable_gqa=shape.gqa)

    @property
    def ref(self):
        if self._ref is None:
            self._ref = self.inputs.reference()
        return self._ref

    @property
    def baseline(self):
        if self._base is None:
            self._base = baselines(self.inputs)  # every legitimate scale order, as the suites judge
        return self._base

    @property
    def logit_absmax(self):
        if self._absmax is None:
            self._absmax = self.inputs.logit_absmax()
        return self._absmax

    def cotangent(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 2)
        s = self.check
        return torch.randn(s.B, s.H, s.L, s.E, generator=g).to(DTYPES[self.dtype]).to(self.device)

    def grads(self, same_dtype: bool):
        from harness.probes import reference_grads

        if same_dtype not in self._grads:
            self._grads[same_dtype] = reference_grads(self.inputs, self.cotangent(), same_dtype=same_dtype)
        return self._grads[same_dtype]


def judge_output(impl: Implementation, out: torch.Tensor, inp: Inputs, ref, baseline, logit_absmax,
                 factor: float, what: str):
    """probes.compare_output with cached reference numbers; PropertyViolation when over."""
    from harness.probes import PropertyViolation, compare_output

    cmp = compare_output(out, inp, impl.capabilities, factor, ref, baseline, logit_absmax=logit_absmax)
    if not cmp.ok:
        raise PropertyViolation(cmp.describe(what))
    return cmp


def check_forward(impl: Implementation, data: ShapeData, factor: float = FORWARD_FACTOR):
    """Call the implementation on the check configuration and hold it to the reference. Raises
    PropertyViolation (wrong), ImplementationError (raised or hung), or pytest's skip exception
    ``unsupported: ...`` (NotImplementedError); returns the Comparison."""
    from harness import probes

    d = data.inputs
    ref, baseline, absmax = data.ref, data.baseline, data.logit_absmax  # before the kernel runs
    inp = d.replace(q=d.q.clone(), k=d.k.clone(), v=d.v.clone())  # the cached inputs stay pristine
    out = probes.call(impl, inp, timeout=CHECK_TIMEOUT_S)
    for name, got, orig in zip("qkv", (inp.q, inp.k, inp.v), (d.q, d.k, d.v)):
        if not torch.equal(got, orig):
            raise probes.PropertyViolation(f"the call modified its input {name}")
    where = "" if data.exact else f" (checked at the reduced {data.check.label()})"
    return judge_output(impl, out, d, ref, baseline, absmax, factor, f"output{where}")


def check_backward(impl: Implementation, data: ShapeData, factor: float = BACKWARD_FACTOR):
    """Gradients on the check configuration against float64 autograd through the reference
    formula, with the same-dtype autograd gradients as the baseline."""
    from harness import probes

    got = probes.grads(impl, data.inputs, data.cotangent())
    return judge_grads(got, data, factor, f"checked at {data.check.label()}")


def judge_grads(got, data: "ShapeData", factor: float, where: str):
    """dq, dk, dv against the cached reference gradients (probes.compare_grads); the worst one."""
    from harness.probes import PropertyViolation, compare_grads

    worst = None
    for name, cmp in compare_grads(got, data.grads(False), data.grads(True), data.inputs, data.cotangent(),
                                   factor, float(data.logit_absmax.max())):
        if not cmp.ok:
            raise PropertyViolation(cmp.describe(f"{name} ({where})"))
        if worst is None or cmp.worst_ratio > worst.worst_ratio:
            worst = cmp
    return worst


# --- the timed call ----------------------------------------------------------------------------

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
    its timing (see the module docstring). Returns {"times" (ms, the clock reported), "pick",
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
    t_cp = best(lambda: dst.copy_(src), 5 if device == "cuda" else 3)
    del src, dst
    return {**extra, "matmul_tflops": 2.0 * n ** 3 / t_mm / 1e12, "copy_gbps": 2.0 * nbytes / t_cp / 1e9,
            "matmul": f"{n}x{n} @ {n}x{n} {dtype}, 2*n^3 FLOPs, best of repeats",
            "copy": f"{nbytes / 2 ** 20:.0f} MiB device copy, read + write bytes, best of repeats"}


# --- one (implementation, shape) -------------------------------------------------------------

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


# --- baselines ---------------------------------------------------------------------------------

def entry_key(e: dict) -> tuple:
    s = e["shape"]
    return (e["impl"], e["mode"], e.get("direction", "forward"),
            tuple((k, s[k]) for k in ("B", "H", "Hkv", "L", "S", "E", "causal")), e["dtype"], e["device"])


def find_slowdowns(current: list, baseline: list, threshold: float = 0.05) -> list:
    """Entries whose median is more than ``threshold`` (a fraction) above the baseline's."""
    old = {entry_key(e): e for e in baseline}
    slow = []
    for e in current:
        o = old.get(entry_key(e))
        if o is None or not o.get("median_ms"):
            continue
        ratio = e["median_ms"] / o["median_ms"]
        if ratio > 1.0 + threshold:
            slow.append({"impl": e["impl"], "mode": e["mode"], "direction": e.get("direction", "forward"),
                         "shape": e["shape"], "dtype": e["dtype"], "device": e["device"],
                         "baseline_ms": o["median_ms"], "median_ms": e["median_ms"], "slowdown": ratio - 1.0})
    return slow


def load_baseline(path) -> list:
    with open(path) as f:
        rep = json.load(f)
    if not isinstance(rep, dict) or not isinstance(rep.get("throughput"), list):
        raise ValueError(f"{path}: no \"throughput\" list (not an `attn-harness bench` report.json)")
    return rep["throughput"]


# --- tables ------------------------------------------------------------------------------------

def _fmt_bytes(n) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _fmt_ms(e) -> str:
    return f"{e['median_ms']:.3g} ±{e['iqr_ms']:.2g}"


def table_rows(rep: dict) -> dict:
    """{section title: (headers, rows)}, one row per (shape, direction), columns per implementation."""
    impls = list(dict.fromkeys([i["name"] for i in rep.get("implementations", [])] +
                               [e["impl"] for e in rep.get("throughput", [])]))
    entries = {(e["impl"], e["mode"], e.get("direction", "forward"), json.dumps(e["shape"], sort_keys=True)): e
               for e in rep.get("throughput", [])}
    other = {}
    for r in rep.get("bench_failures", []):
        other[(r["impl"], r.get("mode"), r.get("direction", "forward"), json.dumps(r["shape"], sort_keys=True))] = "FAIL"
    for r in rep.get("bench_unsupported", []):
        other[(r["impl"], r.get("mode"), r.get("direction", "forward"), json.dumps(r["shape"], sort_keys=True))] = "unsupported"
    dtype = rep.get("options", {}).get("dtype", "float32")
    out = {}
    for mode, direction in (("prefill", "forward"), ("prefill", "backward"), ("decode", "forward")):
        shapes = [s for s in rep.get("shapes", []) if s["mode"] == mode]
        if direction == "backward" and not rep.get("options", {}).get("backward"):
            continue
        if not shapes:
            continue
        thr = "TFLOP/s" if mode == "prefill" else "GB/s"
        headers = ["shape"] + (["L×S scores"] if mode == "prefill" else ["K+V bytes"])
        for n in impls:
            headers += [f"{n} ms", f"{n} {thr}"] + ([f"{n} TFLOP/s"] if mode == "decode" else []) + [
                f"{n} %peak", f"{n} peak mem"]
        rows = []
        for s in shapes:
            sh = Shape(**s)
            key_shape = json.dumps(sh.to_dict(), sort_keys=True)
            row = [sh.label(), _fmt_bytes(scores_bytes(sh, dtype) if mode == "prefill" else kv_bytes(sh, dtype))]
            for n in impls:
                e = entries.get((n, mode, direction, key_shape))
                width = 5 if mode == "decode" else 4
                if e is None:
                    row += [other.get((n, mode, direction, key_shape), "—")] + [""] * (width - 1)
                    continue
                frac = "" if e["fraction_of_peak"] is None else f"{100 * e['fraction_of_peak']:.1f}%"
                if mode == "prefill":
                    row += [_fmt_ms(e), f"{e['tflops']:.3g}", frac, _fmt_bytes(e["peak_mem_bytes"])]
                else:
                    row += [_fmt_ms(e), f"{e['gbps']:.3g}", f"{e['tflops']:.3g}", frac, _fmt_bytes(e["peak_mem_bytes"])]
            rows.append(row)
        title = f"{mode} ({direction})" if mode == "prefill" else "decode (forward, one query token)"
        out[title] = (headers, rows)
    return out


def notes(rep: dict) -> list:
    mp = rep.get("machine_peak", {})
    o = rep.get("options", {})
    methods = sorted({e.get("peak_mem_method", "") for e in rep.get("throughput", [])} - {""})
    lines = [
        f"ms: median ±IQR over the timed repeats (outliers beyond 1.5 IQR dropped), fresh input values every "
        f"forward repeat but one (clones of the checked inputs), every timed output checked afterwards; "
        f"figures above {PEAK_MARGIN:g}x this run's measured peak rejected; device {o.get('device')}, dtype {o.get('dtype')}.",
        f"TFLOP/s = FLOPs / median / 1e12 with FLOPs = {FLOPS_FORMULA}.",
        f"GB/s (decode) = bytes / median / 1e9 (GB = 1e9 bytes) with bytes = {BYTES_FORMULA}.",
        f"%peak: prefill TFLOP/s over this run's matmul ({mp.get('matmul_tflops', float('nan')):.3g} TFLOP/s, "
        f"{mp.get('matmul', '')}); decode GB/s over this run's copy ({mp.get('copy_gbps', float('nan')):.3g} GB/s, "
        f"{mp.get('copy', '')}).",
        "peak mem: extra bytes allocated during one call above its inputs (output + workspace), measured with "
        + (", ".join(methods) or "-") + (". On CPU this sees torch's CPU allocator only (approximate)."
                                          if o.get("device") != "cuda" else ".")
        + " Compare with the L×S scores column: a kernel at or above it materialises the score matrix.",
    ]
    return lines


def render_tables(rep: dict, fmt: str = "simple") -> str:
    from tabulate import tabulate

    parts = []
    for title, (headers, rows) in table_rows(rep).items():
        parts += [f"{'## ' if fmt == 'github' else ''}{title}", "",
                  tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True), ""]
    parts += [("- " if fmt == "github" else "") + n for n in notes(rep)]
    flagged = [e for e in rep.get("throughput", []) if e.get("flags")]
    if flagged:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Flagged timings", ""]
        for e in flagged:
            parts.append(f"{'- ' if fmt == 'github' else '  '}FLAGGED {e['impl']} · {Shape(mode=e['mode'], **e['shape']).label()} · "
                         f"{e.get('direction', 'forward')}: " + "; ".join(e["flags"]))
    fails = rep.get("bench_failures", [])
    if fails:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Correctness failures (no timing recorded)", ""]
        for f in fails:
            parts.append(f"{'- ' if fmt == 'github' else '  '}{f['impl']} · {Shape(mode=f['mode'], **f['shape']).label()} · "
                         f"{f.get('direction', 'forward')}: {f['message']}".replace("\n", " "))
    uns = rep.get("bench_unsupported", [])
    if uns:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Unsupported (declared capabilities or NotImplementedError)", ""]
        seen = set()
        for u in uns:
            key = (u["impl"], u["message"])
            if key in seen:
                continue
            seen.add(key)
            parts.append(f"{'- ' if fmt == 'github' else '  '}{u['impl']}: {u['message']}")
    slow = rep.get("slowdowns")
    if slow is not None:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Against the baseline "
                      f"({rep.get('options', {}).get('baseline')}, threshold "
                      f"{100 * rep.get('options', {}).get('slowdown', 0.05):.0f}%)", ""]
        if not slow:
            parts.append("no slowdowns")
        for s in slow:
            parts.append(f"{'- ' if fmt == 'github' else '  '}SLOWER {s['impl']} · {Shape(mode=s['mode'], **s['shape']).label()} · "
                         f"{s['direction']}: {s['baseline_ms']:.3g} ms -> {s['median_ms']:.3g} ms "
                         f"(+{100 * s['slowdown']:.1f}%)")
    return "\n".join(parts)


def to_markdown(rep: dict) -> str:
    env = rep.get("environment", {})
    head = ["# attention-harness throughput", "",
            f"Created {rep.get('created')} · torch {env.get('torch')} · {env.get('gpu') or env.get('cpu')} "
            f"({env.get('cpu_count')} CPUs) · command `{' '.join(rep.get('command') or [])}`", "", ""]
    return "\n".join(head) + render_tables(rep, "github") + "\n"


# --- driver ----------------------------------------------------------------------------------------

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
