"""The harness tests itself: every correct fixture passes every gate (the default profile in
float32, the quick one in bfloat16 and float16), each planted bug is caught by a named property
of the suites meant to catch it, and every gate and strict property catches at least one planted
bug. Through `attn-harness check`, the same path users take."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.catalog import (CORRECT, CORRECT_STRICT_FAILS, HALF_ONLY, PLANTED, SLOW_CORRECT, STRICT_ONLY,
                              SWEEP_EXTRA_SUITES)

# The planted-bug sweep takes minutes: `python -m pytest -m "not slow"` skips it for a quick local
# loop; CI runs everything.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HALF = "bfloat16,float16"
WORKERS = 2  # checks run two at a time, one process each (--shards 1): both cores stay busy


def _check(specs, out, suites=None, dtypes="float32", profile="default"):
    args = [sys.executable, "-m", "harness", "check", "--profile", profile, "--dtype", dtypes,
            "--report-dir", str(out), "--strict", "--shards", "1"]
    for s in suites or []:
        args += ["--suite", s]
    for s in specs:
        args += ["--impl", str(ROOT / s.split(":")[0]) + ":" + s.split(":")[1]]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    # keyed by function name (a flash_attn-convention spec ends in @flash_attn)
    return {i["spec"].rsplit(":", 1)[1].split("@")[0]: i for i in rep["implementations"]}


def _merge(by, more):
    for name, impl in more.items():
        if name in by:
            by[name]["results"] += impl["results"]
            if impl["verdict"] == "fail":
                by[name]["verdict"] = "fail"
        else:
            by[name] = impl


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """Correct fixtures: every default suite in float32 at the default profile and in bfloat16 and
    float16 at the quick one (no false positive anywhere; flex, eager FlexAttention on CPU at
    minutes a dtype, in float32 only; its flash_attn-convention form on the flash suites only).
    Planted bugs: grouped by the suites meant to catch them plus those they are the proof of (catalog.SWEEP_EXTRA_SUITES), in float32, or in half precision for
    HALF_ONLY bugs. The checks run two at a time, longest first."""
    out = tmp_path_factory.mktemp("sweep")
    correct = [v for k, v in CORRECT.items() if k not in SLOW_CORRECT]
    jobs = [dict(specs=[CORRECT["flex"]]), dict(specs=[CORRECT["flex_flash_attn_func"]], suites=["flash", "paged"]),
            dict(specs=correct[::2]), dict(specs=correct[1::2]),
            dict(specs=correct[::2], dtypes=HALF, profile="quick"),
            dict(specs=correct[1::2], dtypes=HALF, profile="quick")]
    groups: dict = {}
    for name, p in PLANTED.items():
        suites = tuple(sorted(set(p["expected_suites"]) | set(SWEEP_EXTRA_SUITES.get(name, []))))
        groups.setdefault((suites, HALF if name in HALF_ONLY else "float32"), []).append(p["spec"])
    jobs += [dict(specs=specs, suites=list(suites), dtypes=dt) for (suites, dt), specs in sorted(groups.items())]
    by: dict = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as ex:
        for more in ex.map(lambda nj: _check(out=out / f"check{nj[0]:02d}", **nj[1]), enumerate(jobs)):
            _merge(by, more)
    # A property whose proof lies outside the suites swept above (the catalog lagging behind a
    # new property) gets every planted bug run on its suite, so the proof test judges the
    # property, not the sweep's selection.
    unproven = _all_properties(by) - _caught(by)
    if unproven:
        more = _check([p["spec"] for p in PLANTED.values()], out / "fill",
                      suites=sorted({u.split("::")[0] for u in unproven}))
        _merge(by, {k: v for k, v in more.items() if k in PLANTED})
    return by


def _all_properties(by) -> set:
    return {f"{r['suite']}::{r['property']}" for i in by.values() for r in i["results"]
            if r["tier"] in ("gate", "strict") and r["suite"] not in ("harness",)}


def _caught(by) -> set:
    caught = set()
    for name in PLANTED:
        if name in by:
            caught |= set(_failing(by[name], strict_too=True))
    return caught


def _failing(impl, strict_too=False):
    tiers = ("gate", "strict") if strict_too else ("gate",)
    return sorted({f"{r['suite']}::{r['property']}" for r in impl["results"]
                   if r["status"] in ("fail", "error") and r["tier"] in tiers})


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementation_passes_every_gate(sweep, name):
    spec = CORRECT[name].rsplit(":", 1)[1].split("@")[0]
    impl = sweep[spec]
    assert _failing(impl) == [], f"{name} rejected: " + "; ".join(
        f"{r['suite']}::{r['property']} [{r['dtype']}] {r['message'][:300]}" for r in impl["results"]
        if r["status"] in ("fail", "error") and r["tier"] == "gate")
    dtypes = {r["dtype"] for r in impl["results"] if r["status"] == "pass"}
    assert "float32" in dtypes or not ({"float32"} & set(impl["capabilities"]["dtypes"]))
    strict = sorted(set(_failing(impl, strict_too=True)) - set(_failing(impl)))
    if name in CORRECT_STRICT_FAILS:
        assert strict == ["strict::test_nan_in_masked_slots"], strict  # the catalog stays true
    else:
        assert strict == [], f"{name} fails strict properties: {strict}"


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_caught_by_a_named_property(sweep, name):
    impl = sweep[name]
    caught = _failing(impl, strict_too=name in STRICT_ONLY)
    assert caught, f"planted bug {name} ({PLANTED[name]['bug']}) was not caught by any property"
    assert impl["verdict"] == "fail"
    suites = {c.split("::")[0] for c in caught}
    expected = set(PLANTED[name]["expected_suites"])
    assert suites & expected, f"{name} caught only by {sorted(suites)}, expected one of {sorted(expected)}"
    # The report names the property and gives the smallest counterexample with a repro command.
    r = next(r for r in impl["results"] if r["status"] == "fail" and f"{r['suite']}::{r['property']}" in caught)
    assert r["counterexample"] is not None and r["repro"].startswith("attn-harness check")


def test_every_property_is_proven_by_a_planted_bug(sweep):
    """Each gate or strict property in the suites catches at least one planted bug."""
    assert sorted(_all_properties(sweep) - _caught(sweep)) == []
