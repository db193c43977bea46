"""D. Padding leakage: ragged key-padding lengths per batch element (down to one real token),
as (B,1,1,S) and as full (B,1,L,S) masks; the seed's exercise 5.

Catches: ignored padding masks, inverted polarity, masks after softmax, 0/1 boolean masks,
kernels that normalise over the padded length, unmasked tail tiles, backward ignoring the mask.
"""

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness import activations as real
from harness.cases import Case

PAD = dict(policies=("key_padding",), mask_kinds=("bool", "float"))
PERTURB = st.sampled_from(["random", "huge", "adversarial"])


def _pad_keys(inp):
    return ~inp.kv_visible().any(dim=2)  # (B, Hkv, S): keys no query may read


@given(case=hs.cases(**PAD), how=PERTURB)
@example(case=Case(B=2, H=1, Hkv=1, L=4, S=5, E=16, Ev=16, policy="key_padding([1, 5])", mask="bool", mask_shape="B11S"), how="adversarial")
@example(case=Case(B=3, H=2, Hkv=1, L=3, S=6, E=16, Ev=16, policy="key_padding([2, 6, 1])", mask="float", mask_shape="B1LS"), how="huge")
@example(case=real.case(2), how="adversarial")
def test_padding_content_invariance(target, case, how):
    """Real tokens' outputs do not depend on what the padding contains (bitwise)."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    keys = _pad_keys(inp)
    rows = probes.blocked_rows(inp, keys)
    out0 = probes.call(target.impl, inp)
    k, v = probes.perturb_keys(inp, keys, how, seed=case.seed)
    probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                 f"{how} change to padded keys/values")


@given(case=hs.cases(**PAD), extra=st.integers(1, 40))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=4, E=16, Ev=16, policy="key_padding([1, 4])", mask="bool", mask_shape="B11S"), extra=13)
def test_padding_amount_invariance(target, case, extra):
    """Real tokens' outputs do not depend on how much padding follows (exercise 5): the same
    sequences padded to S and to S + extra both match the reference."""
    target.require_mask()
    case = target.fit(case)
    longer = case.replace(S=case.S + extra).fit(target.caps, target.dtype, target.device)
    assume(longer is not None)  # e.g. past the declared max_seq_len
    for c in (case, longer):
        inp = c.materialize()
        if c is longer:  # same real tokens: copy them in, the tail is fresh padding
            base = case.materialize()
            k, v = inp.k.clone(), inp.v.clone()
            k[:, :, :case.S], v[:, :, :case.S] = base.k, base.v
            inp = inp.replace(q=base.q, k=k, v=v)
        probes.judge(target, probes.call(target.impl, inp), inp, what=f"output with S={c.S}")


@given(case=hs.cases(max_heads=2, batch_max=3, **PAD))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=7, E=8, Ev=8, policy="key_padding([1, 6])", mask="bool", mask_shape="B11S"))
def test_padding_weights_zero(target, case):
    """Weights read off with one-hot values are exactly zero on padded keys."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    probes.assert_no_forbidden_weight(probes.effective_weights(target.impl, inp), inp, "padded")


@given(case=hs.cases(**PAD))
@example(case=Case(B=2, H=2, Hkv=1, L=4, S=6, E=16, Ev=16, policy="key_padding([2, 5])", mask="bool", mask_shape="B11S"))
def test_padding_gradients_zero(target, case):
    """Gradients with respect to padded keys and values are exactly zero."""
    target.require(autograd=True)
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    g = torch.Generator().manual_seed(case.seed)
    _, dk, dv = probes.grads(target.impl, inp, torch.randn(case.B, case.H, case.L, case.Ev, generator=g))
    keys = _pad_keys(inp)
    probes.assert_zero(dk, keys, "d out / d k[padding]")
    probes.assert_zero(dv, keys, "d out / d v[padding]")
