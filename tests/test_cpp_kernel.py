"""The compiled custom kernel (fixtures/cpp_attention.py): built with load_inline into a temporary
TORCH_EXTENSIONS_DIR, run end to end through `attn-harness check`, and its planted out-of-bounds
read caught by the NaN-poisoning property. The CUDA twin is compiled with nvcc where nvcc exists."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # compiles a C++ extension

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def ext_env(tmp_path_factory):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path_factory.mktemp("torch_extensions"))}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the harness's own pytest needs its plugin
    # Build once here, so the check subprocesses below only load the cached extension.
    r = subprocess.run([sys.executable, "fixtures/cpp_attention.py"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "built/loaded in" in r.stderr
    return env


def check(env, tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "harness", "check", *args, "--report-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert (tmp_path / "report.json").exists(), r.stderr[-3000:]
    (impl,) = json.loads((tmp_path / "report.json").read_text())["implementations"]
    return r, impl


def test_build_stays_out_of_the_repository(ext_env):
    built = list(Path(ext_env["TORCH_EXTENSIONS_DIR"]).rglob("*.so"))
    assert built, "no extension library in TORCH_EXTENSIONS_DIR"
    assert not list((ROOT / "fixtures").rglob("*.so")) and not list((ROOT / "fixtures").rglob("*.o"))


def test_cpp_kernel_passes_gates_and_strict(ext_env, tmp_path):
    r, impl = check(ext_env, tmp_path, "--impl", "fixtures/cpp_attention.py:cpp_attention", "--profile", "quick",
                    "--dtype", "float32,bfloat16", "--suite", "correctness", "--suite", "padding",
                    "--suite", "strict", "--strict")
    assert r.returncode == 0, r.stderr[-3000:]
    assert impl["verdict"] == "pass"
    status = {(x["suite"], x["property"], x["dtype"]): x["status"] for x in impl["results"]}
    for dtype in ("float32", "bfloat16"):
        # Masked slots are skipped, never read: NaN there cannot reach an output.
        assert status[("strict", "test_nan_in_masked_slots", dtype)] == "pass"
        assert status[("correctness", "test_matches_reference", dtype)] == "pass"
        assert status[("padding", "test_padding_content_invariance", dtype)] == "pass"
        assert status[("padding", "test_padding_gradients_zero", dtype)] == "unsupported"  # autograd=False


def test_planted_read_past_end_caught_by_nan_poisoning(ext_env, tmp_path):
    args = ("--impl", "fixtures/cpp_attention.py:cpp_read_past_end", "--profile", "quick", "--dtype", "float32")
    r, impl = check(ext_env, tmp_path / "strict", *args, "--suite", "strict", "--strict")
    assert r.returncode == 1, r.stderr[-3000:]
    (res,) = [x for x in impl["results"] if x["property"] == "test_nan_in_masked_slots"]
    assert res["status"] == "fail" and "reached" in res["message"]
    from fixtures.catalog import CUSTOM_KERNELS

    assert CUSTOM_KERNELS["cpp_read_past_end"]["expected"] == f"{res['suite']}::{res['property']}"
    # With finite inputs the extra key has weight 0: the gate cannot see it, only the poisoning can.
    r, impl = check(ext_env, tmp_path / "gate", *args, "--suite", "correctness", "--suite", "padding")
    assert r.returncode == 0 and impl["verdict"] == "pass", r.stderr[-3000:]


def test_cuda_twin_compiles_with_nvcc(tmp_path):
    from fixtures import cpp_attention

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: the CUDA kernel is compiled only where nvcc exists")
    # The torch binding too only on request: against torch's headers it takes minutes of CPU.
    full = os.environ.get("ATTN_TEST_FULL_NVCC") == "1"
    r = cpp_attention.compile_cuda_object(str(tmp_path / "attention.o"), kernel_only=not full)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (tmp_path / "attention.o").stat().st_size > 0


def test_cuda_twin_refuses_cleanly_without_cuda():
    import torch

    from fixtures import cpp_attention

    if torch.cuda.is_available():
        pytest.skip("CUDA present: scripts/gpu-validate runs the CUDA kernel for real")
    q = torch.randn(1, 1, 2, 16)
    with pytest.raises(NotImplementedError, match="CUDA"):
        cpp_attention.cuda_attention(q, q, q)
