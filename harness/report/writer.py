"""Writes a run's reports: report.json, report.md, report.html and JUnit. It sits above every
renderer (:mod:`harness.report.markdown`, :mod:`harness.report.junit`, :mod:`harness.report.html`), so no
renderer imports the writer and a rendering failure is reported, never swallowed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from harness.report import html as html_report
from harness.report import atomic_write, matrix_rows, to_junit, to_markdown


def write_all(report: dict, report_dir, junit: Optional[str] = None) -> dict:
    """Write report.json and report.md (and JUnit when asked); returns the paths."""
    d = Path(report_dir)
    paths = {"json": d / "report.json", "md": d / "report.md"}
    text = json.dumps(report, indent=1, default=str)
    if os.environ.get("ATTN_HARNESS_VALIDATE_REPORTS"):
        # Set by the harness's own tests: every report they write must match the shipped schema.
        from harness.report.model import validate

        validate(json.loads(text))
    atomic_write(paths["json"], text)
    atomic_write(paths["md"], to_markdown(report))
    if junit:
        paths["junit"] = Path(junit)
        atomic_write(junit, to_junit(report))
    try:
        html = html_report.render(report, d)
    except Exception as e:  # a rendering bug must not cost the JSON and Markdown, nor pass unseen
        sys.stderr.write(f"attn-harness: report.html was not written: {type(e).__name__}: {e}\n")
    else:
        paths["html"] = d / "report.html"
        atomic_write(paths["html"], html)
    return paths


def append_step_summary(report: dict) -> Optional[str]:
    """On GitHub Actions, append the causes and the Markdown matrix to the job's summary page."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    headers, rows = matrix_rows(report)
    from tabulate import tabulate

    from harness.report.markdown import md_causes

    causes = "\n".join(md_causes(report))
    with open(path, "a") as f:
        f.write("## attention-harness\n\n" + (causes + "\n" if causes else "")
                + tabulate(rows, headers=headers, tablefmt="github") + "\n\n")
    return path
