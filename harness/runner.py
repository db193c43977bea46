"""Runs the property suites for a list of implementations and collects the results.

Each implementation runs in its own pytest process (through the pytest plugin :mod:`attention_harness_plugin`, the
same code path as ``pytest --pyargs harness.suites``), so a kernel that crashes the interpreter or
hangs inside C code costs its own results only; the report is rewritten after each one. Results
stream back as they happen, so a process killed midway keeps what it finished and names the
property it was running.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness.defaults import BACKWARD_FACTOR, CALL_TIMEOUT_S, FORWARD_FACTOR, IMPL_TIMEOUT_S
from harness.tiers import enforced

# Slow or needing extras: run only when named with --suite (invariance also with --certify invariance).
OPT_IN_SUITES = ("model", "throughput", "invariance")
# Suites only kernels in flash_attn's call convention can run: left out of an SDPA kernel's default run.
FLASH_SUITES = ("flash", "paged")


def suites_dir() -> Path:
    import harness.suites

    return Path(harness.suites.__file__).parent


def available_suites() -> list[str]:
    return sorted(p.stem[5:] for p in suites_dir().glob("test_*.py"))


def property_names(suites=None) -> list[str]:
    """The property (test function) names of the given suites (default: the default suites), read
    from the source without importing it."""
    import ast

    names = []
    for s in suites or default_suites("flash_attn"):  # every default suite of either convention
        path = suites_dir() / f"test_{s}.py"
        if path.exists():
            tree = ast.parse(path.read_text())
            names += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.name.startswith("test_")]
    return names


def default_suites(api: str = "sdpa") -> list[str]:
    """The suites a plain run gives an implementation of call convention ``api``."""
    skip = OPT_IN_SUITES + (FLASH_SUITES if api == "sdpa" else ())
    return [s for s in available_suites() if s not in skip]


def suites_for(opts: "CheckOptions", spec: str) -> list[str]:
    from harness.contract import split_api

    from harness.certify import suites_with

    plain = default_suites(split_api(spec)[1])
    return suites_with(opts.suites, opts.certify, plain) or plain


@dataclass
class CheckOptions:
    specs: list
    device: str = "cpu"
    dtypes: Optional[list] = None
    profile: str = "default"
    suites: Optional[list] = None
    properties: Optional[list] = None
    strict: bool = False
    seed: Optional[int] = None
    case: Optional[str] = None
    example: Optional[str] = None
    call_timeout: float = CALL_TIMEOUT_S
    impl_timeout: float = IMPL_TIMEOUT_S
    forward_factor: float = FORWARD_FACTOR
    backward_factor: float = BACKWARD_FACTOR
    forbid_ops: list = field(default_factory=list)
    triton_interpret: bool = False
    extra_pytest_args: list = field(default_factory=list)
    # Suite processes for one implementation, each running part of the suites. Every process
    # runs torch on one thread, so a second one uses a second core; 0 = auto (see shard_count).
    shards: int = 1
    reruns: Optional[int] = None  # the invariance suite's repeated calls (--reruns)
    certify: tuple = ()  # --certify: tiers added to the run (and the gate) beyond the default suites
    # From harness.preload: the kernel cannot run the base case ({"reason", "base": {dtype: message}}):
    # one process records it and runs nothing else.
    stop_early: Optional[dict] = None
    show_kernel_output: bool = False  # pytest -s, and the kernel's lines echoed to stderr as they come


def absolute_spec(spec: str) -> str:
    """A ``file.py:fn`` spec with an absolute path: the suite process runs in its own directory."""
    if ":" in spec:
        target, attr = spec.rsplit(":", 1)
        if (target.endswith(".py") or "/" in target or os.sep in target) and not os.path.isabs(target):
            return f"{os.path.abspath(target)}:{attr}"
    return spec


def suite_environment(opts: "CheckOptions") -> dict:
    """The suite process's environment: it must import the harness this process runs."""
    import harness

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The cases are small: one thread per process beats oversubscribed cores when --jobs > 1.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["ATTN_HARNESS_PACKAGE_DIR"] = os.path.dirname(os.path.abspath(harness.__file__))
    if opts.triton_interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def suite_entry() -> list:
    """How a suite process starts: pytest, minus interpreter shutdown (see :mod:`harness.suite_process`).
    What follows it in a command is pytest's own command line."""
    return [sys.executable, "-m", "harness.suite_process"]


def _pytest_command(opts: CheckOptions, spec: str) -> list:
    sd = suites_dir()
    suites = suites_for(opts, spec)
    files = [str(sd / f"test_{s}.py") for s in suites]
    cmd = [*suite_entry(), *files, "-p", "no:cacheprovider", "-q", "--no-header",
           "-rN", "--tb=short", "--attn-impl", absolute_spec(spec), "--attn-device", opts.device,
           "--attn-profile", opts.profile, "--attn-progress", "--attn-call-timeout", str(opts.call_timeout),
           "--attn-forward-factor", str(opts.forward_factor), "--attn-backward-factor", str(opts.backward_factor),
           "-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning",
           # No assertion rewriting: pytest rewrites every module of every pytest11 plugin's
           # distribution (all of hypothesis, all of harness) on import, and with
           # PYTHONDONTWRITEBYTECODE nothing is cached, so each suite process paid about 2 s for it.
           # The properties build their own failure messages; none relies on assert introspection.
           "--assert=plain",
           # pytest's unraisable-exception check collects garbage five times at exit, 0.7 s with
           # torch's heap; a kernel's unraisable exception (in a __del__) is not a property.
           "-p", "no:unraisableexception",
           # The suites live inside the installed package: don't let a project's own config
           # (rootdir, addopts, testpaths) change how they run.
           "-c", os.devnull, "--rootdir", str(sd)]
    if opts.dtypes:
        cmd += ["--attn-dtype", ",".join(opts.dtypes)]
    if opts.strict:
        cmd.append("--attn-strict")
    if opts.seed is not None:
        cmd += ["--attn-seed", str(opts.seed)]
    if opts.properties:
        cmd += ["-k", " or ".join(opts.properties)]
    if opts.case:
        cmd += ["--attn-case", opts.case]
    if opts.example:
        cmd += ["--attn-example", opts.example]
    if opts.forbid_ops:
        cmd += ["--attn-forbid-ops", ",".join(opts.forbid_ops)]
    if opts.reruns:
        cmd += ["--attn-reruns", str(opts.reruns)]
    if opts.stop_early:
        cmd += ["--attn-stop-early", json.dumps(opts.stop_early)]
    if opts.show_kernel_output:
        cmd.append("-s")
    return cmd + list(opts.extra_pytest_args)


CRASH_SIGNALS = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}
# Restarts after a crash, per suite process (per shard): a kernel that crashes on every property
# still ends in bounded time; what it never reached is recorded as not run (README: Restarts).
MAX_RESTARTS = 8


def _signal_problem(rc: int, timed_out: bool) -> str:
    sig = -rc
    if sig in CRASH_SIGNALS:
        return f"the test process crashed ({CRASH_SIGNALS[sig]}, signal {sig}): the kernel killed the interpreter"
    if sig == 15:
        return "the test process was terminated by SIGTERM from outside the harness (not a kernel crash)"
    if sig == 9 and not timed_out:
        return ("the test process was killed by SIGKILL from outside the harness (out of memory? "
                "the kernel may have allocated too much)")
    return f"the test process was killed by signal {sig}"


def _attempt(cmd: list, env: dict, deadline: float, log_lines: list, results: list,
             on_progress: Optional[Callable[[dict], None]], launcher=None, echo: bool = False) -> tuple:
    """One pytest process (forked by ``launcher``, a :class:`harness.launcher.ForkServer`, when
    given and alive, else started); streams results into ``results``. Returns (returncode,
    timed_out, the property in flight when it ended, the node ids it finished in order)."""
    import threading

    # Its own empty working directory: `python -m` puts the working directory first on
    # sys.path, and in a clone's root that is the checkout's harness/, not the installed one.
    workdir = tempfile.mkdtemp(prefix="attn-harness-")
    entry = suite_entry()
    proc = launcher.spawn(cmd[len(entry):], workdir) if launcher is not None and cmd[:len(entry)] == entry else None
    if proc is None:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1, cwd=workdir)
    timed_out: list = []

    def killer():
        timed_out.append(True)
        proc.kill()

    running: dict = {}
    done_ids: list = []
    timer = threading.Timer(max(0.0, deadline - time.time()), killer)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "HARNESS-PROGRESS " in line:
                before, payload = line.split("HARNESS-PROGRESS ", 1)
                if before.strip():
                    log_lines.append(before + "\n")
                try:
                    ev = json.loads(payload)
                except ValueError:
                    continue
                if "running" in ev:
                    running = ev["running"]
                    continue
                if "result" in ev:
                    res = ev.pop("result")
                    results.append(res)
                    if running.get("nodeid"):
                        done_ids.append(running["nodeid"])
                    running = {}
                if on_progress:
                    on_progress(ev)
                continue
            log_lines.append(line)
            if echo and running:  # printed while a property ran: the kernel's (or the property's) output
                sys.stderr.write(f"    | {line}" if line.endswith("\n") else f"    | {line}\n")
                sys.stderr.flush()
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        raise
    finally:
        timer.cancel()
        shutil.rmtree(workdir, ignore_errors=True)
    return proc.returncode, bool(timed_out), running, done_ids


# Seconds per suite for torch SDPA, all three CPU dtypes, per profile (measured on the 2-core
# machine, one forked suite process, from the gaps between streamed results): only the balance
# between shards depends on them. The quick profile's costs are shaped differently (its fixed
# costs, the profiler and the gradient checks, weigh more).
SUITE_WEIGHTS = {"correctness": 3.3, "stability": 2.8, "padding": 2.5, "boundaries": 1.9, "regions": 1.8,
                 "normalization": 1.8, "backward": 1.7, "decode": 1.45, "integrity": 1.25, "causal": 1.2,
                 "isolation": 0.7, "strict": 0.3,
                 # measured as a share of the other suites' property time (the machine was busy)
                 "applied": 1.3, "invariance": 0.3}
PROFILE_SUITE_WEIGHTS = {
    "default": SUITE_WEIGHTS,
    "quick": {"integrity": 1.2, "correctness": 1.1, "backward": 0.8, "stability": 0.75, "boundaries": 0.75,
              "decode": 0.7, "padding": 0.65, "normalization": 0.45, "isolation": 0.4, "regions": 0.4, "causal": 0.3,
              "applied": 0.5},
}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard_count(requested: int, device: str, parallel_impls: int = 1) -> int:
    """How many suite processes one implementation gets: ``requested`` when given (> 0), else two
    on a CPU run with a core to spare per implementation. A CUDA run keeps one process: the
    kernel and its compile caches are not shared across processes, and the GPU is one."""
    if requested > 0:
        return requested
    if device != "cpu":
        return 1
    return 2 if available_cores() >= 2 * max(1, parallel_impls) else 1


def shard_suites(suites: list, n: int, profile: str = "default") -> list:
    """``suites`` in ``n`` groups of about equal time (longest first into the lightest group),
    each in the original order. Fewer groups when there are fewer suites."""
    weights = PROFILE_SUITE_WEIGHTS.get(profile, SUITE_WEIGHTS)

    def weight(s):  # the unweighted suites (diagnostics, fingerprint, strict) take well under a second
        return weights.get(s, 0.1)

    groups: list = [[] for _ in range(max(1, min(n, len(suites))))]
    load = [0.0] * len(groups)
    for s in sorted(suites, key=lambda s: -weight(s)):
        i = load.index(min(load))
        groups[i].append(s)
        load[i] += weight(s)
    return [[s for s in suites if s in g] for g in groups if g]


def run_one(opts: CheckOptions, spec: str, log_path: Optional[Path] = None,
            on_progress: Optional[Callable[[dict], None]] = None, launcher=None) -> dict:
    """Run the suites for one implementation; returns {"results": [...], "returncode", "log",
    "duration_s", "problem", "problem_recorded" (the problem is already a result)}.

    With ``opts.shards`` > 1 the suites are split over that many processes run at once; results
    come back in suite order, as from one process.

    A crash (a segfault inside a compiled kernel) costs the property in flight, not the rest:
    the property becomes an ``error`` with its repro, and a new process resumes after it.

    ``launcher`` (:func:`harness.launcher.start`) forks the processes from one that has imported
    torch already; without it each is started afresh."""
    suites = suites_for(opts, spec)
    groups = shard_suites(suites, opts.shards, opts.profile) if opts.shards > 1 and not opts.stop_early else [suites]
    if len(groups) == 1:
        return _run_processes(opts, spec, log_path, on_progress, launcher)
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.time()
    lock = threading.Lock()
    collected: dict = {}

    def progress_of(i):
        def forward(ev):
            if on_progress is None:
                return
            with lock:
                if "collected" in ev:  # the bar counts every shard's properties
                    collected[i] = ev["collected"]
                    ev = {"collected": sum(collected.values())}
                on_progress(ev)
        return forward

    with ThreadPoolExecutor(max_workers=len(groups)) as ex:
        parts = list(ex.map(lambda ig: _run_processes(dataclasses.replace(opts, suites=ig[1], shards=1), spec, None,
                                                      progress_of(ig[0]), launcher), enumerate(groups)))
    order = {s: n for n, s in enumerate(suites)}
    results = sorted((r for p in parts for r in p["results"]), key=lambda r: order.get(r.get("suite"), len(order)))
    log = "".join(f"=== shard {n + 1}/{len(parts)}: {' '.join(p['command'])}\n\n{p['log']}\n"
                  for n, p in enumerate(parts))
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log)
    problems = [p["problem"] for p in parts if p["problem"]]
    return {"results": results, "returncode": max((p["returncode"] for p in parts), key=abs),
            "log": log, "problem": "; ".join(dict.fromkeys(problems)) or None,
            "problem_recorded": all(p["problem_recorded"] for p in parts if p["problem"]) if problems else False,
            "duration_s": round(time.time() - t0, 2), "command": parts[0]["command"], "commands": [p["command"] for p in parts]}


def _run_processes(opts: CheckOptions, spec: str, log_path: Optional[Path],
                   on_progress: Optional[Callable[[dict], None]], launcher=None) -> dict:
    """One suite process for ``opts.suites``, restarted after each crash (see :func:`run_one`)."""
    base_cmd = _pytest_command(opts, spec)
    t0 = time.time()
    deadline = t0 + opts.impl_timeout
    env = suite_environment(opts)
    log_lines: list[str] = []
    results: list = []  # streamed as they happen, so a process that dies midway keeps what it finished
    skip_ids: list = []  # finished or crashed node ids, deselected when a process is restarted
    history: list = []  # properties in the order the processes ran them
    problems: list = []
    problem_recorded = False
    selected: list = []  # every property the first process collected

    def collect(ev):
        items = ev.pop("items", None)
        if items is not None and not selected:  # a restart collects only what is left
            selected.extend(items)
        if on_progress is not None:
            on_progress(ev)
    crashes = 0
    cmd = base_cmd
    rc = 0
    for attempt in range(MAX_RESTARTS + 1):
        cmd = base_cmd + [a for n in skip_ids for a in ("--deselect", n)]
        if attempt:
            log_lines.append(f"\n--- restarted after a crash (restart {attempt}), resuming after {len(skip_ids)} "
                             f"finished or crashed properties ---\n")
        n_before = len(results)
        rc, timed_out, running, done_ids = _attempt(cmd, env, deadline, log_lines, results, collect, launcher,
                                                    **({"echo": True} if opts.show_kernel_output else {}))
        history += [f"{r['suite']}::{r['property']}" for r in results[n_before:]]
        skip_ids += done_ids
        if timed_out:
            problem = f"timed out after {opts.impl_timeout:g} s (whole implementation run)"
        elif rc in (0, 1, 5):
            problem = None
        elif rc < 0:
            problem = _signal_problem(rc, timed_out)
        else:
            tail = "".join(log_lines[-15:]).strip()
            problem = f"pytest exited with status {rc}" + (f": {tail.splitlines()[-1]}" if tail else "")
        if problem is None:
            break
        problems.append(problem)
        if not running:
            break
        # The property in flight when the process hung or died is an error, not a silent gap.
        msg = f"{problem}; running {running['suite']}::{running['property']} [{running['dtype']}]"
        repro = (f"attn-harness check --impl {shlex.quote(spec)} --device {opts.device} --dtype {running['dtype']} "
                 f"--suite {running['suite']} --property {running['property']}")
        earlier = [h for h in history if h != f"{running['suite']}::{running['property']}"]
        if earlier:
            # A failure that needs the process's history (a recompilation, a cache) may not
            # reproduce alone: offer the sequence this process ran before it.
            suites = list(dict.fromkeys([h.split("::")[0] for h in earlier] + [running["suite"]]))
            props = list(dict.fromkeys([h.split("::")[1] for h in earlier] + [running["property"]]))
            msg += ("\nif the repro passes alone, the crash needs what ran before it in the same process; "
                    "the sequence: attn-harness check --impl " + shlex.quote(spec) + f" --device {opts.device} --dtype "
                    f"{running['dtype']} " + " ".join(f"--suite {x}" for x in suites) + " "
                    + " ".join(f"--property {x}" for x in props))
        rec = {k: v for k, v in running.items() if k != "nodeid"}
        results.append({**rec, "device": opts.device, "status": "error", "cases": 0, "worst": {},
                        "message": msg, "counterexample": None, "counterexample_text": None,
                        "counterexample_extra": None, "repro": repro, "seed": opts.seed, "duration_s": None})
        problem_recorded = True
        history.append(f"{running['suite']}::{running['property']}")
        if timed_out or rc >= 0 or -rc not in CRASH_SIGNALS or not running.get("nodeid"):
            break  # only a crash is worth resuming after; a timeout or an outside signal ends the run
        crashes += 1
        skip_ids.append(running["nodeid"])
    if problems:
        from harness.accounting import fill_not_run

        if crashes > MAX_RESTARTS:
            why = (f"the test process crashed {crashes} times; the harness restarts it after each crash "
                   f"at most {MAX_RESTARTS} times, then stops")
        else:
            why = problems[-1]
        n = fill_not_run(results, selected, why, opts.device, absolute_spec(spec), opts.seed)
        if n:
            log_lines.append(f"\n--- {n} properties not run: {why} ---\n")
    absolute = absolute_spec(spec)
    if absolute != spec:
        # Results name the spec as the user typed it, for the directory they typed it in.
        pairs = [(f"--impl {shlex.quote(absolute)} ", f"--impl {shlex.quote(spec)} "),
                 (f"--impl {absolute} ", f"--impl {shlex.quote(spec)} ")]
        for r in results:
            if r.get("impl") == absolute:
                r["impl"] = spec
            for passed, shown in pairs:
                if r.get("repro"):
                    r["repro"] = r["repro"].replace(passed, shown)
    problem = "; ".join(dict.fromkeys(problems)) or None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(" ".join(cmd) + "\n\n" + "".join(log_lines))
    return {"results": results, "returncode": rc, "log": "".join(log_lines), "problem": problem,
            "problem_recorded": problem_recorded,
            "duration_s": round(time.time() - t0, 2), "command": cmd}


def verdict(results: list, strict: bool) -> str:
    """fail: an enforced property failed or errored; unsupported: no gate property could run at
    all (nothing was certified, which is never a pass); pass otherwise."""
    for r in results:
        if enforced(r["tier"], strict) and r["status"] in ("fail", "error"):
            return "fail"
    gate = [r for r in results if r["tier"] == "gate"]
    ran = gate or results  # only strict/info properties selected: judge by those
    if not any(r["status"] in ("pass", "fail", "error") for r in ran) or (gate and not any(r["status"] == "pass" for r in gate)):
        return "unsupported"
    return "pass"
