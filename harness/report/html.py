"""``report.html``: one self-contained page people want to look at.

Rendered from ``report.json`` alone (reports compute nothing new): the comparison matrix coloured
by status, fingerprints side by side, every failure with its smallest counterexample and
reproduction command, attention maps and entropy dashboards from the diagnostics suite, model
head-ablation heatmaps, throughput tables, the unsupported list and the environment. Pictures are
PNGs embedded as base64 data URIs; every string that comes from an implementation or a result is
escaped. A section that cannot be drawn says so instead of breaking the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections import Counter
from typing import Callable, Optional

from harness.report import results as R

STATUS_COLOURS = {"pass": "#c8ecc9", "fail": "#f6b3b3", "error": "#e88a8a", "unsupported": "#e4e4e4",
                  "skip": "#f1f1f1", "none": "#ffffff",
                  # a failure of a tier this run does not enforce (strict without --strict, info):
                  # amber, so it never reads like a gate failure beside a PASS verdict
                  "reported": "#fbe3b0"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1400px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.5em;overflow-x:auto;white-space:pre-wrap;font-size:.85em}
img{max-width:100%;border:1px solid #ddd}
.caveat{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;font-size:.9em}
.flag{color:#b00000;font-weight:600}
.amber{color:#8a5a00;font-weight:600}
details{margin:.6em 0;border-left:3px solid #ddd;padding-left:.6em}
summary{cursor:pointer}
.muted{color:#666;font-size:.9em}
.legend span{display:inline-block;padding:0 .5em;margin-right:.3em;border:1px solid #bbb}
"""


def esc(x) -> str:
    """HTML-escape anything (None -> empty)."""
    return "" if x is None else html.escape(str(x), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def table(headers: list, rows: list, raw: bool = False, cls: Optional[list] = None) -> str:
    """A table; cells escaped unless ``raw`` (then the caller escaped them). A cell may be a
    (html, style) pair when ``raw``."""
    out = ["<table><thead><tr>" + "".join(f"<th>{h if raw else esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for row in rows:
        tds = []
        for c in row:
            if isinstance(c, tuple):
                tds.append(f"<td style=\"{esc(c[1])}\">{c[0] if raw else esc(c[0])}</td>")
            else:
                tds.append(f"<td>{c if raw else esc(c)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_IMG_CACHE: dict = {}


def png_data_uri(draw: Callable, key_obj=None) -> Optional[str]:
    """Run ``draw(file_like)`` (a matplotlib writer) and return a data:image/png URI. Cached by
    the JSON of ``key_obj``: the CLI re-renders the page after every implementation."""
    key = None
    if key_obj is not None:
        key = hashlib.sha1(json.dumps(key_obj, sort_keys=True, default=str).encode()).hexdigest()
        if key in _IMG_CACHE:
            return _IMG_CACHE[key]
    buf = io.BytesIO()
    draw(buf)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    if key is not None:
        if len(_IMG_CACHE) > 256:
            _IMG_CACHE.clear()
        _IMG_CACHE[key] = uri
    return uri


def img(uri: Optional[str], alt: str) -> str:
    return f"<img src=\"{uri}\" alt=\"{esc(alt)}\">" if uri else ""


def _section(title: str, fn: Callable, *args) -> str:
    """A section that never breaks the page."""
    try:
        body = fn(*args)
    except Exception as e:  # noqa: BLE001 - the page must render whatever the report holds
        body = f"<p class=\"flag\">could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>"
    if not body:
        return ""
    return f"<h2>{esc(title)}</h2>\n{body}"


# --- sections --------------------------------------------------------------------------------

def _impls(report: dict) -> list:
    return [i for i in (report.get("implementations") or []) if isinstance(i, dict)]


def _results(impl: dict) -> list:
    return [r for r in (impl.get("results") or []) if isinstance(r, dict)]


def _header(report: dict) -> str:
    o = report.get("options") or {}
    env = report.get("environment") or {}
    dtypes = o.get("dtypes") or []
    parts = [f"created {esc(report.get('created'))}", f"harness {esc(report.get('harness_version'))}",
             f"torch {esc(env.get('torch'))}", f"device {esc(env.get('gpu') or env.get('device'))}",
             f"profile {esc(o.get('profile'))}",
             f"dtypes {esc(', '.join(map(str, dtypes)) if isinstance(dtypes, list) else dtypes)}",
             f"seed {esc(o.get('seed'))}"]
    if o.get("strict"):
        parts.append("strict")
    cmd = report.get("command")
    cmd = " ".join(map(str, cmd)) if isinstance(cmd, list) else cmd
    verdicts = " ".join(f"<span style=\"background:{STATUS_COLOURS['pass' if i.get('verdict') == 'pass' else 'fail']};"
                        f"padding:0 .4em;border:1px solid #999\">{esc(i.get('name'))}: "
                        f"{esc(str(i.get('verdict', '?')).upper())}</span>" for i in _impls(report))
    return (f"<h1>attention-harness report</h1><p class=\"muted\">{' · '.join(parts)}</p>"
            + (f"<pre>{esc(cmd)}</pre>" if cmd else "") + (f"<p>{verdicts}</p>" if verdicts else ""))


def _cell_status(results: list, strict=False) -> str:
    """The colour key of a matrix cell: its worst status over the dtypes, where a failure of a
    tier this run does not enforce ranks below every other status and shows as ``reported``."""
    if not results:
        return "none"

    def reported(r):
        return r.get("status") in ("fail", "error") and not R.enforced(r.get("tier", "gate"), strict)

    worst = min(results, key=lambda r: 50 if reported(r) else R.STATUS_ORDER.get(r.get("status"), 9))
    if reported(worst):
        return "reported"
    st = worst.get("status", "none")
    return st if st in STATUS_COLOURS else "none"


def _anchor(impl_index: int, r: dict) -> str:
    return "fail-" + "-".join(str(x) for x in (impl_index, r.get("suite"), r.get("property"), r.get("dtype")))


def _matrix(report: dict) -> str:
    impls = _impls(report)
    if not impls:
        return "<p>No implementations in this report.</p>"
    strict = (report.get("options") or {}).get("strict")
    headers, rows = R.matrix_rows(report)
    out_rows = []
    for row, (key, tier) in zip(rows, R.property_keys(report)):
        suite, prop = key
        cells = [esc(row[0]), esc(row[1])]
        for n, (impl, text) in enumerate(zip(impls, row[2:])):
            rs = [r for r in _results(impl) if r.get("suite") == suite and r.get("property") == prop]
            st = _cell_status(rs, strict)
            title = "; ".join(f"{r.get('dtype')}: {r.get('status')}" for r in rs)
            failed = [r for r in rs if r.get("status") in ("fail", "error")]
            body = f"<span title=\"{esc(title)}\">{esc(text)}</span>"
            if failed:  # the cell links to its (first) failure below
                body = f"<a href=\"#{esc(_anchor(n, failed[0]))}\">{body}</a>"
            cells.append((body, f"background:{STATUS_COLOURS[st]}"))
        out_rows.append(cells)
    verdict = ["<b>verdict</b>", ""]
    for impl in impls:
        v = str(impl.get("verdict", "?"))
        verdict.append((f"<b>{esc(v.upper())}</b>", f"background:{STATUS_COLOURS['pass' if v == 'pass' else 'fail']}"))
    out_rows.append(verdict)
    legend = "<p class=\"legend muted\">" + "".join(
        f"<span style=\"background:{c}\">{esc(k)}</span>" for k, c in STATUS_COLOURS.items() if k != "none") + \
        " Each cell: the worst status over the dtypes run and the worst per-row error ratio (error against the " \
        "float64 reference divided by the error of a plain same-dtype PyTorch computation). " \
        "<i>unsupported</i> = outside the declared capabilities, never a pass.</p>"
    return table([esc(h) for h in headers], out_rows, raw=True) + legend


def _fingerprint_of(impl: dict):
    fp = impl.get("fingerprint")
    if isinstance(fp, dict):
        return fp
    for r in _results(impl):
        if r.get("property") == "test_fingerprint" and isinstance(r.get("worst"), dict):
            f = r["worst"].get("fingerprint")
            if isinstance(f, dict):
                return f
    return None


def _fingerprints(report: dict) -> str:
    fps = [(i.get("name"), _fingerprint_of(i)) for i in _impls(report)]
    fps = [(n, f) for n, f in fps if f]
    if not fps:
        return ""
    keys = list(dict.fromkeys(k for _, f in fps for k in f))
    rows = []
    for k in keys:
        vals = [json.dumps(f.get(k), default=str) for _, f in fps]
        common = Counter(vals).most_common(1)[0][0]
        rows.append([esc(k)] + [(esc(f.get(k)), "background:#fff3c4" if v != common else "")
                                for v, (_, f) in zip(vals, fps)])
    return table(["probe"] + [esc(n) for n, _ in fps], rows, raw=True) + \
        "<p class=\"muted\">Highlighted: a value that differs from the one most implementations give.</p>"


def _failures(report: dict) -> str:
    o = report.get("options") or {}
    out = []
    for impl in _impls(report):
        if impl.get("problem"):
            out.append(f"<p class=\"flag\">{esc(impl.get('name'))}: {esc(impl.get('problem'))}</p>")
    items = [(n, impl, r) for n, impl in enumerate(_impls(report)) for r in _results(impl)
             if r.get("status") in ("fail", "error")]
    # Gate (enforced) failures first: they decide the verdict; reported-only ones follow.
    items.sort(key=lambda x: not R.enforced(x[2].get("tier", "gate"), o.get("strict")))
    for n, impl, r in items:
        tier = r.get("tier", "gate")
        is_enforced = R.enforced(tier, o.get("strict"))
        cls = "flag" if is_enforced else "amber"
        out.append(f"<details id=\"{esc(_anchor(n, r))}\"{' open' if is_enforced else ''}><summary><b>"
                   f"{esc(impl.get('name'))} · {esc(r.get('suite'))}::{esc(r.get('property'))} · "
                   f"{esc(r.get('dtype'))}</b> · <span class=\"{cls}\">{esc(r.get('status'))}</span>"
                   f"{'' if is_enforced else ' (' + esc(tier) + ', not enforced)'}</summary>")
        if r.get("doc"):
            out.append(f"<p><i>{esc(r['doc'])}</i></p>")
        message = str(r.get("message") or "").strip()
        out.append(f"<pre>{esc(message)}</pre>")
        cx = r.get("counterexample_text")
        if cx and cx not in message:  # once: most messages already name it
            out.append("<p>Smallest counterexample: " + esc(cx) + "</p>")
        w = r.get("worst") if isinstance(r.get("worst"), dict) else {}
        nums = {k: v for k, v in w.items() if k in ("ratio", "factor", "where", "error", "baseline_error", "case")}
        if nums:
            out.append(table(list(nums), [[_fmt(v) for v in nums.values()]]))
        if r.get("repro"):
            out.append(f"<p>Reproduce:</p><pre>{esc(r['repro'])}</pre>")
        out.append("</details>")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _diagnostics_entries(impl: dict) -> list:
    out = []
    for r in _results(impl):
        w = r.get("worst")
        if isinstance(w, dict) and isinstance(w.get("diagnostics"), dict):
            out.append((r, w["diagnostics"]))
    return out


def _entropy_table(ent: dict) -> str:
    rows = []
    cases = [("all inputs", ent.get("overall"))] + list((ent.get("per_case") or {}).items())
    for name, e in cases:
        if not isinstance(e, dict):
            continue
        si, sr = e.get("implementation") or {}, e.get("reference") or {}
        flags = e.get("flags") or []
        rows.append([esc(name), esc(_fmt(si.get("mean"))), esc(_fmt(sr.get("mean"))), esc(_fmt(e.get("mean_delta"))),
                     esc(_pct(si.get("collapse"))) + " / " + esc(_pct(sr.get("collapse"))),
                     esc(_pct(si.get("diffuse"))) + " / " + esc(_pct(sr.get("diffuse"))),
                     "<span class=\"flag\">" + "<br>".join(esc(f) for f in flags) + "</span>" if flags else "ok"])
    if not rows:
        return ""
    return table(["input", "mean entropy (impl)", "mean entropy (reference)", "delta",
                  "collapsed &lt;0.05 impl / ref", "near-uniform &gt;0.95 impl / ref", "flags"], rows, raw=True)


def _pct(x) -> str:
    return "" if x is None else f"{float(x):.0%}"


def _per_head_table(ent: dict) -> str:
    """Mean normalised entropy per head, implementation / reference, for each input (the issue's
    "per head against the reference"); a head whose mean moved by more than the dashboard's flag
    threshold is marked."""
    from harness.diagnostics import FLAG_MEAN_DELTA

    per_case = ent.get("per_case") or {}
    rows, nh = [], 0
    for name, e in per_case.items():
        if not isinstance(e, dict):
            continue
        hi = (e.get("implementation") or {}).get("per_head")
        hr = (e.get("reference") or {}).get("per_head")
        if not isinstance(hi, list) and not isinstance(hr, list):
            continue
        hi, hr = hi if isinstance(hi, list) else [], hr if isinstance(hr, list) else []
        n = max(len(hi), len(hr))
        nh = max(nh, n)
        cells = [esc(name)]
        for h in range(n):
            a = hi[h] if h < len(hi) else None
            b = hr[h] if h < len(hr) else None
            text = " / ".join(esc(_fmt(_num(x)) if x is not None else "n/a") for x in (a, b))
            try:
                bad = abs(float(a) - float(b)) > FLAG_MEAN_DELTA
            except (TypeError, ValueError):
                bad = a is None and b is not None
            cells.append((f"<span class=\"flag\">{text}</span>", "background:#fbe3b0") if bad else (text, ""))
        rows.append(cells)
    if not rows:
        return ""
    rows = [r + [""] * (nh + 1 - len(r)) for r in rows]
    return ("<p>Mean normalised entropy per head (implementation / reference; highlighted: moved by more than "
            f"{esc(FLAG_MEAN_DELTA)})</p>" + table(["input"] + [f"head {h}" for h in range(nh)], rows, raw=True))


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


def _diagnostics(report: dict) -> str:
    from harness import diagnostics as D

    out = []
    caveat = None
    for impl in _impls(report):
        drawn = False
        for r, d in _diagnostics_entries(impl):
            caveat = d.get("caveat") or caveat
            name = impl.get("name")
            out.append(f"<h3>{esc(name)} · {esc(d.get('dtype') or r.get('dtype'))}</h3>")
            maps = [m for m in (d.get("maps") or []) if isinstance(m, dict)]
            # Pictures cost about a second each to draw: one dtype's for an implementation whose
            # maps and entropy agree with the reference, every dtype's where something is off.
            if drawn and not _notable(d, maps):
                out.append("<p class=\"muted\">Maps and entropy agree with the reference as in the dtype "
                           "drawn above; not drawn again.</p>")
                ent = d.get("entropy")
                if isinstance(ent, dict) and (ent.get("overall") or ent.get("per_case")):
                    out.append(_entropy_table(ent) + _per_head_table(ent))
                continue
            drawn = True
            leaks = [m for m in maps if m.get("leaked_total")]
            if leaks:
                out.append("<p class=\"flag\">Forbidden cells with weight (outlined in red): " + ", ".join(
                    f"{esc(m.get('key'))}: {esc(m.get('leaked_total'))}" for m in leaks) + "</p>")
            uns = [m for m in maps if m.get("unsupported")]
            if uns:
                out.append("<p class=\"muted\">Unsupported inputs: " + "; ".join(
                    f"{esc(m.get('key'))} ({esc(m.get('unsupported'))})" for m in uns) + "</p>")
            if maps:
                out.append("<p class=\"muted\">" + "<br>".join(
                    f"{esc(m.get('title'))} — <code>{esc(m.get('case'))}</code> — "
                    f"{esc(m.get('which') or d.get('which') or 'batch 0, head 0')}{_diff_note(m)}" for m in maps)
                           + "</p>")
                try:
                    uri = png_data_uri(lambda f, maps=maps: D.plot_maps(maps, f), ["maps", maps])
                    out.append(img(uri, f"attention maps of {name} ({d.get('which', 'batch 0, head 0')}): "
                                        "visible keys, reference, implementation, difference"))
                except Exception as e:  # noqa: BLE001
                    out.append(f"<p class=\"flag\">maps not drawn: {esc(type(e).__name__)}: {esc(e)}</p>")
                out.append(f"<p class=\"muted\">Panels per input: visible keys (white), float64 reference "
                           f"weights, the implementation's effective weights (read with one-hot values), "
                           f"difference; {esc(d.get('which', 'batch 0, head 0'))}.</p>")
            ent = d.get("entropy")
            if isinstance(ent, dict) and (ent.get("overall") or ent.get("per_case")):
                try:
                    uri = png_data_uri(lambda f, ent=ent: D.plot_entropy(ent, f), ["entropy", ent])
                    out.append(img(uri, f"entropy dashboard of {name}"))
                except Exception as e:  # noqa: BLE001
                    out.append(f"<p class=\"flag\">entropy not drawn: {esc(type(e).__name__)}: {esc(e)}</p>")
                out.append(_entropy_table(ent))
                out.append(_per_head_table(ent))
    if not out:
        return ""
    return f"<p class=\"caveat\">{esc(caveat or D.CAVEAT)}</p>\n" + "\n".join(out)


def _diff_note(m: dict) -> str:
    """`` · max |diff| x`` for a map that carries its difference from the reference (flagged
    above 1e-3: far beyond rounding for weights in [0, 1])."""
    d = m.get("max_abs_diff")
    if d is None:
        return ""
    try:
        v = float(d)
    except (TypeError, ValueError):
        return f" · max |diff| {esc(d)}"
    text = f"max |diff| vs reference {v:.3g}"
    return f" · <span class=\"flag\">{esc(text)}</span>" if not v <= 1e-3 else f" · {esc(text)}"


def _ablations(report: dict) -> str:
    out = []
    for impl in _impls(report):
        for r in _results(impl):
            w = r.get("worst")
            ab = w.get("ablation") if isinstance(w, dict) else None
            if not isinstance(ab, dict):
                continue
            out.append(f"<h3>{esc(impl.get('name'))} · {esc(r.get('suite'))}::{esc(r.get('property'))} · "
                       f"{esc(r.get('dtype'))}</h3>")
            impact = ab.get("impact")
            if not (isinstance(impact, list) and impact and all(isinstance(row, list) for row in impact)):
                out.append("<pre>" + esc(json.dumps(ab, default=str)[:4000]) + "</pre>")
                continue
            meta = {k: v for k, v in ab.items() if k not in ("impact", "caveat") and not isinstance(v, (list, dict))}
            if meta:
                out.append("<p class=\"muted\">" + esc(", ".join(f"{k}: {v}" for k, v in meta.items())) + "</p>")
            try:
                uri = png_data_uri(lambda f, ab=ab: _plot_ablation(ab, f), ["ablation", ab])
                out.append(img(uri, "head ablation impact (layers x heads)"))
            except Exception as e:  # noqa: BLE001
                out.append(f"<p class=\"flag\">heatmap not drawn: {esc(type(e).__name__)}: {esc(e)}</p>")
            nh = max(len(row) for row in impact)
            out.append("<p>Impact (layers x heads)</p>" + table(
                ["layer"] + [f"head {h}" for h in range(nh)],
                [[str(li)] + [_fmt(_num(x)) for x in row] for li, row in enumerate(impact)]))
            ranking = [x for x in (ab.get("ranking") or []) if isinstance(x, dict)]
            if ranking:
                cols = list(dict.fromkeys(k for x in ranking for k in x))
                top = ranking[:10]
                out.append("<p>Most important heads</p>" + table(cols, [[_fmt(x.get(c)) for c in cols] for x in top]))
                low = ranking[len(top):][-5:]
                if low:
                    out.append("<p>Least important heads (low end of the ranking)</p>"
                               + table(cols, [[_fmt(x.get(c)) for c in cols] for x in low]))
            out.append(_inactive(ab))
            out.append(f"<p class=\"caveat\">{esc(ab.get('caveat') or ABLATION_CAVEAT)}</p>")
    return "\n".join(out)


ABLATION_CAVEAT = ("Attention weights and ablations are evidence, not a full explanation: a head with low "
                   "ablation impact may still matter together with others, and one with high impact need not "
                   "do what its attention map suggests.")


def _inactive(ab: dict) -> str:
    """The heads the ablation flags as inactive or redundant (impact below its threshold)."""
    ina = ab.get("inactive")
    if not isinstance(ina, list):
        return ""
    thr = ab.get("threshold")
    what = f"impact &lt; {esc(_fmt(_num(thr)))}" if thr is not None else "below the threshold"
    if not ina:
        return f"<p>Inactive or redundant heads ({what}): none.</p>"
    names = []
    for x in ina:
        if isinstance(x, dict):
            names.append(f"layer {esc(x.get('layer'))} head {esc(x.get('head'))}")
        else:
            names.append(esc(x))
    return (f"<p class=\"flag\">Inactive or redundant heads ({what}; {len(names)}): "
            + ", ".join(names) + "</p>")


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


def _matrix_of(rows):
    import numpy as np

    if not (isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows)):
        return None
    nh = max(len(r) for r in rows)
    a = np.full((len(rows), max(nh, 1)), np.nan)
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            v = _num(x)
            a[i, j] = v if isinstance(v, float) else np.nan
    return a


def _plot_ablation(ab: dict, f):
    """Layers x heads heatmaps: impact of ablating each head, and its attention entropy if given."""
    from harness.diagnostics import _Figures, _save

    panels = [("impact of ablating the head", _matrix_of(ab["impact"]), "magma")]
    ent = _matrix_of(ab.get("entropy"))
    if ent is not None:
        panels.append(("attention entropy", ent, "viridis"))
    a0 = panels[0][1]
    fig, axes = _Figures.subplots(1, len(panels), squeeze=False,
                                  figsize=(min(14, len(panels) * (1.8 + 0.45 * a0.shape[1])), min(10, 1.6 + 0.4 * a0.shape[0])))
    for ax, (title, a, cmap) in zip(axes[0], panels):
        im = ax.imshow(a, cmap=cmap, interpolation="nearest", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=12)
        fig.colorbar(im, ax=ax)
    _save(fig, f)


def _throughput(report: dict) -> str:
    tp = report.get("throughput")
    if not isinstance(tp, list) or not tp:
        return ""
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
            row.append(_fmt(v))
        rows.append(row)
    return table(keys, rows)


def _integrity(report: dict) -> str:
    """One line per integrity property (status per implementation) and each implementation's op trace."""
    rows, traces = R.integrity_rows(report)
    if not rows:
        return ""
    strict = (report.get("options") or {}).get("strict")
    impls = _impls(report)
    out_rows = []
    for row in rows:
        cells = [esc(row[0]), esc(row[1])]
        for impl, text in zip(impls, row[2:]):
            rs = [r for r in _results(impl) if r.get("suite") == "integrity" and r.get("property") == row[0]]
            cells.append((esc(text), f"background:{STATUS_COLOURS[_cell_status(rs, strict)]}"))
        out_rows.append(cells)
    out = table(["property", "checks"] + [esc(i.get("name")) for i in impls], out_rows, raw=True)
    for name, dtype, t in traces:
        ops = t.get("ops") or {}
        out += (f"<h3>{esc(name)} · op trace ({esc(dtype)})</h3>"
                + (table(["operator", "calls"], [[op, n] for op, n in ops.items()]) if ops
                   else f"<p class=\"muted\">{esc(t.get('unavailable') or 'no aten operator seen (compiled or non-torch code)')}</p>"))
    return out


def _unsupported(report: dict) -> str:
    items = [(i.get("name"), r) for i in _impls(report) for r in _results(i) if r.get("status") == "unsupported"]
    if not items:
        return ""
    return table(["implementation", "property", "dtype", "reason"],
                 [[n, f"{r.get('suite')}::{r.get('property')}", r.get("dtype"), r.get("message")] for n, r in items])


def _environment(report: dict) -> str:
    env = report.get("environment") or {}
    o = report.get("options") or {}
    out = table(["key", "value"], [[k, _fmt(v)] for k, v in env.items()]) if isinstance(env, dict) else ""
    if isinstance(o, dict) and o:
        out += "<h3>Options</h3>" + table(["option", "value"], [[k, _fmt(v)] for k, v in o.items()])
    impls = _impls(report)
    if impls:
        out += "<h3>Implementations</h3>" + table(
            ["name", "spec", "description", "verdict", "duration (s)"],
            [[i.get("name"), i.get("spec"), i.get("description"), i.get("verdict"), _fmt(i.get("duration_s"))]
             for i in impls])
        caps = [i.get("capabilities") if isinstance(i.get("capabilities"), dict) else {} for i in impls]
        keys = list(dict.fromkeys(k for c in caps for k in c))
        if keys:
            def show(v):
                return ", ".join(map(str, v)) if isinstance(v, list) else ("any" if v is None else _fmt(v))

            out += "<h3>Declared capabilities</h3>" + table(
                ["capability"] + [str(i.get("name")) for i in impls], [[k] + [show(c.get(k)) for c in caps] for k in keys])
    return out


def _strict_notes(report: dict) -> str:
    import re

    notes = R.strict_notes(report)
    # The notes are Markdown with **name**: turn that into escaped HTML.
    items = "".join("<li>" + re.sub(r"\*\*(.+?)\*\*", lambda m: f"<b>{m.group(1)}</b>", esc(n)) + "</li>" for n in notes)
    return f"<ul>{items}</ul>" if notes else ""


def render(report: dict, report_dir=None) -> str:
    """The whole page as a string (``report_dir`` is accepted for the writer's signature; the page
    is self-contained and writes nothing there)."""
    body = [_safe(_header, report),
            _section("Comparison matrix", _matrix, report),
            _section("Strict-tier findings", _strict_notes, report),
            _section("Semantic fingerprints", _fingerprints, report),
            _section("Failures", _failures, report),
            _section("Integrity", _integrity, report),
            _section("Throughput", _throughput, report),
            _section("Attention maps and entropy", _diagnostics, report),
            _section("Head ablation", _ablations, report),
            _section("Unsupported (declared capabilities)", _unsupported, report),
            _section("Environment", _environment, report)]
    return page("attention-harness report", "\n".join(b for b in body if b))


def _safe(fn, *args) -> str:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return f"<h1>attention-harness report</h1><p class=\"flag\">header: {esc(e)}</p>"
