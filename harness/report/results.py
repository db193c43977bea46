"""The report as data: building, loading and the summaries every renderer shares (matrix cells,
strict notes, integrity rows, cause lines). Renderers (markdown, junit, html) compute nothing new.

``report.json`` (schema below, versioned), ``report.md`` (GitHub-renderable, tabulate) and JUnit
XML. Every file is written atomically (temporary file, then rename), and the CLI rewrites them
after each implementation, so an interrupted run keeps what finished.

Schema (``schema_version`` 1)::

    {"schema_version": 1, "created": ISO-8601, "harness_version", "command",
     "options": {"device", "dtypes", "profile", "suites", "strict", "seed", "forward_factor", "backward_factor"},
     "environment": {"torch", "python", "platform", "device", "cpu", "cuda", "driver", "gpu"},
     "implementations": [
        {"name", "spec", "verdict": "pass"|"fail"|"unsupported" (no gate property could run),
         "capabilities": {...}, "description",
         "duration_s", "log", "problem",
         "results": [{"suite", "property", "tier": "gate"|"strict"|"info", "dtype", "device",
                      "status": "pass"|"fail"|"error"|"skip"|"unsupported", "cases",
                      "worst": {"ratio", "factor", "where", "error", "baseline_error", "case", ...},
                      "message", "counterexample": {Case fields} | null, "counterexample_text",
                      "repro", "seed", "duration_s", "doc"}]}]}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

from harness.tiers import enforced

SCHEMA_VERSION = 1
STATUS_ORDER = {"error": 0, "fail": 1, "not_run": 2, "unsupported": 3, "skip": 4, "pass": 5}


def atomic_write(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    # mkstemp makes the file 0600; reports are read by CI artefact uploaders and colleagues.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def environment(device: str = "cpu") -> dict:
    import torch

    env = {"torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            env["driver"] = None
    return env


def new_report(options: dict, command: Optional[list] = None, device: str = "cpu") -> dict:
    from harness import __version__

    return {"schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "harness_version": __version__, "command": command or sys.argv,
            "options": options, "environment": environment(device), "implementations": []}


# --- Markdown --------------------------------------------------------------------------------

def _ratio_text(worst: dict) -> str:
    r = worst.get("ratio") if worst else None
    if r is None:
        return ""
    try:
        return f"{float(r):.2g}x"
    except (TypeError, ValueError):
        return str(r)


def cell(results: list) -> str:
    """One matrix cell: the worst status across dtypes, with the worst error ratio."""
    if not results:
        return "—"
    worst = min(results, key=lambda r: STATUS_ORDER.get(r["status"], 9))
    st = worst["status"]
    label = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "unsupported": "unsupported", "skip": "skip",
             "not_run": "not run"}.get(st, st)
    if st in ("fail", "error") and len(results) > 1:
        label += " " + ",".join(r["dtype"] for r in results if r["status"] == st)
    if worst["tier"] != "gate" and st in ("fail", "error"):
        label += f" ({worst['tier']})"
    ratios = [r for r in results if r.get("worst") and r["worst"].get("ratio") is not None]
    if ratios:
        top = max(ratios, key=lambda r: float(r["worst"]["ratio"]) if not isinstance(r["worst"]["ratio"], str) else float("inf"))
        label += f" {_ratio_text(top['worst'])}"
    return label


def property_keys(report: dict) -> list:
    seen = {}
    for impl in report["implementations"]:
        for r in impl["results"]:
            seen.setdefault((r["suite"], r["property"]), r.get("tier", "gate"))
    return list(seen.items())


def matrix_rows(report: dict) -> tuple[list, list]:
    impls = report["implementations"]
    headers = ["property", "tier"] + [i["name"] for i in impls]
    rows = []
    for (suite, prop), tier in property_keys(report):
        row = [f"{suite}::{prop}", tier]
        for impl in impls:
            row.append(cell([r for r in impl["results"] if r["suite"] == suite and r["property"] == prop]))
        rows.append(row)
    rows.append(["**verdict**", ""] + [f"**{i['verdict'].upper()}**" for i in impls])
    return headers, rows


STRICT_NOTES = {
    "test_nan_in_masked_slots": (
        "NaN or Inf stored in masked key/value slots reaches visible outputs: an uninitialised KV-cache "
        "slot or a poisoned padding position corrupts real tokens even though the mask forbids it. torch "
        "SDPA does this on CPU today (pytorch#101967); zero or sanitise masked slots before calling it."),
    "test_deterministic": "The same input twice gives different outputs (nondeterministic forward).",
}


def strict_notes(report: dict) -> list:
    notes = []
    for impl in report["implementations"]:
        for prop, text in STRICT_NOTES.items():
            if any(r["property"] == prop and r["status"] == "fail" for r in impl["results"]):
                notes.append(f"**{impl['name']}**: {text}")
    return notes


def integrity_rows(report: dict) -> tuple:
    """(property rows, op traces) of the integrity suite: one row per property with a cell per
    implementation, and per implementation the first recorded op trace with its dtype. Shared by
    report.md and report.html."""
    impls = report.get("implementations") or []
    keys = [(s, p) for (s, p), _ in property_keys(report) if s == "integrity"]
    rows = []
    for suite, prop in keys:
        rs = [[r for r in (i.get("results") or []) if r.get("suite") == suite and r.get("property") == prop]
              for i in impls]
        doc = next((r.get("doc") for x in rs for r in x if r.get("doc")), "")
        rows.append([prop, doc] + [cell(x) for x in rs])
    traces = []
    for i in impls:
        t = next(((r.get("dtype"), r["worst"]["op_trace"]) for r in (i.get("results") or [])
                  if r.get("property") == "test_op_trace" and isinstance(r.get("worst"), dict)
                  and isinstance(r["worst"].get("op_trace"), dict)), None)
        if t is not None:
            traces.append((i.get("name"), t[0], t[1]))
    return rows, traces


def cause_lines(impl: dict, limit: int = 400, most: Optional[int] = None) -> list:
    """The implementation's causes (``impl["causes"]``, from :func:`harness.triage.triage`), one
    line each, most telling first: what every renderer leads with. Empty for a report written
    without them (by hand, or by an older version)."""
    from harness.triage import cause_line

    causes = [c for c in (impl.get("causes") or []) if isinstance(c, dict)]
    lines = [f"{n}. {cause_line(c, limit)}" for n, c in enumerate(causes[:most] if most else causes, 1)]
    if most and len(causes) > most:
        lines.append(f"... and {len(causes) - most} more causes")
    return lines


def cause_of(impl: dict, r: dict) -> Optional[dict]:
    """The cause that explains result ``r`` (None when the report holds no causes)."""
    from harness.triage import key

    k = key(r)
    return next((c for c in (impl.get("causes") or []) if isinstance(c, dict) and k in (c.get("results") or [])), None)


def not_run_groups(report: dict) -> list:
    """Per implementation and reason, the selected properties that never ran (the run stopped
    early): {"impl", "reason", "count", "properties"}. Shared by report.md and report.html."""
    out: dict = {}
    for impl in report.get("implementations") or []:
        for r in impl.get("results") or []:
            if r.get("status") == "not_run":
                reason = (r.get("message") or "").strip()
                reason = reason[len("not run: "):] if reason.startswith("not run: ") else reason
                g = out.setdefault((impl.get("name"), reason), {"impl": impl.get("name"), "reason": reason,
                                                                "count": 0, "properties": []})
                g["count"] += 1
                name = f"{r.get('suite')}::{r.get('property')}"
                if name not in g["properties"]:
                    g["properties"].append(name)
    return list(out.values())


# --- JUnit -----------------------------------------------------------------------------------

def load(path) -> dict:
    with open(path) as f:
        rep = json.load(f)
    if rep.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {rep.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return rep
