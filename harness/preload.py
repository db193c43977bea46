"""Loads implementations in a child process, with a time limit, before any property runs.

A user's module runs arbitrary code when imported: it may hang (a lock, a download, a ``sleep``),
crash the interpreter (a broken extension) or call ``sys.exit``. Loaded in the command's own
process, any of these hung or killed ``attn-harness check`` with nothing said. Here one child
(``python -m harness.preload REQUEST``) imports torch once and loads the specs in order, saying
where it is on its stdout; the parent gives each spec ``load_timeout`` seconds, turns a hang or a
crash into a one-line load error naming the spec and the time, and starts a new child for the
specs after it.

The same child checks each loaded callable's signature against the contract and calls the base
case (:func:`harness.cases.base_case`) once per dtype: a kernel that cannot run it at all (a
``TypeError`` from its signature, a non-tensor result, an error, a hang or a crash on every dtype)
gets a one-line diagnosis, and :mod:`harness.runner` then stops it after the base case instead of
running every property into the same error. It is the smallest call, so its cost is one import
and a few tiny calls; the suite processes load the kernel afresh.
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.contract import Capabilities

MARK = "HARNESS-LOAD "
CONTRACT_POSITIONAL = ("query", "key", "value")
CONTRACT_KEYWORDS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
CONTRACT_TEXT = ("fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, "
                 "enable_gqa=False)")
_SIGNALS = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


@dataclass
class Loaded:
    """What the parent learns about one spec, with the parts of an Implementation it reads."""
    spec: str
    name: str = ""
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    declared: bool = True
    error: Optional[str] = None  # it did not load: the one-line reason
    diagnosis: Optional[str] = None  # it loaded but cannot run the base case: the one-line reason
    base_errors: dict = field(default_factory=dict)  # dtype -> the base case's message, with a diagnosis
    seconds: float = 0.0  # from the start of its load to its answer


# --- the contract's signature -----------------------------------------------------------------

def signature_problem(fn, shown: Optional[str] = None) -> Optional[str]:
    """Why ``fn`` cannot be called as the harness calls it (three tensors positionally, the
    rest by keyword), naming what is missing; None when it can, or when its signature is unknown.
    ``shown``: the parameter list to print instead of ``fn``'s (a stub's, read from source)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a text signature: let the call decide
        return None
    try:
        sig.bind(*CONTRACT_POSITIONAL, **{k: None for k in CONTRACT_KEYWORDS})
        return None
    except TypeError:
        pass
    P = inspect.Parameter
    params = list(sig.parameters.values())
    var_pos = any(p.kind == P.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind == P.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    problems = []
    if len(positional) < 3 and not var_pos:
        missing = CONTRACT_POSITIONAL[len(positional):]
        problems.append(f"missing {', '.join(missing)} (passed positionally)")
    by_keyword = {p.name for p in positional[3:] if p.kind != P.POSITIONAL_ONLY}
    by_keyword |= {p.name for p in params if p.kind == P.KEYWORD_ONLY}
    if not var_kw:
        missing_kw = [k for k in CONTRACT_KEYWORDS if k not in by_keyword]
        if missing_kw:
            problems.append(f"missing {', '.join(missing_kw)} (passed by keyword)")
    taken = [p.name for p in positional[:3] if p.name in CONTRACT_KEYWORDS]
    if taken:
        problems.append(f"{', '.join(taken)} in the place of query/key/value (they would be given twice)")
    required = [p.name for p in params[3:] if p.default is P.empty and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
                and p.name not in CONTRACT_KEYWORDS]
    if required:
        problems.append(f"requires {', '.join(required)}, which the harness never passes")
    name = getattr(fn, "__name__", type(fn).__name__)
    return (f"signature {name}{shown or sig} does not fit the contract {CONTRACT_TEXT}: "
            + ("; ".join(problems) or "it cannot be called that way"))


# --- the child: ``python -m harness.preload REQUEST`` ------------------------------------------

def _emit(ev: dict) -> None:
    sys.__stdout__.write(MARK + json.dumps(ev, default=str) + "\n")
    sys.__stdout__.flush()


def _base_probe(impl, device: str, dtypes: Optional[list], call_timeout: float) -> tuple:
    """(diagnosis or None, {dtype: message}) from one base-case call per dtype."""
    import pytest

    from harness import probes
    from harness.cases import base_case
    from harness.defaults import HOST_DTYPES

    probes.CALL_TIMEOUT_S = call_timeout
    declared = [d for d in HOST_DTYPES.get(device, ()) if d in impl.capabilities.dtypes] or ["float32"]
    errors, ran = {}, 0
    for dtype in dtypes or declared:
        case = base_case().fit(impl.capabilities, dtype, device)
        if case is None:
            continue  # outside the declared capabilities: the suites report it unsupported
        ran += 1
        try:
            probes.call(impl, case.materialize())
        except (NotImplementedError, pytest.skip.Exception):
            ran -= 1  # unsupported, said at run time (probes turns NotImplementedError into a skip): not an error
        except Exception as e:  # noqa: BLE001 - every kind of failure to run is the diagnosis
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            plain = isinstance(e, (probes.ImplementationError, probes.PropertyViolation))
            errors[dtype] = msg if plain else f"{type(e).__name__}: {msg}"
        except BaseException as e:  # noqa: BLE001 - pytest.skip/fail from a kernel, SystemExit
            errors[dtype] = f"{type(e).__name__}: {e}"
    if not ran or len(errors) < ran:
        return None, {}
    by_message: dict = {}
    for d, m in errors.items():
        by_message.setdefault(m, []).append(d)
    text = "; ".join(f"{', '.join(ds)}: {m}" for m, ds in by_message.items())
    return f"the base case (B=1, H=1, L=S=4, E=16, no mask) fails in every dtype: {text}"[:600], errors


def _child(req: dict) -> None:
    import torch  # noqa: F401 - the import every spec shares, timed apart from theirs

    from harness import builtins
    from harness.contract import LoadError
    from harness.loading import load

    _emit({"ready": True})
    for i, spec in enumerate(req["specs"]):
        _emit({"loading": i})
        try:
            impl = load(spec)
        except BaseException as e:  # noqa: BLE001 - also SystemExit or KeyboardInterrupt raised by the module
            if req.get("traceback"):
                import traceback

                traceback.print_exception(e.__context__ if isinstance(e, LoadError) and e.__context__ else e,
                                          file=sys.stdout)
                sys.stdout.flush()
            err = str(e) if isinstance(e, LoadError) else f"{spec}: loading raised {type(e).__name__}: {e}"
            _emit({"failed": i, "error": err})
            continue
        info = {"name": impl.name, "description": impl.description, "capabilities": impl.capabilities.to_dict(),
                "declared": bool(getattr(impl, "declared", True))}
        diagnosis, base = signature_problem(impl.fn), {}
        if diagnosis is not None:
            base = {"*": f"TypeError: {diagnosis}"}
        elif req.get("probe", True) and spec not in builtins.BUILTINS and getattr(impl, "api", "sdpa") == "sdpa":
            # Not the harness's own built-ins; nor a kernel in another call convention: the loader
            # checked its signature, and its SDPA view is the harness's adapter, which its own
            # suites (flash, paged) do not go through.
            _emit({"probing": i, "impl": info})
            diagnosis, base = _base_probe(impl, req["device"], req.get("dtypes"), req["call_timeout"])
        _emit({"loaded": i, "impl": info, "diagnosis": diagnosis, "base": base})


def main() -> None:
    req = json.loads(sys.argv[1])
    try:
        _child(req)
    finally:
        from harness.suite_process import exit_without_shutdown

        exit_without_shutdown(0)


# --- the parent --------------------------------------------------------------------------------

def _capabilities(d: dict) -> Capabilities:
    return Capabilities(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _loaded(spec: str, ev: dict, t0: float) -> Loaded:
    info = ev["impl"]
    return Loaded(spec=spec, name=info["name"], description=info["description"],
                  capabilities=_capabilities(info["capabilities"]), declared=info["declared"],
                  diagnosis=ev.get("diagnosis"), base_errors=ev.get("base") or {}, seconds=round(time.time() - t0, 2))


def _ended(rc: Optional[int]) -> str:
    if rc is None:
        return "ended"
    if rc < 0:
        return f"crashed ({_SIGNALS.get(-rc, 'signal')}, signal {-rc})"
    return f"exited with status {rc}"


def load_isolated(specs: list, *, device: str = "cpu", dtypes: Optional[list] = None, call_timeout: float = 30.0,
                  load_timeout: float = 60.0, env: Optional[dict] = None, probe: bool = True,
                  echo: Optional[Callable[[str], None]] = None, import_timeout: float = 300.0,
                  traceback: bool = False, launcher=None) -> list:
    """One :class:`Loaded` per spec, in order. ``specs`` with file paths should be absolute (the
    child runs in an empty directory, as the suite processes do). ``echo`` receives whatever the
    modules print. ``launcher`` (:func:`harness.launcher.start`) forks the child from a process that
    has imported torch already; without it (or when it is gone) the child is started afresh."""
    out: list = [None] * len(specs)
    start = 0
    while start < len(specs):
        start = _one_child(specs, start, out, device=device, dtypes=dtypes, call_timeout=call_timeout,
                           load_timeout=load_timeout, env=env, probe=probe, echo=echo, import_timeout=import_timeout,
                           traceback=traceback, launcher=launcher)
    return out


def _one_child(specs, start, out, *, device, dtypes, call_timeout, load_timeout, env, probe, echo,
               import_timeout, traceback, launcher) -> int:
    """Load specs[start:] in one child until it finishes, hangs or dies; returns where to go on."""
    req = {"specs": specs[start:], "device": device, "dtypes": dtypes, "call_timeout": call_timeout, "probe": probe,
           "traceback": traceback}
    workdir = tempfile.mkdtemp(prefix="attn-harness-load-")
    proc = launcher.spawn([json.dumps(req)], workdir, entry="preload") if launcher is not None else None
    if proc is None:
        proc = subprocess.Popen([sys.executable, "-m", "harness.preload", json.dumps(req)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                env=env, cwd=workdir, errors="replace")
    lines: queue.Queue = queue.Queue()

    def reader():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    n_dtypes = len(dtypes) if dtypes else 3
    current, phase, t_spec = None, "import", time.time()
    deadline = t_spec + import_timeout
    printed: list = []
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                line = "timeout"
            if line is None or line == "timeout":
                break
            if not line.startswith(MARK):
                printed.append(line)
                if echo is not None:
                    echo(line)
                continue
            ev = json.loads(line[len(MARK):])
            if "loading" in ev:
                current, phase, t_spec = start + ev["loading"], "load", time.time()
                deadline = t_spec + load_timeout
                printed = []
            elif "probing" in ev:
                phase = "probe"
                out[current] = _loaded(specs[current], ev, t_spec)
                deadline = time.time() + max(load_timeout, n_dtypes * call_timeout + 5.0)
            elif "failed" in ev:
                out[current] = Loaded(spec=specs[current], error=ev["error"], seconds=round(time.time() - t_spec, 2))
                current = None
            elif "loaded" in ev:
                out[current] = _loaded(specs[current], ev, t_spec)
                current = None
        timed_out = line == "timeout"
        if timed_out:
            proc.kill()
        proc.wait()
        rc = proc.returncode
        said = "".join(printed).strip().splitlines()
        said = f" (its last output: {said[-1][:200]})" if said else ""
        if current is None:
            rest = [i for i in range(start, len(specs)) if out[i] is None]
            if not rest:
                return len(specs)
            if phase == "import":  # torch (or the harness) did not import: nothing can load
                why = (f"did not import torch within {import_timeout:g} s" if timed_out else _ended(rc)
                       + " before loading anything")
                for i in rest:
                    out[i] = Loaded(spec=specs[i], error=f"{specs[i]}: the loader process {why}{said}")
                return len(specs)
            current = rest[0]  # it died between two specs: blame none, go on from the next
            return current
        elapsed = time.time() - t_spec
        spec = specs[current]
        if phase == "probe":
            # The load went through; the base case is what hung or crashed.
            why = (f"the base case did not return within {elapsed:.0f} s (a hang that --call-timeout could "
                   "not interrupt)" if timed_out else f"the base case call ended the process: it {_ended(rc)}")
            loaded = out[current]
            loaded.diagnosis, loaded.base_errors, loaded.seconds = why, {"*": why}, round(elapsed, 2)
        elif timed_out:
            out[current] = Loaded(spec=spec, seconds=round(elapsed, 2),
                                  error=f"{spec}: loading did not finish within {load_timeout:g} s (--load-timeout); "
                                        f"stopped after {elapsed:.1f} s: the module hangs at import{said}")
        else:
            out[current] = Loaded(spec=spec, seconds=round(elapsed, 2),
                                  error=f"{spec}: the loader process {_ended(rc)} while importing it, "
                                        f"after {elapsed:.1f} s{said}")
        return current + 1
    finally:
        if proc.returncode is None:  # also a forked child (harness.launcher.Child), which has no poll()
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
