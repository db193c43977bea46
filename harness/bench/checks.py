"""Correctness before timing: the check configuration, its inputs and cached float64 reference
(ShapeData), and judging forward outputs and gradients against them."""

from __future__ import annotations

from typing import Optional

import torch

from harness.bench.shapes import Shape
from harness.cases import DTYPES, Case, Inputs
from harness.contract import Implementation
from harness.tolerance import BACKWARD_FACTOR, FORWARD_FACTOR, baselines

# Largest B*H*L*S the exact configuration is checked at (the same-dtype baseline materialises
# the scores); beyond it the check runs on a reduced configuration with the same structure and
# the timed output is checked on sampled rows of the exact configuration.
CHECK_MAX_SCORES = 2 ** 25
CHECK_TIMEOUT_S = 600.0
SAMPLE_ROWS = 16


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
