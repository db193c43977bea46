"""Reports: what a check found, as data and as files. Nothing here computes a new judgement.

- :mod:`harness.report.results`: the report dict (``report.json``), loading it, and the summaries
  every renderer shares;
- :mod:`harness.report.model`: the typed schema of ``report.json`` (``python -m harness.report.model``
  rewrites ``report.schema.json``);
- renderers: :mod:`~harness.report.markdown`, :mod:`~harness.report.junit`, :mod:`~harness.report.html`;
- :mod:`harness.report.compare`: regressions between two reports, and merging several;
- :mod:`harness.report.writer`: writes every file of a run and says which renderer failed.

The names below are the ones ``from harness import report as R`` has always offered.
"""

from harness.report.junit import to_junit
from harness.report.markdown import to_markdown
from harness.report.results import (SCHEMA_VERSION, STATUS_ORDER, STRICT_NOTES, atomic_write, cause_lines, cause_of,
                                    cell, environment, integrity_rows, load, matrix_rows, new_report, property_keys,
                                    strict_notes)

__all__ = ["SCHEMA_VERSION", "STATUS_ORDER", "STRICT_NOTES", "atomic_write", "cause_lines", "cause_of", "cell",
           "environment", "integrity_rows", "load", "matrix_rows", "new_report", "property_keys", "strict_notes",
           "to_junit", "to_markdown"]
