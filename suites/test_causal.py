"""C. Causal leakage, through is_causal, an explicit boolean tril mask and a float -inf mask.

Catches: causal mask off by one either way, wrong alignment when L != S, mask after softmax,
inverted polarity, 0/1 boolean masks, transposed masks, coarse block masks, backward ignoring
the mask. With L != S the implementation's declared alignment is what is checked.
"""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case, real_case

CAUSAL = dict(policies=("causal",), mask_kinds=("is_causal", "bool", "float"))
PERTURB = st.sampled_from(["random", "huge", "adversarial"])


def _future(inp, cut: float, caps):
    """Keys at or after a cut position, and the rows that may read none of them (rows with no
    visible key only where the declared contract fixes their output)."""
    S = inp.case.S
    j0 = 1 + int(cut * (S - 1)) if S > 1 else 1
    keys = torch.arange(S, device=inp.visible.device) >= j0
    return keys, probes.blocked_rows(inp, keys, caps)


@given(case=hs.cases(**CAUSAL, mask_bias=hs.mask_biases()), cut=st.floats(0, 1), how=PERTURB)
@example(case=Case(B=1, H=1, Hkv=1, L=4, S=4, E=16, Ev=16, policy="causal()", mask="is_causal"), cut=0.5, how="random")
@example(case=Case(B=1, H=2, Hkv=1, L=3, S=7, E=16, Ev=16, policy="causal()", mask="is_causal"), cut=0.2, how="adversarial")
@example(case=Case(B=1, H=1, Hkv=1, L=7, S=3, E=16, Ev=16, policy="causal()", mask="float", mask_shape="LS"), cut=0.5, how="huge")
@example(case=Case(B=1, H=1, Hkv=1, L=6, S=3, E=16, Ev=16, policy="causal()", mask="is_causal"), cut=0.5, how="random")
@example(case=real_case(2, policy="causal()", mask="is_causal"), cut=0.5, how="random")
# past keys' biases down to -1.25e4 next to the future's -inf (a finite stand-in for -inf lets the future in)
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16, policy="causal()", mask="float", mask_shape="1HLS", mask_bias=1e4),
         cut=0.4, how="random")
def test_future_perturbation_invariance(target, case, cut, how):
    """Changing keys and values at future positions leaves every earlier query's output bitwise
    unchanged."""
    case = target.fit(case)
    inp = case.materialize()
    keys, rows = _future(inp, cut, target.caps)
    out0 = probes.call_kept(target.impl, inp)
    k, v = probes.perturb_keys(inp, keys, how, seed=case.seed)
    out1 = probes.call(target.impl, inp, k=k, v=v)
    probes.assert_rows_unchanged(out0, out1, rows, f"{how} change to future keys/values (from key {int(keys.int().argmax())})")


@given(case=hs.cases(max_heads=2, batch_max=2, mask_bias=hs.mask_biases(), **CAUSAL))
@example(case=Case(B=1, H=1, Hkv=1, L=5, S=5, E=16, Ev=16, policy="causal()", mask="is_causal"))
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16, policy="causal()", mask="float", mask_shape="LS", mask_bias=1e4))
@example(case=Case(B=1, H=1, Hkv=1, L=3, S=6, E=16, Ev=16, policy="causal()", mask="is_causal"))
@example(case=Case(B=1, H=1, Hkv=1, L=6, S=3, E=16, Ev=16, policy="causal()", mask="is_causal"))
def test_future_weights_zero(target, case):
    """Under a causal mask every future weight is exactly zero (weights read off with one-hot
    values); the seed's exercise 2."""
    case = target.fit(case)
    inp = case.materialize()
    probes.assert_no_forbidden_weight(probes.effective_weights(target.impl, inp), inp, "future", target.caps)


@given(case=hs.cases(**CAUSAL), cut=st.floats(0, 1))
@example(case=Case(B=1, H=1, Hkv=1, L=6, S=6, E=16, Ev=16, policy="causal()", mask="bool", mask_shape="LS"), cut=0.5)
def test_future_gradients_zero(target, case, cut):
    """The gradient of out[i] with respect to k[j] and v[j], j > i, is exactly zero."""
    target.require(autograd=True)
    case = target.fit(case)
    inp = case.materialize()
    keys, rows = _future(inp, cut, target.caps)
    g = torch.Generator().manual_seed(case.seed)
    cot = torch.randn(case.B, case.H, case.L, case.Ev, generator=g) * rows.unsqueeze(-1)
    _, dk, dv = probes.grads(target.impl, inp, cot, target)
    where = keys.expand(case.B, case.Hkv, case.S)
    probes.assert_zero(dk, where, "d out[earlier rows] / d k[future]")
    probes.assert_zero(dv, where, "d out[earlier rows] / d v[future]")
