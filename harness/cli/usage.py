"""The one way a subcommand reports a usage or loading error: a line on stderr, exit status 2."""

from __future__ import annotations

import sys
from typing import Optional

from harness.defaults import EXIT_USAGE


def usage_error(msg: str, command: Optional[str] = None) -> int:
    prog = "attn-harness" + (f" {command}" if command else "")
    sys.stderr.write(f"{prog}: error: {msg}\n")
    return EXIT_USAGE


class UsageError(Exception):
    """Raised inside a subcommand; :func:`harness.cli.main` turns it into :func:`usage_error`."""

    def __init__(self, msg: str, command: Optional[str] = None):
        super().__init__(msg)
        self.command = command


def load_specs(specs: list, traceback: bool = False, command: Optional[str] = None) -> list:
    """The implementations ``specs`` name; a spec that does not load is a usage error (with
    ``--traceback``, the original exception)."""
    from harness.contract import LoadError
    from harness.loading import load_all

    try:
        return load_all(specs)
    except LoadError as e:
        if traceback:
            raise
        raise UsageError(str(e), command) from e
