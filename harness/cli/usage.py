"""The one way a subcommand reports a usage or loading error: a line on stderr, exit status 2."""

from __future__ import annotations

import sys
from typing import Optional

from harness.defaults import EXIT_USAGE


def usage_error(msg: str, command: Optional[str] = None) -> int:
    prog = "attn-harness" + (f" {command}" if command else "")
    sys.stderr.write(f"{prog}: error: {msg}\n")
    return EXIT_USAGE
