""""The option was applied": the registry of options, and its properties against kernels that
ignore an option in one combination, apply it, or reject a combination loudly."""

from pathlib import Path

import pytest

import harness
from harness import applied

ROOT = Path(__file__).resolve().parents[1]


def planted(name):
    return f"{ROOT}/fixtures/planted_invariance.py:{name}"


def test_the_registry_holds_the_sdpa_options_and_takes_new_rows():
    assert {"scale", "bool_mask", "float_mask", "causal", "gqa"} <= set(applied.OPTIONS)
    row = applied.AppliedOption("softcap_demo", "a soft-cap", lambda caps: "no soft-cap declared", lambda *a: None)
    try:
        assert applied.add_option(row) is applied.OPTIONS["softcap_demo"]
    finally:
        applied.OPTIONS.pop("softcap_demo")


def _failure(report, prop):
    return next(r for r in report.failures if r["property"] == prop)


def test_a_scale_ignored_under_a_mask_is_caught_with_the_numbers():
    rep = harness.check(planted("scale_ignored_with_mask"), dtypes=["float32"], suites=["applied"],
                        properties=["test_scale_applied"])
    assert rep.verdict == "fail"
    r = _failure(rep, "test_scale_applied")
    assert "ignored it" in r["message"] and "mask" in r["message"]
    # the two calls gave the same bits: 0 ulps apart, under the "applied" rule
    assert r["ulps"] == 0 and r["rule"]["kind"] == "applied"


def test_is_causal_ignored_next_to_an_all_true_mask_is_caught():
    rep = harness.check(planted("causal_ignored_with_mask"), dtypes=["float32"], suites=["applied"],
                        properties=["test_causal_applied"])
    assert rep.verdict == "fail"
    assert "all-True bool attn_mask" in _failure(rep, "test_causal_applied")["message"]


@pytest.mark.parametrize("spec", ["sdpa", "reference"])
def test_kernels_that_apply_or_loudly_reject_every_option_pass(spec):
    # torch SDPA's default CPU path takes is_causal with a mask and applies both; the float64
    # reference raises on the combination, which is loud, not silent
    rep = harness.check(spec, dtypes=["float32"], suites=["applied"])
    assert rep.verdict == "pass", rep.summary()
