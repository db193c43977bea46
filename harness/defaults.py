"""Defaults shared by the CLI, the pytest plugin and the in-process API.

They live in the top-level :mod:`attention_harness_defaults`, which imports nothing, so that the
pytest entry point can read them without importing this package; this module is their name
inside the package."""

from attention_harness_defaults import (BACKWARD_FACTOR, CALL_TIMEOUT_S, DEFAULT_PROFILE,  # noqa: F401
                                        DEFAULT_SEED, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
                                        FORWARD_FACTOR, HOST_DTYPES, IMPL_TIMEOUT_S, PROFILES, SUITE_PLUGIN_NAME)
LOAD_TIMEOUT_S = 60.0  # importing one implementation's module (attn-harness check --load-timeout)
