"""``attn-harness check`` and ``attn-harness list``: run the property suites through the runner and
write the report; list what can be checked here."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.cli.usage import usage_error
from harness.defaults import (BACKWARD_FACTOR, CALL_TIMEOUT_S, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
                              FORWARD_FACTOR, IMPL_TIMEOUT_S, LOAD_TIMEOUT_S)


class Progress:
    """A live bar on a terminal, plain lines elsewhere (CI logs)."""

    def __init__(self, stream=sys.stderr, force_plain=False):
        self.s = stream
        self.tty = stream.isatty() and os.environ.get("TERM") != "dumb" and not force_plain
        self.reset("", 0, 0)

    def reset(self, impl, index, total_impls):
        self.impl, self.index, self.total_impls = impl, index, total_impls
        self.total = self.done = 0
        self.counts: dict = {}
        self.suite = None
        self.t0 = time.time()

    def __call__(self, ev: dict):
        if "collected" in ev:
            self.total = ev["collected"]
            return
        self.done += 1
        self.counts[ev["status"]] = self.counts.get(ev["status"], 0) + 1
        if self.tty:
            n = 24
            fill = int(n * self.done / self.total) if self.total else 0
            c = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            self.s.write(f"\r\x1b[K[{self.index}/{self.total_impls}] {self.impl} {'#' * fill}{'.' * (n - fill)} "
                         f"{self.done}/{self.total or '?'} {ev['suite']}::{ev['property']} | {c}")
            self.s.flush()
        elif ev["status"] == "not_run":
            pass  # recorded without running: the finish line counts them
        elif ev["suite"] != self.suite:
            self.suite = ev["suite"]
            self.s.write(f"[{self.index}/{self.total_impls}] {self.impl}: {ev['suite']} "
                         f"({self.done}/{self.total or '?'} properties so far, {time.time() - self.t0:.0f} s)\n")
            self.s.flush()
        if ev["status"] in ("fail", "error") and not self.tty:
            note = "" if ev.get("enforced", True) else f" ({ev.get('tier')} tier, reported only)"
            self.s.write(f"    {ev['status']}: {ev['suite']}::{ev['property']} [{ev['dtype']}]{note}\n")

    def finish(self, verdict: str, duration: float, results=None, strict=False):
        from harness.accounting import headline

        if results is not None:  # the final results: not-run properties and reported findings counted apart
            line = headline(verdict, results, strict)
        else:
            line = f"{verdict.upper()} (" + ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items())) + ")"
        if self.tty:
            self.s.write("\r\x1b[K")
        self.s.write(f"[{self.index}/{self.total_impls}] {self.impl}: {line} in {duration:.1f} s\n")
        self.s.flush()


def cmd_list(args) -> int:
    from tabulate import tabulate

    from harness import builtins
    from harness.runner import available_suites, default_suites

    rows = [(n, "yes" if ok else "no", why) for n, ok, why in builtins.available()]
    print(tabulate(rows, headers=["built-in", "available", "description / why not"]))
    print()
    from harness.runner import FLASH_SUITES

    def mark(s):
        return "" if s in default_suites() else " (flash_attn kernels)" if s in FLASH_SUITES else " (opt-in)"

    print("suites: " + ", ".join(s + mark(s) for s in available_suites()))
    return EXIT_OK


def cmd_check(args) -> int:
    from harness.runner import CheckOptions, available_suites

    if not args.impl:
        return usage_error("give at least one --impl SPEC (see `attn-harness list`)")
    from harness.contract import with_api

    args.impl = [with_api(s, args.api) for s in args.impl]
    from harness.cli.spec_check import check_all

    check_all(args)  # before any process starts or torch is imported
    dtypes = [d.strip() for d in args.dtype.split(",")] if args.dtype else None
    from harness.contract import ALL_DTYPES

    for d in dtypes or []:
        if d not in ALL_DTYPES:
            return usage_error(f"unknown dtype {d!r} (known: {', '.join(ALL_DTYPES)})")
    from harness import certify as C

    bad = C.unknown(args.certify or [])
    if bad:
        return usage_error(f"unknown --certify {bad[0]!r} (known: {', '.join(C.TIERS_CERTIFIED)})")
    if args.reruns is not None and args.reruns < 2:
        return usage_error("--reruns needs at least 2 calls to compare")
    for s in args.suite or []:
        if s not in available_suites():
            return usage_error(f"unknown suite {s!r} (known: {', '.join(available_suites())})")
    from harness.runner import property_names

    known = property_names(args.suite)
    for prop in args.property or []:
        # --property is a pytest -k expression; a plain name must match some property, or the
        # run would certify nothing and look like a failing kernel.
        words = prop.replace("(", " ").replace(")", " ").split()
        if any(w in ("and", "or", "not") for w in words):
            continue
        if not any(prop in k for k in known):
            return usage_error(f"unknown property {prop!r} in suites {', '.join(args.suite or ['(default)'])} "
                                f"(known: {', '.join(sorted(set(known)))})")
    if args.forbid_ops:
        from harness.integrity import pattern_warnings

        for line in pattern_warnings(args.forbid_ops.split(",")):
            sys.stderr.write(f"attn-harness: warning: {line}\n")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return usage_error("--device cuda, but CUDA is not available on this machine")
    from harness import launcher as L
    from harness.runner import suite_environment

    # Started before the implementations are loaded: the server imports torch on one core while
    # this process imports it (to load them) on the other.
    server = L.start(suite_environment(CheckOptions(specs=[], triton_interpret=args.triton_interpret)), args.device)
    try:
        return _check(args, dtypes, server)
    finally:
        if server is not None:
            server.close()


def _check(args, dtypes, server) -> int:
    from harness import report as R
    from harness.report import writer as report_writer
    from harness import certify as C
    from harness.runner import CheckOptions, default_suites, run_one, shard_count

    from harness.cli.loaded import load_or_report

    try:
        impls, load_failed = load_or_report(args, dtypes, server)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if not impls:
        return EXIT_USAGE
    report_dir = Path(args.report_dir or Path("reports") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    opts = CheckOptions(specs=list(args.impl), device=args.device, dtypes=dtypes, profile=args.profile,
                        suites=args.suite, certify=tuple(args.certify or ()),
                        properties=args.property, reruns=args.reruns, strict=args.strict, seed=args.seed,
                        case=args.case, example=args.example, call_timeout=args.call_timeout, impl_timeout=args.impl_timeout,
                        forward_factor=args.forward_factor, backward_factor=args.backward_factor,
                        forbid_ops=[p.strip() for p in (args.forbid_ops or "").split(",") if p.strip()],
                        triton_interpret=args.triton_interpret, show_kernel_output=args.show_kernel_output,
                        shards=shard_count(args.shards, args.device, min(args.jobs, len(impls))))
    from harness.defaults import DEFAULT_SEED

    from harness.contract import ALL_DTYPES as _host

    declared = [d for d in _host if any(d in i.capabilities.dtypes for i in impls)] or ["float32"]
    options = {"device": args.device, "dtypes": dtypes or declared, "dtypes_from": "option" if dtypes else "declared",
               "profile": args.profile, "suites": args.suite or "default", "properties": args.property,
               "strict": args.strict, "seed": args.seed if args.seed is not None else DEFAULT_SEED,
               "forward_factor": args.forward_factor, "backward_factor": args.backward_factor,
               "forbid_ops": opts.forbid_ops, "triton_interpret": bool(args.triton_interpret),
               "certify": list(args.certify or []), "reruns": args.reruns}
    rep = R.new_report(options, ["attn-harness"] + sys.argv[1:], args.device)
    finished: dict = {}
    lock = threading.Lock()
    paths: dict = {}

    def one(n, impl):
        progress = Progress(force_plain=args.jobs > 1)
        progress.reset(impl.name, n, len(impls))
        log = report_dir / "logs" / f"{n:02d}-{_safe(impl.name)}.txt"
        from harness.cli.loaded import run_loaded

        res = run_loaded(opts, impl, log, progress, server)
        entry = _implementation_entry(impl, res, args, options, log)
        with lock:
            finished[n] = entry
            rep["implementations"] = [finished[i] for i in sorted(finished)]
            paths.update(report_writer.write_all(rep, report_dir, args.junit))
        progress.finish(entry["verdict"], res["duration_s"], entry["results"], args.strict)
        from harness.report import cause_lines

        for line in cause_lines(entry, limit=300, most=8):  # what to fix first; every failure is in the report
            sys.stderr.write(f"    {line}\n")
        if entry["causes"] and entry["causes"][0].get("repro"):
            sys.stderr.write(f"    reproduce cause 1: {entry['causes'][0]['repro']}\n")
        if entry["verdict"] == "unsupported":
            sys.stderr.write(f"    {impl.name}: no gate property could run within its declared capabilities "
                             f"(device {args.device}, dtypes {','.join(options['dtypes'])}): nothing was certified\n")
        return entry["verdict"]

    try:
        if args.jobs > 1:
            with ThreadPoolExecutor(max_workers=args.jobs) as ex:
                verdicts = list(ex.map(lambda a: one(*a), enumerate(impls, 1)))
        else:
            verdicts = [one(n, impl) for n, impl in enumerate(impls, 1)]
    except KeyboardInterrupt:
        sys.stderr.write(f"\ninterrupted: the report keeps the {len(finished)} finished "
                         f"implementation(s) in {report_dir}\n")
        return EXIT_INTERRUPTED
    overall = EXIT_USAGE if load_failed else EXIT_OK if all(v == "pass" for v in verdicts) else EXIT_FAIL
    note = C.closing_note(rep["implementations"])
    if note:
        sys.stderr.write(note + "\n")
    summary = report_writer.append_step_summary(rep)
    if summary:
        sys.stderr.write(f"appended the matrix to {summary} (GITHUB_STEP_SUMMARY)\n")
    if args.print_summary:
        from harness.report import matrix_rows
        from tabulate import tabulate

        headers, rows = matrix_rows(rep)
        print(tabulate(rows, headers=headers))
    for k, p in paths.items():  # last on stdout, one per line: `... | tail -1` is a report's path
        print(p)
    sys.stdout.flush()
    return overall


def _implementation_entry(impl, res, args, options, log) -> dict:
    results = res["results"]
    base = {"suite": "harness", "property": "run", "tier": "gate", "dtype": "-", "device": args.device,
            "impl": impl.spec, "status": "error", "cases": 0, "worst": {}, "counterexample": None,
            "seed": options["seed"], "duration_s": res["duration_s"], "doc": "the implementation's test process"}
    if res["problem"] and not res.get("problem_recorded"):
        results.append({**base, "message": res["problem"], "repro": f"attn-harness check --impl {impl.spec}"})
    if not results:
        last = (res["log"].strip().splitlines() or ["(no output)"])[-1]
        results.append({**base, "message": f"no results: {last}", "repro": ""})
    from harness import certify as C
    from harness.runner import verdict

    results, certificates = C.split(results, args.certify or [])
    fp = next((r["worst"].get("fingerprint") for r in results
               if r["property"] == "test_fingerprint" and r.get("worst")), None)
    from harness.triage import triage

    return {"name": impl.name, "spec": impl.spec,
            "verdict": C.verdict(verdict(results, args.strict) if results else "unsupported", results, certificates),
            **({"diagnosis": impl.diagnosis} if getattr(impl, "diagnosis", None) else {}),
            "description": impl.description, "capabilities": impl.capabilities.to_dict(), "fingerprint": fp,
            "duration_s": res["duration_s"], "log": str(log), "problem": res["problem"], "results": results,
            "certificates": certificates,
            "causes": triage(results + [c for c in certificates if c.get("enforced")], args.strict)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def register(sub) -> None:
    import argparse

    c = sub.add_parser(
        "check", help="run the property suites against implementations and write a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Run the property suites (correctness, leakage, isolation, stability, ...) against each --impl and "
                     "write report.json, report.md and report.html. Each implementation is loaded in a child process "
                     "(--load-timeout) and runs in its own test processes, so a kernel that hangs or crashes costs "
                     "only its own results. Progress goes to stderr; the paths of the written reports go to stdout, "
                     "one per line."),
        epilog=("exit status:\n"
                "  0    every enforced property of every implementation passed\n"
                "  1    an enforced property failed or errored, or an implementation could not be certified\n"
                "  2    usage error, or an implementation did not load (the others still run)\n"
                "  130  interrupted (the report keeps the finished implementations)\n\n"
                "example: attn-harness check --impl ./my_attn.py:attn --profile quick"))
    c.add_argument("--impl", action="append", default=[], metavar="SPEC",
                   help="built-in name, path/to/file.py:function or package.module:function (repeatable)")
    c.add_argument("--api", default="sdpa", choices=("sdpa", "flash_attn"),
                   help="the call convention the kernels are written to: torch SDPA's (default) or flash-attn 2.x's "
                        "flash_attn_func / flash_attn_varlen_func / flash_attn_with_kvcache, read from the "
                        "parameters (same as SPEC@flash_attn)")
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the inputs are made and the kernel runs (default cpu)")
    c.add_argument("--dtype", default=None, metavar="LIST",
                   help="comma-separated, e.g. float32,bfloat16 (default: every dtype the implementation "
                        "declares among float32, bfloat16, float16)")
    c.add_argument("--profile", default="default", choices=("quick", "default", "thorough"),
                   help="quick (about 7 s per implementation, three dtypes, 2 CPU cores), default (about 15 s), "
                        "thorough (nightly)")
    c.add_argument("--suite", action="append", default=None, metavar="NAME",
                   help="run only this suite (repeatable; see `attn-harness list`)")
    c.add_argument("--property", action="append", default=None, metavar="NAME",
                   help="run only properties whose test name matches (pytest -k expression)")
    c.add_argument("--strict", action="store_true", help="strict-tier properties fail the gate too")
    c.add_argument("--seed", type=int, default=None, help="hypothesis seed (default fixed; printed with failures)")
    c.add_argument("--case", default=None, metavar="REPR", help="replay exactly this Case(...) (from a repro command)")
    c.add_argument("--example", default=None, metavar="JSON",
                   help="with --case: the counterexample's other drawn arguments (from a repro command)")
    c.add_argument("--report-dir", default=None, metavar="DIR", help="default reports/<timestamp>/")
    c.add_argument("--junit", default=None, metavar="FILE", help="also write JUnit XML here")
    c.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT_S,
                   help=f"seconds one kernel call may take (default {CALL_TIMEOUT_S:g})")
    c.add_argument("--impl-timeout", type=float, default=IMPL_TIMEOUT_S,
                   help=f"seconds one implementation's whole run may take (default {IMPL_TIMEOUT_S:g})")
    c.add_argument("--load-timeout", type=float, default=LOAD_TIMEOUT_S,
                   help=f"seconds importing one implementation's module may take (default {LOAD_TIMEOUT_S:g}); "
                        "past it the spec is a load error")
    c.add_argument("--forward-factor", type=float, default=FORWARD_FACTOR,
                   help=f"forward error bound factor (default {FORWARD_FACTOR:g})")
    c.add_argument("--backward-factor", type=float, default=BACKWARD_FACTOR,
                   help=f"gradient error bound factor (default {BACKWARD_FACTOR:g})")
    c.add_argument("--forbid-ops", default=None, metavar="PATTERNS",
                   help="comma-separated aten op patterns (fnmatch, e.g. 'aten::_scaled_dot_product*'; a pattern "
                        "without a namespace also matches base names: 'scaled_dot_product*') the kernel must not "
                        "call: a match fails integrity::test_op_trace")
    c.add_argument("--certify", action="append", default=None, metavar="TIER",
                   help="also run and gate on a certificate tier: invariance (bitwise batch, split and "
                        "run-to-run invariance, where the kernel declares them)")
    c.add_argument("--reruns", type=int, default=None, metavar="N",
                   help="repeated calls of the run-to-run determinism certificate (default 100)")
    c.add_argument("--triton-interpret", action="store_true",
                   help="run Triton kernels through Triton's CPU interpreter (sets TRITON_INTERPRET=1)")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N implementations in parallel processes (default 1)")
    c.add_argument("--shards", type=int, default=0, metavar="N",
                   help="split one implementation's suites over N processes run at once (default: 2 on a CPU "
                        "run with a core to spare per implementation, else 1)")
    c.add_argument("--print-summary", action="store_true", help="also print the comparison matrix to stdout")
    c.add_argument("--traceback", action="store_true", help="show tracebacks for loading errors")
    c.add_argument("--show-kernel-output", action="store_true",
                   help="let what the kernel prints through to stderr (each line after a bar), as pytest's --capture=no; "
                        "by default it is kept in the implementation's log only")
    c.set_defaults(func=cmd_check)

    l = sub.add_parser("list", help="built-in implementations (and whether they run here) and suites")
    l.set_defaults(func=cmd_list)
