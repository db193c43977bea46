"""The defaults every part of attention-harness shares: the pytest entry point
(:mod:`attention_harness_plugin`), the CLI, the suites and the in-process API.

A top-level module that imports nothing: the entry point reads it in every pytest run on a
machine where attention-harness is installed, before it knows whether the run is ours, and it
must not import the ``harness`` package (a project with a ``harness`` package of its own would
shadow it). :mod:`harness.defaults` re-exports these names; inside the package import them from
there.
"""

PROFILES = {
    # hypothesis examples per property (times the per-test weight) and the sizes used.
    "quick": 8,
    "default": 25,
    "thorough": 150,
}
DEFAULT_PROFILE = "default"
DEFAULT_SEED = 20261127
# The FlashAttention rule: the kernel's error may be this many times a plain same-dtype computation's.
FORWARD_FACTOR = 2.0
BACKWARD_FACTOR = 3.0
CALL_TIMEOUT_S = 30.0
# Without --dtype each implementation runs in every dtype it declares among these.
HOST_DTYPES = {"cpu": ("float32", "bfloat16", "float16"), "cuda": ("float32", "bfloat16", "float16")}
IMPL_TIMEOUT_S = 1800.0
# Every command: 0 passed, 1 a property failed / a regression / a slowdown, 2 usage or loading
# error (an unreadable report included), 130 interrupted (the shell's code for SIGINT).
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SUITE_PLUGIN_NAME = "attention_harness_suites"
