"""The flash_attn call conventions: the variant reference, case building, the convention reader,
and that every planted flash bug is real (wrong on its trigger, right without it)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures import catalog
from harness.contract import LoadError, split_api, with_api
from harness.flash import convention as C
from harness.flash import probes as fp
from harness.flash import reference as R
from harness.flash.cases import FlashCase
from harness.flash.strategies import flash_cases
from harness.loading import load
from harness.runner import default_suites


def _direct(inp, b):
    """Dense float64 attention of sequence b, written out from FlashAttention's definitions."""
    c = inp.case
    q, k, v = (inp.dequant(x, b, w) for x, w in ((inp.qs[b], "q"), (inp.ks[b], "k"), (inp.vs[b], "v")))
    g = c.H // c.Hkv
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    Lq, Lk = q.shape[0], k.shape[0]
    s = torch.einsum("qhe,khe->hqk", q, k) * (c.scale if c.scale is not None else 1 / math.sqrt(c.E))
    if c.softcap:
        s = c.softcap * torch.tanh(s / c.softcap)
    i = torch.arange(Lq).view(-1, 1) + Lk - Lq
    j = torch.arange(Lk).view(1, -1)
    if inp.alibi_slopes is not None:
        s = s - inp.slopes(b).double().view(-1, 1, 1) * (i - j).abs()
    left, right = c.window
    ok = torch.ones(Lq, Lk, dtype=torch.bool)
    if c.causal:
        ok &= j <= i
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    s = s.masked_fill(~ok, float("-inf"))
    if inp.sinks is not None:
        s = torch.cat([s, inp.sinks.double().view(-1, 1, 1).expand(c.H, Lq, 1)], dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)[..., :Lk]
    return torch.einsum("hqk,khe->qhe", p, v)


@settings(max_examples=60, deadline=None, database=None)
@given(case=flash_cases())
def test_reference_matches_the_direct_formula(case):
    inp = case.materialize()
    out, lse = R.reference(inp)
    direct = torch.cat([_direct(inp, b) for b in range(case.B)]) if case.B else out
    assert torch.allclose(out, direct, atol=1e-10), case
    assert not torch.isnan(lse).any()


def test_reference_sinks_and_softcap_by_hand():
    # One query, two keys with logits 0 and log 3 (scale 1), a sink at log 4: p = (1, 3, 4) / 8.
    case = FlashCase(B=1, H=1, Hkv=1, E=1, seqlens_q=(1,), seqlens_k=(2,), sinks=True, scale=1.0)
    inp = case.materialize()
    inp.qs[0] = torch.ones(1, 1, 1)
    inp.ks[0] = torch.tensor([0.0, math.log(3)]).view(2, 1, 1)
    inp.vs[0] = torch.tensor([8.0, 16.0]).view(2, 1, 1)
    inp.sinks = torch.tensor([math.log(4)])
    out, lse = R.reference(inp)
    assert float(out) == pytest.approx((8 * 1 + 16 * 3) / 8)
    assert float(lse) == pytest.approx(math.log(8))
    capped = case.replace(sinks=False, softcap=1.0).materialize()
    capped.qs[0], capped.ks[0], capped.vs[0] = inp.qs[0], inp.ks[0], inp.vs[0]
    p1 = math.exp(math.tanh(math.log(3)))
    assert float(R.reference(capped)[0]) == pytest.approx((8 + 16 * p1) / (1 + p1))


def test_window_is_bottom_right_and_inclusive():
    c = FlashCase(B=1, seqlens_q=(2,), seqlens_k=(5,), window=(1, 0))
    assert R.allowed(c, 0).tolist() == [[False, False, True, True, False], [False, False, False, True, True]]
    assert R.allowed(c.replace(window=(-1, -1), causal=True), 0).tolist() == [[True] * 4 + [False], [True] * 5]


def test_paged_cases_shuffle_share_and_leave_garbage():
    c = FlashCase(mode="kvcache", B=3, seqlens_q=(1, 1, 1), seqlens_k=(20, 17, 33), new=2, page_size=16,
                  shared_pages=1, seed=3)
    inp = c.materialize()
    bt = inp.tensors["block_table"]
    assert bt[0, 0] == bt[1, 0] == bt[2, 0]  # the shared prefix page
    assert inp.tensors["k_cache"].shape[1] == 16
    slots = fp.slot_index(inp)
    P = 16
    for b in range(3):  # the cache holds each sequence's keys where its table says
        pre = slots[b][:c.seqlens_k[b]]
        assert torch.equal(inp.tensors["k_cache"].reshape(-1, 1, 16)[pre], inp.ks[b][:c.seqlens_k[b]])
    assert bool(inp.garbage.any())  # partly filled last pages and spare pages
    tables = [bt[b, :c.pages(b)].tolist() for b in range(3)]
    assert any(t != sorted(t) for t in tables) or len({x for t in tables for x in t}) > 3
    assert P * c.shared_pages <= min(c.seqlens_k)
    with pytest.raises(ValueError, match="shared_pages"):
        FlashCase(mode="kvcache", B=2, seqlens_q=(1, 1), seqlens_k=(3, 20), page_size=16, shared_pages=1)


def test_convention_read_from_the_parameters():
    from fixtures import flash_kernels as K

    assert C.mode_of(K.flash_attn_func) == "func"
    assert C.mode_of(K.flash_attn_varlen_func) == "varlen"
    assert C.mode_of(K.flash_attn_with_kvcache) == "kvcache"
    impl = load("fixtures/flash_kernels.py:flash_attn_with_kvcache@flash_attn")
    assert impl.api == "flash_attn" and impl.native.mode == "kvcache"
    assert impl.capabilities.causal == "bottom_right" and impl.capabilities.mask_kinds == ("none",)
    assert impl.spec.endswith("@flash_attn")
    assert split_api("a.py:f@flash_attn") == ("a.py:f", "flash_attn") and split_api("sdpa") == ("sdpa", "sdpa")
    assert with_api("a.py:f", "flash_attn") == "a.py:f@flash_attn" == with_api("a.py:f@flash_attn", "flash_attn")


def test_a_declared_variant_needs_its_parameter(tmp_path):
    f = tmp_path / "k.py"
    f.write_text("from harness import capabilities\n"
                 "@capabilities(softcap=True, window=True)\n"
                 "def attn(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1)):\n    return q\n")
    with pytest.raises(LoadError, match="softcap"):
        load(f"{f}:attn@flash_attn")


def test_sdpa_kernels_do_not_get_the_flash_suites():
    assert "flash" not in default_suites() and "paged" not in default_suites()
    assert {"flash", "paged", "causal"} <= set(default_suites("flash_attn"))


def test_the_sdpa_view_answers_like_sdpa():
    impl = load("fixtures/flash_kernels.py:flash_attn_varlen_func@flash_attn")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for n in (3, 5, 5))
    out = impl.fn(q, k, v, is_causal=True)
    mask = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)  # bottom-right
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(out, want, atol=1e-5)
    with pytest.raises(NotImplementedError):
        impl.fn(q, k, v, attn_mask=mask)


# Each planted flash bug: a case that triggers it, and what to compare ("out", "lse" or a cache).
TRIGGERS = {
    "window_off_by_one": (FlashCase(B=1, seqlens_q=(6,), seqlens_k=(6,), window=(2, 0)), "out"),
    "softcap_after_mask": (FlashCase(B=1, seqlens_q=(4,), seqlens_k=(4,), causal=True, softcap=5.0), "out"),
    "sink_adds_value": (FlashCase(B=1, H=2, Hkv=2, seqlens_q=(3,), seqlens_k=(4,), sinks=True), "out"),
    "sink_ignored": (FlashCase(B=1, H=2, Hkv=2, seqlens_q=(3,), seqlens_k=(4,), sinks=True), "out"),
    "alibi_wrong_sign": (FlashCase(B=1, H=2, Hkv=2, seqlens_q=(4,), seqlens_k=(9,), alibi=True), "out"),
    "alibi_batch_axis_dropped": (FlashCase(B=2, H=2, Hkv=2, seqlens_q=(3, 2), seqlens_k=(6, 4), alibi="per_batch"),
                                 "out"),
    "causal_top_left": (FlashCase(B=1, seqlens_q=(3,), seqlens_k=(6,), causal=True), "out"),
    "lse_base2": (FlashCase(B=1, seqlens_q=(3,), seqlens_k=(6,)), "lse"),
    "fp8_descale_twice": (FlashCase(B=1, seqlens_q=(3,), seqlens_k=(6,), dtype="float8_e4m3fn"), "out"),
    "varlen_leaks_next": (FlashCase(B=2, seqlens_q=(3, 2), seqlens_k=(3, 4)), "out"),
    "block_table_off_by_one": (FlashCase(mode="kvcache", B=2, seqlens_q=(1, 1), seqlens_k=(5, 9), page_size=4), "out"),
    "cache_seqlens_exclusive": (FlashCase(mode="kvcache", B=1, seqlens_q=(1,), seqlens_k=(5,), page_size=4), "out"),
    "append_wrong_slot": (FlashCase(mode="kvcache", B=1, seqlens_q=(1,), seqlens_k=(3,), page_size=16, new=2), "cache"),
    "split_kv_no_rescale": (FlashCase(mode="kvcache", B=1, seqlens_q=(1,), seqlens_k=(17,), num_splits=3), "out"),
}


class _Target:
    """What fp.fit and fp.judge need of a suite's target, for a direct check."""
    _replay, cases, last_case, forward_factor = None, 0, None, 2.0

    def __init__(self, impl, dtype):
        self.impl, self.caps, self.dtype = impl, impl.capabilities, dtype

    def record(self, comparison=None, **numbers):
        self.cmp = comparison


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(catalog.FLASH_CORRECT))
def test_flash_correct_kernels_match_the_reference(name, dtype):
    impl = load(catalog.CORRECT[name])
    t = _Target(impl, dtype)
    for case in (FlashCase(B=2, H=2, Hkv=1, seqlens_q=(1, 1), seqlens_k=(7, 5), causal=True, window=(2, 0),
                           softcap=5.0, alibi=True, sinks=True, new=1, page_size=4, seed=1),
                 FlashCase(B=3, H=4, Hkv=2, seqlens_q=(1, 1, 1), seqlens_k=(16, 3, 20), page_size=16, seed=2)):
        c = fp.fit(t, case)
        inp = c.materialize()
        res = fp.call(impl.native, inp, lse=impl.native.caps.lse)
        assert fp.judge(t, res, inp).ok
        if impl.native.caps.lse:
            assert fp.judge_lse(t, res, inp).ok


def _run(spec, case, what):
    impl = load(spec)
    kernel = impl.native
    c = case.replace(mode=kernel.mode)
    inp = c.materialize()
    res = fp.call(kernel, inp, lse=what == "lse")
    return {"out": res.out, "lse": res.lse, "cache": res.handed.get("k_cache")}[what]


def test_every_flash_planted_bug_has_a_trigger():
    assert set(TRIGGERS) == catalog.FLASH_PLANTED


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_flash_planted_bug_is_real(name):
    spec = catalog.PLANTED[name]["spec"]
    kernel_name = {"func": "flash_attn_func", "varlen": "flash_attn_varlen_func",
                   "kvcache": "flash_attn_with_kvcache"}[load(spec).native.mode]
    case, what = TRIGGERS[name]
    bad = _run(spec, case, what)
    good = _run(f"fixtures/flash_kernels.py:{kernel_name}@flash_attn", case, what)
    assert not torch.equal(bad.nan_to_num(), good.nan_to_num()), f"{name}: the trigger does not trigger"
    # Without its variant (or its region) the bug is invisible: planted bugs differ only where meant.
    benign = FlashCase(B=1, seqlens_q=(4,), seqlens_k=(4,)) if what != "cache" else None
    if benign is not None and name not in ("varlen_leaks_next", "block_table_off_by_one", "cache_seqlens_exclusive"):
        assert torch.allclose(_run(spec, benign, "out").double(),
                              _run(f"fixtures/flash_kernels.py:{kernel_name}@flash_attn", benign, "out").double(),
                              atol=1e-6), f"{name} is wrong even without its variant"


@pytest.mark.slow
def test_in_process_check_with_the_flash_convention():
    import harness
    from fixtures import flash_kernels as K
    from fixtures import flash_planted as P

    assert harness.check(K.flash_attn_with_kvcache, api="flash_attn", suites=["paged"], profile="quick",
                         dtypes=["float32"]).verdict == "pass"
    rep = harness.check(P.block_table_off_by_one, api="flash_attn", suites=["paged"], profile="quick",
                        dtypes=["float32"])
    assert rep.verdict == "fail"
    assert any(f["property"] == "test_page_isolation" for f in rep.failures)
