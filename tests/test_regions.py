"""The input regions real attention bugs live in (issue 10): memory layouts, padding placement,
head dims, index widths and grid limits reach the kernel, and the planted bugs for them are
right outside their region and wrong inside it. Fast: no `check` run, direct calls only."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import find, settings
from hypothesis import strategies as st

from harness import masks as M
from harness import probes
from harness import strategies as hs
from harness.cases import Case, apply_layout, parse_layout
from harness.contract import Capabilities, Implementation, capabilities, declaration_hint
from harness.loading import load
from fixtures import planted_regions as P

CAPS = Capabilities()
FIND = settings(max_examples=2000, database=None, deadline=None)


def _close(case, fn):
    inp = case.fit(CAPS, "float32", "cpu").materialize()
    out = probes.call(Implementation("x", "x", fn), inp)
    return float((out.double() - inp.reference()).abs().max()) < 1e-4


def test_layouts_are_views_with_the_same_values():
    q = torch.randn(2, 4, 5, 8)
    k = torch.randn(2, 1, 7, 8)
    v = torch.randn(2, 1, 7, 6)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    lq, lk, lv, lm, gqa = apply_layout("q=transposed,k=sliced,v=sliced,kv=broadcast,mask=expanded", q, k, v, mask)
    assert not lq.is_contiguous() and lq.transpose(1, 2).is_contiguous()  # a (B, L, H, E) buffer
    assert lk.stride(1) == 0 and lv.stride(1) == 0 and lk.shape[1] == 4 and gqa is False
    assert lk.storage_offset() > 0 and lk.stride(2) == 8 + 3  # a slice of a wider NaN-filled tensor
    assert lm.shape == (2, 4, 5, 7) and lm.stride(1) == 0
    assert torch.equal(lq, q) and torch.equal(lk, k.expand(2, 4, 7, 8)) and torch.equal(lv, v.expand(2, 4, 7, 6))
    with pytest.raises(ValueError, match="bad layout"):
        parse_layout("q=diagonal")


def test_layout_in_repr_short_and_fit():
    c = Case(H=4, Hkv=2, layout="kv=broadcast,mask=expanded").fit(CAPS, "float32", "cpu")
    assert c.Hkv == 1  # broadcast K/V is the MQA case handed over expanded
    assert eval(repr(c), {"Case": Case}) == c and "layout kv=broadcast,mask=expanded" in c.short()
    # No GQA declared: still fine, the kernel sees plain multi-head K/V.
    assert Case(H=4, Hkv=1, layout="kv=broadcast").fit(Capabilities(gqa=False), "float32", "cpu").Hkv == 1
    assert Case(H=1, layout="q=sliced,kv=broadcast").fit(CAPS, "float32", "cpu").layout == "q=sliced"


def test_probes_keep_the_layout_for_replaced_tensors():
    seen = []

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        seen.append((query.is_contiguous(), key.stride(1), enable_gqa))
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)

    impl = Implementation("spy", "spy", spy)
    inp = Case(B=2, H=2, Hkv=1, L=3, S=5, layout="q=transposed,kv=broadcast").materialize()
    probes.call(impl, inp)
    k, v = probes.perturb_keys(inp, torch.ones(5, dtype=torch.bool), "random")
    probes.call(impl, inp, k=k, v=v)
    probes.effective_weights(impl, inp)
    dq, dk, dv = probes.grads(impl, inp, torch.ones(2, 2, 3, 16))
    assert all(s == (False, 0, False) for s in seen) and len(seen) == 4
    assert dk.shape == inp.k.shape  # gradients land on the logical (B, Hkv, S, E) tensor


def test_padding_placements_and_specs():
    pol = M.from_spec("key_visible(6, [[[2, 6]], [[0, 1], [4, 6]], []])")
    assert M.render(pol, 3, 1, 1, 6)[:, 0, 0].int().tolist() == [[0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 1, 1], [0] * 6]
    assert M.from_spec(pol.spec) == pol and pol.keys == 6
    with pytest.raises(ValueError, match="describes 6 keys"):
        Case(S=7, policy=pol.spec, mask="bool").fit(CAPS, "float32", "cpu")
    assert hs.padding_spec(["1100", "1110"]) == "key_padding([2, 3])"
    assert hs.padding_spec(["0011"]) == "key_visible(4, [[[2, 4]]])"
    # The generators reach left, middle and fully padded rows, and left padding under causal.
    rows = st.integers(2, 12).flatmap(lambda S: hs.padding_rows(2, S))
    assert find(rows, lambda r: r[0].startswith("0") and r[0].endswith("1"), settings=FIND)
    assert find(rows, lambda r: "10" in r[0] and r[0].endswith("1"), settings=FIND)
    assert find(rows, lambda r: "1" not in r[1], settings=FIND)
    c = find(hs.cases(policies=("padded_causal",)), lambda c: not bool(c.visible().any(-1).all()), settings=FIND)
    assert c.policy.startswith("and_masks(causal(), ")


def test_generators_reach_head_dims_tails_and_layouts():
    assert find(hs.cases(), lambda c: c.E == 192 and c.Ev == 128, settings=FIND)
    assert find(hs.cases(), lambda c: c.E in (1, 3), settings=FIND)
    assert find(hs.cases(), lambda c: "sliced" in c.layout and "broadcast" in c.layout, settings=FIND)
    wide = find(hs.index_width_cases(), lambda c: c.L > 65536, settings=FIND)
    assert wide.S <= 4 and wide.B == 1
    grid = find(hs.grid_limit_cases(), lambda c: c.B * c.H == 65537, settings=FIND)
    assert max(grid.L, grid.S, grid.E) <= 4


@pytest.mark.parametrize("name, inside", [
    ("storage_as_contiguous", Case(B=2, H=2, L=5, S=6, layout="q=transposed,k=sliced")),
    ("stride0_kv_tail", Case(B=1, H=2, Hkv=1, L=3, S=33, layout="kv=broadcast")),
    ("assumes_right_padding", Case(B=2, L=3, S=6, policy="key_visible(6, [[[3, 6]], [[0, 6]]])", mask="bool", mask_shape="B11S")),
    ("int16_positions", Case(L=2, S=32769, E=8, Ev=8)),
    ("drops_keys_past_65536", Case(L=2, S=65537, E=8, Ev=8)),
    ("head_dim_truncated_128", Case(L=3, S=4, E=192, Ev=128)),
    ("grid_wraps_65535", Case(B=256, H=256, Hkv=256, L=1, S=2, E=4, Ev=4)),
    ("half_path_drops_float_mask", Case(B=2, L=3, S=5, policy="key_padding([2, 5])", mask="float", mask_shape="B11S")),
])
def test_planted_region_bugs_are_right_outside_and_wrong_inside(name, inside):
    fn = getattr(P, name)
    outside = Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="key_padding([3, 6])", mask="float", mask_shape="B11S")
    assert _close(outside, fn), f"{name} wrong outside its region"
    if name == "half_path_drops_float_mask":
        assert _close(inside, fn)  # float32 is right; the half path is not
        inp = inside.fit(CAPS, "bfloat16", "cpu").materialize()
        out = probes.call(Implementation("x", "x", fn), inp)
        assert float((out.double() - inp.reference()).abs().max()) > 0.1
    else:
        assert not _close(inside, fn), f"{name} right inside its region"


def test_plain_callable_failure_names_the_declaration():
    def plain(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa).detach()

    decorated = capabilities(autograd=True)(lambda *a, **kw: plain(*a, **kw))
    from harness.loading import _from_object

    impl = _from_object(plain, "x.py:plain", "plain")
    assert not impl.declared and _from_object(decorated, "x.py:d", "d").declared and load("sdpa").declared
    with pytest.raises(probes.PropertyViolation, match=r"@harness\.capabilities\(autograd=False\)"):
        probes.grads(impl, Case().materialize(), torch.ones(1, 1, 4, 16))
    assert '@harness.capabilities(fully_masked_rows="uniform")' in declaration_hint(impl, fully_masked_rows="uniform")
