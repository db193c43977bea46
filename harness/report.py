"""Reports: render check results. They compute nothing new.

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
from typing import Iterable, Optional
from xml.etree import ElementTree as ET

from harness.tiers import enforced

SCHEMA_VERSION = 1
STATUS_ORDER = {"error": 0, "fail": 1, "unsupported": 2, "skip": 3, "pass": 4}


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
    label = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "unsupported": "unsupported", "skip": "skip"}[st]
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


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


# Plain-language consequences of strict-tier failures, written into the report next to the matrix.
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


MD_DIAGNOSTICS_CAVEAT = ("Attention weights are evidence, not an explanation: a trace of information flow that "
                         "residual connections, MLPs and later layers can change or override.")


def _md_float(x) -> float:
    try:
        return float(x)  # "inf" too
    except (TypeError, ValueError):
        return float("nan")


def _md_diagnostics(report: dict) -> list:
    """A short "Diagnostics" section for report.md: which attention maps and entropy dashboards
    the run recorded (drawn in report.html), leaked-cell counts, entropy flags, the caveat."""
    rows, caveat = [], None
    for impl in report.get("implementations") or []:
        for r in impl.get("results") or []:
            w = r.get("worst") if isinstance(r, dict) else None
            d = w.get("diagnostics") if isinstance(w, dict) else None
            if not isinstance(d, dict):
                continue
            caveat = d.get("caveat") or caveat
            maps = [m for m in (d.get("maps") or []) if isinstance(m, dict)]
            drawn = [str(m.get("key")) for m in maps if m.get("implementation") is not None]
            leaks = ", ".join(f"{m.get('key')}: {m.get('leaked_total')}" for m in maps if m.get("leaked_total"))
            diffs = [m for m in maps if _md_float(m.get("max_abs_diff")) > 1e-3]
            ent = d.get("entropy") if isinstance(d.get("entropy"), dict) else {}
            ov = ent.get("overall") if isinstance(ent.get("overall"), dict) else None
            if ov and isinstance(ov.get("implementation"), dict) and ov["implementation"].get("mean") is not None:
                e = (f"{ov['implementation']['mean']:.3f} vs {ov['reference']['mean']:.3f}"
                     if isinstance(ov.get("reference"), dict) and ov["reference"].get("mean") is not None
                     else f"{ov['implementation']['mean']:.3f}")
                e += (" (flagged)" if ov.get("flags") else "")
            else:
                e = "none"
            rows.append([impl.get("name"), d.get("dtype") or r.get("dtype"), ", ".join(drawn) or "none",
                         leaks or "0",
                         ", ".join(f"{m.get('key')} ({m.get('which')}): {_md_float(m['max_abs_diff']):.3g}" for m in diffs) or "—",
                         e])
    if not rows:
        return []
    from tabulate import tabulate

    return ["## Diagnostics (attention maps and entropy)", "",
            "Attention maps (mask, float64 reference, implementation, difference) and entropy dashboards "
            "are drawn in `report.html` next to this file.", "",
            tabulate([[_md_escape(c) for c in row] for row in rows],
                     headers=["implementation", "dtype", "maps", "leaked cells", "max weight difference > 1e-3",
                              "mean normalised entropy (impl vs reference)"], tablefmt="github"),
            "", f"_{caveat or MD_DIAGNOSTICS_CAVEAT}_", ""]


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


def _md_integrity(report: dict) -> list:
    rows, traces = integrity_rows(report)
    if not rows:
        return []
    from tabulate import tabulate

    names = [i["name"] for i in report["implementations"]]
    lines = ["## Integrity", "",
             tabulate([[_md_escape(c) for c in r] for r in rows], headers=["property", "checks"] + names,
                      tablefmt="github"), ""]
    for name, dtype, t in traces:
        ops = ", ".join(f"`{op}` x{n}" for op, n in (t.get("ops") or {}).items()) or (
            f"trace unavailable ({t['unavailable']})" if t.get("unavailable") else "no aten op seen")
        lines.append(f"- **{_md_escape(name)}** op trace ({dtype}): {_md_escape(ops)}")
    return lines + ([""] if traces else [])


def to_markdown(report: dict) -> str:
    from tabulate import tabulate

    o = report.get("options", {})
    env = report.get("environment", {})
    lines = ["# attention-harness report", "",
             f"Created {report['created']} · torch {env.get('torch')} · python {env.get('python')} · "
             f"device {env.get('gpu') or env.get('device')} · profile {o.get('profile')} · dtypes "
             f"{', '.join(o.get('dtypes') or [])} · seed {o.get('seed')}" + (" · strict" if o.get("strict") else ""),
             "",
             "Each cell: the worst status over the dtypes run, and the worst per-row error ratio "
             "(error against the float64 reference divided by the error of a plain same-dtype PyTorch "
             f"computation; the gate allows {o.get('forward_factor', 2)}x forward, {o.get('backward_factor', 3)}x "
             "backward). `unsupported` = outside the implementation's declared capabilities, never a pass.",
             ""]
    headers, rows = matrix_rows(report)
    lines.append(tabulate([[_md_escape(c) for c in r] for r in rows], headers=headers, tablefmt="github"))
    lines.append("")
    notes = strict_notes(report)
    if notes:
        lines += ["## Strict-tier findings" + ("" if o.get("strict") else " (reported; they fail the run only with --strict)"), ""]
        lines += [f"- {n}" for n in notes] + [""]
    fps = [(i["name"], next((r["worst"].get("fingerprint") for r in i["results"]
                             if r["property"] == "test_fingerprint" and r.get("worst")), None))
           for i in report["implementations"]]
    fps = [(n, f) for n, f in fps if f]
    if fps:
        keys = list(dict.fromkeys(k for _, f in fps for k in f))
        lines += ["## Semantic fingerprint", "",
                  tabulate([[k] + [_md_escape(f.get(k, "")) for _, f in fps] for k in keys],
                           headers=["probe"] + [n for n, _ in fps], tablefmt="github"), ""]
    problems = [i for i in report["implementations"] if i.get("problem")]
    for i in problems:
        lines += [f"**{i['name']}**: {_md_escape(i['problem'])}", ""]
    failures = [(i, r) for i in report["implementations"] for r in i["results"] if r["status"] in ("fail", "error")]
    groups = root_causes(report)
    if groups:
        lines += ["## Likely root causes", "",
                  "Enforced failures of one implementation that share a symptom: usually one bug. Fix the "
                  "smallest case first; the per-property entries follow below.", ""]
        for g in groups:
            lines.append(f"- **{_md_escape(g['impl'])}**: {len(g['results'])} failing properties share "
                         f"\"{_md_escape(g['symptom'])}\"; smallest case: {_md_escape(g['smallest'] or '(none)')}. "
                         + ", ".join(f"{r['suite']}::{r['property']} [{r['dtype']}]" for r in g["results"]))
        lines.append("")
    if failures:
        lines += ["## Failures", ""]
        for impl, r in failures:
            is_enforced = enforced(r["tier"], o.get("strict"))
            lines.append(f"### {impl['name']} · {r['suite']}::{r['property']} · {r['dtype']} · "
                         f"{r['status']}{'' if is_enforced else ' (' + r['tier'] + ', not enforced)'}")
            lines.append("")
            if r.get("doc"):
                lines += [f"_{r['doc']}_", ""]
            lines += ["```", r["message"].strip(), "```", ""]
            if r.get("repro"):
                lines += ["Reproduce:", "", "```sh", r["repro"], "```", ""]
    lines += _md_integrity(report)
    lines += _md_diagnostics(report)
    unsupported = [(i["name"], r) for i in report["implementations"] for r in i["results"] if r["status"] == "unsupported"]
    if unsupported:
        lines += ["## Unsupported (declared capabilities)", ""]
        lines += [f"- {n}: {r['suite']}::{r['property']} [{r['dtype']}]: {_md_escape(r['message'])}" for n, r in unsupported]
        lines.append("")
    return "\n".join(lines)


def _symptom(message: str) -> str:
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "(no message)"
    low = first.lower()
    if "nan" in low.split() or "nan " in low or " nan" in low:
        return "NaN in the output"
    if "timed out" in low or "did not return" in low or "hung" in low:
        return "the call hangs"
    if "crashed" in low or "signal" in low:
        return "the process crashed"
    # Same words, other numbers: one symptom.
    return re.sub(r"[-+]?\d[\d.e+-]*", "#", first)[:120]


def root_causes(report: dict) -> list:
    """Groups of two or more enforced failures of one implementation with the same symptom,
    largest first, each with the smallest counterexample among them."""
    strict = (report.get("options") or {}).get("strict")
    out = []
    for impl in report["implementations"]:
        by: dict = {}
        for r in impl["results"]:
            if r["status"] in ("fail", "error") and enforced(r["tier"], strict):
                by.setdefault(_symptom(r.get("message", "")), []).append(r)
        for symptom, rs in by.items():
            if len(rs) < 2:
                continue
            cases = [r for r in rs if r.get("counterexample")]
            small = min(cases, key=lambda r: _case_size(r["counterexample"]), default=None)
            out.append({"impl": impl["name"], "symptom": symptom, "results": rs,
                        "smallest": small.get("counterexample_text") if small else None})
    return sorted(out, key=lambda g: -len(g["results"]))


def _case_size(c: dict) -> int:
    try:
        return int(c.get("B", 1)) * int(c.get("H", 1)) * int(c.get("L", 1)) * int(c.get("S", 1)) * int(c.get("E", 1))
    except (TypeError, ValueError):
        return 1 << 62


# --- JUnit -----------------------------------------------------------------------------------

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
                               time=str(round(sum(r.get("duration_s", 0) for r in rs), 3)))
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
            elif worst["status"] in ("skip", "unsupported") or (worst["status"] in ("fail", "error") and not is_enforced):
                ET.SubElement(tc, "skipped", message=f"{worst['status']} ({worst['tier']}): {msg[:500]}")
                nskip += 1
        ts.set("failures", str(nfail))
        ts.set("errors", str(nerr))
        ts.set("skipped", str(nskip))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def load(path) -> dict:
    with open(path) as f:
        rep = json.load(f)
    if rep.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {rep.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return rep
