"""F. Kernels written to flash_attn's signatures: every declared variant against the float64 reference.

Runs for implementations checked with ``--api flash_attn`` (``flash_attn_func``,
``flash_attn_varlen_func``, ``flash_attn_with_kvcache``); unsupported for SDPA-contract kernels.
Catches: windows off by one or ignored, soft-cap applied after the mask, twice or before the
scale, ALiBi with the wrong sign or offset, sinks ignored or given a value, causal aligned
top-left, an LSE in base 2 or NaN for empty rows, FP8 descales applied twice or not at all,
split-KV partials merged without their LSEs.
"""

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness import probes
from harness.flash import probes as fp
from harness.flash import reference as R
from harness.flash.cases import FlashCase
from harness.flash.strategies import flash_cases

ALL_ON = FlashCase(B=2, H=2, Hkv=1, seqlens_q=(3, 3), seqlens_k=(7, 7), causal=True, window=(2, 0), softcap=5.0,
                   alibi=True, sinks=True, new=1, page_size=4, seed=1)


@given(case=flash_cases())
@example(case=FlashCase(B=1, seqlens_q=(4,), seqlens_k=(6,), causal=True))
@example(case=ALL_ON)
@example(case=FlashCase(B=3, H=2, Hkv=2, seqlens_q=(0, 1, 5), seqlens_k=(3, 0, 9), window=(1, 1), seed=2))
def test_variants_match_reference(target, case):
    """Every declared variant at once (window, soft-cap, ALiBi, sinks, explicit scale, causal
    bottom-right, ragged or paged inputs, appended tokens, splits) matches the float64 reference
    within the per-row bound."""
    kernel = fp.kernel_of(target)
    case = fp.fit(target, case)
    inp = case.materialize()
    fp.judge(target, fp.call(kernel, inp), inp)


@given(case=flash_cases())
@example(case=FlashCase(B=1, seqlens_q=(3,), seqlens_k=(5,), causal=True))
@example(case=FlashCase(B=2, H=2, Hkv=2, seqlens_q=(4, 4), seqlens_k=(2, 2), causal=True, sinks=True, seed=3))
def test_lse_matches_reference(target, case):
    """The returned log-sum-exp (natural log, per head and query row) matches the reference; a
    row with no visible key (and no sink) has LSE -inf (or +inf where declared), never NaN."""
    kernel = fp.require(target, "lse")
    case = fp.fit(target, case)
    inp = case.materialize()
    res = fp.call(kernel, inp, lse=True)
    fp.judge_lse(target, res, inp)


WINDOW = dict(window=st.tuples(st.integers(0, 6), st.sampled_from([0, 1, 2, -1])), softcap=st.sampled_from([0.0, 5.0]))


@given(case=flash_cases(**WINDOW))
@example(case=FlashCase(B=1, seqlens_q=(6,), seqlens_k=(6,), window=(2, 1)))
@example(case=FlashCase(B=1, seqlens_q=(2,), seqlens_k=(9,), window=(3, 0), causal=True, softcap=5.0))
def test_window_weights_zero(target, case):
    """Keys outside a query's window (and outside its sequence, its pages, its cache length) get
    exactly zero weight, read off with one-hot values over every value slot."""
    kernel = fp.require(target, "window")
    case = fp.fit(target, case)
    inp = case.materialize()
    fp.assert_no_forbidden_weight(fp.effective_weights(kernel, inp), inp, "window")


@given(case=flash_cases(**WINDOW), pick=st.floats(0, 1))
@example(case=FlashCase(B=1, seqlens_q=(6,), seqlens_k=(6,), window=(2, 1)), pick=0.9)
def test_window_gradients_zero(target, case, pick):
    """The gradient of one query row's output with respect to every key and value outside its
    window is exactly zero."""
    kernel = fp.require(target, "window", modes=("func", "varlen"))
    target.require(autograd=True)
    case = fp.fit(target, case)
    inp = case.materialize()
    T = sum(case.seqlens_q)
    if T == 0:
        return
    t = min(T - 1, int(pick * T))
    leaves = {n: inp.tensors[n].detach().clone().requires_grad_(True) for n in ("q", "k", "v")}
    out = probes.guarded(kernel.name, lambda: kernel.fn(**fp.keywords(kernel, inp, tensors=leaves)))
    out = (out[0] if isinstance(out, (tuple, list)) else out).reshape(T, case.H, case.E)
    cot = torch.zeros_like(out)
    cot[t] = torch.randn(case.H, case.E, generator=torch.Generator().manual_seed(case.seed)).to(out.dtype)
    dk, dv = torch.autograd.grad(out, (leaves["k"], leaves["v"]), cot, allow_unused=True)
    flat = leaves["v"].reshape(-1, case.Hkv, case.E).shape[0]
    forbid = ~fp.allowed_slots(inp, flat)[t]
    for name, g in (("k", dk), ("v", dv)):
        if g is None:
            continue
        g = g.reshape(flat, case.Hkv, case.E)[forbid]
        if g.numel() and bool((g != 0).any()):
            raise fp.PropertyViolation(f"d out[{fp._where(inp, t)}] / d {name}: {int((g != 0).any(-1).any(-1).sum())} "
                                       f"slots outside the window have non-zero gradient (max {float(g.abs().max()):.3g})")


@given(case=flash_cases(softcap=st.sampled_from([1.0, 5.0]), magnitude=st.sampled_from([30.0, 200.0])))
@example(case=FlashCase(B=1, seqlens_q=(5,), seqlens_k=(5,), causal=True, softcap=1.0, magnitude=200.0))
@example(case=FlashCase(B=1, seqlens_q=(4,), seqlens_k=(8,), window=(2, 0), softcap=5.0, magnitude=30.0, seed=4))
def test_softcap_beyond_cap(target, case):
    """With logits far beyond the cap (30-200x), the capped attention still matches the
    reference: the region where a cap applied after the mask (masked keys at -cap), twice, or to
    unscaled scores is wrong."""
    kernel = fp.require(target, "softcap")
    case = fp.fit(target, case)
    inp = case.materialize()
    fp.judge(target, fp.call(kernel, inp), inp, "output with logits beyond the soft-cap")


@given(case=flash_cases(sinks=st.just(True), H=st.sampled_from([2, 4]), magnitude=st.just(1.0)),
       bump=st.sampled_from([3.0, -2.0]))
@example(case=FlashCase(B=1, H=2, Hkv=2, seqlens_q=(3,), seqlens_k=(4,), sinks=True), bump=3.0)
def test_sinks_take_mass_not_value(target, case, bump):
    """A sink takes softmax mass but adds no value: all-zero values give exactly zero output,
    all-one values give 1 - p(sink) (within the bound), and changing one head's sink leaves every
    other head bitwise unchanged while changing that head."""
    kernel = fp.require(target, "sinks")
    case = fp.fit(target, case)
    inp = case.materialize()
    vname = fp.value_name(kernel)
    zero = {vname: torch.zeros_like(inp.tensors[vname])}
    ones = {vname: torch.ones_like(inp.tensors[vname])}
    if case.new:
        zero["v"], ones["v"] = torch.zeros_like(inp.tensors["v"]), torch.ones_like(inp.tensors["v"])
    out0 = fp.call(kernel, inp, tensors=zero).out
    if bool((out0 != 0).any()):
        raise fp.PropertyViolation(f"values all zero but {int((out0 != 0).any(-1).sum())} (row, head) outputs are not: "
                                   f"the sink contributes a value (max |out| {float(out0.abs().max()):.3g})")
    res1 = fp.call(kernel, inp, tensors=ones)
    fp.judge(target, res1, inp, "output with all-one values (1 - p(sink))",
             ref=R.reference(inp, value_override=[torch.ones_like(v) for v in inp.vs])[0])
    base = fp.call(kernel, inp).out
    h = case.seed % case.H
    sinks = inp.sinks.clone()
    sinks[h] += bump
    moved = fp.call(kernel, inp, learnable_sink=sinks).out
    others = torch.ones(case.H, dtype=torch.bool)
    others[h] = False
    same = ((base == moved) | (torch.isnan(base) & torch.isnan(moved)))[:, others]
    if not bool(same.all()):
        raise fp.PropertyViolation(f"changing head {h}'s sink changed other heads' outputs "
                                   f"({int((~same).any(-1).sum())} (row, head) pairs)")
    # "applied": the rows where the sink holds real mass must move
    _, lse = R.reference(inp)
    p_sink = torch.exp(inp.sinks[h].double() - lse[h])
    # a small p(sink) grows about exp(bump) times; below a few ulps of the dtype nothing need move
    # (the output moves by about p(1 - p): a row with no key to read is all sink and stays zero)
    heavy = p_sink * (1 - p_sink) * max(1.0, math.exp(bump)) > 16 * torch.finfo(res1.out.dtype).eps
    if bool(heavy.any()) and bool((base[heavy, h] == moved[heavy, h]).all()):
        raise fp.PropertyViolation(f"changing head {h}'s sink by {bump:+g} changed nothing in {int(heavy.sum())} rows "
                                   f"where it holds up to {float(p_sink.max()):.3g} of the mass: the sink is ignored")


@given(case=flash_cases(), fp8=st.sampled_from(fp.fp8_names()))
@example(case=FlashCase(B=1, H=2, Hkv=1, seqlens_q=(4,), seqlens_k=(6,), causal=True), fp8="float8_e4m3fn")
def test_fp8_matches_dequantised_reference(target, case, fp8):
    """FP8 inputs with per-(batch, kv head) q/k/v descales match the float64 reference on the
    dequantised inputs, within the bound set by a plain computation on them (bfloat16, and
    FP8-rounded probabilities). Runs once, under the kernel's first declared dtype."""
    kernel = fp.kernel_of(target)
    if not kernel.caps.fp8:
        pytest.skip(f"unsupported: {kernel.name} declares no FP8 dtypes")
    if target.dtype != kernel.caps.dtypes[0]:
        pytest.skip(f"unsupported: FP8 cases run once, under {kernel.caps.dtypes[0]}")
    if fp8 not in kernel.caps.fp8:
        fp8 = kernel.caps.fp8[0]
    case = fp.fit(target, case, dtype=fp8)
    inp = case.materialize()
    fp.judge(target, fp.call(kernel, inp), inp, f"{fp8} output")


@given(case=flash_cases(num_splits=st.sampled_from([2, 3, 5]), seqlens_k=st.lists(st.integers(6, 40), min_size=4,
                                                                                  max_size=4).map(tuple)))
@example(case=FlashCase(mode="kvcache", B=1, seqlens_q=(1,), seqlens_k=(17,), num_splits=3))
def test_split_kv_matches_reference(target, case):
    """Split-KV decode (num_splits > 1) matches the reference within the bound, as the unsplit
    call does: partials merged by their LSEs."""
    kernel = fp.require(target, "num_splits", modes=("kvcache",))
    case = fp.fit(target, case)
    inp = case.materialize()
    fp.judge(target, fp.call(kernel, inp, num_splits=1), inp, "num_splits=1 output")
    fp.judge(target, fp.call(kernel, inp), inp, f"num_splits={case.num_splits} output")
