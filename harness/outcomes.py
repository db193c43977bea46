"""How a property's outcome becomes a result: its status (a kernel error or a broken property)
and the message the reports keep (a kernel's long compiler error or traceback trimmed, in full in
its log). Read by the harness half of the pytest plugin (:mod:`harness.suite_plugin`)."""

from __future__ import annotations


def unsatisfiable(excinfo) -> bool:
    from hypothesis.errors import Unsatisfiable

    return isinstance(excinfo.value, Unsatisfiable)


def exc_status(excinfo) -> str:
    from harness.probes import ImplementationError

    exc = excinfo.value
    excs = list(getattr(exc, "exceptions", [exc]))
    if any(isinstance(e, ImplementationError) for e in excs):
        return "error"
    if all(isinstance(e, AssertionError) for e in excs):
        return "fail"
    return "error"


def message(excinfo) -> str:
    exc = excinfo.value
    excs = list(getattr(exc, "exceptions", [exc]))
    lines = []
    from harness.probes import ImplementationError

    for e in excs:
        head = str(e).strip() or type(e).__name__
        if not isinstance(e, (AssertionError, ImplementationError)):
            head = f"{type(e).__name__}: {head}"  # an exception from the harness itself
        lines.append(trim(head))
    return "\n".join(lines)


MESSAGE_KEEP_LINES = 8


def trim(text: str, keep: int = MESSAGE_KEEP_LINES) -> str:
    """A compiler error or a long traceback from a kernel belongs in the log (pytest prints it
    there in full); the report keeps its first and last lines."""
    lines = text.splitlines()
    if len(lines) <= 2 * keep:
        return text
    return "\n".join(lines[:keep] + [f"... ({len(lines) - 2 * keep} more lines in the implementation's log) ..."]
                     + lines[-keep:])
