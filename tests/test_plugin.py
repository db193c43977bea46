"""The pytest plugin is installed for every project: it must change nothing outside our suites."""

import subprocess
import sys
import textwrap

import pytest

FOREIGN_CONFTEST = """
    # An ML project's own options, with the names our plugin used to take.
    def pytest_addoption(parser):
        parser.addoption("--device", default="cpu")
        parser.addoption("--profile", default="fast")
        parser.addoption("--seed", type=int, default=7)
        parser.addoption("--impl", default="mine")
"""

FOREIGN_TESTS = """
    import sys

    import hypothesis
    from hypothesis import given, settings, strategies as st

    def test_own_options(request):
        c = request.config
        assert (c.getoption("--device"), c.getoption("--profile"), c.getoption("--seed"),
                c.getoption("--impl")) == ("cuda", "fast", 7, "mine")

    def test_no_torch_imported():
        # Our plugin must not import torch (seconds of start-up) in someone else's run.
        assert "torch" not in sys.modules, "torch was imported by a plugin"

    def test_show_settings():
        print("SETTINGS", repr(settings.default), "SEED", hypothesis.core.global_force_seed)

    @given(st.integers(0, 100))
    def test_theirs(x):
        assert 0 <= x <= 100
"""


def _foreign_project(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(FOREIGN_CONFTEST))
    (tmp_path / "test_theirs.py").write_text(textwrap.dedent(FOREIGN_TESTS))
    return tmp_path


def _run(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--device", "cuda",
                           *extra, "test_theirs.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("own_harness_package", [False, True])
def test_foreign_project_with_clashing_options_runs_unchanged(tmp_path, own_harness_package):
    """A project defining --device/--profile/--seed/--impl and its own hypothesis tests runs
    exactly as it does without attention-harness (our options are all --attn-*), also when it
    has a top-level package called ``harness`` of its own."""
    _foreign_project(tmp_path)
    if own_harness_package:
        (tmp_path / "harness").mkdir()
        (tmp_path / "harness" / "__init__.py").write_text("THEIRS = True\n")
        (tmp_path / "test_theirs.py").write_text((tmp_path / "test_theirs.py").read_text() + textwrap.dedent("""

            def test_their_harness():
                import harness
                assert harness.THEIRS
        """))
    # Compare against the same run with our plugin disabled rather than against hypothesis's
    # defaults: hypothesis itself loads its "ci" profile when the CI variable is set.
    with_plugin = _run(tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stdout[-3000:] + with_plugin.stderr[-3000:]
    assert f"{5 if own_harness_package else 4} passed" in with_plugin.stdout
    without_plugin = _run(tmp_path, "-p", "no:attention_harness")
    assert without_plugin.returncode == 0, without_plugin.stdout[-3000:]
    settings_lines = [[ln for ln in r.stdout.splitlines() if "SETTINGS" in ln] for r in (with_plugin, without_plugin)]
    assert settings_lines[0] and settings_lines[0] == settings_lines[1]
    assert "attention-harness: impl=" not in with_plugin.stdout


def test_plugin_options_are_namespaced():
    r = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    block = r.stdout.split("attention-harness property suites", 1)[1].split("\n\n", 1)[0]
    opts = [ln.split()[0].rstrip(",=") for ln in block.splitlines() if ln.strip().startswith("--")]
    assert opts and all(o.startswith("--attn-") for o in opts), opts


def test_our_suites_get_the_seeded_profile(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.suites.test_isolation", "--attn-impl",
                        "sdpa", "--attn-profile", "quick", "--attn-seed", "123", "--attn-dtype", "float32",
                        "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "attention-harness: impl=sdpa dtype=float32 device=cpu profile=quick seed=123" in r.stdout


def test_plain_run_covers_every_declared_dtype(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.suites.test_isolation", "--attn-impl",
                        "sdpa", "--attn-profile", "quick", "-p", "no:cacheprovider", "-v"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    for dt in ("float32", "bfloat16", "float16"):
        assert f"[sdpa-{dt}] PASSED" in r.stdout, r.stdout[-2000:]
