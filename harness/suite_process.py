"""The suite process's entry point: ``python -m harness.suite_process PYTEST-ARGS`` is
``python -m pytest PYTEST-ARGS`` that leaves as soon as pytest is done.

With torch loaded, interpreter shutdown (tearing down every module, running atexit hooks) took
about 0.7 s per process on the 2-core machine, after the last result had already streamed back.
Nothing the runner reads is written then: results stream during the session and the session
finishes inside pytest."""

from __future__ import annotations

import os
import sys


def main() -> None:
    import pytest

    rc = pytest.console_main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the runner has stopped reading
            pass
    os._exit(int(rc))


if __name__ == "__main__":
    main()
