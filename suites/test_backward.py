"""H. Backward: dq, dk, dv against float64 autograd under the dtype-aware rule (3x by
default), and exact zeros at masked, future and padded key positions.

Catches: a backward that ignores the mask, a dq missing the scale, any gradient formula bug
in a custom autograd.Function whose forward is exactly right.
"""

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case, real_case

POL = ("none", "causal", "key_padding", "document")


@given(case=hs.cases(policies=POL))
@example(case=Case(B=2, H=4, Hkv=2, L=5, S=7, E=16, Ev=8, policy="key_padding([3, 7])", mask="bool", mask_shape="B11S"))
@example(case=Case(B=1, H=1, Hkv=1, L=6, S=6, E=16, Ev=16, policy="causal()", mask="is_causal", scale=0.3))
@example(case=real_case(5))
def test_gradients_match_reference(target, case):
    """dq, dk and dv match float64 autograd, each within backward-factor times the same-dtype
    PyTorch gradient error."""
    target.require(autograd=True)
    case = target.fit(case)
    inp = case.materialize()
    assume(bool(inp.has_visible.all()))  # gradients of rows with no key are defined by nothing
    g = torch.Generator().manual_seed(case.seed)
    cot = torch.randn(case.B, case.H, case.L, case.Ev, generator=g)
    got = probes.grads(target.impl, inp, cot, target)
    ref = probes.reference_grads(inp, cot)
    base = probes.reference_grads(inp, cot, same_dtype=True)
    for name, cmp in probes.compare_grads(got, ref, base, inp, cot, target.backward_factor):
        target.record(cmp, gradient=name, gradient_path=probes.last_grad_path["path"])
        if not cmp.ok:
            raise probes.PropertyViolation(cmp.describe(name) + probes._grad_path_note())


@given(case=hs.cases(policies=("causal", "key_padding", "document", "sliding_window", "rag")), row=st.integers(0, 1000))
@example(case=Case(B=1, H=2, Hkv=1, L=6, S=6, E=16, Ev=16, policy="causal()", mask="bool", mask_shape="LS"), row=2)
@example(case=Case(B=1, H=1, Hkv=1, L=6, S=3, E=16, Ev=16, policy="causal()", mask="is_causal"), row=4)
def test_masked_gradients_zero(target, case, row):
    """Keys one query row may not read get exactly zero dk and dv from that row's output."""
    target.require(autograd=True)
    case = target.fit(case)
    inp = case.materialize()
    i = row % case.L
    keys = ~inp.kv_visible()[:, :, i]  # (B, Hkv, S)
    assume(bool(keys.any()))
    rows = probes.blocked_rows(inp, keys, target.caps)
    g = torch.Generator().manual_seed(case.seed)
    cot = torch.randn(case.B, case.H, case.L, case.Ev, generator=g) * rows.unsqueeze(-1)
    _, dk, dv = probes.grads(target.impl, inp, cot, target)
    probes.assert_zero(dk, keys, f"dk at keys row {i} may not read")
    probes.assert_zero(dv, keys, f"dv at keys row {i} may not read")
