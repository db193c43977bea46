"""Direct tests of ``harness.runner``: the command it builds, how it reads a suite process's
stream, how it recovers from a crash, hang or outside signal, and the verdict.

These paths decide what ends up in a report when a kernel misbehaves badly (a segfault costs
one property, a hang is named, a repro names the spec as typed); through the CLI they take
minutes and a real crashing kernel to reach. Here the process is faked (``subprocess.Popen``
or ``_attempt``), and one real, tiny run (one property, float32, quick profile) checks that the
pieces fit together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import runner as R

ROOT = Path(__file__).resolve().parents[1]


def opts(**kw):
    return R.CheckOptions(specs=[], **kw)


def result(suite="causal", prop="test_x", tier="gate", status="pass", **kw):
    return {"suite": suite, "property": prop, "tier": tier, "status": status, **kw}


# --- pure helpers -----------------------------------------------------------------------------

def test_absolute_spec_only_touches_relative_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert R.absolute_spec("k.py:attn") == f"{tmp_path}/k.py:attn"
    assert R.absolute_spec("sub/k:attn") == f"{tmp_path}/sub/k:attn"
    assert R.absolute_spec("/abs/k.py:attn") == "/abs/k.py:attn"
    assert R.absolute_spec("mypkg.attn:fn") == "mypkg.attn:fn"
    assert R.absolute_spec("sdpa") == "sdpa"


def test_suites_and_property_names_come_from_the_shipped_suite_files():
    avail = R.available_suites()
    assert {"correctness", "causal", "fingerprint", *R.OPT_IN_SUITES} <= set(avail)
    assert avail == sorted(avail)
    assert set(R.default_suites()) == set(avail) - set(R.OPT_IN_SUITES) - set(R.FLASH_SUITES)
    assert set(R.default_suites("flash_attn")) == set(avail) - set(R.OPT_IN_SUITES)
    names = R.property_names(["fingerprint"])
    assert "test_default_scale" in names and "test_deterministic" in names
    assert all(n.startswith("test_") for n in names) and "_expect" not in names
    assert R.property_names(["no_such_suite"]) == []
    assert set(R.property_names()) >= set(names)  # default suites include fingerprint


def test_pytest_command_carries_every_option():
    o = opts(device="cuda", dtypes=["float32", "bfloat16"], profile="quick", suites=["causal", "padding"],
             properties=["test_a", "test_b"], strict=True, seed=7, case="Case(L=1)", example='{"which": 1}',
             call_timeout=2.5, forward_factor=4.0, backward_factor=5.0, forbid_ops=["aten::a*", "aten::b"],
             extra_pytest_args=["-x"])
    cmd = R._pytest_command(o, "mypkg.attn:fn")
    assert cmd[:3] == [sys.executable, "-m", "harness.suite_process"]  # pytest, minus interpreter shutdown
    assert cmd[3:5] == [str(R.suites_dir() / "test_causal.py"), str(R.suites_dir() / "test_padding.py")]

    def after(flag):
        return cmd[cmd.index(flag) + 1]

    assert after("--attn-impl") == "mypkg.attn:fn" and after("--attn-device") == "cuda"
    assert after("--attn-dtype") == "float32,bfloat16" and after("--attn-profile") == "quick"
    assert after("--attn-seed") == "7" and after("-k") == "test_a or test_b"
    assert after("--attn-case") == "Case(L=1)" and after("--attn-example") == '{"which": 1}'
    assert after("--attn-call-timeout") == "2.5" and after("--attn-forward-factor") == "4.0"
    assert after("--attn-backward-factor") == "5.0" and after("--attn-forbid-ops") == "aten::a*,aten::b"
    assert "--attn-strict" in cmd and "--attn-progress" in cmd and cmd[-1] == "-x"
    # a project's own pytest config must not change how the suites run
    assert after("-c") == os.devnull and after("--rootdir") == str(R.suites_dir())


def test_pytest_command_leaves_out_what_was_not_asked_for():
    cmd = R._pytest_command(opts(), "sdpa")
    for flag in ("--attn-dtype", "--attn-strict", "--attn-seed", "-k", "--attn-case", "--attn-example",
                 "--attn-forbid-ops"):
        assert flag not in cmd, flag
    files = [a for a in cmd if a.endswith(".py")]
    assert files == [str(R.suites_dir() / f"test_{s}.py") for s in R.default_suites()]


def test_suite_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    env = R.suite_environment(opts())
    assert env["PYTHONUNBUFFERED"] == "1" and env["OMP_NUM_THREADS"] == "1"
    import harness

    assert env["ATTN_HARNESS_PACKAGE_DIR"] == os.path.dirname(os.path.abspath(harness.__file__))
    assert "TRITON_INTERPRET" not in env
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the user's choice wins
    env = R.suite_environment(opts(triton_interpret=True))
    assert env["OMP_NUM_THREADS"] == "6" and env["TRITON_INTERPRET"] == "1"


@pytest.mark.parametrize("rc,timed_out,needle", [
    (-11, False, "crashed (SIGSEGV, signal 11)"),
    (-6, False, "crashed (SIGABRT, signal 6)"),
    (-15, False, "SIGTERM from outside the harness"),
    (-9, False, "SIGKILL from outside the harness (out of memory?"),
    (-9, True, "killed by signal 9"),
    (-2, False, "killed by signal 2"),
])
def test_signal_problem_names_the_signal(rc, timed_out, needle):
    assert needle in R._signal_problem(rc, timed_out)


# --- verdict ----------------------------------------------------------------------------------

@pytest.mark.parametrize("results,strict,want", [
    ([result(), result(tier="info", status="fail")], False, "pass"),  # info never fails
    ([result(), result(status="fail")], False, "fail"),
    ([result(), result(status="error")], False, "fail"),
    ([result(), result(tier="strict", status="fail")], False, "pass"),
    ([result(), result(tier="strict", status="fail")], True, "fail"),
    ([result(status="unsupported"), result(status="skip")], False, "unsupported"),
    # a gate that never passed certified nothing, whatever the other tiers did
    ([result(status="unsupported"), result(tier="info", status="pass")], False, "unsupported"),
    ([result(status="pass"), result(status="unsupported")], False, "pass"),
    # only strict/info properties selected: judged by those
    ([result(tier="info", status="pass")], False, "pass"),
    ([result(tier="info", status="unsupported")], False, "unsupported"),
    ([], False, "unsupported"),
])
def test_verdict(results, strict, want):
    assert R.verdict(results, strict) == want


# --- one suite process, faked -----------------------------------------------------------------

class FakePopen:
    """Stands in for the suite process: yields the given lines; with ``hang`` it blocks after
    them until killed, as a kernel stuck in C does."""

    def __init__(self, lines, rc=0, hang=False):
        self.lines, self.rc, self.hang = lines, rc, hang
        self.killed = threading.Event()
        self.seen = {}

    def __call__(self, cmd, **kw):
        self.seen = dict(cmd=cmd, **kw)
        self.returncode = None
        self.stdout = self._stream()
        return self

    def _stream(self):
        yield from self.lines
        if self.hang:
            assert self.killed.wait(10), "the runner never killed the hung process"

    def kill(self):
        self.killed.set()
        self.rc = -9

    def wait(self):
        self.returncode = self.rc


def progress(event):
    return "HARNESS-PROGRESS " + json.dumps(event) + "\n"


RUNNING = {"nodeid": "test_causal.py::test_x[sdpa-float32]", "impl": "sdpa", "suite": "causal",
           "property": "test_x", "dtype": "float32", "tier": "gate"}


def test_attempt_reads_results_as_they_stream(monkeypatch):
    res = result(dtype="float32")
    fake = FakePopen([
        "collecting ...\n",
        progress({"collected": 2}),
        progress({"running": RUNNING}),
        "some kernel print HARNESS-PROGRESS " + json.dumps({"suite": "causal", "result": res}) + "\n",
        progress({"running": {**RUNNING, "nodeid": "n2", "property": "test_y"}}),
        "HARNESS-PROGRESS {not json\n",
    ], rc=1)
    monkeypatch.setattr(R.subprocess, "Popen", fake)
    events, log, results = [], [], []
    import time

    rc, timed_out, running, done = R._attempt(["cmd"], {"E": "1"}, time.time() + 60, log, results, events.append)
    assert (rc, timed_out) == (1, False)
    assert results == [res] and done == [RUNNING["nodeid"]]
    assert running["nodeid"] == "n2"  # in flight when the stream ended: named, not finished
    assert events == [{"collected": 2}, {"suite": "causal"}]  # running events are not progress
    assert "collecting ...\n" in log and "some kernel print \n" in log
    assert not any("HARNESS-PROGRESS" in line for line in log)
    # its own throwaway working directory: not the caller's (a clone's harness/ would shadow)
    assert fake.seen["cwd"] != os.getcwd() and not os.path.exists(fake.seen["cwd"])
    assert fake.seen["env"] == {"E": "1"}


def test_attempt_kills_a_process_past_its_deadline(monkeypatch):
    import time

    fake = FakePopen([progress({"running": RUNNING})], hang=True)
    monkeypatch.setattr(R.subprocess, "Popen", fake)
    rc, timed_out, running, done = R._attempt(["cmd"], {}, time.time() - 1, [], [], None)
    assert timed_out and rc == -9 and running == RUNNING and done == []


# --- run_one's recovery, with the attempts faked -----------------------------------------------

class FakeAttempts:
    """Replaces ``_attempt``: each call plays the next scripted outcome."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.cmds = []

    def __call__(self, cmd, env, deadline, log_lines, results, on_progress, launcher=None):
        self.cmds.append(cmd)
        rc, timed_out, running, finished = self.outcomes.pop(0)
        for _, res in finished:
            results.append(res)
        log_lines.append(f"attempt {len(self.cmds)}\n")
        return rc, timed_out, running, [n for n, _ in finished]


def test_run_one_clean_run_and_log(tmp_path, monkeypatch):
    fake = FakeAttempts((0, False, {}, [("a", result())]))
    monkeypatch.setattr(R, "_attempt", fake)
    log = tmp_path / "logs" / "impl.log"
    out = R.run_one(opts(), "sdpa", log_path=log)
    assert out["results"] == [result()] and out["returncode"] == 0
    assert out["problem"] is None and not out["problem_recorded"]
    assert len(fake.cmds) == 1 and "--deselect" not in fake.cmds[0]
    assert log.read_text().startswith(" ".join(out["command"]) + "\n\n") and "attempt 1" in log.read_text()


def test_run_one_resumes_after_a_crash_and_records_the_property_in_flight(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = ("test_isolation.py::test_a[k-float32]", result("isolation", "test_a"))
    crashed = {**RUNNING, "suite": "decode", "property": "test_decode", "nodeid": "test_decode.py::test_decode[k]"}
    later = ("test_decode.py::test_chunked[k]", result("decode", "test_chunked"))
    fake = FakeAttempts((-11, False, crashed, [done]), (0, False, {}, [later]))
    monkeypatch.setattr(R, "_attempt", fake)
    out = R.run_one(opts(dtypes=["float32"]), "k.py:attn")
    assert len(fake.cmds) == 2
    second = fake.cmds[1]
    deselected = [second[i + 1] for i, a in enumerate(second) if a == "--deselect"]
    assert deselected == [done[0], crashed["nodeid"]]
    statuses = [(r["suite"], r["property"], r["status"]) for r in out["results"]]
    assert statuses == [("isolation", "test_a", "pass"), ("decode", "test_decode", "error"),
                        ("decode", "test_chunked", "pass")]
    err = out["results"][1]
    assert "SIGSEGV" in err["message"] and "running decode::test_decode [float32]" in err["message"]
    # the repro names the spec as typed; the message offers the sequence that ran before it
    assert err["repro"] == ("attn-harness check --impl k.py:attn --device cpu --dtype float32 "
                            "--suite decode --property test_decode")
    assert "the sequence: attn-harness check --impl k.py:attn" in err["message"]
    assert "--suite isolation --suite decode --property test_a --property test_decode" in err["message"]
    assert err["tier"] == "gate" and "nodeid" not in err
    assert out["problem_recorded"] and "SIGSEGV" in out["problem"]
    assert R.verdict(out["results"], False) == "fail"
    assert "restarted after a crash (restart 1)" in out["log"]


def test_run_one_stops_restarting_a_kernel_that_always_crashes(monkeypatch):
    n = iter(range(100))

    class Always(FakeAttempts):
        def __call__(self, cmd, env, deadline, log_lines, results, on_progress, launcher=None):
            self.cmds.append(cmd)
            return -11, False, {**RUNNING, "nodeid": f"id{next(n)}"}, []

    fake = Always()
    monkeypatch.setattr(R, "_attempt", fake)
    out = R.run_one(opts(), "sdpa")
    assert len(fake.cmds) == R.MAX_RESTARTS + 1
    assert [r["status"] for r in out["results"]] == ["error"] * (R.MAX_RESTARTS + 1)
    assert out["problem"].count("SIGSEGV") == 1  # the same problem is named once


@pytest.mark.parametrize("rc,timed_out,needle", [
    (-9, True, "timed out after 5 s (whole implementation run)"),
    (-15, False, "SIGTERM from outside the harness"),
])
def test_run_one_does_not_resume_after_a_timeout_or_an_outside_signal(monkeypatch, rc, timed_out, needle):
    fake = FakeAttempts((rc, timed_out, RUNNING, []), (0, False, {}, [("x", result())]))
    monkeypatch.setattr(R, "_attempt", fake)
    out = R.run_one(opts(impl_timeout=5), "sdpa")
    assert len(fake.cmds) == 1
    [err] = out["results"]
    assert err["status"] == "error" and needle in err["message"] and needle in out["problem"]
    assert "the sequence" not in err["message"]  # nothing ran before it


def test_run_one_reports_a_pytest_failure_without_a_property_in_flight(monkeypatch):
    class Usage(FakeAttempts):
        def __call__(self, cmd, env, deadline, log_lines, results, on_progress, launcher=None):
            self.cmds.append(cmd)
            log_lines.append("ERROR: unrecognized arguments: --attn-bogus\n")
            return 4, False, {}, []

    monkeypatch.setattr(R, "_attempt", Usage())
    out = R.run_one(opts(), "sdpa")
    assert out["problem"] == "pytest exited with status 4: ERROR: unrecognized arguments: --attn-bogus"
    assert out["results"] == [] and not out["problem_recorded"]


def test_run_one_rewrites_repro_commands_to_the_spec_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = f"{tmp_path}/k.py:attn"
    res = result(status="fail", repro=f"attn-harness check --impl {absolute} --device cpu --dtype float32")
    ok = result(prop="test_ok", repro="")
    monkeypatch.setattr(R, "_attempt", FakeAttempts((1, False, {}, [("a", res), ("b", ok)])))
    out = R.run_one(opts(), "k.py:attn")
    assert out["results"][0]["repro"] == "attn-harness check --impl k.py:attn --device cpu --dtype float32"
    assert out["results"][1]["repro"] == ""
    assert absolute in out["command"]  # the suite process itself gets the absolute path


# --- one real run -----------------------------------------------------------------------------

def test_one_real_run_of_a_single_failing_property(monkeypatch):
    # The smallest real scope: one fingerprint property, float32, quick profile. A relative spec,
    # so the repro rewrite is checked against what the plugin actually writes.
    monkeypatch.chdir(ROOT)
    spec = "fixtures/planted.py:missing_scale"
    o = opts(dtypes=["float32"], suites=["fingerprint"], profile="quick", properties=["test_default_scale"],
             impl_timeout=300)
    out = R.run_one(o, spec)
    assert out["returncode"] == 1 and out["problem"] is None, out["log"][-2000:]
    [res] = out["results"]
    assert (res["suite"], res["property"], res["tier"], res["status"]) == \
        ("fingerprint", "test_default_scale", "gate", "fail")
    assert "detected '1'" in res["message"]
    assert res["repro"].startswith(f"attn-harness check --impl {spec} --device cpu --dtype float32 "
                                   "--suite fingerprint --property test_default_scale")
    assert R.verdict(out["results"], False) == "fail"


# --- shards: one implementation's suites in several processes at once ------------------------------

def test_shard_suites_balances_by_weight_and_keeps_each_group_in_order():
    suites = R.default_suites()
    groups = R.shard_suites(suites, 2)
    assert len(groups) == 2 and sorted(s for g in groups for s in g) == sorted(suites)
    for g in groups:
        assert g == [s for s in suites if s in g]  # original order inside a group
    load = [sum(R.SUITE_WEIGHTS.get(s, 1.0) for s in g) for g in groups]
    assert max(load) - min(load) <= max(R.SUITE_WEIGHTS.values())
    assert R.shard_suites(["decode"], 2) == [["decode"]]  # never an empty shard


def test_shard_count_auto_only_spares_cores(monkeypatch):
    monkeypatch.setattr(R, "available_cores", lambda: 2)
    assert R.shard_count(0, "cpu") == 2
    assert R.shard_count(0, "cpu", parallel_impls=2) == 1  # --jobs 2 already uses both cores
    assert R.shard_count(0, "cuda") == 1
    assert R.shard_count(3, "cuda") == 3  # asked for explicitly
    monkeypatch.setattr(R, "available_cores", lambda: 1)
    assert R.shard_count(0, "cpu") == 1


def test_run_one_merges_shards_in_suite_order_and_sums_the_progress(monkeypatch, tmp_path):
    seen = []

    def fake(o, spec, log_path, on_progress, launcher=None):
        assert o.shards == 1 and log_path is None
        on_progress({"collected": len(o.suites)})
        res = [{"suite": s, "property": "p", "status": "pass"} for s in reversed(o.suites)]
        crashed = "decode" in o.suites
        return {"results": res, "returncode": -11 if crashed else 0, "log": f"log of {o.suites}",
                "problem": "crashed" if crashed else None, "problem_recorded": crashed, "duration_s": 1.0,
                "command": ["pytest", *o.suites]}

    monkeypatch.setattr(R, "_run_processes", fake)
    suites = ["backward", "causal", "correctness", "decode", "padding"]
    out = R.run_one(opts(suites=suites, shards=2), "sdpa", tmp_path / "log.txt", seen.append)
    order = [r["suite"] for r in out["results"]]
    assert sorted(order, key=suites.index) == order and len(order) == len(suites)
    assert {"collected": 5} in seen
    assert out["problem"] == "crashed" and out["problem_recorded"] and out["returncode"] == -11
    assert len(out["commands"]) == 2 and "shard 2/2" in (tmp_path / "log.txt").read_text()


def test_quick_profile_shards_balance_by_its_own_weights():
    suites = R.default_suites()
    w = R.PROFILE_SUITE_WEIGHTS["quick"]
    load = [sum(w.get(s, 0.1) for s in g) for g in R.shard_suites(suites, 2, "quick")]
    assert max(load) - min(load) <= max(w.values())
    assert R.shard_suites(suites, 2, "no-such-profile") == R.shard_suites(suites, 2)


def test_suite_process_skips_assertion_rewriting():
    # Rewriting every module of hypothesis and harness cost each suite process ~2 s when
    # PYTHONDONTWRITEBYTECODE keeps pytest from caching it; no property needs assert introspection.
    cmd = R._pytest_command(R.CheckOptions(specs=["sdpa"]), "sdpa")
    assert "--assert=plain" in cmd
    # ...and none could: a bare assert in a property would fail with an empty message under it.
    import ast

    bare = [f"{p.name}:{n.lineno}" for p in sorted(R.suites_dir().glob("*.py"))
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Assert)]
    assert bare == [], f"assert statements in the suites (their message needs rewriting): {bare}"


def test_suite_process_skips_what_costs_time_at_its_end():
    # pytest's unraisable-exception check ran gc.collect() five times at exit (0.7 s with torch's
    # heap) and interpreter shutdown took another 0.7 s, after the last result had streamed.
    cmd = R._pytest_command(R.CheckOptions(specs=["sdpa"]), "sdpa")
    assert cmd[cmd.index("no:unraisableexception") - 1] == "-p"
    assert cmd[:3] == [sys.executable, "-m", "harness.suite_process"]


def test_suite_process_is_pytest_with_its_exit_code_and_all_its_output(tmp_path):
    (tmp_path / "test_p.py").write_text("def test_a():\n    print('OUT', flush=False)\n\ndef test_b():\n    raise ValueError\n")
    r = subprocess.run([*R.suite_entry(), str(tmp_path / "test_p.py"), "-q", "-s", "-p", "no:cacheprovider", "-c", os.devnull,
                        "--rootdir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "OUT" in r.stdout and "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
