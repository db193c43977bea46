"""Reports people look at: report.html (self-contained, escaped, robust), JUnit XML, Markdown, and
the diagnostics (attention maps, entropy) that feed them.

One real ``attn-harness check`` run (three implementations, fingerprint + diagnostics suites,
quick profile, ~20 s on 2 cores) is shared by the tests that need real output; everything else
uses small synthetic report dicts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch

from harness import diagnostics as D
from harness.report import html as html_report
from harness import report as R
from harness.report import writer as report_writer

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ["sdpa", "reference", "fixtures/planted.py:missing_scale"]
HOSTILE = "<script>alert(1)</script>"


class _Page(HTMLParser):
    """Collects tags, image sources and text; records unbalanced structure."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.text, self.stack, self.mismatched = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    p.close()
    assert not p.mismatched, p.mismatched
    assert not p.stack, p.stack
    return p


# --- one real run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("check")
    cmd = [sys.executable, "-m", "harness", "check", "--suite", "fingerprint", "--suite", "diagnostics",
           "--profile", "quick", "--dtype", "float32", "--report-dir", str(d), "--junit", str(d / "junit.xml")]
    for spec in IMPLS:
        cmd += ["--impl", spec]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads((d / "report.json").read_text())
    return proc, d, report


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_run_verdicts(real_run):
    proc, d, report = real_run
    assert proc.returncode == 1, proc.stderr  # missing_scale fails the gate
    verdicts = {i["name"]: i["verdict"] for i in report["implementations"]}
    assert verdicts == {"sdpa": "pass", "reference": "pass", "missing_scale": "fail"}
    bad = {(r["suite"], r["property"]) for r in report["implementations"][2]["results"] if r["status"] == "fail"}
    assert ("diagnostics", "test_entropy_matches_reference") in bad


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_run_diagnostics_stored(real_run):
    _, _, report = real_run
    for impl in report["implementations"]:
        r = next(r for r in impl["results"] if r["property"] == "test_attention_maps_and_entropy")
        assert r["tier"] == "info" and r["status"] == "pass" and r["cases"] == len(D.CANONICAL)
        diag = r["worst"]["diagnostics"]
        assert diag["caveat"] == D.CAVEAT
        assert [m["key"] for m in diag["maps"]] == [c.key for c in D.CANONICAL]
        for m in diag["maps"]:
            L = len(m["mask"])
            assert len(m["reference"]) == L == len(m["implementation"])
            assert set(x for row in m["mask"] for x in row) <= {0, 1}
            assert all(x == round(x, 4) for row in m["implementation"] for x in row)
            assert m["leaked"] == 0
            assert m["which"] == f"batch 0, head {m['head']}" and m["head"] == (1 if m["key"] == "gqa" else 0)
            if impl["name"] == "missing_scale":
                assert m["max_abs_diff"] > 0.01
            else:
                assert m["max_abs_diff"] < 1e-5 and m["max_abs_diff_total"] < 1e-5
        for key, e in diag["entropy"]["per_case"].items():
            H = next(c.case.H for c in D.CANONICAL if c.key == key)
            assert len(e["implementation"]["per_head"]) == len(e["reference"]["per_head"]) == H
        ent = diag["entropy"]["overall"]
        if impl["name"] == "missing_scale":
            assert ent["mean_delta"] < -0.05 and ent["flags"]
        else:
            assert abs(ent["mean_delta"]) < 1e-6 and not ent["flags"]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_run_html(real_run):
    _, d, report = real_run
    html = (d / "report.html").read_text()
    page = parse(html)
    pngs = [i for i in page.imgs if i.get("src", "").startswith("data:image/png;base64,")]
    assert len(pngs) >= 2 * len(IMPLS)  # maps and entropy for each implementation
    assert all(len(i["src"]) > 1000 for i in pngs)
    text = " ".join(page.text)
    for impl in report["implementations"]:
        assert impl["name"] in text
    assert D.CAVEAT in text
    assert "Comparison matrix" in text and "Semantic fingerprints" in text and "Failures" in text
    assert "attn-harness check --impl fixtures/planted.py:missing_scale" in text  # reproduction command
    assert "src=\"http" not in html and "<link" not in html  # self-contained
    # per-head entropy against the reference: one column per head of the widest input (GQA: 4)
    assert "Mean normalised entropy per head" in text and "head 3" in text
    assert "max |diff| vs reference" in text
    missing = html[html.index("<h3>missing_scale"):]
    assert "<span class=\"flag\">max |diff| vs reference" in missing  # its maps differ
    assert "<span class=\"flag\">" in missing[missing.index("Mean normalised entropy per head"):]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_run_junit_and_markdown(real_run):
    _, d, report = real_run
    root = ET.parse(d / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    pairs = {(i["name"], r["suite"], r["property"]) for i in report["implementations"] for r in i["results"]}
    assert len(cases) == len(pairs)
    assert {(c.get("classname").rsplit(".", 1)[0], c.get("classname").rsplit(".", 1)[1], c.get("name"))
            for c in cases} == pairs
    # missing_scale: default scale, explicit scale ignored, and entropy
    assert len(root.findall(".//failure")) == 3
    md = (d / "report.md").read_text()
    assert "| property" in md and "diagnostics::test_entropy_matches_reference" in md
    header = next(line for line in md.splitlines() if line.startswith("| property"))
    assert all(i["name"] in header for i in report["implementations"])
    # a short diagnostics section pointing to report.html, with leaked-cell counts and the caveat
    sec = md[md.index("## Diagnostics"):]
    assert "report.html" in sec and D.CAVEAT in sec and "leaked cells" in sec
    rows = [line for line in sec.splitlines() if line.startswith("| ") and "implementation" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [i["name"] for i in report["implementations"]]
    assert all("causal, padding, rag, gqa" in r for r in rows)
    assert "(flagged)" in rows[2] and "(flagged)" not in rows[0]


# --- synthetic reports ------------------------------------------------------------------------

def _result(prop, status="pass", suite="correctness", tier="gate", dtype="float32", **kw):
    r = {"suite": suite, "property": prop, "tier": tier, "dtype": dtype, "device": "cpu", "impl": "x",
         "status": status, "cases": 3, "worst": {}, "message": "", "counterexample": None,
         "counterexample_text": None, "repro": "", "seed": 1, "duration_s": 0.01, "doc": "a property"}
    r.update(kw)
    return r


def _impl(name, results, verdict="pass", **kw):
    return {"name": name, "spec": name, "verdict": verdict, "capabilities": {}, "description": "",
            "duration_s": 1.0, "log": "", "problem": None, "results": results, **kw}


def _report(impls, **kw):
    rep = {"schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "harness_version": "0.1.0",
           "command": ["attn-harness", "check"], "options": {"device": "cpu", "dtypes": ["float32"],
                                                             "profile": "quick", "strict": False, "seed": 1},
           "environment": {"torch": "2.13", "python": "3.11", "device": "cpu"}, "implementations": impls}
    rep.update(kw)
    return rep


def _hostile_report():
    msg = f"boom {HOSTILE} & <img src=x onerror=alert(2)>"
    bad = _result(HOSTILE, "fail", suite=HOSTILE, message=msg, repro=f"attn-harness check --impl '{HOSTILE}'",
                  counterexample={"policy": HOSTILE}, counterexample_text=HOSTILE,
                  worst={"ratio": 7.0, "where": HOSTILE})
    diag_map = {"key": HOSTILE, "title": HOSTILE, "case": HOSTILE, "which": "batch 0, head 0",
                "mask": [[1, 0], [1, 1]], "reference": [[1.0, 0.0], [0.4, 0.6]],
                "implementation": [[0.9, 0.1], [0.4, 0.6]], "leaked": 1, "leaked_total": 1, "unsupported": None}
    side = {"rows": 1, "mean": 0.5, "histogram": [0] * 5 + [1] + [0] * 4, "collapse": 0.0, "diffuse": 0.0}
    diag = _result("test_attention_maps_and_entropy", suite="diagnostics", tier="info", worst={"diagnostics": {
        "dtype": "float32", "which": "batch 0, head 0", "caveat": D.CAVEAT, "maps": [diag_map],
        "entropy": {"overall": {"implementation": side, "reference": side, "mean_delta": 0.0, "flags": [HOSTILE]},
                    "per_case": {HOSTILE: {"implementation": side, "reference": side, "mean_delta": 0.0,
                                           "flags": []}}}}})
    impl = _impl(HOSTILE, [bad, diag, _result("p2", "unsupported", message=HOSTILE)], verdict="fail",
                 spec=HOSTILE, description=HOSTILE, problem=HOSTILE,
                 fingerprint={"causal_alignment": HOSTILE})
    return _report([impl, _impl("ok", [_result(HOSTILE), _result("p2")])],
                   throughput=[{"impl": HOSTILE, "mode": "fwd", "shape": {"B": 1, "L": 128}, "dtype": "float32",
                                "median_ms": 1.5, "tflops": 0.1}],
                   environment={"torch": HOSTILE, "device": "cpu", "gpu": HOSTILE})


def test_hostile_text_is_escaped():
    html = html_report.render(_hostile_report(), None)
    assert HOSTILE not in html
    assert "<img src=x" not in html
    assert html.count(html_report.esc(HOSTILE)) >= 10
    page = parse(html)
    assert "script" not in page.tags
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.imgs)
    assert HOSTILE in " ".join(page.text)  # shown to the reader as text
    assert "Throughput" in " ".join(page.text)


def test_markdown_and_junit_with_hostile_names():
    rep = _hostile_report()
    root = ET.fromstring(R.to_junit(rep))
    assert len(root.findall(".//testcase")) == 3 + 2
    md = R.to_markdown(rep)
    assert "| property" in md and "ok" in md


@pytest.mark.parametrize("mutate", [
    "nothing", "no_implementations", "no_diagnostics", "error_status", "broken_diagnostics", "ablation",
    "broken_ablation", "bad_throughput", "missing_keys",
])
def test_render_never_crashes(mutate):
    rep = _hostile_report()
    impl = rep["implementations"][0]
    if mutate == "no_implementations":
        rep["implementations"] = []
    elif mutate == "no_diagnostics":
        for i in rep["implementations"]:
            i["results"] = [r for r in i["results"] if r["suite"] != "diagnostics"]
    elif mutate == "error_status":
        impl["results"].append(_result("harness_run", "error", suite="harness", dtype="-",
                                       message="Traceback ...\nRuntimeError: <b>x</b>"))
    elif mutate == "broken_diagnostics":
        impl["results"][1]["worst"]["diagnostics"] = {"maps": [{"mask": None, "unsupported": "no bool masks"},
                                                               {"mask": [[1]], "reference": None}],
                                                      "entropy": {"overall": None, "per_case": {"x": None}}}
    elif mutate == "ablation":
        impl["results"].append(_result("test_head_ablation", suite="model", tier="info", worst={"ablation": {
            "layers": 2, "heads": 3, "metric": "loss increase", "impact": [[0.1, 0.5, 0.0], [1.2, "n/a", 0.3]]}}))
    elif mutate == "broken_ablation":
        impl["results"].append(_result("test_head_ablation", suite="model", worst={"ablation": {"impact": "?"}}))
    elif mutate == "bad_throughput":
        rep["throughput"] = ["x", {"impl": 1}, {"shape": None, "median_ms": "fast"}]
    elif mutate == "missing_keys":
        rep = {"schema_version": 1, "implementations": [{"name": "n", "results": [{"status": "weird"}]}]}
    html = html_report.render(rep, None)
    parse(html)
    if mutate == "ablation":
        assert "head ablation" in html.lower() and html.count("data:image/png") >= 3
        assert "layer" in html


def test_write_all_writes_html(tmp_path):
    rep = _report([_impl("a", [_result("p")]), _impl("b", [_result("p", "fail", message="bad")], "fail")])
    paths = report_writer.write_all(rep, tmp_path, junit=str(tmp_path / "j.xml"))
    assert paths["html"].exists()
    page = parse(paths["html"].read_text())
    assert {"a", "b"} <= set(" ".join(page.text).split())
    ET.parse(paths["junit"])


def test_script_in_kernel_name_and_message_is_escaped():
    """A kernel name and a failure message holding <script> reach the page as text, never as
    markup: in the matrix header, the failure's summary and message, the environment tables."""
    name, message = "k<script>alert('name')</script>", "diverged <script>alert(\"msg\")</script> at row 3"
    rep = _report([_impl(name, [_result("test_p", "fail", message=message, repro=f"attn-harness check --impl '{name}'")],
                         "fail")])
    html = html_report.render(rep, None)
    assert "<script" not in html.lower()
    page = parse(html)
    assert "script" not in page.tags
    assert html.count("k&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;") >= 4  # header, matrix, failure, env
    assert "<pre>diverged &lt;script&gt;alert(&#34;msg&#34;)&lt;/script&gt; at row 3</pre>" in html
    text = " ".join(page.text)
    assert name in text and message in text  # the reader sees the text as written


def _links_and_ids(html: str):
    class _Anchors(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.hrefs = [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if a.get("id") is not None:
                self.ids.append(a["id"])
            if (a.get("href") or "").startswith("#"):
                self.hrefs.append(a["href"][1:])

    p = _Anchors()
    p.feed(html)
    return p.hrefs, p.ids


def _mixed_tier_report():
    """Gate and reported-only (strict, no --strict) failures side by side, under hostile names."""
    return _report([_impl(HOSTILE, [_result("test_gate", "fail", message="bad"),
                                    _result("test_strict", "fail", tier="strict", message="NaN in masked slots"),
                                    _result("test_p", "fail", suite=f"suite {HOSTILE}", dtype="bfloat 16",
                                            message="x"),
                                    _result("test_ok")], "fail"),
                    _impl("two words", [_result("test_gate", "error", message="Traceback"),
                                        _result("test_strict", "pass"), _result("test_ok", "fail", tier="info")],
                          "fail")])


@pytest.mark.parametrize("which", ["mixed_tiers", "hostile"])
def test_every_in_page_link_has_its_target(which):
    """Every href="#x" in the page (matrix cells linking to their failure) has an element with
    id="x", and ids are unique, whatever the names hold (spaces, markup)."""
    rep = _mixed_tier_report() if which == "mixed_tiers" else _hostile_report()
    hrefs, ids = _links_and_ids(html_report.render(rep, None))
    failures = sum(r["status"] in ("fail", "error") for i in rep["implementations"] for r in i["results"])
    assert len(ids) == len(set(ids)) == failures
    assert hrefs and set(hrefs) <= set(ids), set(hrefs) - set(ids)
    assert all(not any(ch.isspace() for ch in i) for i in ids)


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_run_links_have_targets(real_run):
    _, d, _ = real_run
    hrefs, ids = _links_and_ids((d / "report.html").read_text())
    assert hrefs and set(hrefs) <= set(ids), set(hrefs) - set(ids)
    assert len(ids) == len(set(ids))


def test_failures_gate_first_and_amber_for_reported():
    html = html_report.render(_mixed_tier_report(), None)
    fails = html[html.index("<h2>Failures</h2>"):]
    gate, strict = fails.index("::test_gate"), fails.index("::test_strict")
    assert gate < strict
    assert "<span class=\"amber\">fail</span> (strict, not enforced)</summary>" in fails
    assert html.count("<details ") == 5 and html.count(" open>") == 3  # only gate failures start open
    matrix = html[html.index("<h2>Comparison matrix</h2>"):html.index("<h2>Failures</h2>")]
    assert f"background:{html_report.STATUS_COLOURS['reported']}" in matrix
    assert f"background:{html_report.STATUS_COLOURS['fail']}" in matrix


def test_a_section_that_raises_is_shown_not_swallowed(monkeypatch):
    from harness.report import html_sections

    def boom(report):
        raise RuntimeError(f"matrix broke on {HOSTILE}")

    monkeypatch.setattr(html_report, "SECTIONS", [(t, tpl, boom if fn is html_sections.matrix else fn)
                                                  for t, tpl, fn in html_report.SECTIONS])
    html = html_report.render(_mixed_tier_report(), None)
    parse(html)
    assert HOSTILE not in html
    assert ("<h2>Comparison matrix</h2>\n<p class=\"flag\">could not render this section: RuntimeError: "
            f"matrix broke on {html_report.esc(HOSTILE)}</p>") in html
    assert "<h2>Failures</h2>" in html and "<h2>Environment</h2>" in html  # the rest still renders
    # a template that fails (here: a missing one) is reported the same way
    monkeypatch.setattr(html_report, "SECTIONS", [("Throughput", "no-such-template.html", html_sections.throughput)])
    html = html_report.render(_hostile_report(), None)
    assert "could not render this section: TemplateNotFound: &#39;no-such-template.html&#39; not found" in html


def test_a_page_that_cannot_render_is_reported_by_the_writer(tmp_path, monkeypatch, capsys):
    def broken(report, report_dir=None):
        raise ValueError("page template broke")

    monkeypatch.setattr(html_report, "render", broken)
    paths = report_writer.write_all(_report([_impl("a", [_result("p")])]), tmp_path)
    assert "html" not in paths and not (tmp_path / "report.html").exists()
    assert paths["json"].exists() and paths["md"].exists()
    assert "report.html was not written: ValueError: page template broke" in capsys.readouterr().err


def test_page_and_table_wrappers_for_other_renderers():
    """compare.py and api.py build HTML with page/table/esc: plain strings, cells escaped."""
    t = html_report.table(["a", "<b>"], [[HOSTILE, None], [1, 2.5]])
    assert type(t) is str and HOSTILE not in t and "<th>&lt;b&gt;</th>" in t and "<td></td>" in t
    assert "<p>x</p>" + t == "<p>x</p>" + t  # concatenation keeps the caller's markup
    p = html_report.page(HOSTILE, "<p>body built by the caller</p>" + t)
    assert type(p) is str and p.startswith("<!DOCTYPE html>") and "<p>body built by the caller</p>" in p
    assert f"<title>{html_report.esc(HOSTILE)}</title>" in p
    parse(p)


def _chromium():
    """A Chromium that runs (Ubuntu's chromium-browser may be a stub asking for snap), or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if not path:
            continue
        try:
            if subprocess.run([path, "--version"], capture_output=True, timeout=30).returncode == 0:
                return path
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


CHROMIUM = _chromium()


# Run in the page after it loaded: the computed background of every matrix cell, and for every
# in-page link (the matrix's, and the causes' links to the failures they explain), where clicking
# it lands (the :target element).
_PROBE = """<script>
(function () {
  var out = {cells: {}, links: []};
  var matrix = document.querySelector('table');
  matrix.querySelectorAll('tbody tr').forEach(function (tr) {
    var tds = Array.prototype.slice.call(tr.querySelectorAll('td'));
    out.cells[tds[0].textContent] = tds.slice(2).map(function (td) { return getComputedStyle(td).backgroundColor; });
  });
  document.querySelectorAll('a[href^="#"]').forEach(function (a) {  // the matrix's and the causes' links
    a.click();
    var t = document.querySelector(':target');
    out.links.push({href: a.getAttribute('href').slice(1), target: t ? t.id : null, tag: t ? t.tagName : null});
  });
  var pre = document.createElement('pre');
  pre.id = 'harness-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _open_in_chromium(html: str, tmp_path) -> tuple:
    """Chromium's DOM of the page (plus the probe), and what the probe found."""
    import html as htmllib
    import re

    path = tmp_path / "page.html"
    path.write_text(html.replace("</body>", _PROBE + "</body>"))
    out = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="harness-probe">(.*?)</pre>', out.stdout, re.S)
    assert m, "the probe did not run: " + out.stderr[-2000:]
    return out.stdout, json.loads(htmllib.unescape(m.group(1)))


def _assert_links_land(probe: dict, html: str):
    hrefs, ids = _links_and_ids(html)
    assert probe["links"] and len(probe["links"]) == len(hrefs)
    for link in probe["links"]:  # following a cell's link lands on that failure's <details>
        assert link["target"] == link["href"] and link["tag"] == "DETAILS", link
        assert link["target"] in ids


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no working headless Chromium on PATH (chromium, chromium-browser or "
                             "google-chrome): .ci/run installs Debian's chromium where it can")


@pytest.mark.slow  # a whole `attn-harness check` run
@needs_chromium
def test_renders_in_headless_chromium(real_run, tmp_path):
    """The report.html of the real three-implementation check run, opened by a real browser: the
    DOM Chromium builds holds the comparison matrix (every implementation a column) and the
    attention-map heatmaps as embedded PNG images, and every failing cell's link lands on its failure."""
    _, d, report = real_run
    html = (d / "report.html").read_text()
    text, probe = _open_in_chromium(html, tmp_path)
    dom = _Dom()
    dom.feed(text)
    assert "Comparison matrix" in dom.h2
    matrix = dom.tables[0]
    names = [i["name"] for i in report["implementations"]]
    assert len(names) >= 3 and matrix["headers"][2:] == names
    assert any(row and row[0].startswith("diagnostics::") for row in matrix["rows"])
    heatmaps = [i for i in dom.imgs if i.get("src", "").startswith("data:image/png;base64,")
                and i.get("alt", "").startswith("attention maps of ")]
    assert {n for n in names if any(f"attention maps of {n} " in i["alt"] for i in heatmaps)} == set(names)
    assert all(len(i["src"]) > 1000 for i in heatmaps)
    _assert_links_land(probe, html)


@needs_chromium
def test_reported_and_gate_failures_look_different_in_chromium(tmp_path):
    """Amber for a failure of a tier the run does not enforce, red for a gate failure, as the
    browser computes them; and the links of both (names holding spaces and markup) land."""
    html = html_report.render(_mixed_tier_report(), None)
    _, probe = _open_in_chromium(html, tmp_path)
    cells = probe["cells"]
    gate, strict = cells["correctness::test_gate"][0], cells["correctness::test_strict"][0]
    passing = cells["correctness::test_ok"][0]
    assert gate != strict and len({gate, strict, passing}) == 3, cells
    def rgb(hex_colour):
        return "rgb({}, {}, {})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))

    colours = html_report.STATUS_COLOURS
    assert (strict, gate, passing) == (rgb(colours["reported"]), rgb(colours["fail"]), rgb(colours["pass"]))
    assert cells["correctness::test_ok"][1] == strict  # an info failure: amber too
    _assert_links_land(probe, html)


class _Dom(HTMLParser):
    """Tables (header cells and rows of cell text), <h2> texts and images of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.tables, self.h2, self.imgs = [], [], []
        self._cell = self._h2 = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"headers": [], "rows": []})
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._h2 = []
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(("th" if tag == "th" else "td", "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if all(k == "th" for k, _ in self._row):
                self.tables[-1]["headers"] = [t for _, t in self._row]
            else:
                self.tables[-1]["rows"].append([t for _, t in self._row])
            self._row = None
        elif tag == "h2" and self._h2 is not None:
            self.h2.append("".join(self._h2).strip())
            self._h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._h2 is not None:
            self._h2.append(data)


# --- diagnostics units ------------------------------------------------------------------------

def test_entropy_stats_extremes():
    vis = torch.ones(1, 2, 3, 4, dtype=torch.bool)
    vis[0, :, 0, 1:] = False  # row 0: one visible key, excluded
    uniform = vis.double() / vis.double().sum(-1, keepdim=True)
    onehot = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    onehot[..., 0] = 1
    su, so = D.entropy_stats(uniform, vis), D.entropy_stats(onehot, vis)
    assert su["rows"] == so["rows"] == 4
    assert math.isclose(su["mean"], 1.0) and su["diffuse"] == 1.0 and su["histogram"][-1] == 4
    assert so["mean"] == 0.0 and so["collapse"] == 1.0 and so["histogram"][0] == 4
    assert su["per_head"] == [1.0, 1.0]
    cmp = D.compare_entropy(onehot, uniform, vis)
    assert cmp["mean_delta"] == -1.0 and cmp["flags"]
    assert not D.compare_entropy(uniform, uniform, vis)["flags"]


def test_attention_maps_unsupported_and_pictures(tmp_path):
    def no_masks(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None:
            raise NotImplementedError("no masks")
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=is_causal,
                                                                scale=scale, enable_gqa=enable_gqa)

    maps = D.attention_maps(no_masks)
    by = {m["key"]: m for m in maps}
    assert by["causal"]["unsupported"] is None and by["causal"]["leaked"] == 0
    assert by["padding"]["unsupported"] and by["padding"]["implementation"] is None
    assert by["padding"]["reference"] is not None and by["padding"]["mask"][0][:6] == [1] * 5 + [0]
    for m in maps:
        assert m["which"] == ("batch 0, head 1" if m["key"] == "gqa" else "batch 0, head 0")
        assert m["title"] and m["case"].startswith("Case(")
    assert D.plot_maps(maps, tmp_path / "m.png") == tmp_path / "m.png"
    d = D.diagnose("sdpa")
    assert D.plot_entropy(d["entropy"], tmp_path / "e.png") == tmp_path / "e.png"
    for f in ("m.png", "e.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gqa_map_shows_a_tiled_head_mapping():
    """The GQA map shows a query head whose kv head differs between h // (H // Hkv) and the tiled
    h % Hkv, and carries its max |difference| from the reference into the report and the HTML."""
    sys.path.insert(0, str(ROOT))
    from fixtures import planted

    tiled = {m["key"]: m for m in D.attention_maps(planted.gqa_tiled)}["gqa"]
    good = {m["key"]: m for m in D.attention_maps("sdpa")}["gqa"]
    assert tiled["which"] == good["which"] == "batch 0, head 1"
    assert tiled["max_abs_diff"] > 0.05 and good["max_abs_diff"] < 1e-6
    ref, imp = (torch.tensor(tiled[k], dtype=torch.float64) for k in ("reference", "implementation"))
    assert (imp - ref).abs().max() > 0.05  # the shown grids differ, not only unseen heads
    diag = _result("test_attention_maps_and_entropy", suite="diagnostics", tier="info",
                   worst={"diagnostics": {"dtype": "float32", "caveat": D.CAVEAT, "maps": [tiled, good]}})
    html = html_report.render(_report([_impl("gqa_tiled", [diag])]), None)
    parse(html)
    assert html.count("max |diff| vs reference") == 2
    assert f"<span class=\"flag\">max |diff| vs reference {tiled['max_abs_diff']:.3g}</span>" in html


def test_ablation_shows_inactive_heads_and_low_end():
    ranking = [{"layer": i // 4, "head": i % 4, "impact": round(0.5 - 0.04 * i, 3), "entropy": 1.0}
               for i in range(12)]
    ab = {"layers": 3, "heads": 4, "metric": "mean |change of pair cosine|", "threshold": 0.1,
          "impact": [[x["impact"] for x in ranking[r * 4:(r + 1) * 4]] for r in range(3)],
          "ranking": ranking, "inactive": [{"layer": 2, "head": 3}, {"layer": 0, "head": 1}],
          "caveat": "Attention weights and single-head ablations are evidence, not a full explanation: " + HOSTILE}
    res = _result("test_head_ablation", suite="model", tier="info", worst={"ablation": ab})
    html = html_report.render(_report([_impl("m", [res])]), None)
    page = parse(html)
    text = " ".join(page.text)
    assert "Inactive or redundant heads" in text and "layer 2 head 3, layer 0 head 1" in text
    assert "Least important heads" in text
    low = html[html.index("Least important heads"):]
    assert "<td>0.1</td>" in low and "<td>0.06</td>" in low  # ranks 11 and 12, beyond the top-10 table
    assert "<td>0.06</td>" not in html[html.index("Most important heads"):html.index("Least important heads")]
    assert "evidence, not a full explanation" in text and HOSTILE not in html
    ab["inactive"] = []
    assert "Inactive or redundant heads (impact &lt; 0.1): none." in html_report.render(
        _report([_impl("m", [res])]), None)


def test_causes_lead_every_summary():
    """report.md, report.html, JUnit and the step summary open with the causes (stored in the
    report, computed by harness.triage where results are assembled), and link every failure."""
    from harness.triage import triage

    def res(prop, msg, mask, L):
        return {"suite": "padding" if "padding" in prop else "correctness", "property": prop, "tier": "gate",
                "dtype": "float32", "device": "cpu", "status": "fail", "cases": 1, "message": msg,
                "repro": f"attn-harness check --property {prop}", "seed": 1, "duration_s": 0.1,
                "counterexample": {"B": 1, "H": 1, "L": L, "S": L, "E": 16, "mask": mask, "mask_shape": "B11S"},
                "counterexample_text": f"B=1 H=1 L={L}"}
    results = [res("test_matches_reference", "ratio 3.1x over the bound", "float", 5),
               res("test_padding_weights_zero", "3 padded (query, key) pairs get weight", "bool", 2),
               {**res("test_base_case", "", "none", 4), "status": "pass", "repro": ""}]
    rep = R.new_report({"device": "cpu", "dtypes": ["float32"]})
    rep["implementations"] = [{"name": "k", "spec": "k.py:k", "verdict": "fail", "description": "", "capabilities": {},
                               "duration_s": 1.0, "results": results, "causes": triage(results)}]
    from harness.report.model import validate

    validate(json.loads(json.dumps(rep)))
    md = R.to_markdown(rep)
    assert md.index("## Causes") < md.index("| property") < md.index("## Failures")
    assert "1. ignores attn_mask (bool and float masks)" in md and "padding::test_padding_weights_zero [float32]" in md
    html = html_report.render(rep, None)
    top = html[html.index("<h2>Causes</h2>"):html.index("<h2>Comparison matrix</h2>")]
    assert "ignores attn_mask" in top and top.count('href="#fail-0-') == 2
    junit = R.to_junit(rep)
    assert 'message="cause: ignores attn_mask (bool and float masks)' in junit
    # A report without causes (by hand, or from an older version) renders as before.
    rep["implementations"][0].pop("causes")
    assert "## Causes" not in R.to_markdown(rep) and "<h2>Causes</h2>" not in html_report.render(rep, None)


def test_long_kernel_errors_keep_first_and_last_lines():
    from harness.outcomes import trim as _trim

    text = "\n".join(f"line {i}" for i in range(200))
    out = _trim(text).splitlines()
    assert out[0] == "line 0" and out[-1] == "line 199" and len(out) == 17 and "more lines" in out[8]
    assert _trim("short\nmessage") == "short\nmessage"


def test_pictures_leave_the_matplotlib_backend_alone():
    """A notebook or GUI session that renders a report keeps its backend: no pyplot, no use()."""
    code = ("import io, sys, matplotlib\n"
            "before = matplotlib.get_backend()\n"
            "from harness import diagnostics as D\n"
            "stats = {'implementation': {'hist': [0.5, 0.5] + [0.0] * 18, 'mean': 0.5},\n"
            "         'reference': {'hist': [0.5, 0.5] + [0.0] * 18, 'mean': 0.5}, 'flags': []}\n"
            "buf = io.BytesIO(); D.plot_entropy(stats, buf)\n"
            "assert buf.getvalue()[:4] == b'\\x89PNG'\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "assert matplotlib.get_backend() == before\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "MPLBACKEND": "svg"})
    assert r.returncode == 0, r.stderr[-2000:]
