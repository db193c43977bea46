"""The "Causes" section of report.html, first on the page: each implementation's failures grouped
by root cause (``implementations[].causes``, from :mod:`harness.triage`), each cause linking to
every failure it explains further down."""

from __future__ import annotations

from harness.report.html_sections import anchor, impls, results
from harness.triage import cause_line, key


def causes(report: dict):
    out = []
    for n, impl in enumerate(impls(report)):
        cs = [c for c in (impl.get("causes") or []) if isinstance(c, dict)]
        if not cs:
            continue
        ids = {key(r): anchor(n, r) for r in results(impl) if r.get("status") in ("fail", "error")}
        out.append({"name": str(impl.get("name")), "verdict": str(impl.get("verdict")),
                    "causes": [{"line": cause_line(c), "repro": c.get("repro") or None,
                                "links": [(k, ids.get(k)) for k in (c.get("results") or [])]} for c in cs]})
    return {"impls": out} if out else None
