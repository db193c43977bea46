"""Root conftest for the harness's own tests (``python -m pytest`` runs ``tests/``).

The property suites are not collected from here: they run against an implementation through the
installed plugin (``pytest --pyargs harness.suites --impl SPEC`` or ``attn-harness check``), and
the self-tests drive them that way, as users do.
"""

collect_ignore = ["suites", "fixtures", "reports", "build", "docs"]
