"""B. Row normalization, checked black-box.

Catches: softmax over the wrong axis, unnormalised or double-normalised weights, mask after
softmax without renormalising, values and weights confused, a 0/1 boolean mask added to scores.
"""

import torch
from hypothesis import example, given

from harness import probes
from harness import strategies as hs
from harness.cases import Case, real_case
from harness.contract import Implementation
from harness.reference import attention_naive, attention_weights_reference
from harness.tolerance import compare

NORM_POLICIES = ("none", "causal", "key_padding", "padded_causal", "document", "sliding_window")


@given(case=hs.cases(policies=NORM_POLICIES))
@example(case=Case(B=2, H=2, Hkv=1, L=6, S=9, E=16, Ev=8, policy="key_padding([3, 9])", mask="bool", mask_shape="B11S"))
def test_ones_values_give_ones(target, case):
    """With V = ones every row that has a visible key outputs exactly one (within the bound):
    the weights sum to one over the visible keys."""
    case = target.fit(case)
    inp = case.materialize()
    inp = inp.replace(v=torch.ones_like(inp.v))
    probes.judge(target, probes.call(target.impl, inp), inp, what="output with V = ones",
                 rows=inp.has_visible)


@given(case=hs.cases(policies=NORM_POLICIES, max_heads=2, batch_max=2))
@example(case=Case(B=1, H=2, Hkv=2, L=5, S=5, E=8, Ev=8, policy="causal()", mask="is_causal"))
@example(case=real_case(3))
def test_effective_weights_match_reference(target, case):
    """Weights read off with one-hot values are non-negative and match the reference softmax
    row by row (V = identity, Ev columns per call)."""
    case = target.fit(case)
    inp = case.materialize()
    w = probes.effective_weights(target.impl, inp)
    if bool((w < 0).any()):
        raise probes.PropertyViolation(f"negative effective weight {float(w.min()):.3g}")
    ref = attention_weights_reference(inp.q, inp.k, causal_alignment=case.alignment,
                                      **{k: v for k, v in inp.kwargs().items()})
    base_impl = Implementation("same-dtype baseline", "", lambda *a, **kw: attention_naive(
        *a, causal_alignment=case.alignment, **{k: v for k, v in kw.items() if k != "dropout_p"}))
    base = probes.effective_weights(base_impl, inp)
    rows = inp.has_visible if target.caps.fully_masked_rows != "zero" else None
    cmp = compare(w, ref, base, inp.q.dtype, target.forward_factor, rows=rows, logit_absmax=inp.logit_absmax())
    target.record(cmp)
    if not cmp.ok:
        raise probes.PropertyViolation(cmp.describe("effective weights"))


@given(case=hs.cases(policies=NORM_POLICIES))
@example(case=Case(B=2, H=2, Hkv=1, L=6, S=9, E=16, Ev=8, policy="key_padding([3, 9])", mask="bool", mask_shape="B11S"))
def test_convex_hull(target, case):
    """Every output lies within the per-column range of the visible values (a convex combination)."""
    case = target.fit(case)
    inp = case.materialize()
    out = probes.call(target.impl, inp).detach().double()
    H, Hkv = case.H, case.Hkv
    v = inp.v.double().repeat_interleave(H // Hkv, dim=1).unsqueeze(2)  # (B, H, 1, S, Ev)
    vis = inp.visible.unsqueeze(-1)  # (B, H, L, S, 1)
    lo = torch.where(vis, v, torch.full_like(v, float("inf"))).amin(dim=3)
    hi = torch.where(vis, v, torch.full_like(v, float("-inf"))).amax(dim=3)
    rows = inp.has_visible
    slack = 8 * torch.finfo(inp.q.dtype).eps * inp.v.double().abs().amax().clamp(min=1.0)
    below = (out < lo - slack) | (out > hi + slack) | ~torch.isfinite(out)
    bad = below.any(-1) & rows
    if bool(bad.any()):
        b, h, i = (int(x) for x in bad.nonzero()[0])
        raise probes.PropertyViolation(
            f"{int(bad.sum())} rows leave the convex hull of their visible values; first at (b={b}, h={h}, "
            f"row={i}): output range [{float(out[b, h, i].min()):.4g}, {float(out[b, h, i].max()):.4g}] vs values "
            f"[{float(lo[b, h, i].min()):.4g}, {float(hi[b, h, i].max()):.4g}]")
