"""``attn-harness compare`` and ``attn-harness merge``: reports against each other.

``compare BASE.json NEW.json`` lists what changed between two runs, keyed by implementation name,
``suite::property`` and dtype:

- regressions (exit 1): properties that newly fail or error, enforced properties that passed and
  are now ``unsupported`` (lost coverage), error ratios of enforced properties that grew beyond
  ``--ratio-threshold`` times the base ratio (and past 0.5 of the bound), implementations present
  in BASE and missing from NEW, semantic fingerprint changes, and throughput entries whose median
  time grew by more than ``--slowdown`` (from the top-level ``throughput`` list that
  ``attn-harness bench`` writes, and from the per-shape timings ``check --suite throughput``
  records in its results). "Enforced" follows :func:`harness.tiers.enforced`: gate always,
  strict when the new run was ``--strict``, info never;
- for information: properties that started passing, newly failing or ratio growth in non-enforced
  tiers, other coverage changes (newly skipped, added or removed properties), speed-ups.

Exit 0 when nothing regressed, 1 when something did, 2 when a file is unreadable or not a
report. ``merge A.json B.json ...`` builds one comparison from reports made on several machines:
every implementation becomes a column ``<impl> @ <gpu or device> torch <version>``.

Python: :func:`compare_reports`, :func:`to_markdown`, :func:`to_html`, :func:`merge_reports`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Optional

from harness.defaults import EXIT_FAIL as EXIT_REGRESSED, EXIT_OK  # noqa: F401 (cli.compare's names)
from harness.defaults import EXIT_USAGE as EXIT_UNREADABLE  # noqa: F401
from harness.report import results as R
from harness.slowdown import slower_by_more_than
from harness.tiers import enforced

FAILING = ("fail", "error")


# --- comparing -------------------------------------------------------------------------------

def _ratio(r: dict) -> Optional[float]:
    w = r.get("worst") if isinstance(r.get("worst"), dict) else {}
    x = w.get("ratio")
    if x is None:
        return None
    try:
        return float(x)  # "inf" strings too
    except (TypeError, ValueError):
        return None


# Properties renamed in 0.2 (named for what they test, not for the seed's exercise): a report
# written before the rename still compares against one written after it. Kept for one version.
RENAMED = {
    "test_exercise2_future_weights_zero": "test_future_weights_zero",
    "test_exercise10_delimiters_obey_policy": "test_delimiters_obey_policy",
}


def _index(report: dict) -> dict:
    """{(impl name, "suite::property", dtype): result}. A property run once per shape (the
    throughput suite's parametrised tests) gets the shape in brackets, so the shapes do not
    collapse into one key."""
    out = {}
    for impl in report.get("implementations") or []:
        for r in impl.get("results") or []:
            if not isinstance(r, dict):
                continue
            prop = f"{r.get('suite')}::{RENAMED.get(r.get('property'), r.get('property'))}"
            shape = _worst(r).get("shape")
            if isinstance(shape, dict):
                prop += f"[{_shape_key(shape)}]"
            out[(impl.get("name"), prop, r.get("dtype"))] = r
    return out


# --- throughput recorded by `check --suite throughput` ---------------------------------------
# Each result of suites/test_throughput.py carries in ``worst`` the timed ``shape``
# (bench.Shape.to_dict()), ``mode``, ``direction`` and, when it was timed, ``median_ms``/``tflops``.

def _is_throughput_result(r: dict) -> bool:
    return r.get("suite") == "throughput" and str(r.get("property", "")).startswith("test_throughput")


def _worst(r: dict) -> dict:
    return r["worst"] if isinstance(r.get("worst"), dict) else {}


def _check_throughput(report: dict) -> list:
    """Throughput entries (the bench schema's keys) from the results of ``check --suite throughput``."""
    out = []
    for impl in report.get("implementations") or []:
        for r in impl.get("results") or []:
            if not isinstance(r, dict) or not _is_throughput_result(r):
                continue
            w = _worst(r)
            if not isinstance(w.get("shape"), dict) or not isinstance(w.get("median_ms"), (int, float)):
                continue  # not timed (failed, skipped, unsupported) or from an older harness
            direction = w.get("direction") or ("backward" if str(r.get("property")).endswith("_backward") else "forward")
            out.append({"impl": impl.get("name"), "mode": w.get("mode") or "prefill", "direction": direction,
                        "shape": w["shape"], "dtype": r.get("dtype"), "device": r.get("device"),
                        "median_ms": float(w["median_ms"]), "tflops": w.get("tflops"), "source": "check"})
    return out


def _fingerprint(impl: dict) -> Optional[dict]:
    fp = impl.get("fingerprint")
    if isinstance(fp, dict):
        return fp
    for r in impl.get("results") or []:
        if r.get("property") == "test_fingerprint" and isinstance(r.get("worst"), dict):
            if isinstance(r["worst"].get("fingerprint"), dict):
                return r["worst"]["fingerprint"]
    return None


def _enforced(r: dict, strict: bool) -> bool:
    return enforced(r.get("tier", "gate"), strict)


def _shape_key(shape) -> str:
    if isinstance(shape, dict):
        return " ".join(f"{k}={shape[k]}" for k in sorted(shape))
    return str(shape)


def _throughput_entries(report: dict) -> list:
    """Timings from ``attn-harness bench`` (top-level ``throughput``) and from ``check --suite
    throughput`` results, each entry tagged by its source so the two never pair up."""
    bench = [e for e in report.get("throughput") or [] if isinstance(e, dict)]
    return bench + _check_throughput(report)


def _tp_key(e: dict) -> tuple:
    return (e.get("impl"), e.get("mode"), e.get("direction", "forward"), _shape_key(e.get("shape")),
            e.get("dtype"), e.get("device"), e.get("source", "bench"))


def compare_reports(base: dict, new: dict, ratio_threshold: float = 1.5, slowdown: float = 0.05,
                    base_label: str = "base", new_label: str = "new") -> dict:
    """What changed from ``base`` to ``new`` (report dicts). Lists of dicts under
    ``newly_failing``, ``lost_coverage``, ``ratio_growth``, ``missing_implementations``,
    ``fingerprint_changes``, ``slowdowns`` (the regressions), and ``started_passing``,
    ``newly_failing_not_enforced``, ``ratio_growth_not_enforced``, ``newly_unsupported``,
    ``added``, ``removed``, ``speedups`` (information); ``regressed`` is True when any regression
    list is non-empty. Tiers are enforced as :func:`harness.tiers.enforced` says, with the new
    run's ``--strict``."""
    strict = bool((new.get("options") or {}).get("strict"))
    bi, ni = _index(base), _index(new)
    out = {"base": base_label, "new": new_label, "ratio_threshold": ratio_threshold, "slowdown": slowdown,
           "newly_failing": [], "lost_coverage": [], "ratio_growth": [], "missing_implementations": [],
           "fingerprint_changes": [], "slowdowns": [],
           "started_passing": [], "newly_failing_not_enforced": [], "ratio_growth_not_enforced": [],
           "newly_unsupported": [], "added": [], "removed": [], "speedups": []}
    for key, n in ni.items():
        impl, prop, dtype = key
        row = {"impl": impl, "property": prop, "dtype": dtype, "tier": n.get("tier", "gate")}
        b = bi.get(key)
        ns = n.get("status")
        if b is None:
            out["added"].append({**row, "status": ns})
            if ns in FAILING and _enforced(n, strict):
                out["newly_failing"].append({**row, "base_status": "absent", "status": ns,
                                             "message": _first_line(n.get("message")), "repro": n.get("repro") or ""})
            continue
        bs = b.get("status")
        if ns in FAILING and bs not in FAILING:
            item = {**row, "base_status": bs, "status": ns, "message": _first_line(n.get("message")),
                    "repro": n.get("repro") or ""}
            (out["newly_failing"] if _enforced(n, strict) else out["newly_failing_not_enforced"]).append(item)
        elif bs in FAILING and ns == "pass":
            out["started_passing"].append({**row, "base_status": bs, "status": ns})
        elif bs == "pass" and ns in ("unsupported", "not_run") and _enforced(n, strict):
            out["lost_coverage"].append({**row, "base_status": bs, "status": ns,
                                         "message": f"passed in {base_label}, {ns.replace('_', ' ')} in {new_label} (no "
                                                    f"longer certified): " + _first_line(n.get("message"))})
        elif bs == "pass" and ns in ("unsupported", "skip"):
            out["newly_unsupported"].append({**row, "base_status": bs, "status": ns,
                                             "message": _first_line(n.get("message"))})
        br, nr = _ratio(b), _ratio(n)
        if nr is not None and br is not None and nr > ratio_threshold * br and nr > 0.5:
            out["ratio_growth" if _enforced(n, strict) else "ratio_growth_not_enforced"].append(
                {**row, "base_ratio": br, "ratio": nr, "growth": (nr / br) if br > 0 else math.inf, "status": ns})
    new_names = {i.get("name") for i in new.get("implementations") or []}
    for impl in base.get("implementations") or []:
        if impl.get("name") not in new_names:
            results = [r for r in impl.get("results") or [] if isinstance(r, dict)]
            out["missing_implementations"].append({
                "impl": impl.get("name"), "base_verdict": impl.get("verdict"), "base_results": len(results),
                "message": f"implementation {impl.get('name')!r} is in {base_label} ({len(results)} results, verdict "
                           f"{impl.get('verdict')}) but missing from {new_label}: nothing about it is certified"})
    for key, b in bi.items():
        if key not in ni and key[0] in new_names:
            out["removed"].append({"impl": key[0], "property": key[1], "dtype": key[2], "base_status": b.get("status")})
    bimpls = {i.get("name"): i for i in base.get("implementations") or []}
    for impl in new.get("implementations") or []:
        old = bimpls.get(impl.get("name"))
        if old is None:
            continue
        bf, nf = _fingerprint(old), _fingerprint(impl)
        if bf and nf:
            for k in dict.fromkeys(list(bf) + list(nf)):
                if bf.get(k) != nf.get(k):
                    out["fingerprint_changes"].append({"impl": impl.get("name"), "probe": k, "base": bf.get(k),
                                                       "new": nf.get(k)})
    btp, ntp = _throughput_entries(base), _throughput_entries(new)
    if btp and ntp:
        bmap = {_tp_key(e): e for e in btp}
        for e in ntp:
            b = bmap.get(_tp_key(e))
            try:
                bm, nm = float(b["median_ms"]), float(e["median_ms"])
            except (TypeError, KeyError, ValueError):
                continue
            row = {"impl": e.get("impl"), "mode": e.get("mode"), "direction": e.get("direction", "forward"),
                   "shape": _shape_key(e.get("shape")), "dtype": e.get("dtype"), "base_ms": bm, "new_ms": nm,
                   "change": (nm / bm - 1) if bm > 0 else math.inf}
            if slower_by_more_than(nm, bm, slowdown):
                out["slowdowns"].append(row)
            elif slower_by_more_than(bm, nm, slowdown):
                out["speedups"].append(row)
    out["regressed"] = any(out[k] for k in REGRESSIONS)
    return out


REGRESSIONS = ("newly_failing", "lost_coverage", "ratio_growth", "missing_implementations", "fingerprint_changes",
               "slowdowns")


def _first_line(s) -> str:
    s = str(s or "").strip()
    return s.splitlines()[0][:300] if s else ""


def _f(x) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.3g}"
    return "" if x is None else str(x)


SECTIONS = [
    ("newly_failing", "Newly failing (regression)", ["impl", "property", "dtype", "tier", "base_status", "status", "message", "repro"]),
    ("lost_coverage", "Passed, now unsupported (regression)", ["impl", "property", "dtype", "tier", "base_status", "status", "message"]),
    ("ratio_growth", "Error ratio growth (regression)", ["impl", "property", "dtype", "base_ratio", "ratio", "growth", "status"]),
    ("missing_implementations", "Implementations missing from the new report (regression)", ["impl", "base_verdict", "base_results", "message"]),
    ("fingerprint_changes", "Fingerprint changes (regression)", ["impl", "probe", "base", "new"]),
    ("slowdowns", "Throughput slowdowns (regression)", ["impl", "mode", "direction", "shape", "dtype", "base_ms", "new_ms", "change"]),
    ("started_passing", "Started passing", ["impl", "property", "dtype", "base_status", "status"]),
    ("newly_failing_not_enforced", "Newly failing, tier not enforced", ["impl", "property", "dtype", "tier", "status", "message"]),
    ("ratio_growth_not_enforced", "Error ratio growth, tier not enforced", ["impl", "property", "dtype", "tier", "base_ratio", "ratio", "growth", "status"]),
    ("newly_unsupported", "Newly unsupported or skipped", ["impl", "property", "dtype", "base_status", "status", "message"]),
    ("speedups", "Throughput speed-ups", ["impl", "mode", "direction", "shape", "dtype", "base_ms", "new_ms", "change"]),
    ("added", "Added", ["impl", "property", "dtype", "status"]),
    ("removed", "Removed", ["impl", "property", "dtype", "base_status"]),
]


def _cell(k, v) -> str:
    if k == "change" and isinstance(v, float) and not math.isinf(v):
        return f"{v:+.1%}"
    if k == "growth" and isinstance(v, float):
        return _f(v) + "x"
    return _f(v)


def to_markdown(cmp: dict) -> str:
    from tabulate import tabulate

    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    n = sum(len(cmp[k]) for k in REGRESSIONS)
    lines = [f"# attention-harness compare: {esc(cmp['base'])} → {esc(cmp['new'])}", "",
             (f"**REGRESSED**: {n} regression(s)." if cmp["regressed"] else "**No regressions.**") +
             f" Ratio threshold {cmp['ratio_threshold']}x, slowdown threshold {cmp['slowdown']:.0%}.", ""]
    clear = [it["message"] for k in ("missing_implementations", "lost_coverage") for it in cmp.get(k) or []]
    if clear:
        lines += [f"- REGRESSION: {esc(m)}" for m in clear] + [""]
    for key, title, cols in SECTIONS:
        items = cmp.get(key) or []
        if not items:
            continue
        lines += [f"## {title} ({len(items)})", "",
                  tabulate([[esc(_cell(c, it.get(c))) for c in cols] for it in items], headers=cols, tablefmt="github"), ""]
    return "\n".join(lines)


def to_html(cmp: dict) -> str:
    from harness.report import html as H

    n = sum(len(cmp[k]) for k in REGRESSIONS)
    body = [f"<h1>attention-harness compare</h1><p>{H.esc(cmp['base'])} → {H.esc(cmp['new'])}</p>",
            (f"<p class=\"flag\">REGRESSED: {n} regression(s).</p>" if cmp["regressed"] else "<p>No regressions.</p>"),
            f"<p class=\"muted\">Ratio threshold {H.esc(cmp['ratio_threshold'])}x, slowdown threshold "
            f"{H.esc(format(cmp['slowdown'], '.0%'))}.</p>"]
    for key, title, cols in SECTIONS:
        items = cmp.get(key) or []
        if items:
            colour = H.STATUS_COLOURS["fail"] if key in REGRESSIONS else H.STATUS_COLOURS["pass"] \
                if key in ("started_passing", "speedups") else H.STATUS_COLOURS["skip"]
            body.append(f"<h2 style=\"background:{colour}\">{H.esc(title)} ({len(items)})</h2>")
            body.append(H.table(cols, [[_cell(c, it.get(c)) for c in cols] for it in items]))
    return H.page("attention-harness compare", "\n".join(body))


# --- merging ---------------------------------------------------------------------------------

def _label(env: dict) -> str:
    env = env or {}
    return f"{env.get('gpu') or env.get('device') or 'unknown'} torch {env.get('torch') or '?'}"


def merge_reports(reports: list, names: Optional[list] = None) -> dict:
    """One report (same schema) from reports made on several machines. ``reports`` are report
    dicts, or (name, report) pairs where name (usually the file name) disambiguates colliding
    environment labels. Implementations are renamed ``<impl> @ <label>``; each keeps its
    ``environment`` and ``source``; throughput entries are renamed the same way."""
    pairs = []
    for i, r in enumerate(reports):
        if isinstance(r, tuple):
            pairs.append(r)
        else:
            pairs.append(((names[i] if names else f"report {i + 1}"), r))
    base_labels = [_label(r.get("environment")) for _, r in pairs]
    labels = [f"{lb} ({name})" if base_labels.count(lb) > 1 else lb
              for lb, (name, _) in zip(base_labels, pairs)]
    for i in range(len(labels)):  # still colliding (same file name): number them
        if labels.count(labels[i]) > 1:
            labels[i] = f"{labels[i]} #{i + 1}"
    first = pairs[0][1] if pairs else {}
    from harness import __version__

    merged = {"schema_version": R.SCHEMA_VERSION,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "harness_version": __version__, "command": ["attn-harness", "merge"] + [n for n, _ in pairs],
              "options": dict(first.get("options") or {}),
              "environment": {**(first.get("environment") or {}),
                              "device": "several: " + "; ".join(dict.fromkeys(labels)),
                              "gpu": None,
                              "machines": [{"label": lb, "source": n, **(r.get("environment") or {})}
                                           for lb, (n, r) in zip(labels, pairs)]},
              "merged_from": [{"source": n, "label": lb, "created": r.get("created")} for lb, (n, r) in zip(labels, pairs)],
              "implementations": []}
    throughput = []
    for lb, (n, r) in zip(labels, pairs):
        for impl in r.get("implementations") or []:
            renamed = {**impl, "name": f"{impl.get('name')} @ {lb}", "environment": r.get("environment"),
                       "source": n}
            merged["implementations"].append(renamed)
        for e in r.get("throughput") or []:
            if isinstance(e, dict):
                throughput.append({**e, "impl": f"{e.get('impl')} @ {lb}"})
    if throughput:
        merged["throughput"] = throughput
    return merged
