"""JUnit XML from a report dict: one testcase per (implementation, property, dtype)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from harness.report.results import STATUS_ORDER
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
            msg = "\n\n".join(f"[{r['dtype']}] {r['message']}" + (f"\nreproduce: {r['repro']}" if r.get("repro") else "")
                              for r in rs if r["status"] == worst["status"])
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
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


