"""scripts/gpu-validate prepared on CPU: the dry-run plan, a clean refusal without CUDA, and the
whole pipeline (check, bench, reports, README table) on CPU built-ins with --cpu-smoke."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-validate"


def load_script():
    import importlib.util
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("gpu_validate", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_validate", loader)
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no scripts/__pycache__ in the tree
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def run(*args, timeout=900):
    env = {**os.environ}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the harness's own pytest needs its plugin
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3")


def test_dry_run_lists_the_full_plan(tmp_path):
    r = run("--dry-run", "--gpu-name", "NVIDIA H200", "--out", str(tmp_path / "h200"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    check = [l for l in lines if l.strip().startswith("[check]")]
    assert len(check) == 1
    for spec in ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "fixtures/triton_attention.py:triton_attention",
                 "fixtures/cpp_attention.py:cuda_attention", "flex-flash",
                 "fixtures/triton_attention.py:triton_flash_attn_func@flash_attn"):
        assert f"--impl {spec}" in check[0], spec
    assert "--device cuda" in check[0] and "--dtype bfloat16,float16" in check[0]
    assert "--suite" not in check[0]  # every default suite, regions included
    benches = [l for l in lines if l.strip().startswith("[bench-")]
    assert [b.split("]")[0].strip(" [") for b in benches] == ["bench-bfloat16", "bench-float16"]
    for b in benches:
        assert "--device cuda" in b and "prefill:" in b and "decode:" in b
        assert "cuda_attention" not in b  # the one-thread-per-row example is checked, not timed
    # The timeouts the plan states add up to the 8-minute budget.
    import re

    total = sum(int(t) for t in re.findall(r"\(timeout (\d+) s\)", r.stdout))
    assert total <= 480, total
    assert "report.json, report.md, report.html" in r.stdout
    assert not (tmp_path / "h200").exists()  # a dry run writes nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the script would run for real")
def test_refuses_cleanly_without_cuda(tmp_path):
    r = run("--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "CUDA is not available" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a whole `attn-harness check` run
def test_cpu_smoke_runs_the_whole_pipeline(tmp_path):
    out, readme = tmp_path / "cpu", tmp_path / "README.md"
    r = run("--cpu-smoke", "--out", str(out), "--readme", str(readme), "--suite", "correctness",
            "--jobs", "2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for f in ("report.json", "report.md", "report.html", "summary.json", "bench-float32/report.json"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["impl"]: row for row in summary["rows"]}
    assert set(rows) == {"sdpa", "sdpa-math"}
    for row in rows.values():
        assert row["check"] == "pass" and row["gate_failures"] == []
        assert row["prefill_float32"]["figure"] > 0 and row["decode_float32"]["figure"] > 0
    assert all(s["exit"] == 0 for s in summary["steps"].values())
    text = readme.read_text()
    assert "| sdpa | pass |" in text and "<!-- gpu:cpu-smoke -->" in text
    # A second run replaces its own section instead of appending another.
    readme.write_text(text + "\nkept\n")
    gv = load_script()
    gv.write_readme(readme, gv.readme_section(summary, "cpu"), "cpu-smoke")
    again = readme.read_text()
    assert again.count("<!-- gpu:cpu-smoke -->") == 1 and "kept" in again


def test_gate_failure_and_not_run_reach_the_summary(tmp_path):
    # A kernel that fails the gate, and one that could not run, both appear in the summary table.
    gv = load_script()
    out = tmp_path / "o"
    (out / "check").mkdir(parents=True)
    (out / "check" / "report.json").write_text(json.dumps({"implementations": [
        {"name": "bad", "spec": "bad", "verdict": "fail", "results": [
            {"suite": "causal", "property": "test_future_perturbation_invariance", "dtype": "bfloat16",
             "status": "fail", "tier": "gate"}]}]}))
    summary = gv.summarize(out, "x", [("sdpa-cudnn", "needs CUDA")], {"check": {"exit": 1, "seconds": 1}})
    (row,) = summary["rows"]
    assert row["check"] == "fail" and row["gate_failures"] == ["causal::test_future_perturbation_invariance [bfloat16]"]
    section = gv.readme_section(summary, "o")
    assert "| bad | fail |" in section and "not run: needs CUDA" in section
