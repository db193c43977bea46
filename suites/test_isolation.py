"""E. Batch and head isolation: in serving, one user's prompt must not reach another's.

Catches: reads from the wrong batch element (cache indexing bugs), cross-head mixing, GQA head
maps that send a query head to the wrong kv head, per-batch masks applied to the wrong element.
"""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case, real_case

POL = ("none", "causal", "key_padding", "padded_causal")


@given(case=hs.cases(policies=POL, B=st.integers(2, 4)), which=st.integers(0, 3))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=3, E=16, Ev=16), which=1)
@example(case=real_case(1), which=2)
def test_batch_isolation(target, case, which):
    """Perturbing batch element b' (queries, keys, values) never changes any output of b != b'."""
    case = target.fit(case)
    inp = case.materialize()
    bp = which % case.B
    out0 = probes.call_kept(target.impl, inp)
    g = torch.Generator().manual_seed(case.seed + 1)
    q, k, v = (t.clone() for t in (inp.q, inp.k, inp.v))
    for t in (q, k, v):
        t[bp] = (torch.randn(t[bp].shape, generator=g) * 3).to(t.dtype)
    out1 = probes.call(target.impl, inp, q=q, k=k, v=v)
    rows = torch.ones(case.B, case.H, case.L, dtype=torch.bool)
    rows[bp] = False
    probes.assert_rows_unchanged(out0, out1, rows, f"perturbing batch element {bp}")


@given(case=hs.cases(policies=POL, heads_=hs.heads(8).filter(lambda hh: hh[0] > 1)), which=st.integers(0, 7))
@example(case=Case(B=1, H=4, Hkv=2, L=3, S=3, E=16, Ev=16), which=1)
@example(case=Case(B=1, H=2, Hkv=2, L=3, S=3, E=16, Ev=16), which=0)
@example(case=real_case(4), which=5)
def test_head_isolation(target, case, which):
    """Perturbing kv head g' changes only the query heads h with h // (H // Hkv) == g';
    perturbing query head h' changes only head h'."""
    case = target.fit(case)
    inp = case.materialize()
    group = case.H // case.Hkv
    g_ = which % case.Hkv
    out0 = probes.call_kept(target.impl, inp)
    gen = torch.Generator().manual_seed(case.seed + 2)
    k, v = inp.k.clone(), inp.v.clone()
    for t in (k, v):
        t[:, g_] = (torch.randn(t[:, g_].shape, generator=gen) * 3).to(t.dtype)
    rows = torch.ones(case.B, case.H, case.L, dtype=torch.bool)
    rows[:, g_ * group:(g_ + 1) * group] = False
    probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                 f"perturbing kv head {g_} (read by query heads {g_ * group}..{(g_ + 1) * group - 1})")
    hp = which % case.H
    q = inp.q.clone()
    q[:, hp] = (torch.randn(q[:, hp].shape, generator=gen) * 3).to(q.dtype)
    rows = torch.ones(case.B, case.H, case.L, dtype=torch.bool)
    rows[:, hp] = False
    probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, q=q), rows, f"perturbing query head {hp}")
