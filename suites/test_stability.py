"""G. Numerical stability under large logits.

Catches: no row-maximum subtraction (exp overflow to inf, then NaN), scores cast to half
precision before the softmax, masks after the softmax (forbidden keys whose logits dwarf the
visible ones swallow the weight), 0/1 boolean masks, and broken shift invariance.
"""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case
from harness.tolerance import nonfinite_counts

# Largest typical |logit| swept per dtype: float32 well past exp overflow (88), half precision up
# to where q.k itself stays finite in the dtype.
MAGNITUDES = {"float32": [30.0, 100.0, 1e3, 1e4, 3e4], "bfloat16": [30.0, 100.0, 1e3, 1e4],
              "float16": [12.0, 30.0, 100.0, 1e3]}
POL = ("none", "causal", "key_padding")


def _no_nan(out, inp, what):
    bad = inp.has_visible & ~torch.isfinite(out.detach().float()).all(-1)
    if bool(bad.any()):
        b, h, i = (int(x) for x in bad.nonzero()[0])
        o = out.detach().float()[bad]
        raise probes.PropertyViolation(f"{what}: {nonfinite_counts(int(torch.isnan(o).sum()), int(torch.isinf(o).sum()))} "
                                       f"in {int(bad.sum())} rows with a visible key; first (b={b}, h={h}, row={i})")


def _qk_in_half_range(case):
    """In float16, the magnitude lowered until max |q.k| <= 2^15: q.k = logit / scale, and past
    65504 it overflows a plain computation that scales the scores after the matmul (at E = 1 the
    products of two normals reach 12x their spread; a scale below 1/sqrt(E) grows q.k too)."""
    if case is None or case.dtype != "float16":
        return case
    inp = case.replace(dtype="float32").materialize()  # the same values, before float16 could overflow
    k = inp.k.double().repeat_interleave(case.H // case.Hkv, dim=1)
    qk = float((inp.q.double() @ k.transpose(-1, -2)).abs().max()) if inp.q.numel() and k.numel() else 0.0
    return case if qk <= 2 ** 15 else case.replace(magnitude=case.magnitude * 2 ** 15 / qk)


@given(case=hs.cases(policies=POL, scale=hs.scales(edges=True), mask_bias=hs.mask_biases()), level=st.integers(0, 4))
@example(case=Case(B=1, H=1, Hkv=1, L=4, S=4, E=16, Ev=16, magnitude=1e4), level=3)
# a negative scale at large logits: a row max taken before the scale is the row's minimum
@example(case=Case(B=1, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="causal()", mask="is_causal", scale=-0.5, magnitude=1e4), level=3)
@example(case=Case(B=2, H=1, Hkv=1, L=4, S=7, E=16, Ev=16, policy="key_padding([7, 3])", mask="float", mask_shape="B11S",
                   mask_bias=1e4, scale=10.0, magnitude=1e3), level=3)
def test_large_logits(target, case, level):
    """Logits from tens up to 1e4 and beyond (float32; half precision up to its safe range), with
    explicit scales down to 0 and below, and float-mask biases to -1.25e4: no NaN or Inf, and
    within the dtype-aware bound."""
    mags = MAGNITUDES[target.dtype]
    # an explicit magnitude (an @example) is capped at the dtype's sweep: past it, q.k itself
    # overflows a plain same-dtype computation that scales the scores after the matmul
    mag = mags[min(level, len(mags) - 1)] if case.magnitude == 1.0 else min(case.magnitude, mags[-1])
    case = _qk_in_half_range(target.fit(case.replace(magnitude=mag)))
    inp = case.materialize()
    out = probes.call(target.impl, inp)
    _no_nan(out, inp, f"|logit| ~ {case.magnitude:g}")
    probes.judge(target, out, inp)


@given(case=hs.cases(policies=POL), spread=st.integers(1, 4))
@example(case=Case(B=1, H=2, Hkv=2, L=8, S=8, E=16, Ev=16), spread=4)
def test_mixed_row_scales(target, case, spread):
    """Rows whose logits differ by orders of magnitude in one tensor (10^-3 up to 10^spread)."""
    case = target.fit(case)
    inp = case.materialize()
    g = torch.Generator().manual_seed(case.seed)
    hi = min(spread, 3 if target.dtype == "float16" else 4)
    exps = torch.empty(case.B, case.H, case.L, 1).uniform_(-3, hi, generator=g)
    inp = inp.replace(q=(inp.q.double() * 10.0 ** exps).to(inp.q.dtype))
    out = probes.call(target.impl, inp)
    _no_nan(out, inp, "rows of mixed scales")
    probes.judge(target, out, inp)


@given(case=hs.cases(policies=("none", "causal", "key_padding"), mask_kinds=("float",)), shift=st.sampled_from([1e2, 1e3, 1e4]))
@example(case=Case(B=1, H=1, Hkv=1, L=4, S=4, E=16, Ev=16, policy="causal()", mask="float", mask_shape="LS"), shift=1e4)
def test_shift_invariance(target, case, shift):
    """Every visible logit hugely negative: adding one constant to all visible logits (through a
    float mask) must not change the answer beyond the bound, and must not give NaN."""
    target.require(mask_kind="float")
    case = target.fit(case.replace(mask="float") if case.mask == "none" or case.mask == "is_causal" else case)
    inp = case.materialize()
    if target.dtype == "float16":
        shift = min(shift, 1e3)
    vis = inp.visible
    m = torch.where(vis, torch.full(vis.shape, -shift), torch.full(vis.shape, float("-inf"))).to(inp.q.dtype)
    shifted = inp.replace(attn_mask=m)
    out = probes.call(target.impl, shifted)
    _no_nan(out, shifted, f"every visible logit shifted by -{shift:g}")
    probes.judge(target, out, shifted, what=f"output with logits shifted by -{shift:g}")


@given(case=hs.cases(policies=("causal", "key_padding"), mask_kinds=("bool", "float", "is_causal")))
@example(case=Case(B=2, H=1, Hkv=1, L=4, S=6, E=16, Ev=16, policy="key_padding([2, 5])", mask="bool", mask_shape="B11S"))
# L == S with a fully padded sequence: its rows have no visible key (zero where so declared)
@example(case=Case(B=2, H=1, Hkv=1, L=4, S=4, E=16, Ev=16, policy="key_padding([0, 4])", mask="bool", mask_shape="B11S"))
def test_dominant_forbidden_keys(target, case):
    """Forbidden keys whose logits dwarf the visible ones still get zero weight: the output
    matches the reference computed without them."""
    case = target.fit(case)
    inp = case.materialize()
    forbidden = ~inp.kv_visible().any(dim=2) if case.policy != "causal()" else None
    if forbidden is None:  # causal: the future keys of the first half of the rows
        forbidden = (torch.arange(case.S) >= max(1, case.S // 2)).expand(case.B, case.Hkv, case.S)
    k, v = probes.perturb_keys(inp, forbidden, "adversarial", seed=case.seed)
    inp = inp.replace(k=k, v=v)
    out = probes.call(target.impl, inp)
    _no_nan(out, inp, "forbidden keys with dominant logits")
    probes.judge(target, out, inp, what="output with dominant forbidden keys")


@given(case=hs.cases(policies=POL), eps_=st.sampled_from([0.0, 1e-6, 1e-3]))
@example(case=Case(B=1, H=1, Hkv=1, L=3, S=8, E=16, Ev=16), eps_=0.0)
def test_near_ties(target, case, eps_):
    """Keys that are identical or nearly so (exact and near ties in the logits)."""
    case = target.fit(case)
    inp = case.materialize()
    g = torch.Generator().manual_seed(case.seed)
    k0 = inp.k[:, :, :1].double()
    k = (k0 + eps_ * torch.randn(inp.k.shape, generator=g, dtype=torch.float64)).to(inp.k.dtype)
    inp = inp.replace(k=k)
    out = probes.call(target.impl, inp)
    _no_nan(out, inp, "near ties")
    probes.judge(target, out, inp, what="output with tied keys")
