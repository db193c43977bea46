"""Moved to :mod:`harness.report.model`. This alias keeps ``harness.report_model`` importable for one
version; import the new path."""

import warnings

from harness.report.model import *  # noqa: F401,F403

warnings.warn("harness.report_model moved to harness.report.model; the old path goes in the next version",
              DeprecationWarning, stacklevel=2)
