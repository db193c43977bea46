"""The harness half of the pytest plugin: configuration, the ``target`` fixture every property
receives, result recording and progress events. Registered by :mod:`attention_harness_plugin` (or by
the suites' conftest) only for runs that collect the harness suites, so another project's pytest
never imports torch or sees these hooks.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional

import pytest

from harness import outcomes
from harness.defaults import BACKWARD_FACTOR, DEFAULT_SEED, FORWARD_FACTOR, HOST_DTYPES, PROFILES, SUITE_PLUGIN_NAME
from harness.target import Target
from harness.tiers import TIERS, enforced



def ensure_registered(config) -> None:
    """Register this module as a plugin once per pytest session (from the entry point's
    pytest_configure, or from the suites' conftest when the run reached them another way)."""
    import sys as _sys

    pm = config.pluginmanager
    if pm.get_plugin(SUITE_PLUGIN_NAME) is None:
        pm.register(_sys.modules[__name__], SUITE_PLUGIN_NAME)
        configure(config)



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
    forward_factor: float = FORWARD_FACTOR
    backward_factor: float = BACKWARD_FACTOR
    impls: dict = field(default_factory=dict)
    forbid_ops: list = field(default_factory=list)
    impl_dtypes: dict = field(default_factory=dict)  # spec -> declared dtypes, when no dtype was given
    reruns: Optional[int] = None  # the invariance suite's repeated calls (--attn-reruns)


def _config(config) -> HarnessConfig:
    return config._attention_harness


def configure(config):
    from hypothesis import HealthCheck, Phase, settings

    from harness import probes, strategies
    from harness.contract import LoadError
    from harness.loading import load

    for tier in TIERS:
        config.addinivalue_line("markers", f"tier_{tier}: property tier")
    config.addinivalue_line("markers", "tier(name): gate (default), strict or info")
    device = config.getoption("attn_device") or "cpu"
    dtypes = config.getoption("attn_dtype")
    # None: every dtype the implementation declares for the device (resolved per implementation),
    # so the plain command reaches half-precision dispatch and accumulation paths too.
    dtypes = [d.strip() for d in dtypes.split(",") if d.strip()] if dtypes else None
    specs = config.getoption("attn_impl") or ["sdpa"]
    profile = config.getoption("attn_profile")
    seed = config.getoption("attn_seed")
    if seed is None:
        seed = DEFAULT_SEED
    example = config.getoption("attn_example")
    try:
        example = json.loads(example) if example else None
    except ValueError as e:
        raise pytest.UsageError(f"--attn-example is not valid JSON: {e}")
    forbid = config.getoption("attn_forbid_ops")
    hc = HarnessConfig(specs, dtypes, device, profile, config.getoption("attn_strict"), seed,
                       config.getoption("attn_case"), example, config.getoption("attn_forward_factor"),
                       config.getoption("attn_backward_factor"),
                       forbid_ops=[p.strip() for p in forbid.split(",") if p.strip()] if forbid else [])
    hc.reruns = config.getoption("attn_reruns", None)
    config._attention_harness = hc
    if hc.forbid_ops:
        from harness.integrity import pattern_warnings

        for line in pattern_warnings(hc.forbid_ops):  # a pattern that can never match passes every kernel
            config.issue_config_time_warning(pytest.PytestConfigWarning(line.replace("--forbid-ops", "--attn-forbid-ops", 1)),
                                             stacklevel=2)
    strategies.set_profile(profile)
    probes.CALL_TIMEOUT_S = config.getoption("attn_call_timeout")
    # Deterministic: fixed seed, no example database; shrinking stays on so failures are small.
    n = PROFILES[profile]
    kw = dict(max_examples=n, deadline=None, database=None, derandomize=False, print_blob=False,
              report_multiple_bugs=False,  # shrink one failure well rather than several slowly
              suppress_health_check=list(HealthCheck))
    if hc.case:
        kw.update(max_examples=1, phases=[Phase.explicit, Phase.generate])
    settings.register_profile("attention-harness", **kw)
    # Only this run of our suites gets the profile, and the previous one comes back at the end
    # (an in-process harness.check() in a notebook must leave hypothesis as it found it). The
    # seed goes on each harness test with hypothesis's @seed, never as a global.
    config._attention_harness_prev_profile = settings.get_current_profile_name()
    settings.load_profile("attention-harness")
    config._attention_harness_results = []
    _check_same_harness()
    for spec in hc.specs:
        try:
            hc.impls[spec] = load(spec)
        except LoadError as e:
            raise pytest.UsageError(str(e))
    if hc.dtypes is None:
        for spec, impl in hc.impls.items():
            declared = [d for d in HOST_DTYPES.get(device, ()) if d in impl.capabilities.dtypes]
            hc.impl_dtypes[spec] = declared or ["float32"]


def _check_same_harness():
    # `attn-harness check` runs us in a subprocess; it must test with the harness it was started
    # from, not a `harness/` that happens to sit in a working directory or on PYTHONPATH.
    want = os.environ.get("ATTN_HARNESS_PACKAGE_DIR")
    if not want:
        return
    import harness

    have = os.path.dirname(os.path.abspath(harness.__file__))
    if os.path.realpath(have) != os.path.realpath(want):
        raise pytest.UsageError(f"the suite process imported harness from {have}, but attn-harness runs from "
                                f"{want}; a different 'harness' package shadows it (PYTHONPATH?)")


def pytest_unconfigure(config):
    prev = getattr(config, "_attention_harness_prev_profile", None)
    if prev is not None:
        from hypothesis import settings

        settings.load_profile(prev)


def dtypes_for(hc, spec) -> list:
    return hc.dtypes if hc.dtypes is not None else hc.impl_dtypes.get(spec, ["float32"])


def pytest_report_header(config):
    hc = _config(config)
    per = {",".join(dtypes_for(hc, s)) for s in hc.specs}
    dts = per.pop() if len(per) == 1 else ";".join(f"{s}:{','.join(dtypes_for(hc, s))}" for s in hc.specs)
    return (f"attention-harness: impl={','.join(hc.specs)} dtype={dts} device={hc.device} "
            f"profile={hc.profile} seed={hc.seed}{' strict' if hc.strict else ''}")


def pytest_generate_tests(metafunc):
    if "target" not in metafunc.fixturenames:
        return
    hc = _config(metafunc.config)
    params = [(s, d) for s in hc.specs for d in dtypes_for(hc, s)]
    metafunc.parametrize("target_key", params, ids=[f"{s}-{d}" for s, d in params], scope="function")


# --- the object every property receives: harness.target.Target -------------------------------

@pytest.fixture
def target(request, target_key):
    hc = _config(request.config)
    spec, dtype = target_key
    impl = hc.impls.get(spec)
    if impl is None:
        from harness.loading import load

        impl = hc.impls[spec] = load(spec)
    why = impl.capabilities.why_not(device=hc.device, dtype=dtype)
    if why:
        pytest.skip(f"unsupported: {why}")
    if hc.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("skip: --device cuda but CUDA is not available on this machine")
    from harness import probes

    if probes.has_hung(impl):
        # Every later call would be refused at once, yet hypothesis would still draw and shrink
        # cases around the refusals: end the property here, with the reason.
        pytest.fail(f"{impl.name} hung on an earlier call (over the --call-timeout); not calling it again",
                    pytrace=False)
    probes.UNSUPPORTED_CASES.clear()
    from harness import ulps

    ulps.clear()
    t = Target(impl, dtype, hc.device, hc.case, request.node, hc.forward_factor, hc.backward_factor)
    t.forbid_ops = list(hc.forbid_ops)
    t.replay_example = hc.example
    t.seed, t.reruns = hc.seed, hc.reruns
    request.node._harness_target = t
    return t


# --- results ---------------------------------------------------------------------------------

def pytest_collection_modifyitems(session, config, items):
    """Record every example's other drawn arguments (cut points, perturbation kinds...) so a
    counterexample replays exactly; with --case/--example, replace them. Hypothesis exposes
    ``inner_test`` for wrappers like this one."""
    from hypothesis import seed as hypothesis_seed

    hc = _config(config)
    for item in items:
        if "target" in getattr(item, "fixturenames", ()) and hasattr(getattr(item, "obj", None), "hypothesis"):
            # hypothesis's public @seed, per test: the same seed for every property, whichever
            # subset runs, so a failure replays from its command; other projects' tests untouched.
            hypothesis_seed(hc.seed)(item.obj)
        h = getattr(getattr(item, "obj", None), "hypothesis", None)
        if h is None or getattr(h.inner_test, "_harness_wrapped", False):
            continue
        inner = h.inner_test

        def recording(*args, __inner=inner, **kwargs):
            t = kwargs.get("target")
            if isinstance(t, Target):
                # The wrapper outlives this session (in-process harness.check() runs again in the
                # same interpreter): read the replay request from the target, not from this hc.
                example = t.replay_example
                if t._replay and example:
                    kwargs.update({k: v for k, v in example.items() if k in kwargs})
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


def _repro(item, hc, spec, dtype, case, extras=None) -> str:
    cmd = ["attn-harness", "check", "--impl", spec, "--device", hc.device, "--dtype", dtype,
           "--suite", _suite(item), "--property", item.originalname, "--seed", str(hc.seed)]
    if hc.forbid_ops:
        cmd += ["--forbid-ops", ",".join(hc.forbid_ops)]
    if _suite(item) == "invariance":
        cmd += ["--certify", "invariance"] + (["--reruns", str(hc.reruns)] if hc.reruns else [])
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
    elif outcomes.unsatisfiable(call.excinfo):
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
        status = outcomes.exc_status(call.excinfo)
        msg = outcomes.message(call.excinfo)
        _store(item, hc, spec, dtype, tier, status, msg, t, rep)
        if not enforced(tier, hc.strict):
            # Reported, never failing: shown by pytest as xfail with the tier as the reason.
            rep.outcome = "skipped"
            rep.wasxfail = f"{tier} tier (not enforced{'' if tier == 'info' else '; use --strict'}): {msg.splitlines()[0][:200]}"


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
    """The docstring's first paragraph on one line: a first physical line ends mid-sentence."""
    import inspect

    para = (inspect.cleandoc(item.function.__doc__ or "")).split("\n\n")[0]
    return " ".join(para.split())


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
    if getattr(t, "certificate", None) is not None:
        res["certificate"] = t.certificate  # the invariance tier's record (harness.certify files it apart)
    if status in ("fail", "error"):
        from harness import ulps

        numbers = ulps.take()  # the failing comparison's ulps and the rule applied
        res["ulps"] = numbers.get("ulps")
        res["rule"] = numbers.get("rule")
    if status == "pass" and res["unsupported_cases"]:
        res["message"] = (f"{res['unsupported_cases']} of {res['cases']} cases unsupported (NotImplementedError), "
                          f"the rest passed; last: {_unsupported_cases()[-1]}")
    if status in ("fail", "error") and case is not None:
        more = "".join(f", {k}={v!r}" for k, v in (extras or {}).items())
        res["message"] = f"{message}\ncounterexample: {case.short()}{more}\nseed: {hc.seed}"
    item.config._attention_harness_results.append(res)
    if item.config.getoption("attn_progress"):
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
    line = "HARNESS-PROGRESS " + json.dumps(event, default=str)  # as --attn-results writes them
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
    path = config.getoption("attn_results")
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
    if item.config.getoption("attn_progress") and "target_key" in getattr(getattr(item, "callspec", None), "params", {}):
        spec, dtype = item.callspec.params["target_key"]
        _progress(item.config, {"running": {"nodeid": item.nodeid, "impl": spec, "suite": _suite(item),
                                            "property": item.originalname,
                                            "dtype": dtype, "tier": _tier(item),
                                            "doc": _doc(item)}})


def _harness_items(items) -> list:
    out = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "target_key" in params:
            out.append((item, {"suite": _suite(item), "property": item.originalname, "dtype": params["target_key"][1],
                               "tier": _tier(item), "doc": _doc(item)}))
    return out


def pytest_collection_finish(session):
    config = session.config
    items = _harness_items(session.items)
    if config.getoption("attn_progress"):
        # The whole selection, so a run that ends early can account for every property it never reached.
        _progress(config, {"collected": len(session.items), "items": [d for _, d in items]})
    stop = config.getoption("attn_stop_early")
    if stop:
        _stop_early(session, items, json.loads(stop))


def _stop_early(session, items, stop: dict) -> None:
    """The kernel cannot run the base case (harness.preload called it): the base case is its
    error and nothing else runs."""
    from harness.accounting import not_run_result

    hc = _config(session.config)
    base = stop.get("base") or {}
    for item, d in items:
        spec = item.callspec.params["target_key"][0]
        if d["property"] == "test_base_case":
            msg = base.get(d["dtype"]) or base.get("*") or stop["reason"]
            _store(item, hc, spec, d["dtype"], d["tier"], "error", msg, None, None)
            continue
        res = not_run_result(d, f"stopped after the base case: {stop['reason']}", hc.device, spec, hc.seed)
        item.config._attention_harness_results.append(res)
        if item.config.getoption("attn_progress"):
            _progress(item.config, {"impl": spec, "suite": d["suite"], "property": d["property"], "dtype": d["dtype"],
                                    "status": res["status"], "tier": d["tier"],
                                    "enforced": enforced(d["tier"], hc.strict), "result": res})
    session.items[:] = []
