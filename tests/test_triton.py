"""The project's Triton kernel and its planted bug, run end to end through `attn-harness check`
on CPU by Triton's interpreter (TRITON_INTERPRET=1 in the subprocess environment)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fixtures.catalog import CUSTOM_KERNELS  # noqa: E402

CORRECT = CUSTOM_KERNELS["triton_attention"]["spec"]
PLANTED = CUSTOM_KERNELS["triton_no_tail_mask"]["spec"]


def _triton_problem():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton==3.9.0; Linux x86_64 wheels only)"
    r = subprocess.run([sys.executable, "-c", "import triton, triton.language"], capture_output=True, text=True,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=120)
    if r.returncode:
        return f"import triton fails: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


pytestmark = [pytest.mark.slow,  # Triton's interpreter runs the suites
              pytest.mark.skipif(_triton_problem() is not None, reason=str(_triton_problem()))]


def check(tmp_path, *args, interpret=True):
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the harness's own pytest needs its plugin
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-m", "harness", "check", *args, "--report-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    report = json.loads((tmp_path / "report.json").read_text()) if (tmp_path / "report.json").exists() else None
    return r, report


def test_interpreter_kernel_passes_and_says_interpreter(tmp_path):
    r, report = check(tmp_path, "--impl", CORRECT, "--dtype", "float32,float16", "--profile", "quick",
                      "--suite", "correctness", "--suite", "normalization")
    assert r.returncode == 0, r.stderr[-3000:]
    (impl,) = report["implementations"]
    assert impl["verdict"] == "pass"
    assert "Triton interpreter" in impl["description"]
    assert impl["capabilities"]["devices"] == ["cpu"]
    assert impl["capabilities"]["dtypes"] == ["float32", "float16"]  # bf16 tl.dot is wrong in the interpreter
    ran = {(x["suite"], x["property"], x["dtype"]): x["status"] for x in impl["results"]}
    for dtype in ("float32", "float16"):
        for prop in ("test_matches_reference", "test_tile_boundaries", "test_long_sequence"):
            assert ran[("correctness", prop, dtype)] == "pass", (prop, dtype)
        assert ran[("normalization", "test_ones_values_give_ones", dtype)] == "pass"


def test_interpreter_kernel_passes_its_soft_cap_variant(tmp_path):
    # The same kernel behind flash_attn_func's signature: bottom-right causal and soft-capping.
    r, report = check(tmp_path, "--impl", CUSTOM_KERNELS["triton_flash_attn_func"]["spec"], "--suite", "flash",
                      "--property", "test_softcap_beyond_cap or test_variants_match_reference",
                      "--dtype", "float32,float16", "--profile", "quick")
    assert r.returncode == 0, r.stderr[-3000:]
    (impl,) = report["implementations"]
    ran = {(x["property"], x["dtype"]): x["status"] for x in impl["results"]}
    for dtype in ("float32", "float16"):
        assert ran[("test_softcap_beyond_cap", dtype)] == "pass"
        assert ran[("test_variants_match_reference", dtype)] == "pass"


def test_planted_tail_mask_bug_is_caught(tmp_path):
    r, report = check(tmp_path, "--impl", PLANTED, "--dtype", "float32", "--profile", "quick",
                      "--suite", "normalization", "--property", "test_ones_values_give_ones")
    assert r.returncode == 1, r.stderr[-3000:]
    (impl,) = report["implementations"]
    assert impl["verdict"] == "fail"
    (res,) = [x for x in impl["results"] if x["property"] == "test_ones_values_give_ones"]
    assert res["status"] == "fail"
    assert CUSTOM_KERNELS["triton_no_tail_mask"]["expected"] == f"{res['suite']}::{res['property']}"
    # The counterexample has S below one key tile (64): the padded slots took weight.
    assert res["counterexample"]["S"] % 64 != 0
    assert "--case" in res["repro"]


def test_without_interpreter_on_cpu_everything_is_unsupported(tmp_path):
    # Outside the interpreter the kernel declares CUDA only: on CPU nothing runs, exit 1, no pass.
    r, report = check(tmp_path, "--impl", CORRECT, "--dtype", "float16", "--profile", "quick",
                      "--suite", "correctness", "--property", "test_base_case", interpret=False)
    if report is None or r.returncode == 2:
        pytest.fail(r.stderr[-2000:])
    (impl,) = report["implementations"]
    assert impl["verdict"] == "unsupported" and r.returncode == 1
    assert "Triton interpreter" not in impl["description"]
