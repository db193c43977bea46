"""``attn-harness``: a thin command line over the same code path as the pytest suites.

One module per group of subcommands (check/list, bench, compare/merge, cost/kv-cache, ablate/integration);
each adds its parsers through ``register(subparsers)`` and reports usage errors with
:func:`harness.cli.usage.usage_error`. Domain modules hold no command-line code."""

from __future__ import annotations

import argparse
import importlib

from harness.cli.usage import UsageError, usage_error
from harness.defaults import EXIT_FAIL, EXIT_OK, EXIT_USAGE  # noqa: F401 (re-exported)
# Modules that add their own subcommands through register(subparsers).
SUBCOMMAND_MODULES = ("harness.cli.cost", "harness.cli.compare", "harness.cli.bench", "harness.cli.model")


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    p = argparse.ArgumentParser(prog="attn-harness", description=(
        "Correctness and leakage test harness for attention implementations. Exit status: 0 every gate "
        "property passed; 1 a gate property failed or errored; 2 usage or loading error."))
    p.add_argument("--version", action="version", version=f"attention-harness {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from harness.cli import check

    check.register(sub)
    for modname in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2 already
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        return usage_error(str(e), e.command)


def console_main() -> None:
    """The ``attn-harness`` script: :func:`main`, then an exit that skips interpreter shutdown.

    Tearing down torch's modules took about 0.5 s after the last report was written; everything
    this command writes is closed by then. ``main()`` itself returns, for callers in-process."""
    from harness.suite_process import exit_without_shutdown

    exit_without_shutdown(main())


if __name__ == "__main__":
    console_main()
