"""Defaults shared by the CLI, the pytest plugin and the in-process API. Imports nothing heavy:
the pytest entry point reads it in every pytest run on the machine."""

# The plugin's option defaults live in the entry-point module, which must not import harness.
from attention_harness_plugin import (BACKWARD_FACTOR, CALL_TIMEOUT_S, DEFAULT_PROFILE,  # noqa: F401
                                      DEFAULT_SEED, FORWARD_FACTOR, PROFILES)

# Without --dtype each implementation runs in every dtype it declares among these.
HOST_DTYPES = {"cpu": ("float32", "bfloat16", "float16"), "cuda": ("float32", "bfloat16", "float16")}
IMPL_TIMEOUT_S = 1800.0
LOAD_TIMEOUT_S = 60.0  # importing one implementation's module (attn-harness check --load-timeout)
# Every command: 0 passed, 1 a property failed / a regression / a slowdown, 2 usage or loading
# error (an unreadable report included), 130 interrupted (the shell's code for SIGINT).
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SUITE_PLUGIN_NAME = "attention_harness_suites"
