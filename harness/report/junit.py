"""JUnit XML from a report dict: one testcase per (implementation, property, dtype)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from harness.report.results import STATUS_ORDER, cause_of
from harness.tiers import enforced


def to_junit(report: dict) -> str:
    """One testcase per (implementation, property); dtypes folded into the case."""
    suites = ET.Element("testsuites", name="attention-harness")
    for impl in report["implementations"]:
        groups: dict = {}
        for r in impl["results"]:
            groups.setdefault((r["suite"], r["property"]), []).append(r)
        ts = ET.SubElement(suites, "testsuite", name=impl["name"], tests=str(len(groups)))
        nfail = nerr = nskip = 0
        for (suite, prop), rs in groups.items():
            tc = ET.SubElement(ts, "testcase", classname=f"{impl['name']}.{suite}", name=prop,
                               time=str(round(sum(r.get("duration_s") or 0 for r in rs), 3)))
            worst = min(rs, key=lambda r: STATUS_ORDER.get(r["status"], 9))
            msg = "\n\n".join(f"[{r['dtype']}] {r['message']}" + numbers_line(r)
                              + (f"\nreproduce: {r['repro']}" if r.get("repro") else "")
                              for r in rs if r["status"] == worst["status"])
            cause = cause_of(impl, worst) if worst["status"] in ("fail", "error") else None
            if cause:  # the cause leads: the same one-liner the console and report.md show
                msg = f"cause: {cause.get('title')}\n\n" + msg
            is_enforced = enforced(worst["tier"], report["options"].get("strict"))
            if worst["status"] == "fail" and is_enforced:
                ET.SubElement(tc, "failure", message=msg.splitlines()[0][:500] if msg else "fail").text = msg
                nfail += 1
            elif worst["status"] == "error" and is_enforced:
                ET.SubElement(tc, "error", message=msg.splitlines()[0][:500] if msg else "error").text = msg
                nerr += 1
            elif worst["status"] in ("skip", "unsupported", "not_run") or (worst["status"] in ("fail", "error") and not is_enforced):
                ET.SubElement(tc, "skipped", message=f"{worst['status']} ({worst['tier']}): {msg[:500]}")
                nskip += 1
        ts.set("failures", str(nfail))
        ts.set("errors", str(nerr))
        ts.set("skipped", str(nskip))
        if impl.get("certificates"):
            _certificates_suite(suites, impl)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)




def numbers_line(r: dict) -> str:
    """"3.1x the bound, 14 ulps (rule: ...)" for a failure record that carries them."""
    rule = r.get("rule") or {}
    if r.get("ulps") is None and not rule:
        return ""
    parts = []
    if rule.get("times_the_bound") is not None:
        t = rule["times_the_bound"]
        parts.append(f"{t:.3g}x the bound" if isinstance(t, (int, float)) else f"{t}x the bound")
    if r.get("ulps") is not None:
        u = r["ulps"]
        parts.append(f"{u:.3g} ulps" if isinstance(u, (int, float)) else f"{u} ulps")
    if rule:
        how = (f"factor {rule.get('factor'):g} x baseline: {rule.get('baseline')}"
               if rule.get("kind") == "tolerance" and isinstance(rule.get("factor"), (int, float))
               else f"{rule.get('kind')}: {rule.get('baseline')}")
        parts.append(f"rule: {how}")
    return "\n" + ", ".join(parts)


def _certificates_suite(suites, impl: dict) -> None:
    """The invariance certificates as a testsuite of their own: one testcase per (certificate,
    dtype); a broken certificate that was not declared, or a tier not in the gate, is skipped."""
    certs = impl["certificates"]
    ts = ET.SubElement(suites, "testsuite", name=f"{impl['name']} invariance certificates", tests=str(len(certs)))
    nfail = nerr = nskip = 0
    for c in certs:
        tc = ET.SubElement(ts, "testcase", classname=f"{impl['name']}.invariance", name=f"{c['property']}[{c['dtype']}]",
                           time=str(round(c.get("duration_s") or 0.0, 3)))
        text = (f"{c['compared']}\nshapes: {c['shapes']}\n{c['message']}" + numbers_line(c)
                + (f"\nreproduce: {c['repro']}" if c.get("repro") else ""))
        if c["status"] == "fail" and c["enforced"]:
            ET.SubElement(tc, "failure", message=c["message"].splitlines()[0][:500] if c["message"] else "fail").text = text
            nfail += 1
        elif c["status"] == "error" and c["enforced"]:
            ET.SubElement(tc, "error", message=(c["message"] or "error").splitlines()[0][:500]).text = text
            nerr += 1
        elif c["status"] != "pass":
            why = "not in the gate (--certify invariance)" if not c["enforced"] else c["status"]
            ET.SubElement(tc, "skipped", message=f"{why}: {(c['message'] or '')[:500]}")
            nskip += 1
    ts.set("failures", str(nfail))
    ts.set("errors", str(nerr))
    ts.set("skipped", str(nskip))
