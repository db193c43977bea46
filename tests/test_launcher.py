"""The fork server (harness.launcher): a forked suite process must be indistinguishable, to the
runner, from a started one: its output, exit status, signals, working directory and imports."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness import launcher as L
from harness import runner as R

pytestmark = pytest.mark.skipif(not L.usable("cpu"), reason="the fork server runs on Linux CPU runs only "
                                "(or ATTN_HARNESS_FORKSERVER=0 is set)")


@pytest.fixture(scope="module")
def server():
    s = L.start(R.suite_environment(R.CheckOptions(specs=[])), "cpu")
    assert s is not None
    yield s
    s.close()


def write_test(tmp_path, body):
    f = tmp_path / "test_probe.py"
    f.write_text(body)
    return [str(f), "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path)]


def finish(child, timeout=60):
    out = child.stdout.read()
    return child.wait(timeout), out


def test_a_forked_process_runs_pytest_with_its_own_cwd_output_and_exit_code(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = write_test(tmp_path, "import os, sys\n"
                                "def test_where():\n"
                                "    print('CWD', os.getcwd(), 'TORCH', 'torch' in sys.modules, flush=True)\n"
                                "    print('ERR on stderr', file=sys.stderr, flush=True)\n"
                                "def test_fails():\n"
                                "    assert False\n")
    child = server.spawn([*args, "-s"], str(work))
    assert child is not None and child.pid != os.getpid()
    rc, out = finish(child)
    assert rc == 1, out  # pytest's own code: a test failed
    assert f"CWD {work}" in out and "TORCH True" in out  # preloaded, and in the directory asked for
    assert "ERR on stderr" in out  # stderr comes on the same stream, as with stderr=STDOUT
    assert "1 failed, 1 passed" in out


def test_a_clean_run_exits_0_and_two_children_run_at_once(server, tmp_path):
    args = write_test(tmp_path, "import time\ndef test_ok():\n    time.sleep(0.5)\n")
    a, b = server.spawn(args, str(tmp_path)), server.spawn(args, str(tmp_path))
    assert a.pid != b.pid
    assert finish(a)[0] == 0 and finish(b)[0] == 0


def test_a_segfault_reads_as_the_signal_as_popen_would_report_it(server, tmp_path):
    args = write_test(tmp_path, "import ctypes\ndef test_crash():\n    ctypes.string_at(0)\n")
    rc, out = finish(server.spawn(args, str(tmp_path)))
    assert rc == -signal.SIGSEGV, out


def test_kill_ends_a_hung_child_with_sigkill(server, tmp_path):
    args = write_test(tmp_path, "import time\ndef test_hang():\n    time.sleep(600)\n")
    child = server.spawn(args, str(tmp_path))
    time.sleep(0.5)
    child.kill()
    assert finish(child)[0] == -signal.SIGKILL


def test_the_runner_forks_through_the_server_and_gets_the_same_results(server):
    # The same suite, started and forked: the same properties, statuses and counterexamples.
    opts = R.CheckOptions(specs=["sdpa"], profile="quick", dtypes=["float32"], suites=["isolation", "causal"], seed=1)
    started = R.run_one(opts, "sdpa")
    forked = R.run_one(opts, "sdpa", launcher=server)

    def key(out):
        return [(r["suite"], r["property"], r["dtype"], r["status"], r["cases"]) for r in out["results"]]

    assert forked["problem"] is None and key(forked) == key(started) and len(key(forked)) >= 5
    assert forked["command"][:3] == R.suite_entry()  # the log names a command that reproduces it


def test_a_dead_server_means_started_processes(tmp_path):
    s = L.start(R.suite_environment(R.CheckOptions(specs=[])), "cpu")
    s._proc.kill()
    s._proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and s.spawn(write_test(tmp_path, "def test_ok():\n    pass\n"), str(tmp_path)):
        time.sleep(0.05)  # the reader thread may not have seen the end yet
    assert s.spawn(["-q"], str(tmp_path)) is None  # the runner then starts the process itself
    s.close()


def test_where_it_is_not_used(monkeypatch):
    assert not L.usable("cuda")  # a CUDA run keeps started processes
    monkeypatch.setenv("ATTN_HARNESS_FORKSERVER", "0")
    assert not L.usable("cpu") and L.start({}, "cpu") is None


def test_the_server_leaves_when_closed_and_never_imports_an_implementation(tmp_path):
    s = L.start(R.suite_environment(R.CheckOptions(specs=[])), "cpu")
    pid = s._proc.pid
    args = write_test(tmp_path, "import sys\ndef test_mods():\n"
                                "    assert 'harness.builtins' not in sys.modules, 'the server loaded implementations'\n")
    assert finish(s.spawn(args, str(tmp_path)))[0] == 0
    s.close()
    assert s._proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_building_the_command_line_imports_no_torch():
    # `check` starts the server before this process pays for torch; any subcommand module that
    # imports torch at module level undoes that (and slows `--version` and `--help` by a second).
    r = subprocess.run([sys.executable, "-c", "import sys; from harness.cli import build_parser; build_parser(); "
                        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    from harness import cases
    from harness.cli import model

    assert model.DTYPES == tuple(cases.DTYPES)  # the parser's names, kept without importing torch
