"""``check``'s side of :mod:`harness.preload`: load every spec in a child process, say in one line
each why one did not load (the others still run; the command then exits 2), and run a kernel that
cannot do the base case as one short process that records it and marks the rest not run."""

from __future__ import annotations

import dataclasses
import sys

from harness.cli.usage import usage_error


def _diagnose(spec: str, diagnosis: str) -> None:
    sys.stderr.write(f"{spec}: cannot run: {diagnosis}; stopped after the base case\n")
    sys.stderr.flush()


def load_or_report(args, dtypes, server=None) -> tuple:
    """(the loaded implementations, whether any spec failed to load)."""
    import threading

    from harness.cli.spec_check import static_signature_problem
    from harness.preload import load_isolated
    from harness.runner import CheckOptions, absolute_spec, suite_environment

    # A signature that cannot take the call is certain from the source: said before any import.
    told = set()
    for spec in args.impl:
        d = static_signature_problem(spec)
        if d:
            _diagnose(spec, d)
            told.add(spec)
    # The report needs torch here too (its environment): imported while the child loads.
    threading.Thread(target=lambda: __import__("torch"), daemon=True).start()
    env = suite_environment(CheckOptions(specs=[], triton_interpret=args.triton_interpret))
    echo = (lambda line: sys.stderr.write(f"    | {line}")) if (args.show_kernel_output or args.traceback) else None
    loaded = load_isolated([absolute_spec(s) for s in args.impl], device=args.device, dtypes=dtypes,
                           call_timeout=args.call_timeout, load_timeout=args.load_timeout, env=env, echo=echo,
                           traceback=args.traceback, launcher=server)
    impls, failed = [], False
    for spec, item in zip(args.impl, loaded):
        absolute = absolute_spec(spec)

        def as_typed(text: str) -> str:  # named as typed, not as the child (in another directory) saw it
            if absolute == spec:
                return text
            return text.replace(absolute, spec).replace(absolute.rsplit(":", 1)[0], spec.rsplit(":", 1)[0])

        if item.error:
            usage_error(as_typed(item.error))
            failed = True
            continue
        if item.diagnosis and spec not in told:
            _diagnose(spec, as_typed(item.diagnosis))
        impls.append(dataclasses.replace(item, spec=spec))
    names = [i.name for i in impls]
    for i in impls:  # two specs that load functions with the same name: told apart by their specs
        if names.count(i.name) > 1:
            i.name = i.spec
    return impls, failed


def run_loaded(opts, impl, log, progress, server) -> dict:
    """:func:`harness.runner.run_one` for a loaded spec; with a diagnosis, the short run."""
    from harness.runner import run_one

    if not impl.diagnosis:
        return run_one(opts, impl.spec, log, progress, server)
    stop = {"reason": impl.diagnosis, "base": impl.base_errors}
    res = run_one(dataclasses.replace(opts, stop_early=stop, shards=1), impl.spec, log, progress, server)
    if not any(r["status"] == "error" for r in res["results"]):
        # The base case was not selected: the run's own record carries the diagnosis and fails it.
        res["problem"] = res["problem"] or f"stopped after the base case: {impl.diagnosis}"
    return res
