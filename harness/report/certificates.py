"""The invariance certificates section: rows every renderer shares, read from report.json alone
(``implementations[].certificates``)."""

from __future__ import annotations

HEADERS = ["implementation", "certificate", "dtype", "declared", "measured", "status", "compared", "shapes",
           "first difference"]


def _measured(c: dict) -> str:
    return {True: "held (bitwise)", False: "broken", None: "not measured"}[c.get("held")]


def _difference(c: dict) -> str:
    fd = c.get("first_difference")
    if not fd:
        return ""
    where = ", ".join(f"{k}={v}" for k, v in (c.get("where") or {}).items())
    if fd.get("index") is None:
        return f"{where}: shapes differ"
    return (f"{where}: at {tuple(fd['index'])} {fd.get('alone')!r} vs {fd.get('other')!r}, {fd.get('ulps')} ulps "
            f"({fd.get('elements_differing')} of {fd.get('elements')} elements, at most {fd.get('max_ulps')} ulps)")


def _shapes(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in (s or {}).items())


def rows(report: dict) -> list:
    out = []
    for impl in report.get("implementations") or []:
        for c in impl.get("certificates") or []:
            declared = (f"{c.get('declared_as')}={bool(c.get('declared'))}" if c.get("declared_as")
                        else str(c.get("declared")))
            status = c.get("status", "") + ("" if c.get("enforced") else " (not in the gate)")
            out.append([impl.get("name"), c.get("kind"), c.get("dtype"), declared, _measured(c), status,
                        c.get("compared", ""), _shapes(c.get("shapes")), _difference(c)])
    return out


def intro(report: dict) -> str:
    o = report.get("options") or {}
    gate = "in the gate (--certify invariance)" if "invariance" in (o.get("certify") or []) else \
        "reported only (add --certify invariance to gate on them)"
    reruns = f"; {o['reruns']} reruns" if o.get("reruns") else ""
    return ("Bitwise comparisons of each kernel with itself, apart from the tolerance verdicts: a certificate "
            f"fails only where the kernel declares it, and the tier is {gate}{reruns}.")


def html_section(report: dict):
    """The HTML section's context (harness/report/templates/certificates.html), or None: rows of
    plain strings, and which status cells are flagged (the template escapes every one)."""
    rs = rows(report)
    if not rs:
        return None
    body = [{"cells": ["" if c is None else str(c) for c in r],
             "flag": str(r[5]).startswith(("fail", "error"))} for r in rs]
    return {"intro": intro(report), "headers": HEADERS, "rows": body}


def markdown_lines(report: dict) -> list:
    rs = rows(report)
    if not rs:
        return []
    from tabulate import tabulate

    def esc(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    return ["## Invariance certificates", "", intro(report), "",
            tabulate([[esc(c) for c in r] for r in rs], headers=HEADERS, tablefmt="github"), ""]
