"""A. Correctness against the float64 reference, per row, under the dtype-aware rule.

Catches: missing or ignored scale, mask after softmax, values/weights confused, softmax over the
wrong axis, GQA heads tiled instead of interleaved, dropout left on, online softmax without
rescaling, dropped or unmasked tail tiles, truncated long sequences, cached outputs; and, since
every case is drawn with a memory layout (transposed (B, L, H, E) views, slices of larger
allocations, stride-0 MQA K/V, expanded masks) and head dims up to 256 (512 in the thorough
profile), kernels that assume contiguity or break at a head dim. Explicit scales reach 0.0,
negative, tiny and large values (``scale or default``, abs() or a clamp of the scale), and float
masks carry full-precision biases down to -1.25e4 (a mask kept in a narrower dtype than q).
"""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case, base_case, real_case

TILE_EDGES = [15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]


def test_base_case(target):
    """The smallest unmasked input runs and is right: a kernel that cannot do this fails."""
    case = base_case().fit(target.caps, target.dtype, target.device)
    if case is None:
        pytest.skip("unsupported: the smallest unmasked case is outside the declared capabilities")
    inp = case.materialize()
    target.cases += 1
    target.last_case = case
    out = probes.call(target.impl, inp, allow_unsupported=False)
    probes.judge(target, out, inp)


@given(case=hs.cases(policies=("none", "causal", "key_padding", "padded_causal", "document", "sliding_window", "head_span"),
                     alibi=st.booleans(), scale=hs.scales(edges=True), mask_bias=hs.mask_biases()))
@example(case=Case(B=1, H=2, Hkv=2, L=5, S=7, E=192, Ev=128, policy="causal()", mask="is_causal"))  # MLA head dims
@example(case=Case(B=2, H=4, Hkv=1, L=6, S=33, E=16, Ev=16, policy="key_padding([33, 9])", mask="bool", mask_shape="B11S",
                   layout="q=transposed,k=sliced,v=transposed,kv=broadcast,mask=expanded"))
@example(case=Case(B=2, H=3, Hkv=3, L=5, S=7, E=16, Ev=16, policy="head_span([7, 2, 4])", mask="bool", mask_shape="1H1S"))
@example(case=Case(B=1, H=2, Hkv=1, L=3, S=9, E=16, Ev=16, policy="head_span([3, 9])", mask="float", mask_shape="1H1S"))
@example(case=Case(B=2, H=4, Hkv=2, L=7, S=33, E=20, Ev=72, policy="causal()", mask="bool", mask_shape="LS"))
@example(case=Case(B=1, H=3 * 2, Hkv=1, L=9, S=5, E=72, Ev=20, policy="causal()", mask="is_causal"))
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="key_padding([6, 2])", mask="float", mask_shape="B11S"))
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="key_padding([1, 4])", mask="bool", mask_shape="B1LS"))
@example(case=Case(B=2, H=2, Hkv=1, L=6, S=6, E=8, Ev=8, policy="causal()", mask="bool", mask_shape="BHLS"))
@example(case=Case(B=1, H=3, Hkv=3, L=4, S=9, E=16, Ev=16, policy="full()", mask="none", scale=0.3))
# Explicit scales at the edges: 0 (every visible key weighs the same), negative, tiny, large.
@example(case=Case(B=2, H=2, Hkv=1, L=5, S=7, E=16, Ev=16, policy="key_padding([7, 3])", mask="bool", mask_shape="B11S", scale=0.0))
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16, policy="causal()", mask="is_causal", scale=-0.5))
@example(case=Case(B=1, H=1, Hkv=1, L=4, S=9, E=32, Ev=32, scale=1e-4))
@example(case=Case(B=1, H=2, Hkv=2, L=4, S=9, E=8, Ev=8, scale=10.0))
# Float masks whose finite entries use float32's whole mantissa, offsets to -1.25e4, next to -inf.
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=9, E=16, Ev=16, policy="causal()", mask="float", mask_shape="LS", mask_bias=1e4))
@example(case=Case(B=2, H=4, Hkv=2, L=6, S=6, E=16, Ev=16, policy="key_padding([6, 2])", mask="float", mask_shape="BHLS",
                   alibi=True, mask_bias=1.0))
@example(case=real_case(0))  # real MiniLM Q/K/V with the model's own padding mask
@example(case=real_case(5, policy="causal()", mask="is_causal"))
def test_matches_reference(target, case):
    """Outputs match the float64 reference across shapes, scales, GQA/MQA, every mask broadcast
    shape ((L,S), (B,1,1,S), (B,1,L,S), (B,H,L,S), (1,H,1,S), (1,H,L,S)), bool and float masks, L != S both ways and Ev != E."""
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)


@given(case=hs.cases(policies=("none", "causal", "key_padding"), S=st.sampled_from(TILE_EDGES + [1, 2, 3]),
                     L=st.sampled_from([1, 2] + TILE_EDGES), max_heads=2, batch_max=2))
@example(case=Case(B=1, H=1, Hkv=1, L=33, S=33, E=16, Ev=16))
@example(case=Case(B=1, H=1, Hkv=1, L=129, S=3, E=16, Ev=16, policy="causal()", mask="is_causal"))  # L >> S
@example(case=Case(B=1, H=2, Hkv=1, L=7, S=65, E=16, Ev=16, policy="key_padding([65])", mask="bool", mask_shape="B11S",
                   layout="kv=broadcast"))  # stride-0 K/V at kv_len = 1 mod 32 (pytorch#191937)
@example(case=Case(B=1, H=1, Hkv=1, L=17, S=17, E=16, Ev=16, policy="causal()", mask="is_causal"))
@example(case=Case(B=1, H=1, Hkv=1, L=65, S=129, E=16, Ev=16, policy="key_padding([129])", mask="bool", mask_shape="B11S"))
def test_tile_boundaries(target, case):
    """Query and key lengths one above and one below common tile sizes (16, 32, 64, 128), L = 1,
    L > S and L >> S: tail tiles dropped, left unmasked, or read out of bounds."""
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)


@given(case=hs.cases(policies=("none", "causal"), S=st.sampled_from([512, 600, 1031, 2049, 4099]),
                     L=st.sampled_from([1, 16, 64]), B=st.just(1), max_heads=2, E=st.sampled_from([32, 64]),
                     Ev=st.just(32)))
@example(case=Case(B=1, H=2, Hkv=1, L=64, S=520, E=64, Ev=64))
def test_long_sequence(target, case):
    """Long keys (S from 512 into the thousands, where a half-precision running sum drifts):
    truncation, index overflow and accumulation drift."""
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)


@given(case=hs.cases(policies=("none", "causal", "key_padding"), mask_kinds=("float",), alibi=st.just(True)))
@example(case=Case(B=1, H=4, Hkv=4, L=6, S=6, E=16, Ev=16, policy="causal()", mask="float", mask_shape="1HLS", alibi=True))
def test_alibi_bias(target, case):
    """Per-head float biases (ALiBi distance slopes, the seed's exercise 7) added to the scores."""
    target.require(mask_kind="float")
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)


@given(case=hs.cases(policies=("none", "causal")), other_seed=st.integers(0, 2**31 - 1))
# A kernel wrong everywhere fails here at once, before hypothesis spends half a minute shrinking.
@example(case=Case(B=1, H=2, Hkv=2, L=5, S=7, E=16, Ev=16, policy="causal()", mask="is_causal"), other_seed=12345)
def test_fresh_inputs(target, case, other_seed):
    """Two calls with the same shapes and different data both match their own reference: catches
    outputs cached by shape or pointer and stale buffers."""
    case = target.fit(case)
    for c in (case, case.replace(seed=other_seed ^ case.seed ^ 1)):
        inp = c.materialize()
        probes.judge(target, probes.call(target.impl, inp), inp)
