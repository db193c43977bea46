"""D. Padding leakage: ragged key padding per batch element (down to one real token, or none),
placed right, left, in the middle or at scattered keys, alone or under a causal mask (left
padding + causal gives fully masked query rows), as (B,1,1,S) and as full (B,1,L,S) masks; the
seed's exercise 5.

Catches: ignored padding masks, inverted polarity, masks after softmax, 0/1 boolean masks,
kernels that normalise over the padded length, unmasked tail tiles, backward ignoring the mask.
"""

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case, real_case

PAD = dict(policies=("key_padding",), mask_kinds=("bool", "float"))
# Padding placed right, left, in the middle or scattered (hs.padding_rows), and causal masks over
# padded batches, whose leading padded queries see no key at all.
PAD_CAUSAL = dict(policies=("key_padding", "padded_causal"), mask_kinds=("bool", "float"))
PERTURB = st.sampled_from(["random", "huge", "adversarial"])


def _pad_keys(inp):
    return ~inp.kv_visible().any(dim=2)  # (B, Hkv, S): keys no query may read


@given(case=hs.cases(**PAD_CAUSAL, mask_bias=hs.mask_biases()), how=PERTURB)
@example(case=Case(B=2, H=1, Hkv=1, L=4, S=5, E=16, Ev=16, policy="key_padding([1, 5])", mask="bool", mask_shape="B11S"), how="adversarial")
# real keys' biases down to -1.25e4 next to the padding's -inf (a finite stand-in for -inf lets padding in)
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="and_masks(causal(), key_visible(6, [[[2, 6]], [[0, 4]]]))",
                   mask="float", mask_shape="B1LS", mask_bias=1e4), how="random")
@example(case=Case(B=2, H=2, Hkv=2, L=6, S=6, E=16, Ev=16, policy="and_masks(causal(), key_visible(6, [[[2, 6]], [[0, 6]]]))",
                   mask="bool", mask_shape="B1LS", layout="q=transposed,k=transposed,v=transposed"), how="adversarial")
@example(case=Case(B=3, H=2, Hkv=1, L=3, S=6, E=16, Ev=16, policy="key_padding([2, 6, 1])", mask="float", mask_shape="B1LS"), how="huge")
@example(case=real_case(2), how="adversarial")
def test_padding_content_invariance(target, case, how):
    """Real tokens' outputs do not depend on what the padding contains (bitwise)."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    keys = _pad_keys(inp)
    rows = probes.blocked_rows(inp, keys)
    out0 = probes.call_kept(target.impl, inp)
    k, v = probes.perturb_keys(inp, keys, how, seed=case.seed)
    probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                 f"{how} change to padded keys/values")


@given(case=hs.cases(**PAD), extra=st.integers(1, 40), at=st.integers(0, 2**16))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=4, E=16, Ev=16, policy="key_padding([1, 4])", mask="bool", mask_shape="B11S"), extra=13, at=0)
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=6, E=16, Ev=16, policy="key_visible(6, [[[3, 6]], [[1, 6]]])", mask="bool",
                   mask_shape="B11S"), extra=5, at=6)
def test_padding_amount_invariance(target, case, extra, at):
    """Real tokens' outputs do not depend on how much padding there is (exercise 5), wherever it
    sits: the same real tokens with ``extra`` more padded keys inserted (at the end for ``at``=0,
    anywhere else otherwise, so left, middle and scattered padding grow too) both match the
    reference. Key order carries no meaning without a causal mask, so any insertion point holds."""
    target.require_mask()
    case = target.fit(case)
    vis = case.visible()[:, 0, 0]  # (B, S): key padding depends on the batch element only
    pos = case.S - at % (case.S + 1)
    keep = [i for i in range(case.S + extra) if not pos <= i < pos + extra]
    grown = torch.zeros(case.B, case.S + extra, dtype=torch.bool)
    grown[:, keep] = vis
    rows = ["".join("1" if x else "0" for x in r) for r in grown.tolist()]
    longer = case.replace(S=case.S + extra, policy=hs.padding_spec(rows)).fit(target.caps, target.dtype, target.device)
    assume(longer is not None)  # e.g. past the declared max_seq_len
    base = case.materialize()
    probes.judge(target, probes.call(target.impl, base), base, what=f"output with S={case.S}")
    inp = longer.materialize()
    k, v = inp.k.clone(), inp.v.clone()  # same real tokens at their new positions, fresh padding
    k[:, :, keep], v[:, :, keep] = base.k, base.v
    inp = inp.replace(q=base.q, k=k, v=v)
    probes.judge(target, probes.call(target.impl, inp), inp,
                 what=f"output with {extra} more padded keys inserted at {pos} (S={longer.S})")


@given(case=hs.cases(max_heads=2, batch_max=3, mask_bias=hs.mask_biases(), **PAD_CAUSAL))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=7, E=8, Ev=8, policy="key_padding([1, 6])", mask="bool", mask_shape="B11S"))
@example(case=Case(B=2, H=2, Hkv=1, L=4, S=7, E=8, Ev=8, policy="key_padding([7, 3])", mask="float", mask_shape="BHLS", mask_bias=1e4))
def test_padding_weights_zero(target, case):
    """Weights read off with one-hot values are exactly zero on padded keys."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    probes.assert_no_forbidden_weight(probes.effective_weights(target.impl, inp), inp, "padded")


@given(case=hs.cases(**PAD_CAUSAL))
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
