"""What each section of ``report.html`` shows, as plain data for the templates in
``harness/report/templates/``: which rows, which cells are highlighted, which pictures are drawn.

Every function takes the report dict and returns the context of its section's template, or None
when the section has nothing to show. Nothing here builds markup: values from a report (kernel
names, messages, counterexamples, docstrings) stay plain text and the templates escape them. A
table is ``{"headers": [...], "rows": [[cell, ...], ...]}`` where every cell is a :func:`cell`.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from harness.report import figures as F
from harness.report import results as R

STATUS_COLOURS = {"pass": "#c8ecc9", "fail": "#f6b3b3", "error": "#e88a8a", "unsupported": "#e4e4e4",
                  "skip": "#f1f1f1", "none": "#ffffff", "not_run": "#d6d6ef",  # never reached: the run stopped
                  # a failure of a tier this run does not enforce (strict without --strict, info):
                  # amber, so it never reads like a gate failure beside a PASS verdict
                  "reported": "#fbe3b0"}
DIFFERS = "#fff3c4"  # a fingerprint value unlike the majority's
MOVED = "#fbe3b0"  # a head whose entropy moved beyond the flag threshold

ABLATION_CAVEAT = ("Attention weights and ablations are evidence, not a full explanation: a head with low "
                   "ablation impact may still matter together with others, and one with high impact need not "
                   "do what its attention map suggests.")


def cell(text, bg=None, *, flag=False, bold=False, href=None, title=None, lines=None) -> dict:
    """One table cell: its text (escaped by the template), background colour, whether it is
    flagged (red) or bold, a link to an anchor on the page, a hover title, or several lines."""
    return {"text": "" if text is None else str(text), "bg": bg, "flag": flag, "bold": bold,
            "href": href, "title": None if title is None else str(title),
            "lines": None if lines is None else [str(x) for x in lines], "style": None}


def tbl(headers: list, rows: list) -> dict:
    """A table for the ``table`` macro; plain values become plain cells."""
    return {"headers": ["" if h is None else str(h) for h in headers],
            "rows": [[c if isinstance(c, dict) and "text" in c else cell(c) for c in row] for row in rows]}


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _s(x) -> str:
    """A value as the page shows it when it is not a number to format: None shows as nothing."""
    return "" if x is None else str(x)


def _pct(x) -> str:
    return "" if x is None else f"{float(x):.0%}"


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def impls(report: dict) -> list:
    return [i for i in (report.get("implementations") or []) if isinstance(i, dict)]


def results(impl: dict) -> list:
    return [r for r in (impl.get("results") or []) if isinstance(r, dict)]


def anchor(impl_index: int, r: dict) -> str:
    """The id of a failure's ``<details>``; matrix cells link to it. Ids may hold any character
    but whitespace (HTML5), and a report's names may hold spaces."""
    raw = "-".join(str(x) for x in (impl_index, r.get("suite"), r.get("property"), r.get("dtype")))
    return "fail-" + re.sub(r"\s", "_", raw)


def cell_status(rs: list, strict=False) -> str:
    """The colour key of a matrix cell: its worst status over the dtypes, where a failure of a
    tier this run does not enforce ranks below every other status and shows as ``reported``."""
    if not rs:
        return "none"

    def reported(r):
        return r.get("status") in ("fail", "error") and not R.enforced(r.get("tier", "gate"), strict)

    worst = min(rs, key=lambda r: 50 if reported(r) else R.STATUS_ORDER.get(r.get("status"), 9))
    if reported(worst):
        return "reported"
    st = worst.get("status", "none")
    return st if st in STATUS_COLOURS else "none"


def _verdict_colour(v) -> str:
    return STATUS_COLOURS["pass" if v == "pass" else "fail"]


# --- sections --------------------------------------------------------------------------------

def header(report: dict) -> dict:
    o = report.get("options") or {}
    env = report.get("environment") or {}
    dtypes = o.get("dtypes") or []
    parts = [f"created {_s(report.get('created'))}", f"harness {_s(report.get('harness_version'))}",
             f"torch {_s(env.get('torch'))}", f"device {_s(env.get('gpu') or env.get('device'))}",
             f"profile {_s(o.get('profile'))}",
             f"dtypes {', '.join(map(str, dtypes)) if isinstance(dtypes, list) else _s(dtypes)}",
             f"seed {_s(o.get('seed'))}"]
    if o.get("strict"):
        parts.append("strict")
    cmd = report.get("command")
    cmd = " ".join(map(str, cmd)) if isinstance(cmd, list) else cmd
    verdicts = [{"name": _s(i.get("name")), "verdict": str(i.get("verdict", "?")).upper(),
                 "bg": _verdict_colour(i.get("verdict"))} for i in impls(report)]
    return {"parts": parts, "command": _s(cmd) if cmd else None, "verdicts": verdicts}


def matrix(report: dict) -> dict:
    ims = impls(report)
    legend = [(k, c) for k, c in STATUS_COLOURS.items() if k != "none"]
    if not ims:
        return {"table": None, "legend": legend}
    strict = (report.get("options") or {}).get("strict")
    headers, rows = R.matrix_rows(report)
    out = []
    for row, (key, _tier) in zip(rows, R.property_keys(report)):
        suite, prop = key
        cells = [row[0], row[1]]
        for n, (impl, text) in enumerate(zip(ims, row[2:])):
            rs = [r for r in results(impl) if r.get("suite") == suite and r.get("property") == prop]
            failed = [r for r in rs if r.get("status") in ("fail", "error")]
            cells.append(cell(text, STATUS_COLOURS[cell_status(rs, strict)],
                              title="; ".join(f"{r.get('dtype')}: {r.get('status')}" for r in rs),
                              # the cell links to its (first) failure below
                              href=anchor(n, failed[0]) if failed else None))
        out.append(cells)
    out.append([cell("verdict", bold=True), ""]
               + [cell(str(i.get("verdict", "?")).upper(), _verdict_colour(str(i.get("verdict", "?"))), bold=True)
                  for i in ims])
    return {"table": tbl(headers, out), "legend": legend}


def strict_notes(report: dict):
    """The notes are Markdown with **name**: split into (text, bold) runs for the template."""
    notes = R.strict_notes(report)
    if not notes:
        return None
    runs = []
    for n in notes:
        parts = re.split(r"\*\*(.+?)\*\*", str(n))
        runs.append([(p, i % 2 == 1) for i, p in enumerate(parts) if p])
    return {"notes": runs}


def _fingerprint_of(impl: dict):
    fp = impl.get("fingerprint")
    if isinstance(fp, dict):
        return fp
    for r in results(impl):
        if r.get("property") == "test_fingerprint" and isinstance(r.get("worst"), dict):
            f = r["worst"].get("fingerprint")
            if isinstance(f, dict):
                return f
    return None


def fingerprints(report: dict):
    fps = [(i.get("name"), _fingerprint_of(i)) for i in impls(report)]
    fps = [(n, f) for n, f in fps if f]
    if not fps:
        return None
    keys = list(dict.fromkeys(k for _, f in fps for k in f))
    rows = []
    for k in keys:
        vals = [json.dumps(f.get(k), default=str) for _, f in fps]
        common = Counter(vals).most_common(1)[0][0]
        rows.append([k] + [cell(f.get(k), DIFFERS if v != common else None) for v, (_, f) in zip(vals, fps)])
    return {"table": tbl(["probe"] + [n for n, _ in fps], rows)}


def failures(report: dict):
    strict = (report.get("options") or {}).get("strict")
    problems = [(i.get("name"), i.get("problem")) for i in impls(report) if i.get("problem")]
    found = [(n, impl, r) for n, impl in enumerate(impls(report)) for r in results(impl)
             if r.get("status") in ("fail", "error")]
    # Gate (enforced) failures first: they decide the verdict; reported-only ones follow.
    found.sort(key=lambda x: not R.enforced(x[2].get("tier", "gate"), strict))
    items = []
    for n, impl, r in found:
        tier = r.get("tier", "gate")
        message = str(r.get("message") or "").strip()
        cx = r.get("counterexample_text")
        w = r.get("worst") if isinstance(r.get("worst"), dict) else {}
        nums = {k: v for k, v in w.items() if k in ("ratio", "factor", "where", "error", "baseline_error", "case")}
        items.append({"id": anchor(n, r), "enforced": R.enforced(tier, strict), "tier": _s(tier),
                      "name": _s(impl.get("name")), "suite": _s(r.get("suite")),
                      "property": _s(r.get("property")), "dtype": _s(r.get("dtype")),
                      "status": _s(r.get("status")), "doc": _s(r.get("doc")) or None, "message": message,
                      # once: most messages already name it
                      "counterexample": str(cx) if cx and str(cx) not in message else None,
                      "numbers": tbl(list(nums), [[fmt(v) for v in nums.values()]]) if nums else None,
                      "repro": _s(r.get("repro")) or None})
    if not problems and not items:
        return None
    return {"problems": problems, "items": items}


def _entropy_table(ent: dict):
    rows = []
    cases = [("all inputs", ent.get("overall"))] + list((ent.get("per_case") or {}).items())
    for name, e in cases:
        if not isinstance(e, dict):
            continue
        si, sr = e.get("implementation") or {}, e.get("reference") or {}
        flags = e.get("flags") or []
        rows.append([name, fmt(si.get("mean")), fmt(sr.get("mean")), fmt(e.get("mean_delta")),
                     f"{_pct(si.get('collapse'))} / {_pct(sr.get('collapse'))}",
                     f"{_pct(si.get('diffuse'))} / {_pct(sr.get('diffuse'))}",
                     cell(None, flag=True, lines=flags) if flags else "ok"])
    if not rows:
        return None
    return tbl(["input", "mean entropy (impl)", "mean entropy (reference)", "delta",
                "collapsed <0.05 impl / ref", "near-uniform >0.95 impl / ref", "flags"], rows)


def _per_head(ent: dict):
    """Mean normalised entropy per head, implementation / reference, for each input (the issue's
    "per head against the reference"); a head whose mean moved by more than the dashboard's flag
    threshold is marked."""
    from harness.diagnostics import FLAG_MEAN_DELTA

    rows, nh = [], 0
    for name, e in (ent.get("per_case") or {}).items():
        if not isinstance(e, dict):
            continue
        hi = (e.get("implementation") or {}).get("per_head")
        hr = (e.get("reference") or {}).get("per_head")
        if not isinstance(hi, list) and not isinstance(hr, list):
            continue
        hi, hr = hi if isinstance(hi, list) else [], hr if isinstance(hr, list) else []
        n = max(len(hi), len(hr))
        nh = max(nh, n)
        cells = [name]
        for h in range(n):
            a = hi[h] if h < len(hi) else None
            b = hr[h] if h < len(hr) else None
            text = " / ".join(fmt(F.num(x)) if x is not None else "n/a" for x in (a, b))
            try:
                bad = abs(float(a) - float(b)) > FLAG_MEAN_DELTA
            except (TypeError, ValueError):
                bad = a is None and b is not None
            cells.append(cell(text, MOVED, flag=True) if bad else text)
        rows.append(cells)
    if not rows:
        return None
    rows = [r + [""] * (nh + 1 - len(r)) for r in rows]
    return {"threshold": _s(FLAG_MEAN_DELTA), "table": tbl(["input"] + [f"head {h}" for h in range(nh)], rows)}


def _notable(d: dict, maps: list) -> bool:
    ent = d.get("entropy") if isinstance(d.get("entropy"), dict) else {}
    overall = ent.get("overall") if isinstance(ent.get("overall"), dict) else ent
    flagged = bool(overall.get("flags")) if isinstance(overall, dict) else False

    # half-precision weights round at ~4e-3 (bfloat16): only a difference beyond that is news
    limit = 1e-3 if str(d.get("dtype")) in ("float32", "float64") else 3e-2

    def differs(m):
        try:
            return float(m.get("max_abs_diff") or 0) > limit
        except (TypeError, ValueError):
            return True
    return flagged or any(m.get("leaked_total") or m.get("unsupported") or differs(m) for m in maps)


def _diff_note(m: dict):
    """A map's max |difference| from the reference, flagged above 1e-3 (far beyond rounding for
    weights in [0, 1]), or None when the map does not carry it."""
    d = m.get("max_abs_diff")
    if d is None:
        return None
    try:
        v = float(d)
    except (TypeError, ValueError):
        return {"text": f"max |diff| {d}", "flag": False}
    return {"text": f"max |diff| vs reference {v:.3g}", "flag": not v <= 1e-3}


def _picture(draw, key, alt: str) -> dict:
    """An embedded PNG (``uri``) or why it could not be drawn (``error``)."""
    try:
        return {"uri": F.png_data_uri(draw, key), "alt": alt, "error": None}
    except Exception as e:  # noqa: BLE001 - one picture must not cost the section
        return {"uri": None, "alt": alt, "error": _err(e)}


def _entropy_of(d: dict):
    ent = d.get("entropy")
    return ent if isinstance(ent, dict) and (ent.get("overall") or ent.get("per_case")) else None


def diagnostics(report: dict):
    from harness import diagnostics as D

    blocks, caveat = [], None
    for impl in impls(report):
        drawn = False
        for r in results(impl):
            w = r.get("worst")
            d = w.get("diagnostics") if isinstance(w, dict) else None
            if not isinstance(d, dict):
                continue
            caveat = d.get("caveat") or caveat
            name = impl.get("name")
            maps = [m for m in (d.get("maps") or []) if isinstance(m, dict)]
            which = _s(d.get("which", "batch 0, head 0"))
            ent = _entropy_of(d)
            b = {"name": _s(name), "dtype": _s(d.get("dtype") or r.get("dtype")), "which": which,
                 "entropy_table": _entropy_table(ent) if ent else None, "per_head": _per_head(ent) if ent else None,
                 # Pictures cost about a second each to draw: one dtype's for an implementation
                 # whose maps and entropy agree with the reference, every dtype's where something is off.
                 "repeat": drawn and not _notable(d, maps), "leaks": [], "unsupported": [], "maps": [],
                 "maps_picture": None, "entropy_picture": None}
            blocks.append(b)
            if b["repeat"]:
                continue
            drawn = True
            b["leaks"] = [(_s(m.get("key")), _s(m.get("leaked_total"))) for m in maps if m.get("leaked_total")]
            b["unsupported"] = [(_s(m.get("key")), _s(m.get("unsupported"))) for m in maps if m.get("unsupported")]
            b["maps"] = [{"title": _s(m.get("title")), "case": _s(m.get("case")),
                          "which": _s(m.get("which") or d.get("which") or "batch 0, head 0"),
                          "diff": _diff_note(m)} for m in maps]
            if maps:
                b["maps_picture"] = _picture(lambda f, maps=maps: F.plot_maps(maps, f), ["maps", maps],
                                             f"attention maps of {name} ({which}): "
                                             "visible keys, reference, implementation, difference")
            if ent:
                b["entropy_picture"] = _picture(lambda f, ent=ent: F.plot_entropy(ent, f), ["entropy", ent],
                                                f"entropy dashboard of {name}")
    if not blocks:
        return None
    return {"caveat": _s(caveat or D.CAVEAT), "blocks": blocks}


def _inactive(ab: dict):
    """The heads the ablation flags as inactive or redundant (impact below its threshold)."""
    ina = ab.get("inactive")
    if not isinstance(ina, list):
        return None
    thr = ab.get("threshold")
    names = [f"layer {_s(x.get('layer'))} head {_s(x.get('head'))}" if isinstance(x, dict) else _s(x)
             for x in ina]
    return {"what": f"impact < {fmt(F.num(thr))}" if thr is not None else "below the threshold", "names": names}


def ablations(report: dict):
    blocks = []
    for impl in impls(report):
        for r in results(impl):
            w = r.get("worst")
            ab = w.get("ablation") if isinstance(w, dict) else None
            if not isinstance(ab, dict):
                continue
            b = {"name": _s(impl.get("name")), "suite": _s(r.get("suite")), "property": _s(r.get("property")),
                 "dtype": _s(r.get("dtype")), "raw": None}
            blocks.append(b)
            impact = ab.get("impact")
            if not (isinstance(impact, list) and impact and all(isinstance(row, list) for row in impact)):
                b["raw"] = json.dumps(ab, default=str)[:4000]
                continue
            meta = {k: v for k, v in ab.items() if k not in ("impact", "caveat") and not isinstance(v, (list, dict))}
            nh = max(len(row) for row in impact)
            ranking = [x for x in (ab.get("ranking") or []) if isinstance(x, dict)]
            cols = list(dict.fromkeys(k for x in ranking for k in x))
            top, low = ranking[:10], ranking[10:][-5:]
            b.update({
                "meta": ", ".join(f"{k}: {v}" for k, v in meta.items()) or None,
                "picture": _picture(lambda f, ab=ab: F.plot_ablation(ab, f), ["ablation", ab],
                                    "head ablation impact (layers x heads)"),
                "impact": tbl(["layer"] + [f"head {h}" for h in range(nh)],
                              [[str(li)] + [fmt(F.num(x)) for x in row] for li, row in enumerate(impact)]),
                "top": tbl(cols, [[fmt(x.get(c)) for c in cols] for x in top]) if top else None,
                "low": tbl(cols, [[fmt(x.get(c)) for c in cols] for x in low]) if low else None,
                "inactive": _inactive(ab), "caveat": _s(ab.get("caveat") or ABLATION_CAVEAT)})
    return {"blocks": blocks} if blocks else None


def throughput(report: dict):
    tp = report.get("throughput")
    if not isinstance(tp, list) or not tp:
        return None
    entries = [e for e in tp if isinstance(e, dict)]
    first = ["impl", "mode", "shape", "dtype", "median_ms", "tflops"]
    keys = [k for k in first if any(k in e for e in entries)]
    keys += [k for k in dict.fromkeys(k for e in entries for k in e) if k not in keys]
    rows = []
    for e in entries:
        row = []
        for k in keys:
            v = e.get(k)
            if k == "shape" and isinstance(v, dict):
                v = " ".join(f"{a}={b}" for a, b in v.items())
            row.append(fmt(v))
        rows.append(row)
    return {"table": tbl(keys, rows)}


def integrity(report: dict):
    """One line per integrity property (status per implementation) and each implementation's op trace."""
    rows, traces = R.integrity_rows(report)
    if not rows:
        return None
    strict = (report.get("options") or {}).get("strict")
    ims = impls(report)
    out = []
    for row in rows:
        cells = [row[0], row[1]]
        for impl, text in zip(ims, row[2:]):
            rs = [r for r in results(impl) if r.get("suite") == "integrity" and r.get("property") == row[0]]
            cells.append(cell(text, STATUS_COLOURS[cell_status(rs, strict)]))
        out.append(cells)
    return {"table": tbl(["property", "checks"] + [i.get("name") for i in ims], out),
            "traces": [{"name": _s(name), "dtype": _s(dtype),
                        "ops": tbl(["operator", "calls"], [[op, n] for op, n in (t.get("ops") or {}).items()])
                        if t.get("ops") else None,
                        "unavailable": _s(t.get("unavailable") or "no aten operator seen (compiled or non-torch code)")}
                       for name, dtype, t in traces]}


def not_run(report: dict):
    rows = [[i.get("name"), "—", "stopped after the base case: " + str(i.get("diagnosis")), ""]
            for i in impls(report) if i.get("diagnosis")]
    rows += [[g["impl"], g["count"], g["reason"], ", ".join(g["properties"])] for g in R.not_run_groups(report)]
    if not rows:
        return None
    return {"table": tbl(["implementation", "not run", "why", "properties"], rows)}


def unsupported(report: dict):
    items = [(i.get("name"), r) for i in impls(report) for r in results(i) if r.get("status") == "unsupported"]
    if not items:
        return None
    return {"table": tbl(["implementation", "property", "dtype", "reason"],
                         [[n, f"{r.get('suite')}::{r.get('property')}", r.get("dtype"), r.get("message")]
                          for n, r in items])}


def environment(report: dict):
    env = report.get("environment") or {}
    o = report.get("options") or {}
    ctx = {"environment": tbl(["key", "value"], [[k, fmt(v)] for k, v in env.items()]) if isinstance(env, dict) else None,
           "options": tbl(["option", "value"], [[k, fmt(v)] for k, v in o.items()]) if isinstance(o, dict) and o else None,
           "implementations": None, "capabilities": None}
    ims = impls(report)
    if ims:
        ctx["implementations"] = tbl(
            ["name", "spec", "description", "verdict", "duration (s)"],
            [[i.get("name"), i.get("spec"), i.get("description"), i.get("verdict"), fmt(i.get("duration_s"))]
             for i in ims])
        caps = [i.get("capabilities") if isinstance(i.get("capabilities"), dict) else {} for i in ims]
        keys = list(dict.fromkeys(k for c in caps for k in c))

        def show(v):
            return ", ".join(map(str, v)) if isinstance(v, list) else ("any" if v is None else fmt(v))

        if keys:
            ctx["capabilities"] = tbl(["capability"] + [str(i.get("name")) for i in ims],
                                      [[k] + [show(c.get(k)) for c in caps] for k in keys])
    return ctx if any(ctx.values()) else None
