"""Root causes for failures of flash_attn-convention kernels (the ``flash`` and ``paged`` suites).

Shrinking leaves a counterexample only the features its failure needs, so what every failing
:class:`~harness.flash.cases.FlashCase` has in common names the variant at fault: all FP8, all
with splits, all appending, all with ALiBi, sinks or a soft-cap, all windowed, all causal with
L != S. Where the failures share nothing, the leak properties name it: a cu_seqlens boundary
crossed, a page read that no block table or cache length allows. Each rule returns
``(kind, title, claimed results)`` like the rules of :mod:`harness.triage`, which runs these first.
"""

from __future__ import annotations

FLASH_SUITES = ("flash", "paged")


def _ce(r: dict) -> dict:
    c = r.get("counterexample")
    return c if isinstance(c, dict) and "seqlens_q" in c else {}


def _prop(r: dict) -> str:
    return f"{r.get('suite')}::{r.get('property')}"


def _all(rs, pred) -> bool:
    cases = [_ce(r) for r in rs]
    return bool(rs) and all(cases) and all(pred(c) for c in cases)


def _flash(left):
    return [r for r in left if r.get("suite") in FLASH_SUITES]


# (kind, title, what every failing case has): the variant at fault, most specific first.
COMMON = [
    ("fp8", "wrong only for FP8 inputs: the q/k/v descales are misapplied (twice, not at all, per the wrong head?)",
     lambda c: str(c.get("dtype", "")).startswith("float8")),
    ("split_kv", "wrong only with num_splits > 1: split-KV partials are merged without their LSEs",
     lambda c: c.get("num_splits", 0) > 1),
    ("cache_append", "wrong only when new k/v are appended: the append writes the wrong cache slots",
     lambda c: c.get("new", 0) > 0 and c.get("mode") == "kvcache"),
    ("alibi", "ALiBi bias wrong (sign, offset, or the (batch, head) slopes misread): every failing case has ALiBi",
     lambda c: bool(c.get("alibi"))),
    ("sinks", "attention sinks mishandled (ignored, or given a value): every failing case has learnable_sink",
     lambda c: bool(c.get("sinks"))),
    ("softcap", "soft-cap misplaced (after the mask: masked keys sit at -cap and get weight; or applied twice): every "
                "failing case has a soft-cap", lambda c: c.get("softcap", 0) > 0),
    ("window", "sliding window wrong (off by one at its edge?): every failing case has window_size",
     lambda c: tuple(c.get("window", (-1, -1))) != (-1, -1)),
    ("causal_alignment", "causal mask misaligned: flash_attn aligns it bottom-right (query i sees keys up to "
                         "i + S - L); every failing case is causal with L != S",
     lambda c: c.get("causal") and any(q != k + (c.get("new", 0) if c.get("mode") == "kvcache" else 0)
                                      for q, k in zip(c.get("seqlens_q", ()), c.get("seqlens_k", ())))),
]


def common_variant(left, ev):
    rs = _flash(left)  # the SDPA suites' failures of the same kernel stay for the SDPA rules
    for kind, title, pred in COMMON:
        if _all(rs, pred):
            return [(kind, title, rs)]
    return []


def lse_only(left, ev):
    rs = [r for r in _flash(left) if r.get("property") == "test_lse_matches_reference"]
    if rs and len(rs) == len(_flash(left)):
        return [("lse", "the returned LSE is wrong while the output is right (base 2 instead of natural log? the "
                        "rule for rows with no visible key?)", rs)]
    return []


def leaks(left, ev):
    out = []
    page = [r for r in left if _prop(r) == "paged::test_page_isolation"]
    if page:
        out.append(("page_leak", "reads KV-cache slots it was not given: pages outside its block table, or slots past "
                                 "cache_seqlens (another request's memory)",
                    [r for r in left if _ce(r).get("mode") == "kvcache" and r.get("suite") in FLASH_SUITES]))
    varlen = [r for r in left if _prop(r) == "paged::test_varlen_isolation"]
    if varlen:
        out.append(("varlen_leak", "tokens attend across a cu_seqlens boundary (one packed sequence reads another)",
                    [r for r in left if _ce(r).get("mode") == "varlen" and r.get("suite") in FLASH_SUITES]))
    return out


FLASH_RULES = [lse_only, common_variant, leaks]
