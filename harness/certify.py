"""Where the invariance tier's results go, and when they count.

The suite process reports the invariance properties like any other; here they are filed apart
from the tolerance verdicts (``implementations[].certificates`` in report.json, their own section
in every report and their own JUnit suite), and they join the gate only when the run asked for
them (``--certify invariance``, ``harness.check(..., certify=("invariance",))``).
"""

from __future__ import annotations

from typing import Optional, Sequence

TIERS_CERTIFIED = ("invariance",)  # what --certify accepts
SUITE = "invariance"


def unknown(names: Sequence[str]) -> list:
    return [n for n in names if n not in TIERS_CERTIFIED]


def suites_with(suites: Optional[Sequence[str]], certify: Sequence[str], default_suites: Sequence[str]) -> Optional[list]:
    """The suites to run: with ``--certify invariance`` the invariance suite is added (to the
    default suites when none was named)."""
    if SUITE not in certify:
        return list(suites) if suites else None
    base = list(suites) if suites else list(default_suites)
    return base if SUITE in base else base + [SUITE]


def certificate_record(r: dict, enforced: bool) -> dict:
    """A certificate (report.model.Certificate) from the invariance property's result record."""
    cert = r.get("certificate") or {}
    return {"suite": SUITE, "kind": cert.get("kind") or r["property"].replace("test_", "").split("_")[0],
            "property": r["property"], "dtype": r["dtype"], "device": r["device"], "status": r["status"],
            "enforced": enforced, "declared": cert.get("declared"), "declared_as": cert.get("declared_as"),
            "held": cert.get("held"), "compared": cert.get("compared", ""), "shapes": cert.get("shapes") or {},
            "comparisons": cert.get("comparisons", 0), "first_difference": cert.get("first_difference"),
            "where": cert.get("where") or {}, "reruns": cert.get("reruns"), "message": r.get("message", ""),
            "repro": r.get("repro", ""), "seed": r.get("seed"), "duration_s": r.get("duration_s"),
            "ulps": r.get("ulps"), "impl": r.get("impl")}


def split(results: list, certify: Sequence[str]) -> tuple:
    """(tolerance results, certificates): the invariance suite's records leave ``results``."""
    enforced = SUITE in certify
    kept, certs = [], []
    for r in results:
        if r.get("suite") == SUITE:
            certs.append(certificate_record(r, enforced))
        else:
            kept.append(r)
    return kept, certs


def verdict(base: str, results: list, certificates: list) -> str:
    """The implementation's verdict with its certificates: an enforced certificate that failed or
    errored fails it. A run of certificates alone passes when one held and none failed; when they
    are reported only (no --certify), as a run of info-tier properties does, once one was measured."""
    bad = any(c["enforced"] and c["status"] in ("fail", "error") for c in certificates)
    if bad:
        return "fail"
    if not results and certificates:
        if any(c["enforced"] for c in certificates):
            return "pass" if any(c["status"] == "pass" for c in certificates) else "unsupported"
        return "pass" if any(c["held"] is not None for c in certificates) else "unsupported"
    return base


def closing_note(implementations: list) -> Optional[str]:
    """How long the certificates took, for the end of ``attn-harness check``."""
    certs = [c for i in implementations for c in i.get("certificates") or []]
    if not certs:
        return None
    took = sum(c.get("duration_s") or 0.0 for c in certs)
    total = sum(r.get("duration_s") or 0.0 for i in implementations for r in i["results"]) + took
    held = sum(1 for c in certs if c["held"])
    broken = [c for c in certs if c["held"] is False]
    failed = sum(1 for c in certs if c["status"] == "fail")
    rest = f" to {total - took:.1f} s of the tolerance properties" if total - took > 0 else ""
    return (f"invariance certificates: {held} held, {len(broken)} broken ({failed} of them declared, failing), "
            f"{len(certs) - held - len(broken)} not measured; they added {took:.1f} s of property time{rest}")
