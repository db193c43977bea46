"""Direct tests of ``harness.cases``: Case fitting, materialisation, layouts and the repr.

Every property rests on these: a case fitted outside the declared capabilities turns into a
false failure, a materialised tensor that is not rebuilt bit for bit from the case makes a repro
command lie, and a layout that changes values instead of memory tests the wrong thing. The
suites only exercise them indirectly, so a regression here shows up as a confusing failure
somewhere else.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness import masks as M
from harness.cases import (LAYOUT_KEYS, MASK_SHAPES, MIN_DIVIDED_SCALE, Case, apply_layout, layout_spec,
                           parse_layout)
from harness.contract import Capabilities

CPU = ("float32", "cpu")


# --- fit --------------------------------------------------------------------------------------

def test_fit_inside_default_caps_only_moves_dtype_and_device():
    c = Case(B=2, H=4, Hkv=2, L=3, S=5, E=20, Ev=8, policy="causal()", mask="float", mask_shape="LS", seed=7)
    assert c.fit(Capabilities(), "bfloat16", "cpu") == c.replace(dtype="bfloat16")


def test_fit_without_gqa_gives_every_query_head_its_own_kv_head():
    c = Case(H=4, Hkv=2).fit(Capabilities(gqa=False), *CPU)
    assert (c.H, c.Hkv, c.enable_gqa) == (4, 4, False)


def test_fit_moves_head_dims_to_the_nearest_allowed_and_drops_ev_when_not_allowed():
    c = Case(E=20, Ev=8)
    got = c.fit(Capabilities(head_dims=(16, 32)), *CPU)
    assert (got.E, got.Ev) == (16, 16)  # Ev=8 is not an allowed head dim either
    got = c.fit(Capabilities(max_head_dim=64, value_dim_differs=False), *CPU)
    assert (got.E, got.Ev) == (20, 20)
    got = c.fit(Capabilities(max_head_dim=16), *CPU)
    assert (got.E, got.Ev) == (16, 8)  # Ev 8 <= 16 and Ev != E is allowed
    assert Case(E=16).fit(Capabilities(max_head_dim=4), *CPU) is None  # nothing in 8..128 fits


def test_fit_rejects_sequences_longer_than_declared():
    caps = Capabilities(max_seq_len=4)
    assert Case(L=3, S=5).fit(caps, *CPU) is None
    assert Case(L=4, S=4).fit(caps, *CPU) is not None


def test_fit_translates_mask_kinds_or_rejects():
    causal_float = Case(L=3, S=5, policy="causal()", mask="float", mask_shape="LS", alibi=True)
    # float not declared, bool is: the same policy as a bool mask (ALiBi needs a float mask)
    got = causal_float.fit(Capabilities(mask_kinds=("none", "bool")), *CPU)
    assert (got.mask, got.alibi) == ("bool", False)
    # no dense masks at all: the causal policy still reaches the kernel through is_causal
    got = causal_float.fit(Capabilities(mask_kinds=("none",)), *CPU)
    assert (got.mask, got.alignment) == ("is_causal", "top_left")
    # ... but bottom-right is_causal only means the same thing when L == S
    assert causal_float.fit(Capabilities(mask_kinds=("none",), causal="bottom_right"), *CPU) is None
    got = causal_float.replace(L=5).fit(Capabilities(mask_kinds=("none",), causal="bottom_right"), *CPU)
    assert (got.mask, got.alignment) == ("is_causal", "bottom_right")
    # a padding policy has no is_causal spelling
    pad = Case(B=2, policy="key_padding([2, 4])", mask="bool", mask_shape="B11S")
    assert pad.fit(Capabilities(mask_kinds=("none",)), *CPU) is None


def test_fit_is_causal_follows_the_declared_alignment():
    c = Case(L=2, S=4, policy="causal()", mask="is_causal")
    assert c.fit(Capabilities(causal=None), *CPU) is None
    got = c.fit(Capabilities(causal="bottom_right"), *CPU)
    assert got.alignment == "bottom_right"
    # bottom-right with L > S leaves the first query rows without a key: only where declared
    tall = Case(L=4, S=2, policy="causal()", mask="is_causal")
    assert tall.fit(Capabilities(causal="bottom_right", fully_masked_rows=None), *CPU) is None
    assert tall.fit(Capabilities(causal="bottom_right"), *CPU) is not None


def test_fit_rejects_fully_masked_rows_where_they_are_undefined():
    c = Case(B=2, policy="key_padding([0, 4])", mask="bool", mask_shape="B11S")
    assert c.fit(Capabilities(fully_masked_rows=None), *CPU) is None
    assert c.fit(Capabilities(fully_masked_rows="zero"), *CPU) == c


def test_fit_rejects_a_policy_that_never_reaches_the_kernel():
    # a causal policy with mask="none" would be judged against a visibility the kernel never saw
    assert Case(policy="causal()", mask="none").fit(Capabilities(), *CPU) is None


def test_fit_raises_on_a_policy_that_contradicts_the_case_length():
    with pytest.raises(ValueError, match="describes 4 tokens"):
        Case(L=3, S=3, policy="document([2, 2])", mask="bool").fit(Capabilities(), *CPU)


def test_fit_self_attention_only_sets_l_to_s():
    got = Case(L=3, S=7, policy="causal()", mask="bool", mask_shape="LS").fit(Capabilities(cross_attention=False), *CPU)
    assert (got.L, got.S) == (7, 7)


def test_fit_kv_broadcast_means_mqa_or_nothing():
    assert Case(H=4, Hkv=4, layout="kv=broadcast").fit(Capabilities(), *CPU).Hkv == 1
    # one query head: nothing to broadcast to, the rest of the layout is kept
    assert Case(H=1, Hkv=1, layout="q=sliced,kv=broadcast").fit(Capabilities(), *CPU).layout == "q=sliced"
    # broadcast K/V arrive as plain multi-head tensors, so no GQA support is needed
    got = Case(H=4, Hkv=1, layout="kv=broadcast").fit(Capabilities(gqa=False), *CPU)
    assert (got.Hkv, got.layout) == (1, "kv=broadcast")


# --- materialize ------------------------------------------------------------------------------

def test_materialize_shapes_dtypes_and_flags():
    c = Case(B=2, H=4, Hkv=2, L=3, S=5, E=8, Ev=6, dtype="bfloat16", scale=0.5)
    inp = c.materialize()
    assert inp.q.shape == (2, 4, 3, 8) and inp.k.shape == (2, 2, 5, 8) and inp.v.shape == (2, 2, 5, 6)
    assert {t.dtype for t in (inp.q, inp.k, inp.v)} == {torch.bfloat16}
    assert inp.kwargs() == dict(attn_mask=None, is_causal=False, scale=0.5, enable_gqa=True)
    assert inp.visible.shape == (2, 4, 3, 5) and bool(inp.visible.all())


def test_materialize_is_determined_by_the_seed():
    c = Case(B=2, H=2, L=3, S=4, E=8, Ev=8, seed=11)
    a, b = c.materialize(), c.materialize()
    for x, y in ((a.q, b.q), (a.k, b.k), (a.v, b.v)):
        assert torch.equal(x, y)
    other = c.replace(seed=12).materialize()
    assert not torch.equal(a.q, other.q) and not torch.equal(a.v, other.v)


def test_materialize_magnitude_sets_the_logit_size():
    # Logits ~ magnitude whatever E or the scale: that is what the stability suite relies on.
    small = Case(L=16, S=16, E=64, Ev=8, seed=1).materialize().logit_absmax().mean()
    big = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0).materialize().logit_absmax().mean()
    assert float(big / small) == pytest.approx(100.0, rel=1e-5)
    scaled = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=2.0).materialize().logit_absmax().mean()
    assert float(scaled / big) == pytest.approx(1.0, rel=1e-5)


def test_edge_scales_materialize_finite_inputs_with_the_logits_they_imply():
    base = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=0.5).materialize()
    zero = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=0.0).materialize()
    assert torch.isfinite(zero.q).all() and float(zero.logit_absmax().max()) == 0.0  # valid: uniform weights
    assert float(zero.reference().std(dim=2).max()) < 1e-12  # every row the same average of the values
    neg = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=-0.5).materialize()
    assert torch.allclose(neg.logit_absmax(), base.logit_absmax())  # the same logits, negated
    # a tiny scale is divided out only down to MIN_DIVIDED_SCALE: q.k stays in half precision's
    # range, and the rows flatten as a tiny scale makes them
    tiny = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=1e-4, dtype="float16").materialize()
    assert torch.isfinite(tiny.q).all()
    ratio = tiny.logit_absmax() / base.logit_absmax()
    assert float(ratio.mean()) == pytest.approx(1e-4 / MIN_DIVIDED_SCALE, rel=2e-2)
    large = Case(L=16, S=16, E=64, Ev=8, seed=1, magnitude=100.0, scale=10.0).materialize()
    assert torch.allclose(large.logit_absmax(), base.logit_absmax(), rtol=1e-4)


def _policy_for(shape: str) -> str:
    deps = MASK_SHAPES[shape]
    return "key_padding([2, 5])" if "b" in deps else "causal()" if "q" in deps else "head_span([5, 2, 4])"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", sorted(MASK_SHAPES))
def test_mask_bias_uses_the_whole_mantissa_next_to_minus_inf(shape, dtype):
    c = Case(B=2, H=3, Hkv=3, L=4, S=5, E=8, Ev=8, dtype=dtype, policy=_policy_for(shape), mask="float",
             mask_shape=shape, mask_bias=1e4, seed=3)
    inp = c.materialize()
    m = inp.attn_mask
    assert m.dtype == c.torch_dtype and m.dim() == len(shape)
    assert torch.equal(torch.isneginf(m).expand(2, 3, 4, 5), ~inp.visible)  # -inf exactly where invisible
    fin = m[torch.isfinite(m)].double()
    assert float(fin.min()) >= -1.25e4 - 10 and float(fin.max()) <= 0.25e4 + 10
    if dtype == "float32":
        # a mask kept in bfloat16 is wrong almost everywhere (only entries near 0 could survive)
        assert float((fin.float().to(torch.bfloat16).double() != fin).double().mean()) > 0.9
    assert torch.equal(c.materialize().attn_mask, m)  # from the seed alone
    # the bias is a dimension of its own: the same case without it has 0/-inf only
    plain = c.replace(mask_bias=0.0).materialize().attn_mask
    assert set(plain[torch.isfinite(plain)].tolist()) == {0.0}


def test_mask_bias_offsets_reach_past_minus_1e4():
    # Some rows' visible entries sit below -1e4, where a finite -1e4 stand-in for -inf lets
    # masked keys in; rows elsewhere sit near 0 and above.
    m = Case(B=1, L=64, S=8, policy="causal()", mask="float", mask_shape="LS", mask_bias=1e4).materialize().attn_mask
    row = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).amax(dim=-1)
    assert float(row.min()) < -1.01e4 and float(row.max()) > 0


def test_fit_drops_the_mask_bias_with_the_float_mask():
    c = Case(L=3, S=5, policy="causal()", mask="float", mask_shape="LS", mask_bias=1e4)
    assert c.fit(Capabilities(mask_kinds=("none", "bool")), "float32", "cpu").mask_bias == 0.0
    assert c.fit(Capabilities(mask_kinds=("none",)), "float32", "cpu").mask == "is_causal"
    assert c.fit(Capabilities(mask_kinds=("none",)), "float32", "cpu").mask_bias == 0.0
    assert c.fit(Capabilities(), "float32", "cpu").mask_bias == 1e4


@pytest.mark.parametrize("shape", sorted(MASK_SHAPES))
def test_bool_mask_shapes_broadcast_to_the_visibility(shape):
    # key_padding depends on b only; every registered shape that carries b (or a causal policy
    # for the q-only ones) must broadcast back to exactly the visibility the case claims.
    policy = "key_padding([2, 5])" if "b" in MASK_SHAPES[shape] else "causal()"
    if not M.from_spec(policy).depends_on <= MASK_SHAPES[shape]:
        policy = "full()"
    c = Case(B=2, H=3, Hkv=3, L=4, S=5, E=8, Ev=8, policy=policy, mask="bool", mask_shape=shape)
    inp = c.materialize()
    assert inp.attn_mask.dtype == torch.bool and inp.attn_mask.dim() == len(shape)
    assert torch.equal(inp.attn_mask.expand(2, 3, 4, 5), inp.visible)


def test_float_mask_is_minus_inf_exactly_where_invisible_and_alibi_is_per_head():
    c = Case(B=1, H=2, Hkv=2, L=3, S=5, E=8, Ev=8, policy="causal()", mask="float", mask_shape="1HLS", alibi=True)
    inp = c.materialize()
    m = inp.attn_mask
    assert m.dtype == torch.float32 and m.shape == (1, 2, 3, 5)
    assert torch.equal(torch.isneginf(m), ~inp.visible)
    # ALiBi: -slope_h * |i - j| on the visible pairs, slope_h = 2^(-8 (h+1) / H)
    for h in range(2):
        slope = 2.0 ** (-8.0 * (h + 1) / 2)
        assert float(m[0, h, 2, 0]) == pytest.approx(-2 * slope)
        assert float(m[0, h, 1, 1]) == 0.0
    plain = c.replace(alibi=False).materialize().attn_mask
    assert set(plain[torch.isfinite(plain)].tolist()) == {0.0}


def test_is_causal_case_has_no_mask_and_its_visibility_follows_the_alignment():
    tl = Case(L=2, S=4, policy="causal()", mask="is_causal").materialize()
    assert tl.attn_mask is None and tl.is_causal
    assert tl.visible[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]
    br = Case(L=2, S=4, policy="causal()", mask="is_causal", alignment="bottom_right").materialize()
    assert br.visible[0, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_inputs_visibility_helpers():
    c = Case(B=2, H=4, Hkv=2, L=3, S=4, E=8, Ev=8, policy="key_padding([0, 2])", mask="bool", mask_shape="B11S")
    inp = c.materialize()
    assert inp.has_visible.shape == (2, 4, 3)
    assert not bool(inp.has_visible[0].any()) and bool(inp.has_visible[1].all())
    kv = inp.kv_visible()
    assert kv.shape == (2, 2, 3, 4)
    assert kv[1, :, :, :2].all() and not kv[1, :, :, 2:].any()


def test_logit_absmax_is_the_largest_visible_scaled_logit():
    c = Case(B=1, H=2, Hkv=1, L=3, S=4, E=8, Ev=8, policy="causal()", mask="float", mask_shape="LS", seed=3)
    inp = c.materialize()
    q, k = inp.q.double(), inp.k.double().repeat_interleave(2, dim=1)
    lg = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    want = torch.where(inp.visible, lg.abs(), torch.zeros_like(lg)).amax(-1)
    assert torch.allclose(inp.logit_absmax(), want)
    # chunking over keys changes nothing
    assert torch.equal(inp.logit_absmax(chunk=1), inp.logit_absmax())


def test_reference_and_baseline_agree_on_a_benign_case():
    inp = Case(B=1, H=2, Hkv=2, L=3, S=5, E=8, Ev=4, policy="causal()", mask="bool", mask_shape="LS").materialize()
    ref = inp.reference()
    assert ref.dtype == torch.float64 and ref.shape == (1, 2, 3, 4)
    assert torch.allclose(inp.baseline().double(), ref, atol=1e-5)


# --- layouts ----------------------------------------------------------------------------------

def test_parse_layout_fills_every_key_and_round_trips():
    assert parse_layout("contiguous") == {k: "contiguous" for k in LAYOUT_KEYS}
    assert parse_layout("") == parse_layout("contiguous")
    spec = "q=transposed,v=sliced,kv=broadcast,mask=expanded"
    parts = parse_layout(spec)
    assert parts["q"] == "transposed" and parts["k"] == "contiguous" and parts["kv"] == "broadcast"
    assert layout_spec(parts) == spec
    # order is fixed by LAYOUT_KEYS, not by the input
    assert layout_spec(parse_layout("mask=expanded,q=sliced")) == "q=sliced,mask=expanded"
    assert layout_spec({k: "contiguous" for k in LAYOUT_KEYS}) == "contiguous"


@pytest.mark.parametrize("bad", ["q=diagonal", "x=sliced", "q", "kv=transposed"])
def test_parse_layout_rejects_unknown_parts(bad):
    with pytest.raises(ValueError, match="bad layout"):
        parse_layout(bad)


def test_layouts_change_memory_not_values():
    c = Case(B=2, H=2, Hkv=2, L=3, S=5, E=8, Ev=4, policy="causal()", mask="bool", mask_shape="LS",
             layout="q=sliced,k=transposed,v=sliced,mask=expanded")
    inp = c.materialize()
    q, k, v, kw = inp.laid_out(inp.q, inp.k, inp.v, inp.kwargs())
    for got, want in ((q, inp.q), (k, inp.k), (v, inp.v)):
        assert torch.equal(got, want)  # the NaN padding of a sliced buffer is never in view
    assert q.storage_offset() > 0 and not q.is_contiguous() and q.stride(-2) > q.shape[-1]
    assert k.stride(1) < k.stride(2)  # heads inner: a (B, L, H, E) buffer seen as (B, H, L, E)
    assert kw["attn_mask"].shape == (2, 2, 3, 5) and kw["attn_mask"].stride()[:2] == (0, 0)
    assert torch.equal(kw["attn_mask"], inp.attn_mask.expand(2, 2, 3, 5))
    assert "enable_gqa" in kw and kw["enable_gqa"] is False  # unchanged: H == Hkv


def test_sliced_layout_keeps_gradients_on_the_logical_tensor():
    t = torch.randn(2, 2, 3, 4, requires_grad=True)
    q, _, _, _, _ = apply_layout("q=sliced", t, t, t, None)
    q.sum().backward()
    assert torch.equal(t.grad, torch.ones_like(t))


def test_kv_broadcast_hands_over_stride_0_heads_without_gqa():
    inp = Case(B=1, H=4, Hkv=1, L=3, S=3, E=8, Ev=8, layout="kv=broadcast").materialize()
    assert inp.enable_gqa
    q, k, v, kw = inp.laid_out(inp.q, inp.k, inp.v, inp.kwargs())
    assert k.shape == (1, 4, 3, 8) and k.stride(1) == 0 and v.stride(1) == 0
    assert kw["enable_gqa"] is False


# --- repr and descriptions --------------------------------------------------------------------

def test_repr_is_valid_python_that_rebuilds_the_case():
    cases = [
        Case(),
        Case(B=3, H=4, Hkv=2, L=5, S=7, E=20, Ev=8, dtype="bfloat16", policy="causal()", mask="float",
             mask_shape="1HLS", alibi=True, scale=0.125, magnitude=1e4, seed=2**31 - 1,
             layout="q=transposed,kv=broadcast"),
        Case(B=2, L=5, S=5, policy="causal()", mask="float", mask_shape="LS", scale=-0.5, mask_bias=1e4),
        Case(L=5, S=5, policy='chat_roles([["system", 2], ["delim", 1], ["user", 2]])', mask="bool"),
    ]
    for c in cases:
        r = repr(c)
        assert "'" not in r  # it goes inside single quotes in a shell command
        assert eval(r, {"Case": Case}) == c  # noqa: S307
    # defaults other than the always-shown fields are left out
    assert repr(Case()) == 'Case(B=1, H=1, Hkv=1, L=4, S=4, E=16, Ev=16, dtype="float32", seed=0)'


def test_short_names_what_differs():
    s = Case(H=4, Hkv=2, policy="causal()", mask="float", mask_shape="LS", alibi=True, scale=0.5,
             magnitude=30.0, layout="q=sliced").short()
    for part in ("float mask LS", "ALiBi", "scale=0.5", "GQA 4/2", "|logit|~30", "layout q=sliced", "seed=0"):
        assert part in s, (part, s)
    assert "no mask" in Case().short() and "is_causal" in Case(policy="causal()", mask="is_causal").short()


def test_to_dict_round_trips():
    c = Case(B=2, policy="key_padding([1, 4])", mask="bool", mask_shape="B11S", scale=0.5)
    assert Case(**c.to_dict()) == c
