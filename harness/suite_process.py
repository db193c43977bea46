"""The suite process's entry point: ``python -m harness.suite_process PYTEST-ARGS`` is
``python -m pytest PYTEST-ARGS`` that leaves as soon as pytest is done.

With torch loaded, interpreter shutdown (tearing down every module, running atexit hooks) took
about 0.7 s per process on the 2-core machine, after the last result had already streamed back.
Nothing the runner reads is written then: results stream during the session and the session
finishes inside pytest."""

from __future__ import annotations

import os
import sys


def exit_without_shutdown(rc: int) -> None:
    """Flush stdout and stderr and leave at once with ``rc``: no module teardown, no atexit hooks.
    Only for a process whose files are all written and closed (also ``attn-harness`` itself)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the reader has stopped reading
            pass
    os._exit(int(rc))


def main() -> None:
    import pytest

    exit_without_shutdown(pytest.console_main())


if __name__ == "__main__":
    main()
