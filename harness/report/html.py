"""``report.html``: one self-contained page people want to look at.

Rendered from ``report.json`` alone (reports compute nothing new): the comparison matrix coloured
by status, fingerprints side by side, every failure with its smallest counterexample and
reproduction command, attention maps and entropy dashboards from the diagnostics suite, model
head-ablation heatmaps, throughput tables, the unsupported list and the environment. Pictures are
PNGs embedded as base64 data URIs.

What each section shows is prepared as plain data in :mod:`harness.report.html_sections`; the
markup lives in the jinja2 templates of ``harness/report/templates/`` (``base.html`` the page and
its CSS, ``report.html`` the sections in order, ``macros.html`` tables, one template per section),
rendered with autoescaping, so every string that comes from a report is escaped by the template.
The only markup marked safe in Python is what these templates rendered themselves (a section's
body placed into the page) and the ``body``/``raw`` arguments of :func:`page` and :func:`table`,
whose callers built that HTML. A section that cannot be drawn says so instead of breaking the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jinja2
import markupsafe

from harness.report import certificates
from harness.report import html_sections as S
from harness.report.html_causes import causes
from harness.report.html_sections import ABLATION_CAVEAT, STATUS_COLOURS

__all__ = ["ABLATION_CAVEAT", "STATUS_COLOURS", "environment", "esc", "page", "render", "table"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

# (title, template, data) in page order; the header has no title.
SECTIONS = [("Causes", "causes.html", causes),
            ("Comparison matrix", "matrix.html", S.matrix),
            ("Strict-tier findings", "strict_notes.html", S.strict_notes),
            ("Semantic fingerprints", "fingerprints.html", S.fingerprints),
            ("Failures", "failures.html", S.failures),
            ("Invariance certificates", "certificates.html", certificates.html_section),
            ("Integrity", "integrity.html", S.integrity),
            ("Throughput", "throughput.html", S.throughput),
            ("Attention maps and entropy", "diagnostics.html", S.diagnostics),
            ("Head ablation", "ablations.html", S.ablations),
            ("Not run (the run stopped early)", "not_run.html", S.not_run),
            ("Unsupported (declared capabilities)", "unsupported.html", S.unsupported),
            ("Environment", "environment.html", S.environment)]

_ENV: Optional[jinja2.Environment] = None


def environment() -> jinja2.Environment:
    """The one jinja2 environment (built on first use): autoescaping on for every template, None
    shown as nothing, and an undefined name an error (a section then says it could not render)
    rather than a silently blank cell."""
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                  finalize=lambda x: "" if x is None else x)
        _ENV.globals["colours"] = STATUS_COLOURS
    return _ENV


def esc(x) -> str:
    """HTML-escape anything (None -> empty), as the templates' autoescaping does."""
    return "" if x is None else str(markupsafe.escape(str(x)))


def page(title: str, body: str) -> str:
    """A whole page around ``body``, HTML its caller built (and escaped) itself: compare.py's."""
    return environment().get_template("base.html").render(title=title, body=markupsafe.Markup(body))


def table(headers: list, rows: list, raw: bool = False, cls: Optional[list] = None) -> str:
    """A table as an HTML string; cells escaped unless ``raw`` (then the caller escaped them, and a
    cell may be an (html, style) pair). Returns plain ``str`` so callers can concatenate it."""
    def own(x):
        return markupsafe.Markup(x) if raw else ("" if x is None else str(x))

    def one(c):
        if raw and isinstance(c, tuple):
            return {**S.cell(None), "text": own(c[0]), "style": str(c[1])}
        return {**S.cell(None), "text": own(c)}

    t = {"headers": [own(h) for h in headers], "rows": [[one(c) for c in row] for row in rows]}
    return str(environment().get_template("macros.html").module.table(t))


def _render(template: str, ctx: dict) -> markupsafe.Markup:
    # Safe by construction: the output of one of our autoescaping templates.
    return markupsafe.Markup(environment().get_template(template).render(**ctx))


def _section(title: Optional[str], template: str, prepare, report: dict) -> Optional[dict]:
    """One section for the page: its body, or the error that stopped it (shown, never raised);
    None when it has nothing to show."""
    try:
        ctx = prepare(report)
        if ctx is None:
            return None
        body = _render(template, ctx)
    except Exception as e:  # noqa: BLE001 - the page must render whatever the report holds
        return {"title": title, "body": None, "error": f"{type(e).__name__}: {e}"}
    return {"title": title, "body": body, "error": None} if body.strip() else None


def render(report: dict, report_dir=None) -> str:
    """The whole page as a string (``report_dir`` is accepted for the writer's signature; the page
    is self-contained and writes nothing there). A section that fails shows its error; a failure
    of the page itself raises, and :func:`harness.report.writer.write_all` reports it."""
    header = _section(None, "header.html", S.header, report)
    sections = [s for s in (_section(t, tpl, fn, report) for t, tpl, fn in SECTIONS) if s]
    return environment().get_template("report.html").render(title="attention-harness report",
                                                            header=header, sections=sections)
