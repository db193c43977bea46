"""The pytest plugin is installed for every project: it must change nothing outside our suites."""

import subprocess
import sys
import textwrap


def test_other_projects_hypothesis_settings_are_untouched(tmp_path):
    (tmp_path / "test_theirs.py").write_text(textwrap.dedent("""
        import hypothesis
        from hypothesis import settings

        def test_defaults():
            assert settings.default.max_examples == 100
            assert settings.default.deadline is not None
            assert hypothesis.core.global_force_seed is None
    """))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_theirs.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "attention-harness: impl=" not in r.stdout


def test_our_suites_get_the_seeded_profile(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.suites.test_isolation", "--impl", "sdpa",
                        "--profile", "quick", "--seed", "123", "-p", "no:cacheprovider"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "attention-harness: impl=sdpa dtype=float32 device=cpu profile=quick seed=123" in r.stdout
