"""Every selected property ends with a result: the ones a run could not reach are ``not_run``
with the reason, never dropped, so the counts always add up to what was selected.

A suite process announces the properties it collected (suite, property, dtype, tier);
:mod:`harness.runner` fills in the ones with no result when a run ends early (the crash-restart
limit, the implementation's timeout, a signal from outside), and the suite plugin records them
directly when :mod:`harness.preload` found that the kernel cannot run the base case.
"""

from __future__ import annotations

from typing import Optional

from harness.tiers import enforced

NOT_RUN = "not_run"
# The order statuses are counted in, worst first; "not_run" prints as "not run".
COUNT_ORDER = ("error", "fail", NOT_RUN, "unsupported", "skip", "pass")


def key(r: dict) -> tuple:
    return (r.get("suite"), r.get("property"), r.get("dtype"))


def not_run_result(item: dict, reason: str, device: str, impl: Optional[str], seed) -> dict:
    """The record of a collected property that never ran (``item`` as a suite process announces it)."""
    return {"suite": item["suite"], "property": item["property"], "tier": item.get("tier", "gate"),
            "dtype": item["dtype"], "device": device, "impl": impl, "status": NOT_RUN, "cases": 0,
            "unsupported_cases": 0, "worst": {}, "message": f"not run: {reason}", "counterexample": None,
            "counterexample_text": None, "counterexample_extra": None, "repro": "", "seed": seed,
            "duration_s": None, "doc": item.get("doc", "")}


def fill_not_run(results: list, selected: list, reason: str, device: str, impl: Optional[str], seed) -> int:
    """Append a ``not_run`` record for each selected property without a result; returns how many."""
    have = {key(r) for r in results}
    missing = [it for it in selected if key(it) not in have]
    results += [not_run_result(it, reason, device, impl, seed) for it in missing]
    return len(missing)


def counts(results: list, strict: bool) -> tuple:
    """({status: n} over the properties, counting a failure of a tier not enforced apart),
    {tier: n} of those findings). The run's own record (suite ``harness``) is not a property."""
    by_status: dict = {}
    findings: dict = {}
    for r in results:
        if r.get("suite") == "harness":
            continue
        st = r.get("status")
        if st in ("fail", "error") and not enforced(r.get("tier", "gate"), strict):
            findings[r["tier"]] = findings.get(r["tier"], 0) + 1
            continue
        by_status[st] = by_status.get(st, 0) + 1
    return by_status, findings


def headline(verdict: str, results: list, strict: bool) -> str:
    """``PASS (144 pass; 3 strict findings not enforced)``: the words agree with the exit status,
    and the numbers add up to the properties selected."""
    by_status, findings = counts(results, strict)
    order = list(COUNT_ORDER) + sorted(s for s in by_status if s not in COUNT_ORDER)
    parts = ", ".join(f"{by_status[s]} {s.replace('_', ' ')}" for s in order if by_status.get(s))
    notes = "; ".join(f"{n} {tier} finding{'s' if n != 1 else ''} not enforced"
                      for tier, n in sorted(findings.items()))
    inside = "; ".join(p for p in (parts, notes) if p) or "nothing ran"
    return f"{verdict.upper()} ({inside})"
