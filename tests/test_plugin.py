"""The pytest plugin is installed for every project: it must change nothing outside our suites."""

import subprocess
import sys
import textwrap


def test_other_projects_hypothesis_settings_are_untouched(tmp_path):
    # Compare against the same run with our plugin disabled rather than against hypothesis's
    # defaults: hypothesis itself loads its "ci" profile when the CI variable is set.
    (tmp_path / "test_theirs.py").write_text(textwrap.dedent("""
        import hypothesis
        from hypothesis import settings

        def test_show_settings():
            print("SETTINGS", repr(settings.default), "SEED", hypothesis.core.global_force_seed)
    """))

    def observed(*extra):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *extra,
                            "test_theirs.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:]
        assert "attention-harness: impl=" not in r.stdout
        return [line for line in r.stdout.splitlines() if "SETTINGS" in line]

    with_plugin = observed()
    without_plugin = observed("-p", "no:attention_harness")
    assert with_plugin and with_plugin == without_plugin


def test_our_suites_get_the_seeded_profile(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.suites.test_isolation", "--impl", "sdpa",
                        "--profile", "quick", "--seed", "123", "-p", "no:cacheprovider"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "attention-harness: impl=sdpa dtype=float32 device=cpu profile=quick seed=123" in r.stdout
