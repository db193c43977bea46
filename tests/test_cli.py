"""The command line as a new user meets it: exit codes, one-line errors, reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


@pytest.mark.parametrize("spec,needle", [
    ("nope.py:f", "file not found"),
    ("nope_builtin", "unknown built-in"),
    ("no_such_pkg.mod:f", "cannot import module"),
    ("harness.reference:missing", "has no attribute"),
    ("harness.reference:NEG_INF", "not callable"),
])
def test_loading_errors_exit_2_with_one_line(spec, needle, tmp_path):
    r = run("check", "--impl", spec, "--report-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and needle in lines[0] and spec in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run("check", "--impl", "sdpa", "--suite", "nope").returncode == 2
    assert run("check", "--impl", "sdpa", "--dtype", "float8").returncode == 2
    assert run("check").returncode == 2
    assert run("frobnicate").returncode == 2


def test_list_shows_builtins_and_why_unavailable():
    r = run("list")
    assert r.returncode == 0
    for name in ("reference", "sdpa", "sdpa-math", "flex", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"):
        assert name in r.stdout
    if "cuda" not in r.stdout.lower() or True:
        assert "needs CUDA" in r.stdout or "yes" in r.stdout


@pytest.mark.slow  # a whole `attn-harness check` run
def test_check_torch_sdpa_by_module_path_finds_the_scale_bug_and_writes_reports(tmp_path):
    r = run("check", "--impl", "torch.nn.functional:scaled_dot_product_attention", "--profile", "quick", "--dtype", "float32",
            "--report-dir", str(tmp_path), "--junit", str(tmp_path / "junit.xml"))
    # torch's own function, undeclared, is held to the whole contract: its default CPU dispatch
    # returns NaN rows for is_causal at scale <= 0 (the `sdpa` built-in declares that away, see
    # tests/test_builtins.py), and that is the only thing the plain command finds.
    assert r.returncode == 1, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["schema_version"] == 1 and rep["implementations"][0]["verdict"] == "fail"
    res = rep["implementations"][0]["results"]
    bad = [x for x in res if x["status"] in ("fail", "error") and x["tier"] == "gate"]
    assert bad and all(x["counterexample"]["scale"] is not None and x["counterexample"]["scale"] <= 0
                       and x["counterexample"]["mask"] == "is_causal" for x in bad), [x["message"][:200] for x in bad]
    assert rep["implementations"][0]["causes"][0]["kind"] == "scale"
    assert {r_["suite"] for r_ in res} >= {"correctness", "causal", "padding", "isolation", "boundaries",
                                           "stability", "backward", "decode", "fingerprint", "strict", "normalization"}
    assert all(set(x) >= {"suite", "property", "tier", "status", "cases", "worst", "message", "repro"} for x in res)
    md = (tmp_path / "report.md").read_text()
    assert "| property" in md and "scaled_dot_product_attention" in md
    assert (tmp_path / "junit.xml").exists()


@pytest.mark.slow  # a whole `attn-harness check` run
def test_failing_kernel_exits_1_with_counterexample_and_repro(tmp_path):
    spec = str(ROOT / "fixtures" / "planted.py") + ":missing_scale"
    r = run("check", "--impl", spec, "--profile", "quick", "--dtype", "float32", "--suite", "correctness",
            "--report-dir", str(tmp_path))
    assert r.returncode == 1, r.stderr[-2000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    fails = [x for x in rep["implementations"][0]["results"] if x["status"] == "fail"]
    assert fails and all(f["counterexample"] and f["repro"].startswith("attn-harness check") for f in fails)
    # The repro command replays exactly the counterexample and fails again.
    f = fails[0]
    import shlex

    argv = shlex.split(f["repro"])[1:] + ["--report-dir", str(tmp_path / "repro")]
    r2 = run(*argv)
    assert r2.returncode == 1, r2.stderr[-2000:]
    rep2 = json.loads((tmp_path / "repro" / "report.json").read_text())
    again = [x for x in rep2["implementations"][0]["results"] if x["status"] == "fail"]
    assert again and again[0]["counterexample"] == f["counterexample"]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_broken_outputs_become_results_and_others_still_land(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, time\n"
        "def wrong_shape(query, key, value, **kw):\n    return query[..., :1]\n"
        "def raises(query, key, value, **kw):\n    raise RuntimeError('boom')\n"
        "def nan_out(query, key, value, **kw):\n    return torch.full(query.shape[:-1] + value.shape[-1:], float('nan'))\n"
        "def hangs(query, key, value, **kw):\n    time.sleep(3600)\n"
        "def wrong_dtype(query, key, value, **kw):\n"
        "    return torch.nn.functional.scaled_dot_product_attention(query, key, value).double()\n")
    # the correct control is sdpa-math: torch's CPU flash kernel (sdpa) gives NaN rows for
    # is_causal with a scale <= 0, which the correctness suite's scale-edge example reaches
    specs = [f"{bad}:{n}" for n in ("wrong_shape", "raises", "nan_out", "hangs", "wrong_dtype")] + ["sdpa-math"]
    args = ["check", "--profile", "quick", "--dtype", "float32", "--suite", "correctness", "--call-timeout", "2", "--report-dir", str(tmp_path / "r")]
    for s in specs:
        args += ["--impl", s]
    r = run(*args, timeout=900)
    assert r.returncode == 1
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    by = {i["spec"].split(":")[-1]: i for i in rep["implementations"]}
    assert by["sdpa-math"]["verdict"] == "pass"
    for n in ("wrong_shape", "raises", "nan_out", "hangs", "wrong_dtype"):
        assert by[n]["verdict"] == "fail", n
    msgs = lambda n: " ".join(x["message"] for x in by[n]["results"] if x["status"] in ("fail", "error"))
    assert "output shape" in msgs("wrong_shape")
    assert "boom" in msgs("raises") and any(x["status"] == "error" for x in by["raises"]["results"])
    assert "NaN" in msgs("nan_out") or "inf" in msgs("nan_out")
    assert "did not return" in msgs("hangs") or "hung" in msgs("hangs")
    assert "dtype" in msgs("wrong_dtype")


@pytest.mark.slow  # a whole `attn-harness check` run
def test_not_implemented_on_some_cases_skips_only_those(tmp_path):
    # A kernel that declares nothing but raises NotImplementedError when Ev != E: those cases
    # are unsupported and counted; the property still runs (and passes) on the others.
    (tmp_path / "k.py").write_text(
        "import torch.nn.functional as F\n"
        "from torch.nn.attention import SDPBackend, sdpa_kernel\n"
        "def attn(q, k, v, **kw):\n"
        "    if v.shape[-1] != q.shape[-1]:\n"
        "        raise NotImplementedError('Ev != E')\n"
        "    with sdpa_kernel(SDPBackend.MATH):  # the default CPU dispatch is wrong at scale <= 0\n"
        "        return F.scaled_dot_product_attention(q, k, v, **kw)\n"
        "def never(q, k, v, **kw):\n"
        "    raise NotImplementedError('nothing yet')\n")
    r = run("check", "--impl", f"{tmp_path}/k.py:attn", "--impl", f"{tmp_path}/k.py:never", "--suite", "correctness",
            "--property", "test_matches_reference", "--profile", "quick", "--dtype", "float32",
            "--report-dir", str(tmp_path / "r"))
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    by_impl = {i["spec"].split(":")[-1]: i for i in rep["implementations"]}
    [res] = by_impl["attn"]["results"]
    assert res["status"] == "pass", res
    assert 0 < res["unsupported_cases"] < res["cases"], res
    assert "Ev != E" in res["message"]
    [res] = by_impl["never"]["results"]
    assert res["status"] == "unsupported" and "nothing yet" in res["message"], res
    assert by_impl["never"]["verdict"] == "unsupported"
    assert r.returncode == 1, r.stdout[-2000:]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_kernel_hanging_where_no_signal_reaches_keeps_finished_results(tmp_path):
    # --call-timeout 0 stands in for a hang inside C/CUDA code that SIGALRM cannot interrupt: only
    # the whole-process timeout stops it. What finished before must survive, and the property
    # in flight must be named as an error.
    (tmp_path / "k.py").write_text(
        "import time\n"
        "import torch.nn.functional as F\n"
        "def attn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):\n"
        "    if is_causal:\n"
        "        time.sleep(600)\n"
        "    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,\n"
        "                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)\n")
    r = run("check", "--impl", f"{tmp_path}/k.py:attn", "--suite", "padding", "--suite", "causal",
            "--profile", "quick", "--dtype", "float32", "--call-timeout", "0", "--impl-timeout", "40",
            "--report-dir", str(tmp_path / "r"))
    assert r.returncode == 1, r.stderr[-2000:]
    [impl] = json.loads((tmp_path / "r" / "report.json").read_text())["implementations"]
    assert impl["verdict"] == "fail"
    by_suite = {}
    for res in impl["results"]:
        by_suite.setdefault(res["suite"], []).append(res["status"])
    assert by_suite["padding"] and set(by_suite["padding"]) <= {"pass", "unsupported"}, by_suite
    errs = [x for x in impl["results"] if x["status"] == "error"]
    assert len(errs) == 1 and errs[0]["suite"] == "causal", errs
    assert "timed out after 40 s" in errs[0]["message"] and "running causal::" in errs[0]["message"]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_crash_costs_one_property_not_the_rest(tmp_path):
    # A real segfault (a read of address 0) inside one property: it becomes an error naming the
    # signal, with its repro and the sequence that ran before it; the rest still run.
    (tmp_path / "k.py").write_text(
        "import ctypes, sys\n"
        "import torch.nn.functional as F\n"
        "def attn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        if f.f_code.co_name == 'test_decode_matches_prefill':\n"
        "            ctypes.string_at(0)\n"
        "        f = f.f_back\n"
        "    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,\n"
        "                                          scale=scale, enable_gqa=enable_gqa)\n")
    # One process (--shards 1): what ran before the crash in that process is the point.
    r = run("check", "--impl", f"{tmp_path}/k.py:attn", "--suite", "isolation", "--suite", "decode", "--shards", "1",
            "--profile", "quick", "--dtype", "float32", "--report-dir", str(tmp_path / "r"))
    assert r.returncode == 1, r.stderr[-2000:]
    [impl] = json.loads((tmp_path / "r" / "report.json").read_text())["implementations"]
    status = {f"{x['suite']}::{x['property']}": x for x in impl["results"]}
    crashed = status["decode::test_decode_matches_prefill"]
    assert crashed["status"] == "error" and "SIGSEGV" in crashed["message"], crashed
    assert crashed["repro"].startswith("attn-harness check") and "the sequence:" in crashed["message"]
    others = {k: v["status"] for k, v in status.items() if k != "decode::test_decode_matches_prefill"}
    assert others and set(others.values()) == {"pass"}, others
    assert "decode::test_chunked_prefill_matches" in others  # ran after the crash, in a new process


def test_unknown_property_is_a_usage_error():
    r = run("check", "--impl", "sdpa", "--suite", "causal", "--property", "test_no_such_thing")
    assert r.returncode == 2
    assert "unknown property" in r.stderr and "test_future_perturbation_invariance" in r.stderr
