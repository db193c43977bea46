"""pytest plugin (entry point ``pytest11: attention_harness``): runs the shipped property suites
against any implementation.

    pytest --pyargs harness.suites --impl mypkg.attn:fn --dtype float32,bfloat16

Options are registered here so another project's CI gets them just by installing
attention-harness. ``attn-harness check`` drives the very same tests through this plugin and
reads the results file it writes (``--harness-results``): nothing is implemented twice.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

from harness.tiers import TIERS, enforced

PROFILES = {
    # hypothesis examples per property (times the per-test weight) and the sizes used.
    "quick": 8,
    "default": 25,
    "thorough": 150,
}
DEFAULT_SEED = 20261127


def pytest_addoption(parser):
    g = parser.getgroup("attention-harness", "attention-harness property suites")
    g.addoption("--impl", action="append", default=[], metavar="SPEC",
                help="implementation to test: built-in name, path/file.py:fn or package.module:fn "
                     "(repeatable; default: sdpa)")
    g.addoption("--dtype", default=None, metavar="LIST",
                help="comma-separated dtypes (default: float32 on CPU, float32,bfloat16,float16 on CUDA)")
    g.addoption("--device", default=None, choices=("cpu", "cuda"), help="device (default: cpu)")
    g.addoption("--profile", default="default", choices=tuple(PROFILES), help="example counts and sizes")
    g.addoption("--strict-properties", action="store_true", default=False,
                help="strict-tier properties fail the run (otherwise they are reported only)")
    g.addoption("--seed", type=int, default=None,
                help=f"hypothesis seed (default {DEFAULT_SEED}; printed with every failure)")
    g.addoption("--case", default=None, metavar="REPR",
                help="replay exactly this Case(...) instead of generating cases (from a report's repro)")
    g.addoption("--example", default=None, metavar="JSON",
                help="with --case: the other drawn arguments of the counterexample, e.g. '{\"cut\": 0.5}'")
    g.addoption("--harness-results", default=None, metavar="FILE", help="write per-property results as JSON")
    g.addoption("--harness-progress", action="store_true", default=False,
                help="print one machine-readable progress line per property to stderr")
    g.addoption("--forward-factor", type=float, default=2.0,
                help="forward error may be this many times the same-dtype PyTorch error (default 2)")
    g.addoption("--backward-factor", type=float, default=3.0,
                help="gradient error may be this many times the same-dtype PyTorch error (default 3)")
    g.addoption("--call-timeout", type=float, default=30.0, help="seconds one kernel call may take")


# --- configuration ---------------------------------------------------------------------------

@dataclass
class HarnessConfig:
    specs: list
    dtypes: list
    device: str
    profile: str
    strict: bool
    seed: int
    case: Optional[str]
    example: Optional[dict] = None
    forward_factor: float = 2.0
    backward_factor: float = 3.0
    impls: dict = field(default_factory=dict)


def _config(config) -> HarnessConfig:
    return config._attention_harness


def pytest_configure(config):
    import hypothesis
    from hypothesis import HealthCheck, Phase, settings

    from harness import probes, strategies
    from harness.contract import LoadError, load

    for tier in TIERS:
        config.addinivalue_line("markers", f"tier_{tier}: property tier")
    config.addinivalue_line("markers", "tier(name): gate (default), strict or info")
    device = config.getoption("--device") or "cpu"
    dtypes = config.getoption("--dtype")
    dtypes = [d.strip() for d in dtypes.split(",") if d.strip()] if dtypes else (
        ["float32"] if device == "cpu" else ["float32", "bfloat16", "float16"])
    specs = config.getoption("--impl") or ["sdpa"]
    profile = config.getoption("--profile")
    seed = config.getoption("--seed")
    if seed is None:
        seed = DEFAULT_SEED
    example = config.getoption("--example")
    try:
        example = json.loads(example) if example else None
    except ValueError as e:
        raise pytest.UsageError(f"--example is not valid JSON: {e}")
    hc = HarnessConfig(specs, dtypes, device, profile, config.getoption("--strict-properties"), seed,
                       config.getoption("--case"), example, config.getoption("--forward-factor"),
                       config.getoption("--backward-factor"))
    config._attention_harness = hc
    strategies.set_profile(profile)
    probes.CALL_TIMEOUT_S = config.getoption("--call-timeout")
    # Deterministic: fixed seed, no example database; shrinking stays on so failures are small.
    n = PROFILES[profile]
    kw = dict(max_examples=n, deadline=None, database=None, derandomize=False, print_blob=False,
              report_multiple_bugs=False,  # shrink one failure well rather than several slowly
              suppress_health_check=list(HealthCheck))
    if hc.case:
        kw.update(max_examples=1, phases=[Phase.explicit, Phase.generate])
    settings.register_profile("attention-harness", **kw)
    if _runs_harness_suites(config):
        # Only for runs of our suites: installing attention-harness must not change the
        # hypothesis settings or seed of another project's own tests.
        settings.load_profile("attention-harness")
        # The same seed for every test, whichever subset runs: a failure replays from its command.
        hypothesis.core.global_force_seed = seed
    config._attention_harness_results = []
    if config.getoption("--impl"):
        for spec in hc.specs:
            try:
                hc.impls[spec] = load(spec)
            except LoadError as e:
                raise pytest.UsageError(str(e))


def _runs_harness_suites(config) -> bool:
    """True when this pytest run targets the shipped suites (by --impl, module or path)."""
    if config.getoption("--impl"):
        return True
    try:
        import harness.suites
        here = os.path.dirname(os.path.abspath(harness.suites.__file__))
    except ImportError:
        # A source checkout used without installing: the suites sit beside the package. This
        # hook runs for every pytest session on the machine, so it must never raise.
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "suites")
    return any("harness.suites" in a or os.path.abspath(a.split("::")[0]).startswith(here) for a in config.args)


def pytest_report_header(config):
    if not _runs_harness_suites(config):
        return None
    hc = _config(config)
    return (f"attention-harness: impl={','.join(hc.specs)} dtype={','.join(hc.dtypes)} device={hc.device} "
            f"profile={hc.profile} seed={hc.seed}{' strict' if hc.strict else ''}")


def pytest_generate_tests(metafunc):
    if "target" not in metafunc.fixturenames:
        return
    hc = _config(metafunc.config)
    params = [(s, d) for s in hc.specs for d in hc.dtypes]
    metafunc.parametrize("target_key", params, ids=[f"{s}-{d}" for s, d in params], scope="function")


# --- the object every property receives ------------------------------------------------------

class Target:
    """The implementation under test in one dtype on one device, as seen by a property."""

    def __init__(self, impl, dtype: str, device: str, replay: Optional[str], item,
                 forward_factor: float = 2.0, backward_factor: float = 3.0):
        self.impl = impl
        self.forward_factor = forward_factor
        self.backward_factor = backward_factor
        self.dtype = dtype
        self.device = device
        self.caps = impl.capabilities
        self._replay = replay
        self.cases = 0
        self.last_case = None
        self.last_extras: dict = {}
        self.worst: dict = {}

    @property
    def name(self) -> str:
        return self.impl.name

    def require(self, **needs):
        """Skip as ``unsupported`` when the declared capabilities exclude what the property needs."""
        why = self.caps.why_not(**needs)
        if why:
            pytest.skip(f"unsupported: {why}")

    def require_mask(self):
        """Skip as unsupported unless the implementation takes a dense bool or float mask."""
        if not ({"bool", "float"} & set(self.caps.mask_kinds)):
            pytest.skip("unsupported: needs dense boolean or float masks")

    def fit(self, case):
        """The drawn case moved inside this implementation's capabilities (or the case given
        with ``--case``); cases that cannot be expressed here are rejected."""
        from hypothesis import assume
        from harness.cases import Case

        if self._replay:
            case = eval(self._replay, {"Case": Case})  # noqa: S307 - the user's own repro string
        fitted = case.fit(self.caps, self.dtype, self.device)
        assume(fitted is not None)
        self.cases += 1
        self.last_case = fitted
        return fitted

    def record(self, comparison=None, **numbers):
        """Keep the worst comparison seen across the examples, for the report."""
        if comparison is not None:
            d = comparison.to_dict()
            r = d["ratio"] if isinstance(d["ratio"], float) else float("inf")
            cur = self.worst.get("ratio", -1.0)
            cur = cur if isinstance(cur, float) else float("inf")
            if r >= cur:
                self.worst = {**d, **numbers, "case": self.last_case.short() if self.last_case else None}
        elif numbers:
            self.worst = {**self.worst, **numbers}


@pytest.fixture
def target(request, target_key):
    hc = _config(request.config)
    spec, dtype = target_key
    impl = hc.impls.get(spec)
    if impl is None:
        from harness.contract import load

        impl = hc.impls[spec] = load(spec)
    why = impl.capabilities.why_not(device=hc.device, dtype=dtype)
    if why:
        pytest.skip(f"unsupported: {why}")
    if hc.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("skip: --device cuda but CUDA is not available on this machine")
    from harness import probes

    probes.UNSUPPORTED_CASES.clear()
    t = Target(impl, dtype, hc.device, hc.case, request.node, hc.forward_factor, hc.backward_factor)
    request.node._harness_target = t
    return t


# --- results ---------------------------------------------------------------------------------

def pytest_collection_modifyitems(session, config, items):
    """Record every example's other drawn arguments (cut points, perturbation kinds...) so a
    counterexample replays exactly; with --case/--example, replace them. Hypothesis exposes
    ``inner_test`` for wrappers like this one."""
    hc = _config(config)
    for item in items:
        h = getattr(getattr(item, "obj", None), "hypothesis", None)
        if h is None or getattr(h.inner_test, "_harness_wrapped", False):
            continue
        inner = h.inner_test

        def recording(*args, __inner=inner, **kwargs):
            t = kwargs.get("target")
            if isinstance(t, Target):
                if hc.case and hc.example:
                    kwargs.update({k: v for k, v in hc.example.items() if k in kwargs})
                t.last_extras = {k: v for k, v in kwargs.items() if k not in ("target", "case", "target_key")}
            return __inner(*args, **kwargs)

        recording._harness_wrapped = True
        h.inner_test = recording


def _tier(item) -> str:
    m = item.get_closest_marker("tier")
    return m.args[0] if m else "gate"


def _suite(item) -> str:
    base = os.path.basename(str(item.fspath))
    return base[5:-3] if base.startswith("test_") else base[:-3]


def _unsatisfiable(excinfo) -> bool:
    from hypothesis.errors import Unsatisfiable

    return isinstance(excinfo.value, Unsatisfiable)


def _exc_status(excinfo) -> str:
    from harness.probes import ImplementationError

    exc = excinfo.value
    excs = list(getattr(exc, "exceptions", [exc]))
    if any(isinstance(e, ImplementationError) for e in excs):
        return "error"
    if all(isinstance(e, AssertionError) for e in excs):
        return "fail"
    return "error"


def _message(excinfo) -> str:
    exc = excinfo.value
    excs = list(getattr(exc, "exceptions", [exc]))
    lines = []
    from harness.probes import ImplementationError

    for e in excs:
        head = str(e).strip() or type(e).__name__
        if not isinstance(e, (AssertionError, ImplementationError)):
            head = f"{type(e).__name__}: {head}"  # an exception from the harness itself
        lines.append(head)
    return "\n".join(lines)


def _repro(item, hc, spec, dtype, case, extras=None) -> str:
    cmd = ["attn-harness", "check", "--impl", spec, "--device", hc.device, "--dtype", dtype,
           "--suite", _suite(item), "--property", item.originalname, "--seed", str(hc.seed)]
    if case is not None:
        cmd += ["--case", repr(case)]
        if extras:
            cmd += ["--example", json.dumps(extras)]
    return shlex.join(cmd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    t = getattr(item, "_harness_target", None)
    if not hasattr(item, "callspec") or "target_key" not in getattr(item, "callspec").params:
        return
    hc = _config(item.config)
    spec, dtype = item.callspec.params["target_key"]
    tier = _tier(item)
    if rep.when == "setup" and rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        _store(item, hc, spec, dtype, tier, _skip_status(reason), _clean_skip(reason), t, rep)
        return
    if rep.when != "call":
        if rep.failed:
            _store(item, hc, spec, dtype, tier, "error", str(rep.longrepr)[-2000:], t, rep)
        return
    if rep.passed:
        _store(item, hc, spec, dtype, tier, "pass", "", t, rep)
    elif rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        _store(item, hc, spec, dtype, tier, _skip_status(reason), _clean_skip(reason), t, rep)
    elif _unsatisfiable(call.excinfo):
        # Every drawn case was rejected, so nothing was checked: it could not be expressed inside
        # the declared capabilities, or the kernel raised NotImplementedError on each. Unsupported.
        why = _unsupported_cases()
        if why and t is not None and t.cases <= len(why):
            msg = f"NotImplementedError on every case it was given ({len(why)}); last: {why[-1]}"
        elif why:
            msg = (f"no case ran: {len(why)} of {t.cases if t is not None else '?'} raised NotImplementedError "
                   f"(last: {why[-1]}); the others did not fit what the property needs")
        else:
            msg = "no drawn case of this property fits the declared capabilities"
        _store(item, hc, spec, dtype, tier, "unsupported", msg, t, rep)
        rep.outcome = "skipped"
        rep.longrepr = (str(item.fspath), 0, f"Skipped: unsupported: {msg}")
    else:
        status = _exc_status(call.excinfo)
        msg = _message(call.excinfo)
        _store(item, hc, spec, dtype, tier, status, msg, t, rep)
        if not enforced(tier, hc.strict):
            # Reported, never failing: shown by pytest as xfail with the tier as the reason.
            rep.outcome = "skipped"
            rep.wasxfail = f"{tier} tier (not enforced{'' if tier == 'info' else '; use --strict-properties'}): {msg.splitlines()[0][:200]}"


def _skip_status(reason: str) -> str:
    return "unsupported" if "unsupported:" in reason else "skip"


def _clean_skip(reason: str) -> str:
    # First line only: hypothesis appends its "Falsifying explicit example" note to a skip.
    r = reason.split("Skipped: ", 1)[-1].strip().splitlines()[0] if reason.strip() else ""
    return r.replace("unsupported: ", "", 1).strip()


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in (d or {}).items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = repr(v)
    return out


def _doc(item) -> str:
    return (item.function.__doc__ or "").strip().split("\n")[0]


def _unsupported_cases() -> list:
    from harness import probes

    return probes.UNSUPPORTED_CASES


def _store(item, hc, spec, dtype, tier, status, message, t, rep):
    case = t.last_case if (t is not None and status in ("fail", "error")) else None
    extras = _jsonable(t.last_extras) if case is not None else None
    res = {
        "suite": _suite(item), "property": item.originalname, "tier": tier, "dtype": dtype,
        "device": hc.device, "impl": spec, "status": status,
        "cases": t.cases if t is not None else 0,
        "unsupported_cases": len(_unsupported_cases()) if t is not None else 0,
        "worst": (t.worst if t is not None else {}),
        "message": message,
        "counterexample": (case.to_dict() if case is not None else None),
        "counterexample_text": (case.short() if case is not None else None),
        "counterexample_extra": extras,
        "repro": _repro(item, hc, spec, dtype, case, extras) if status in ("fail", "error") else "",
        "seed": hc.seed, "duration_s": round(getattr(rep, "duration", 0.0), 3),
        "doc": _doc(item),
    }
    if status == "pass" and res["unsupported_cases"]:
        res["message"] = (f"{res['unsupported_cases']} of {res['cases']} cases unsupported (NotImplementedError), "
                          f"the rest passed; last: {_unsupported_cases()[-1]}")
    if status in ("fail", "error") and case is not None:
        more = "".join(f", {k}={v!r}" for k, v in (extras or {}).items())
        res["message"] = f"{message}\ncounterexample: {case.short()}{more}\nseed: {hc.seed}"
    item.config._attention_harness_results.append(res)
    if item.config.getoption("--harness-progress"):
        # The whole result rides along, so a run killed later (a kernel hung inside C) keeps it.
        _progress(item.config, {"impl": spec, "suite": res["suite"], "property": res["property"],
                                "dtype": dtype, "status": status, "tier": tier,
                                "enforced": enforced(tier, hc.strict), "result": res})


def _progress(config, event: dict):
    # Through the terminal reporter with capture suspended: during a test's setup pytest's fd
    # capture would swallow the line, and the runner reads events live (a kernel may hang next).
    from contextlib import nullcontext

    tr = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    line = "HARNESS-PROGRESS " + json.dumps(event, default=str)  # as --harness-results writes them
    with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
        if tr is None:
            sys.__stderr__.write(line + "\n")
            return
        tr.ensure_newline()
        tr.write_line(line)
        tr.flush()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = getattr(config, "_attention_harness_results", None)
    if not results:
        return
    path = config.getoption("--harness-results")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(tmp, path)
    bad = [r for r in results if r["status"] in ("fail", "error")]
    if bad:
        tr = terminalreporter
        tr.section("attention-harness: failures and reproduction commands")
        for r in bad:
            tr.write_line(f"[{r['status']}] {r['impl']} {r['dtype']} {r['suite']}::{r['property']} ({r['tier']})")
            tr.write_line("    " + r["message"].replace("\n", "\n    "))
            if r["repro"]:
                tr.write_line(f"    reproduce: {r['repro']}")


def pytest_runtest_setup(item):
    # Which property is running, so a run killed mid-property can name it.
    if item.config.getoption("--harness-progress") and "target_key" in getattr(getattr(item, "callspec", None), "params", {}):
        spec, dtype = item.callspec.params["target_key"]
        _progress(item.config, {"running": {"impl": spec, "suite": _suite(item), "property": item.originalname,
                                            "dtype": dtype, "tier": _tier(item),
                                            "doc": _doc(item)}})


def pytest_collection_finish(session):
    if session.config.getoption("--harness-progress"):
        _progress(session.config, {"collected": len(session.items)})
