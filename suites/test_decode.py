"""I. Prefill and decode (the seed's exercise 8: the two workloads must agree).

Catches: a decode fast path (L = 1) that drops or duplicates a cache position, chunked
prefill with the wrong causal offset, kernels that only work when L == S.
"""

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case


def _prefill(target, case):
    c = case.replace(policy="causal()", mask="is_causal" if target.caps.causal == "top_left" else "bool",
                     mask_shape="LS", L=case.S)
    c = c.fit(target.caps, target.dtype, target.device)
    assume(c is not None)
    return c, c.materialize()


@given(case=hs.cases(policies=("none",), L=st.just(1), S=st.integers(1, 40)))
@example(case=Case(B=2, H=4, Hkv=2, L=1, S=17, E=16, Ev=16))
def test_decode_matches_prefill(target, case):
    """Decoding one query at a time against a growing KV cache (L = 1, S = t + 1, no mask)
    equals row t of the full causal prefill, and both match the reference."""
    case = target.fit(case)
    full_case, full = _prefill(target, case)
    out_full = probes.call(target.impl, full)
    ref = full.reference()
    # Every step when the cache is short; otherwise the first, the last and a spread between.
    steps = range(full_case.S) if full_case.S <= 8 else sorted({0, 1, full_case.S // 3, full_case.S // 2,
                                                               full_case.S - 2, full_case.S - 1})
    for t in steps:
        step = full.replace(q=full.q[:, :, t:t + 1], k=full.k[:, :, :t + 1], v=full.v[:, :, :t + 1],
                            attn_mask=None, is_causal=False,
                            visible=torch.ones(case.B, case.H, 1, t + 1, dtype=torch.bool),
                            case=full_case.replace(L=1, S=t + 1, policy="full()", mask="none"))
        out = probes.call(target.impl, step)
        probes.judge(target, out, step, what=f"decode step t={t}", ref=ref[:, :, t:t + 1])
        probes.judge(target, out_full[:, :, t:t + 1], step, what=f"prefill row {t}", ref=ref[:, :, t:t + 1])


@given(case=hs.cases(policies=("none",), S=st.integers(2, 60)), chunk=st.integers(1, 16))
@example(case=Case(B=1, H=2, Hkv=1, L=9, S=9, E=16, Ev=16), chunk=4)
def test_chunked_prefill_matches(target, case, chunk):
    """Prefill in chunks of queries (each chunk reads the cache so far plus itself, causally)
    equals the full causal prefill."""
    target.require_mask()
    case = target.fit(case)
    full_case, full = _prefill(target, case)
    ref = full.reference()
    kind = "bool" if "bool" in target.caps.mask_kinds else "float"
    starts = list(range(0, full_case.S, chunk))
    for c0 in starts if len(starts) <= 6 else starts[:3] + starts[-3:]:
        c1 = min(full_case.S, c0 + chunk)
        vis = (torch.arange(c1).view(1, -1) <= torch.arange(c0, c1).view(-1, 1))  # causal with offset c0
        mask = vis if kind == "bool" else torch.zeros(vis.shape).masked_fill(~vis, float("-inf")).to(full.q.dtype)
        part = full.replace(q=full.q[:, :, c0:c1], k=full.k[:, :, :c1], v=full.v[:, :, :c1], attn_mask=mask,
                            is_causal=False, visible=vis.expand(case.B, case.H, c1 - c0, c1),
                            case=full_case.replace(L=c1 - c0, S=c1, policy=f"causal({c0})", mask=kind))
        out = probes.call(target.impl, part)
        probes.judge(target, out, part, what=f"chunk of queries {c0}..{c1 - 1}", ref=ref[:, :, c0:c1])
