"""Direct tests of ``harness.strategies``: what the generators draw and what they shrink to.

A property is only as good as its inputs: a strategy that draws a mask shape unable to carry
its policy, a GQA head count that does not divide, or lengths past the profile produces false
failures or never reaches the bug; one that does not shrink toward small cases makes every
counterexample unreadable. Fixed seeds (``derandomize``) and small example counts keep it fast.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from harness import masks as M
from harness import strategies as hs
from harness.cases import MASK_SHAPES, Case, parse_layout
from harness.contract import Capabilities

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FIND = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
ALL_POLICIES = ("none",) + tuple(hs.POLICY_STRATEGIES)


@pytest.fixture
def profile():
    """Set a profile for one test and always restore the default (module-global state)."""
    yield hs.set_profile
    hs.set_profile("default")


def _check_well_formed(c: Case):
    assert 1 <= c.B <= 3
    assert c.H in (1, 2, 4) and c.H % c.Hkv == 0
    assert c.E in hs.HEAD_DIMS and (c.Ev in hs.HEAD_DIMS or (c.E, c.Ev) == (192, 128))
    assert (c.policy == "full()") == (c.mask == "none")
    if c.mask == "is_causal":
        assert c.policy == "causal()"
    pol = M.from_spec(c.policy)  # the spec parses
    if pol.length is not None:
        assert c.L == c.S == pol.length
    if c.mask in ("bool", "float"):
        assert pol.depends_on <= MASK_SHAPES[c.mask_shape], (c.policy, c.mask_shape)
    else:
        assert c.mask_shape == "BHLS"
    assert not c.alibi  # alibi defaults to just(False)
    assert c.scale is None or c.scale in (0.5, 0.125, 1.0, 0.07, 2.0)  # edge scales only on request
    assert c.mask_bias == 0.0  # mask biases only on request
    assert c.magnitude == 1.0
    parse_layout(c.layout)  # parses


@FAST
@given(case=hs.cases(policies=ALL_POLICIES))
def test_drawn_cases_are_well_formed_and_inside_the_default_contract(case):
    _check_well_formed(case)
    # The default contract accepts every drawn case: none may be rejected before the kernel
    # runs. Only kv=broadcast is normalised (it means MQA, and nothing without a second head).
    fitted = case.fit(Capabilities(), "float32", "cpu")
    if parse_layout(case.layout)["kv"] == "broadcast":
        assert fitted.Hkv == 1 or fitted.H == 1
        assert parse_layout(fitted.layout)["kv"] == ("broadcast" if case.H > 1 else "contiguous")
        fitted = fitted.replace(Hkv=case.Hkv, layout=case.layout)
    assert fitted == case
    if max(case.L, case.S) <= 16 and case.E <= 32:  # materialising big draws only costs time
        inp = case.materialize()
        assert inp.visible.shape == (case.B, case.H, case.L, case.S)


NARROW = [
    Capabilities(gqa=False, mask_kinds=("none", "bool"), fully_masked_rows=None),
    Capabilities(head_dims=(16, 64), value_dim_differs=False, causal=None),
    Capabilities(mask_kinds=("none",), causal="bottom_right", max_seq_len=24),
    Capabilities(cross_attention=False, max_head_dim=32, mask_kinds=("none", "float")),
]


@FAST
@given(case=hs.cases(policies=("none", "causal", "key_padding", "padded_causal", "document")),
       caps=st.sampled_from(NARROW))
def test_fitted_cases_stay_inside_the_declared_capabilities(case, caps):
    fitted = case.fit(caps, "float32", "cpu")
    if fitted is None:
        return
    assert caps.head_dim_ok(fitted.E) and caps.head_dim_ok(fitted.Ev)
    assert caps.value_dim_differs or fitted.Ev == fitted.E
    # without GQA only MQA handed over as stride-0 multi-head K/V (kv=broadcast) keeps Hkv < H
    assert caps.gqa or fitted.H == fitted.Hkv or parse_layout(fitted.layout)["kv"] == "broadcast"
    assert caps.max_seq_len is None or max(fitted.L, fitted.S) <= caps.max_seq_len
    assert caps.cross_attention or fitted.L == fitted.S
    if fitted.mask == "is_causal":
        assert caps.causal is not None and fitted.alignment == caps.causal
    else:
        assert fitted.mask in caps.mask_kinds
    if caps.fully_masked_rows is None:
        assert bool(fitted.visible().any(-1).all())


def test_a_masked_case_shrinks_to_the_smallest_causal_bool_mask():
    # Every other field shrinks to its simplest value too: B=H=Hkv=1, L=S=1, E=Ev=16 (the first
    # head dim), no scale, magnitude 1, contiguous layout, seed 0.
    got = find(hs.cases(), lambda c: c.mask == "bool", settings=FIND)
    assert got == Case(L=1, S=1, policy="causal()", mask="bool", mask_shape="LS")


def test_edge_scales_are_reached_on_request_and_shrink_to_zero():
    for v in hs.EDGE_SCALES:
        assert find(hs.scales(edges=True), lambda s: s == v, settings=FIND) == v
    with pytest.raises(NoSuchExample):
        find(hs.scales(), lambda s: s is not None and (s <= 0 or s < 0.05 or s > 5), settings=FIND)
    # a failure needing a scale <= 0 is reported at 0.0, the simplest of them
    got = find(hs.cases(scale=hs.scales(edges=True)), lambda c: c.scale is not None and c.scale <= 0, settings=FIND)
    assert got.scale == 0.0


@pytest.mark.parametrize("shape", sorted(MASK_SHAPES))
def test_mask_biases_reach_every_float_mask_shape_and_shrink_toward_none(shape):
    deps = MASK_SHAPES[shape]
    pol = "key_padding" if "b" in deps else "causal" if "q" in deps else "head_span"
    strat = hs.cases(policies=("none", pol), mask_bias=hs.mask_biases())
    got = find(strat, lambda c: c.mask_shape == shape and c.mask_bias > 0, settings=FIND)
    assert got.mask == "float" and got.mask_bias == 1.0  # the simplest bias
    assert find(strat, lambda c: c.mask_bias >= 1e4, settings=FIND).mask_bias == 1e4


@FAST
@given(case=hs.cases(mask_bias=hs.mask_biases()))
def test_only_float_masks_carry_a_bias(case):
    assert case.mask_bias in hs.MASK_BIASES
    assert case.mask == "float" or case.mask_bias == 0.0


def test_heads_divide_and_shrink_toward_mha():
    assert find(hs.heads(8), lambda h: h[0] > 1, settings=FIND) == (2, 2)
    assert find(hs.heads(8), lambda h: h[0] != h[1], settings=FIND) == (2, 1)


@FAST
@given(hh=hs.heads(8))
def test_heads_respect_max_heads(hh):
    H, Hkv = hh
    assert H <= 8 and H % Hkv == 0


def test_layouts_shrink_to_contiguous_and_always_parse():
    assert find(hs.layouts(), lambda s: True, settings=FIND) == "contiguous"
    got = find(hs.layouts(), lambda s: "kv=broadcast" in s, settings=FIND)
    assert got == "kv=broadcast"


def test_profile_sets_lengths_and_head_dims(profile):
    profile("quick")
    assert hs.max_len() == 40
    assert find(hs.lengths(), lambda n: n >= 40, settings=FIND) == 40
    with pytest.raises(NoSuchExample):
        find(hs.lengths(), lambda n: n > 40, settings=FIND)
    with pytest.raises(NoSuchExample):
        find(hs.head_dims(), lambda e: e == 512, settings=FIND)
    profile("thorough")
    assert find(hs.head_dims(), lambda e: e == 512, settings=FIND) == 512
    assert hs.examples(1, 2, 3) == 3


def test_unknown_profile_is_refused(profile):
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")
    assert hs.max_len() == hs.PROFILE_MAX_LEN["default"]


def test_sparse_settings_drop_explicit_examples_only_in_quick(profile):
    from hypothesis import Phase

    profile("quick")
    s = hs.sparse_settings(2, 5, 9)
    assert s.max_examples == 2 and Phase.explicit not in s.phases
    profile("default")
    s = hs.sparse_settings(2, 5, 9)
    assert s.max_examples == 5 and Phase.explicit in s.phases


def test_value_dims_reach_the_mla_shape():
    assert find(hs.value_dims(192), lambda ev: ev == 128, settings=FIND) == 128
    assert find(hs.value_dims(16), lambda ev: True, settings=FIND) == 16  # mostly Ev == E


# --- padding ---------------------------------------------------------------------------------

@FAST
@given(data=st.data(), B=st.integers(1, 4), S=st.integers(1, 12),
       placement=st.sampled_from(hs.PADDING_PLACEMENTS))
def test_padding_rows_follow_the_placement(data, B, S, placement):
    rows = data.draw(hs.padding_rows(B, S, placement))
    assert len(rows) == B and all(len(r) == S and set(r) <= {"0", "1"} for r in rows)
    assert sum("1" not in r for r in rows) <= 1  # at most one fully padded batch row
    for r in rows:
        if "1" not in r:
            continue
        n = r.count("1")
        if placement == "right":
            assert r == "1" * n + "0" * (S - n)
        elif placement == "left":
            assert r == "0" * (S - n) + "1" * n
        elif placement == "middle":
            assert "1" not in r.strip("1")  # the padding is one run between real tokens
    # the spec renders to exactly these rows
    vis = M.render(M.from_spec(hs.padding_spec(rows)), B, 1, 2, S)
    assert [("".join("1" if x else "0" for x in vis[b, 0, 0].tolist())) for b in range(B)] == rows


def test_padding_spec_keeps_right_padding_readable():
    assert hs.padding_spec(["1100", "1110"]) == "key_padding([2, 3])"
    assert hs.padding_spec(["0011", "1110"]).startswith("key_visible(4, ")
    # a fully padded row cannot be spelled key_padding([0, ...]) readably: key by key
    assert hs.padding_spec(["0000", "1110"]).startswith("key_visible(4, ")


# --- policies ---------------------------------------------------------------------------------

@FAST
@given(data=st.data(), name=st.sampled_from(sorted(hs.POLICY_STRATEGIES)), B=st.integers(1, 3),
       L=st.integers(1, 12), S=st.integers(1, 12))
def test_policy_strategies_return_a_spec_that_fits_its_lengths(data, name, B, L, S):
    spec, l, s = data.draw(hs.POLICY_STRATEGIES[name](B, L, S))
    pol = M.from_spec(spec)
    if pol.length is not None:
        assert (l, s) == (pol.length, pol.length)
    if pol.keys is not None:
        assert s == pol.keys
    assert M.render(pol, B, 2, l, s).shape == (B, 2, l, s)
    if name in hs.BOUNDARY_POLICIES:
        assert l == s  # prompt-structure patterns describe one sequence


# --- index widths and grid limits --------------------------------------------------------------

@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=hs.index_width_cases())
def test_index_width_cases_put_one_long_side_against_a_tiny_one(case):
    long_, short = max(case.L, case.S), min(case.L, case.S)
    assert long_ in hs.WIDE_LENGTHS and short <= 4
    assert case.B == 1 and case.H <= 2 and case.E in (8, 16, 3) and case.Ev == 8
    assert case.policy == "full()" or case.policy == "causal()" or case.policy.startswith(("key_padding", "key_visible"))


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=hs.grid_limit_cases())
def test_grid_limit_cases_straddle_the_launch_grid(case):
    assert (case.B, case.H) in hs.GRID_BH and case.Hkv in (case.H, 1)
    assert case.L <= 3 and case.S <= 3 and case.E in (4, 1) and case.Ev == 4
    assert case.mask in ("none", "is_causal", "bool")
