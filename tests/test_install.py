"""A non-editable install into a new environment works from an unrelated directory: the suites
ship inside the wheel, the CLI and the pytest plugin find them."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a venv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("venv")
    # The running interpreter's site directories lend torch and the other dependencies. Not
    # `--system-site-packages`: run from inside a venv, that lends the *base* interpreter's
    # packages, where the dependencies may not be. Listed as plain paths in a .pth file, their own
    # .pth files (an editable install of this checkout) are not processed, and the venv's own
    # site-packages, holding the wheel, comes first.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    py = d / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    lend = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    Path(own, "_lent_site_packages.pth").write_text("\n".join(lend) + "\n")
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
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return d, src


def test_check_from_an_unrelated_directory(venv, tmp_path):
    venv, _ = venv
    work = tmp_path / "elsewhere"
    work.mkdir()
    # torch's SDPA returns NaN for is_causal at scale <= 0 on CPU: a wrapper declares it, as the
    # `sdpa` built-in does (the README's five-line example says so)
    (work / "my_attn.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from harness import capabilities

        @capabilities(nonpositive_scale=False)
        def attn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                                  scale=scale, enable_gqa=enable_gqa)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    exe = venv / "bin" / "attn-harness"
    r = subprocess.run([str(exe), "check", "--impl", "./my_attn.py:attn", "--profile", "quick", "--dtype", "float32",
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
                 "harness.cli", "harness.cli.check", "harness.report.html", "harness.bench.run", "harness.model.checks"):
        assert name in mods, f"{name} is not in the wheel"
    outside = {n: f for n, f in mods.items() if not f.startswith(str(venv))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    # And the pytest plugin path works the same way.
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "--pyargs", "harness.suites.test_isolation",
                        "--attn-impl", "./my_attn.py:attn", "--attn-profile", "quick", "-q", "-p", "no:cacheprovider"],
                       cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.parametrize("where", ["clone_root", "other_harness"])
def test_check_from_the_clone_root(venv, tmp_path, where):
    """The README's main command, run from the clone's root after a non-editable install: the
    checkout's harness/ sits in the working directory (and a directory may hold an unrelated
    package called harness). The suite process must import the harness the CLI runs."""
    venv, src = venv
    if where == "clone_root":
        cwd = src
    else:
        cwd = tmp_path / "project"
        (cwd / "harness").mkdir(parents=True)
        (cwd / "harness" / "__init__.py").write_text("raise ImportError('not the attention harness')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = tmp_path / "out"
    r = subprocess.run([str(venv / "bin" / "attn-harness"), "check", "--impl", "reference", "--impl", "sdpa",
                        "--profile", "quick", "--suite", "correctness", "--dtype", "float32", "--report-dir", str(out)],
                       cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = (out / "report.json").read_text()
    assert '"verdict": "pass"' in rep and '"verdict": "fail"' not in rep
