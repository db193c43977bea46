"""Moved to :mod:`harness.report.writer`. This alias keeps ``harness.report_writer`` importable for one
version; import the new path."""

import warnings

from harness.report.writer import *  # noqa: F401,F403

warnings.warn("harness.report_writer moved to harness.report.writer; the old path goes in the next version",
              DeprecationWarning, stacklevel=2)
