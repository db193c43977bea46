"""The property suites, shipped as ``harness.suites``. Run them with
``pytest --pyargs harness.suites --impl SPEC`` or ``attn-harness check --impl SPEC``."""
