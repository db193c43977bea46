"""``report.md``: GitHub-renderable markdown (tabulate) from a report dict."""

from __future__ import annotations

from harness.report.certificates import markdown_lines as _md_certificates
from harness.report.results import cause_lines, integrity_rows, matrix_rows, not_run_groups, strict_notes
from harness.tiers import enforced


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


# Plain-language consequences of strict-tier failures, written into the report next to the matrix.
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


def md_causes(report: dict) -> list:
    """The causes first: one line each per implementation, with the repro of the most telling
    failure; the failures they explain follow under "Failures"."""
    out = []
    for impl in report.get("implementations") or []:
        causes = [c for c in (impl.get("causes") or []) if isinstance(c, dict)]
        if not causes:
            continue
        if not out:
            out += ["## Causes", "",
                    "Each implementation's failures grouped by root cause, most telling first; every failure is "
                    "listed under Failures below.", ""]
        out += [f"**{_md_escape(impl.get('name'))}** ({impl.get('verdict')}): {len(causes)} "
                f"cause{'' if len(causes) == 1 else 's'}", ""]
        for line, c in zip(cause_lines(impl), causes):
            out.append(f"{_md_escape(line)}")
            if c.get("repro"):
                out.append(f"   reproduce: `{c['repro']}`")
            out.append(f"   explains: {_md_escape(', '.join(c.get('results') or []))}")
        out.append("")
    return out


def _md_not_run(report: dict) -> list:
    lines = []
    for i in report.get("implementations") or []:
        if i.get("diagnosis"):
            lines.append(f"- **{_md_escape(i['name'])}** cannot run the base case, so it was stopped after it: "
                         f"{_md_escape(i['diagnosis'])}")
    for g in not_run_groups(report):
        shown = ", ".join(g["properties"][:12]) + (f" and {len(g['properties']) - 12} more" if len(g["properties"]) > 12 else "")
        lines.append(f"- **{_md_escape(g['impl'])}**: {g['count']} not run ({_md_escape(shown)}): {_md_escape(g['reason'])}")
    return (["## Not run", "", "Selected but never reached: the run stopped early. Not a pass.", ""] + lines + [""]
            if lines else [])


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
    lines += md_causes(report)
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
    lines += _md_not_run(report)
    failures = [(i, r) for i in report["implementations"] for r in i["results"] if r["status"] in ("fail", "error")]
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
            if r.get("ulps") is not None or r.get("rule"):
                from harness.report.junit import numbers_line

                lines += [numbers_line(r).strip(), ""]
            if r.get("repro"):
                lines += ["Reproduce:", "", "```sh", r["repro"], "```", ""]
    lines += _md_certificates(report)
    lines += _md_integrity(report)
    lines += _md_diagnostics(report)
    unsupported = [(i["name"], r) for i in report["implementations"] for r in i["results"] if r["status"] == "unsupported"]
    if unsupported:
        lines += ["## Unsupported (declared capabilities)", ""]
        lines += [f"- {n}: {r['suite']}::{r['property']} [{r['dtype']}]: {_md_escape(r['message'])}" for n, r in unsupported]
        lines.append("")
    return "\n".join(lines)


