"""Moved to :mod:`harness.report.compare`. This alias keeps ``harness.compare`` importable for one
version; import the new path."""

import warnings

from harness.report.compare import *  # noqa: F401,F403

warnings.warn("harness.compare moved to harness.report.compare; the old path goes in the next version",
              DeprecationWarning, stacklevel=2)
