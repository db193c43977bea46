"""P. Packed and paged inputs: what one request must never read of another's.

Runs for flash_attn-convention kernels (``--api flash_attn``): varlen batches packed by
``cu_seqlens``, and KV caches (contiguous or paged through a shuffled ``block_table``, shared
prefix pages, partly filled last pages, new tokens appended in place). Catches: a token attending
across a ``cu_seqlens`` boundary, a block-table off-by-one reading the neighbouring page,
``cache_seqlens`` read one past the end, reads of pages no block table reaches, an append that
writes the wrong slot or another page.
"""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness.flash import probes as fp
from harness.flash.cases import FlashCase
from harness.flash.strategies import flash_cases

RAGGED = dict(B=st.integers(2, 4))


@given(case=flash_cases(**RAGGED), how=st.sampled_from(["nan", "random"]), pick=st.integers(0, 3))
@example(case=FlashCase(B=2, seqlens_q=(3, 3), seqlens_k=(3, 3), causal=True), how="random", pick=0)
@example(case=FlashCase(B=3, seqlens_q=(2, 0, 1), seqlens_k=(4, 1, 0)), how="nan", pick=2)
def test_varlen_isolation(target, case, how, pick):
    """Changing (or NaN-filling) every other sequence's queries, keys and values leaves one
    sequence's outputs bitwise unchanged: no token attends across a cu_seqlens boundary."""
    kernel = fp.require(target, modes=("varlen",))
    case = fp.fit(target, case)
    inp = case.materialize()
    b = pick % case.B
    before = fp.call(kernel, inp).out
    cu_q = [0, *torch.tensor(case.seqlens_q).cumsum(0).tolist()]
    cu_k = [0, *torch.tensor(case.seqlens_k).cumsum(0).tolist()]
    g = torch.Generator().manual_seed(case.seed)
    new = {}
    for name, cu in (("q", cu_q), ("k", cu_k), ("v", cu_k)):
        t = inp.tensors[name].clone()
        keep = torch.zeros(t.shape[0], dtype=torch.bool)
        keep[cu[b]:cu[b + 1]] = True
        fill = torch.full(t.shape, float("nan")) if how == "nan" else torch.randn(t.shape, generator=g) * 3
        new[name] = torch.where(keep.view(-1, 1, 1), t, fill.to(t.dtype))
    after = fp.call(kernel, inp, tensors=new).out
    fp.assert_rows_unchanged(before, after, fp.seq_rows(inp, b), f"{how} in every sequence but {b}", inp)


PAGED = dict(B=st.integers(1, 4), seqlens_q=st.lists(st.integers(1, 3), min_size=4, max_size=4).map(tuple))


def _slots(inp, b=None):
    """Flat cache slots of every sequence (or of sequence b), appended ones included."""
    idx = fp.slot_index(inp)
    return torch.cat(idx) if b is None else idx[b]


@given(case=flash_cases(**PAGED), pick=st.integers(0, 3))
@example(case=FlashCase(mode="kvcache", B=2, seqlens_q=(1, 1), seqlens_k=(5, 9), page_size=4, new=1), pick=1)
@example(case=FlashCase(mode="kvcache", B=3, seqlens_q=(2, 2, 2), seqlens_k=(16, 17, 20), page_size=16,
                        shared_pages=1, seed=5), pick=0)
@example(case=FlashCase(mode="kvcache", B=2, seqlens_q=(1, 1), seqlens_k=(3, 1), page_size=1), pick=0)
def test_page_isolation(target, case, pick):
    """Slots no block table reaches, and slots past cache_seqlens (+ appended tokens) in a last
    page, are never read: NaN there leaves every output bitwise unchanged. Changing the slots only
    other sequences own leaves a sequence's outputs bitwise unchanged (another request's pages)."""
    kernel = fp.require(target, modes=("kvcache",))
    case = fp.fit(target, case)
    inp = case.materialize()
    before = fp.call(kernel, inp).out
    kc, vc = inp.tensors["k_cache"], inp.tensors["v_cache"]
    flat = kc.shape[0] * kc.shape[1]
    read = torch.zeros(flat, dtype=torch.bool)
    read[_slots(inp)] = True
    # the slots an append writes are poisoned too: the kernel must write before it reads them
    poison = ~read
    for b in range(case.B):
        poison[_slots(inp, b)[case.seqlens_k[b]:]] = True
    nan = {n: torch.where(poison.view(kc.shape[0], kc.shape[1], 1, 1), torch.full_like(t, float("nan")), t)
           for n, t in (("k_cache", kc), ("v_cache", vc))}
    after = fp.call(kernel, inp, tensors=nan).out
    everything = torch.ones(after.shape[0], dtype=torch.bool)
    fp.assert_rows_unchanged(before, after, everything, "NaN in cache slots no sequence may read", inp)
    b = pick % case.B
    others = torch.zeros(flat, dtype=torch.bool)
    others[_slots(inp)] = True
    others[_slots(inp, b)] = False
    if bool(others.any()):
        g = torch.Generator().manual_seed(case.seed)
        sel = others.view(kc.shape[0], kc.shape[1], 1, 1)
        moved = {n: torch.where(sel, (torch.randn(t.shape, generator=g) * 3).to(t.dtype), t)
                 for n, t in (("k_cache", kc), ("v_cache", vc))}
        after = fp.call(kernel, inp, tensors=moved).out
        fp.assert_rows_unchanged(before, after, fp.seq_rows(inp, b), f"new values in the pages only other sequences "
                                 f"than {b} own", inp)


@given(case=flash_cases(new=st.sampled_from([1, 3]), **PAGED))
@example(case=FlashCase(mode="kvcache", B=2, seqlens_q=(1, 1), seqlens_k=(3, 8), page_size=4, new=1))
@example(case=FlashCase(mode="kvcache", B=1, seqlens_q=(3,), seqlens_k=(15,), page_size=16, new=3))
def test_cache_append_integrity(target, case):
    """Appending new k, v writes exactly the slots cache_seqlens[b] .. + new of each sequence
    (through its block table) with exactly the new values, and changes no other slot of any page."""
    kernel = fp.require(target, "cache_append", modes=("kvcache",))
    case = fp.fit(target, case)
    if not case.new:
        return
    inp = case.materialize()
    res = fp.call(kernel, inp)
    for name, new in (("k_cache", "k"), ("v_cache", "v")):
        want = inp.tensors[name].clone()
        P = want.shape[1]
        for b in range(case.B):
            sl = _slots(inp, b)[case.seqlens_k[b]:]
            want[sl // P, sl % P] = inp.tensors[new][b]
        got = res.handed[name]
        diff = ~((got == want) | (torch.isnan(got) & torch.isnan(want))).flatten(2).all(-1)
        if bool(diff.any()):
            blk, slot = (int(x) for x in diff.nonzero()[0])
            owner = [b for b in range(case.B) if bool((_slots(inp, b) == blk * P + slot).any())]
            raise fp.PropertyViolation(
                f"{name} after the append differs from the expected cache in {int(diff.sum())} slots; first: block "
                f"{blk}, slot {slot} (" + (f"a slot of sequence {owner[0]}" if owner else "a slot no sequence owns")
                + f"; cache_seqlens {list(case.seqlens_k)}, {case.new} appended per sequence)")
