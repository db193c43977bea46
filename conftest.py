"""Root conftest for the harness's own tests (``python -m pytest`` runs ``tests/``).

The property suites are not collected from here: they run against an implementation through the
installed plugin (``pytest --pyargs harness.suites --impl SPEC`` or ``attn-harness check``), and
the self-tests drive them that way, as users do.
"""

collect_ignore = ["suites", "fixtures", "reports", "build", "docs"]

import os

# Every report the self-tests write (in this process or in the CLI subprocesses they start) is
# validated against the shipped JSON Schema (harness/report/report.schema.json) as it is written.
os.environ.setdefault("ATTN_HARNESS_VALIDATE_REPORTS", "1")
