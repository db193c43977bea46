"""Moved to :mod:`harness.report.html`. This alias keeps ``harness.html_report`` importable for one
version; import the new path."""

import warnings

from harness.report.html import *  # noqa: F401,F403

warnings.warn("harness.html_report moved to harness.report.html; the old path goes in the next version",
              DeprecationWarning, stacklevel=2)
