"""A non-editable install into a new environment works from an unrelated directory: the suites
ship inside the wheel, the CLI and the pytest plugin find them."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("venv")
    # System site-packages lend torch and the other dependencies; the project itself is installed
    # non-editable into the venv, which shadows any editable install of the checkout.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(d)], check=True)
    py = d / "bin" / "python"
    # Build the wheel with this interpreter's setuptools (a new venv may carry an old one), then
    # install the wheel: exactly what `pip install .` does, without needing the network.
    # From a clean copy: setuptools reuses a stale build/ folder, which can hide a package the
    # wheel would otherwise miss.
    src = tmp_path_factory.mktemp("src") / "attention-harness"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", "*.egg-info", ".git", "reports", "__pycache__",
                                                             ".hypothesis", "dist"))
    wheels = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(wheels.glob("attention_harness-*.whl"))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def test_check_from_an_unrelated_directory(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "my_attn.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F

        def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                                  scale=scale, enable_gqa=enable_gqa)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    exe = venv / "bin" / "attn-harness"
    r = subprocess.run([str(exe), "check", "--impl", "./my_attn.py:attn", "--profile", "quick",
                        "--suite", "correctness", "--suite", "causal", "--report-dir", "out"],
                       cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "out" / "report.md").exists()
    # Every module of the package comes from the installed wheel, not from this checkout (an
    # editable install visible through system site-packages would otherwise hide a module the
    # wheel forgot to ship).
    code = ("import importlib, pkgutil, harness\n"
            "for m in pkgutil.walk_packages(harness.__path__, 'harness.'):\n"
            "    if m.name.endswith(('model', 'test_model', '__main__')):\n        continue\n"
            "    print(m.name, importlib.import_module(m.name).__file__)\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    mods = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    for name in ("harness.masks", "harness.masks.chat", "harness.suites.test_causal", "harness.fixtures.planted",
                 "harness.cli", "harness.html_report"):
        assert name in mods, f"{name} is not in the wheel"
    outside = {n: f for n, f in mods.items() if not f.startswith(str(venv))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    # And the pytest plugin path works the same way.
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "--pyargs", "harness.suites.test_isolation",
                        "--impl", "./my_attn.py:attn", "--profile", "quick", "-q", "-p", "no:cacheprovider"],
                       cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
