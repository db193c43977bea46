"""Issue 22: a run that a broken kernel cannot hang, truncate or flood. Each finding of the issue
is reproduced here with a small broken kernel, as a new user would write it:

1. a module that hangs at import        -> test_a_module_hanging_at_import_is_a_load_error_and_others_run
2. a segfaulting kernel                  -> test_a_segfaulting_kernel_accounts_for_every_property
3. a kernel that can never run           -> test_a_kernel_that_cannot_run_is_stopped_after_the_base_case,
                                            test_an_info_property_whose_every_call_raised_is_not_a_pass
4. a PASS headline that says "3 fail"    -> test_strict_findings_headline, test_headline_counts_findings_apart
5. usage-error latency                   -> scripts/bench-usage-errors (a benchmark; here only that no
                                            torch is imported on that path)
6. spec mistakes get no help             -> test_spec_mistakes_get_a_suggestion
7. output conventions                    -> the paths on stdout (finding 1's run), test_check_help_*,
                                            test_every_option_has_help, test_show_kernel_output_*
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
import torch.nn.functional as F

def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    print("KERNEL-SAYS-HI")
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                          scale=scale, enable_gqa=enable_gqa)

def helper(x):
    return x
"""


def run(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


def write(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))
    return str(tmp_path / name)


def statuses(impl):
    out = {}
    for r in impl["results"]:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


# --- 5 and 6: usage errors, before torch, with suggestions ---------------------------------------

NO_TORCH = """
import sys
from harness.cli import main
rc = main(sys.argv[1:])
print("RC", rc, "torch" in sys.modules)
"""


def cli_without_torch(*args, cwd):
    r = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    return last, r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--impl", "./good.py"], "did you mean ./good.py:attn?"),
    (["--impl", "./good.py:atn"], "has no attribute 'atn'; did you mean ./good.py:attn?"),
    (["--impl", "./good.py:"], "missing function name after ':'; did you mean ./good.py:attn?"),
    (["--impl", "./god.py:attn"], "file not found: ./god.py; did you mean ./good.py:attn?"),
    (["--impl", "sdpa-mat"], "unknown built-in; did you mean sdpa-math?"),
    (["--impl", "no_such_pkg.mod:f"], "cannot import module 'no_such_pkg.mod'"),
    (["--impl", "harness.reference:missing"], "did you mean harness.reference:attention_reference?"),
    (["--impl", "sdpa", "--jobs", "0"], "--jobs must be >= 1"),
    (["--impl", "sdpa", "--load-timeout", "0"], "--load-timeout must be > 0"),
    (["--impl", "sdpa", "--call-timeout", "-1"], "--call-timeout must be >= 0"),
    (["--impl", "sdpa", "--dtype", "float8"], "unknown dtype"),
    (["--impl", "sdpa", "--suite", "nope"], "unknown suite"),
])
def test_spec_mistakes_get_a_suggestion_before_torch_is_imported(args, needle, tmp_path):
    write(tmp_path, "good.py", GOOD)
    last, err = cli_without_torch("check", *args, cwd=tmp_path)
    assert last == "RC 2 False", (last, err)  # exit 2, and torch was never imported
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_a_missing_attribute_lists_the_files_qkv_callables(tmp_path):
    write(tmp_path, "k.py", """
        def flash(q, k, v, attn_mask=None, **kw): ...
        def attention(query, key, value, **kw): ...
        def helper(x): ...
        class MyAdapter(harness.Adapter): ...
    """)
    last, err = cli_without_torch("check", "--impl", "k.py:flsh", cwd=tmp_path)
    assert last == "RC 2 False"
    assert "did you mean k.py:flash?" in err and "attention" in err and "MyAdapter" in err and "helper" not in err


def test_names_made_at_run_time_are_left_to_the_loader(tmp_path):
    from harness.cli.spec_check import check_spec

    write(tmp_path, "dyn.py", "from torch.nn.functional import *\n")
    write(tmp_path, "glob.py", "globals()['attn'] = print\n")
    write(tmp_path, "cond.py", "try:\n    from fast import attn\nexcept ImportError:\n    def attn(q, k, v, **kw): ...\n")
    for name in ("dyn.py", "glob.py", "cond.py"):
        check_spec(f"{tmp_path / name}:attn")  # no usage error: only the import can tell


def test_builtin_names_without_torch_match_the_builtins():
    from harness import builtins
    from harness.cli.spec_check import _builtin_names

    assert _builtin_names() == tuple(builtins.BUILTINS)


# --- 7: help ----------------------------------------------------------------------------------

def test_check_help_has_a_description_and_the_exit_codes():
    r = run("check", "--help")
    assert r.returncode == 0
    assert "exit status" in r.stdout and "130" in r.stdout and "did not load" in r.stdout
    assert "paths of the written reports go to stdout" in " ".join(r.stdout.split())


def test_every_option_has_help():
    import argparse

    from harness.cli import build_parser

    missing = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {a.option_strings[0]}" for a in sub._actions
                            if a.option_strings and not a.help and a.dest != "help"]
    assert not missing, missing


# --- 3: the signature, up front --------------------------------------------------------------

def test_signature_problem_names_what_is_missing():
    from harness.preload import signature_problem

    def two(q, k):
        return q

    def no_keywords(q, k, v):
        return q

    def extra(q, k, v, block_size, **kw):
        return q

    def fine(q, k, v, **kw):
        return q

    def sdpa_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return query

    msg = signature_problem(two)
    assert "two(q, k)" in msg and "missing value (passed positionally)" in msg
    assert "missing attn_mask, dropout_p, is_causal, scale, enable_gqa (passed by keyword)" in msg
    assert "missing attn_mask, dropout_p, is_causal, scale, enable_gqa" in signature_problem(no_keywords)
    assert "requires block_size" in signature_problem(extra)
    assert signature_problem(fine) is None and signature_problem(sdpa_like) is None
    import torch.nn.functional as F

    from harness.contract import Adapter

    assert signature_problem(F.scaled_dot_product_attention) is None
    assert signature_problem(Adapter()) is None


# --- 4: headlines -------------------------------------------------------------------------------

def res(status, tier="gate", suite="s", prop="p", dtype="float32"):
    return {"suite": suite, "property": prop, "dtype": dtype, "tier": tier, "status": status}


def test_headline_counts_findings_apart():
    from harness import accounting

    rs = [res("pass")] * 144 + [res("fail", "strict")] * 3
    assert accounting.headline("pass", rs, strict=False) == "PASS (144 pass; 3 strict findings not enforced)"
    assert accounting.headline("fail", rs, strict=True) == "FAIL (3 fail, 144 pass)"
    rs = [res("error")] * 9 + [res("not_run")] * 40 + [res("error", "info")] + [res("error", suite="harness")]
    assert accounting.headline("fail", rs, strict=False) == "FAIL (9 error, 40 not run; 1 info finding not enforced)"
    assert accounting.headline("unsupported", [], strict=False) == "UNSUPPORTED (nothing ran)"


def test_fill_not_run_accounts_for_every_selected_property():
    from harness import accounting

    selected = [{"suite": "a", "property": f"p{i}", "dtype": d, "tier": "gate"} for i in range(4) for d in ("f", "g")]
    results = [{**selected[0], "status": "pass"}, {**selected[3], "status": "error"}]
    n = accounting.fill_not_run(results, selected, "it crashed", "cpu", "k.py:attn", 1)
    assert n == 6 and len(results) == len(selected)
    assert {accounting.key(r) for r in results} == {accounting.key(s) for s in selected}
    assert all(r["message"] == "not run: it crashed" for r in results if r["status"] == "not_run")


def test_not_run_is_in_every_report_format():
    from harness.accounting import not_run_result
    from harness.report import html as H
    from harness.report.junit import to_junit
    from harness.report.markdown import to_markdown
    from harness.report.model import validate

    item = {"suite": "causal", "property": "test_future_weights_zero", "dtype": "float32", "tier": "gate", "doc": "d"}
    crashed = {**not_run_result(item, "x", "cpu", "k.py:attn", 1), "property": "test_base_case", "status": "error",
               "message": "the test process crashed (SIGSEGV, signal 11)"}
    results = [crashed, not_run_result(item, "the test process crashed 9 times", "cpu", "k.py:attn", 1)]
    impl = {"name": "attn", "spec": "k.py:attn", "verdict": "fail", "capabilities": {}, "description": "",
            "duration_s": 1.0, "results": results, "diagnosis": "the base case call ended the process"}
    rep = {"schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "harness_version": "0.1.0",
           "command": ["attn-harness", "check"], "options": {"device": "cpu", "dtypes": ["float32"]},
           "environment": {}, "implementations": [impl]}
    validate(rep)
    md = to_markdown(rep)
    assert "## Not run" in md and "1 not run (causal::test_future_weights_zero): the test process crashed 9 times" in md
    assert "cannot run the base case, so it was stopped after it: the base case call ended the process" in md
    assert "| not run" in md  # the matrix cell
    page = H.render(rep)
    assert "Not run (the run stopped early)" in page and "the test process crashed 9 times" in page
    assert "could not render" not in page
    assert 'skipped message="not_run' in to_junit(rep)


# --- 3: an info-tier property whose every call raised ------------------------------------------

def test_an_info_property_whose_every_call_raised_is_not_a_pass():
    import harness

    def raises(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        raise RuntimeError("boom")

    rep = harness.check(raises, dtypes=["float32"], suites=["fingerprint"], properties=["test_fingerprint"],
                        profile="quick")
    [r] = [x for x in json.loads(rep.to_json())["implementations"][0]["results"] if x["property"] == "test_fingerprint"]
    assert r["tier"] == "info" and r["status"] == "error", r
    assert "every fingerprint probe raised" in r["message"] and "boom" in r["message"]


# --- whole runs ---------------------------------------------------------------------------------

@pytest.mark.slow  # starts loader processes
def test_the_loader_survives_hangs_and_crashes_and_loads_the_rest(tmp_path):
    from harness.preload import load_isolated

    hangs = write(tmp_path, "hangs.py", "import time\ntime.sleep(10000)\n")
    crashes = write(tmp_path, "crashes.py", "import ctypes\nctypes.string_at(0)\n")
    exits = write(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    good = write(tmp_path, "good.py", GOOD)
    out = load_isolated([f"{hangs}:attn", f"{crashes}:attn", f"{exits}:attn", f"{good}:attn", "sdpa"],
                        load_timeout=2, dtypes=["float32"])
    assert "did not finish within 2 s (--load-timeout)" in out[0].error and f"{hangs}:attn" in out[0].error
    assert "SIGSEGV" in out[1].error and f"{crashes}:attn" in out[1].error
    assert "SystemExit" in out[2].error
    assert out[3].error is None and out[3].name == "attn" and out[3].diagnosis is None
    assert out[4].error is None and out[4].declared


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_module_hanging_at_import_is_a_load_error_and_others_run(tmp_path):
    hangs = write(tmp_path, "hangs.py", "import time\ntime.sleep(10000)\ndef attn(query, key, value, **kw): ...\n")
    good = write(tmp_path, "good.py", GOOD)
    r = run("check", "--impl", f"{hangs}:attn", "--impl", f"{good}:attn", "--load-timeout", "2", "--suite", "isolation",
            "--dtype", "float32", "--profile", "quick", "--report-dir", str(tmp_path / "r"), timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    [line] = [ln for ln in r.stderr.splitlines() if "hangs.py:attn" in ln]
    assert "did not finish within 2 s" in line and "hangs at import" in line
    [impl] = json.loads((tmp_path / "r" / "report.json").read_text())["implementations"]
    assert impl["spec"] == f"{good}:attn" and impl["verdict"] == "pass"
    # stdout is the list of written reports, so `| tail -1` is a path; the kernel's prints stay in its log
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last).is_file()
    assert "KERNEL-SAYS-HI" not in r.stderr


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_segfaulting_kernel_accounts_for_every_property(tmp_path):
    from harness.runner import MAX_RESTARTS, default_suites, property_names

    # Crashes in every property (never in the loader's base-case call): the restart limit is reached.
    in_suites = write(tmp_path, "segv_suites.py", """
        import ctypes, sys
        import torch.nn.functional as F
        def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            f = sys._getframe()
            while f is not None:
                if f.f_code.co_name.startswith("test_"):
                    ctypes.string_at(0)
                f = f.f_back
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                                  scale=scale, enable_gqa=enable_gqa)
    """)
    # Crashes on every call, the base case included: stopped after it.
    always = write(tmp_path, "segv.py", """
        import ctypes
        def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            ctypes.string_at(0)
    """)
    r = run("check", "--impl", f"{in_suites}:attn", "--impl", f"{always}:attn", "--dtype", "float32", "--shards", "1",
            "--profile", "quick", "--report-dir", str(tmp_path / "r"), timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    by = {Path(i["spec"].split(":")[0]).name: i for i in rep["implementations"]}
    selected = len(property_names(default_suites()))
    a = by["segv_suites.py"]
    assert statuses(a) == {"error": MAX_RESTARTS + 1, "not_run": selected - MAX_RESTARTS - 1}, statuses(a)
    not_run = [x for x in a["results"] if x["status"] == "not_run"]
    assert all(f"crashed {MAX_RESTARTS + 1} times" in x["message"] for x in not_run)
    b = by["segv.py"]
    assert statuses(b) == {"error": 1, "not_run": selected - 1}, statuses(b)
    [base] = [x for x in b["results"] if x["status"] == "error"]
    assert base["property"] == "test_base_case" and "SIGSEGV" in base["message"]
    assert "SIGSEGV" in b["diagnosis"]
    assert f"FAIL ({MAX_RESTARTS + 1} error, {selected - MAX_RESTARTS - 1} not run)" in r.stderr
    assert f"FAIL (1 error, {selected - 1} not run)" in r.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Not run" in md and f"{selected - MAX_RESTARTS - 1} not run" in md
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Not run (the run stopped early)" in html and f"at most {MAX_RESTARTS} times" in html


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_kernel_that_cannot_run_is_stopped_after_the_base_case(tmp_path):
    from harness.runner import default_suites, property_names

    wrong = write(tmp_path, "wrongsig.py", "def attn(q, k):\n    return q\n")
    numpy_out = write(tmp_path, "numpy_out.py", """
        import torch.nn.functional as F
        def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                                  scale=scale, enable_gqa=enable_gqa).detach().numpy()
    """)
    r = run("check", "--impl", f"{wrong}:attn", "--impl", f"{numpy_out}:attn", "--dtype", "float32,float16",
            "--profile", "quick", "--report-dir", str(tmp_path / "r"), timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    [w] = [ln for ln in r.stderr.splitlines() if "cannot run" in ln and "signature" in ln]
    assert "missing value" in w and "attn_mask" in w and "stopped after the base case" in w
    [n] = [ln for ln in r.stderr.splitlines() if "cannot run" in ln and "ndarray" in ln]
    assert "float32, float16" in n
    assert r.stderr.count("unexpected keyword argument") == 0  # not one line per property
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    selected = 2 * len(property_names(default_suites()))
    for impl in rep["implementations"]:
        assert impl["verdict"] == "fail" and impl["diagnosis"]
        assert statuses(impl) == {"error": 2, "not_run": selected - 2}, statuses(impl)
        assert {x["property"] for x in impl["results"] if x["status"] == "error"} == {"test_base_case"}
        assert not any(x["status"] == "pass" for x in impl["results"])  # the fingerprint included
    assert r.stderr.count(f"FAIL (2 error, {selected - 2} not run)") == 2


@pytest.mark.slow  # a whole `attn-harness check` run
def test_strict_findings_headline(tmp_path):
    # torch SDPA on CPU lets NaN in masked slots through: a strict finding, reported, not enforced
    r = run("check", "--impl", "sdpa", "--suite", "isolation", "--suite", "strict", "--dtype", "float32",
            "--profile", "quick", "--report-dir", str(tmp_path / "r"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sdpa: PASS (2 pass; 1 strict finding not enforced)" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_show_kernel_output_lets_the_kernels_prints_through(tmp_path):
    good = write(tmp_path, "good.py", GOOD)
    r = run("check", "--impl", f"{good}:attn", "--suite", "isolation", "--property", "test_batch_isolation",
            "--dtype", "float32", "--profile", "quick", "--show-kernel-output", "--report-dir", str(tmp_path / "r"),
            timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "    | KERNEL-SAYS-HI" in r.stderr
