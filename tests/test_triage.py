"""Root-cause triage (harness.triage): failures grouped into causes that lead every summary.

On result records built by hand (fast), and once through harness.assert_passes on a kernel that
ignores attn_mask, as a user's own pytest test would call it. The planted-bug sweep checks every
planted bug's first cause (tests/test_planted_bugs.py)."""

import json
import subprocess
import sys
import textwrap

import pytest

from harness.triage import cause_line, key, triage


def res(suite, prop, status="fail", dtype="float32", msg="output: worst row error 3 = 1e5x", **case):
    ce = {"B": 1, "H": 1, "Hkv": 1, "L": 4, "S": 4, "E": 16, "Ev": 16, "dtype": dtype, "policy": "full()",
          "mask": "none", "mask_shape": "BHLS", "scale": None, "layout": "contiguous", **case}
    return {"suite": suite, "property": prop, "tier": "gate", "dtype": dtype, "status": status, "message": msg,
            "counterexample": ce if status != "pass" else None, "counterexample_text": f"L={ce['L']} S={ce['S']}",
            "repro": f"attn-harness check --property {prop}" if status != "pass" else ""}


def _every_failure_once(results, causes):
    explained = [k for c in causes for k in c["results"]]
    bad = [key(r) for r in results if r["status"] in ("fail", "error")]
    assert sorted(explained) == sorted(bad)


def test_a_mask_ignoring_kernel_is_one_cause_led_by_a_leak_property():
    results = [res("correctness", "test_base_case", "pass"),
               res("correctness", "test_matches_reference", mask="bool", mask_shape="B11S", L=6, S=33, B=2),
               res("correctness", "test_alibi_bias", mask="float", mask_shape="1HLS", H=4, L=6, S=6),
               res("padding", "test_padding_weights_zero", msg="21 padded (query, key) pairs get weight",
                   mask="bool", mask_shape="B11S", B=2, L=3, S=7),
               res("backward", "test_masked_gradients_zero", mask="bool", mask_shape="LS")]
    causes = triage(results)
    assert [c["kind"] for c in causes] == ["mask_ignored"]
    (c,) = causes
    assert c["properties"] == 4 and c["dtypes"] == ["float32"]
    assert c["example"] == "padding::test_padding_weights_zero [float32]"  # a leak property before a bound
    assert cause_line(c).startswith("ignores attn_mask (bool and float masks)")
    _every_failure_once(results, causes)


def test_what_no_explanation_fits_stays_one_cause_per_property():
    results = [res("correctness", "test_base_case", "pass"),
               res("correctness", "test_matches_reference", L=3, S=5),
               res("correctness", "test_matches_reference", dtype="bfloat16", L=2, S=3),
               res("stability", "test_near_ties", msg="output with tied keys: 37x")]
    causes = triage(results)
    # correctness fails on unmasked short cases while the base case passes: nothing explains it
    kinds = [c["kind"] for c in causes]
    assert kinds == ["property", "property"], causes
    assert causes[0]["title"].startswith("correctness::test_matches_reference fails: output")
    assert causes[0]["dtypes"] == ["bfloat16", "float32"] and causes[0]["properties"] == 1
    _every_failure_once(results, causes)
    assert triage([res("correctness", "test_base_case", "pass")]) == []


def test_contract_probes_and_common_factors_name_the_cause():
    fp = res("fingerprint", "test_causal_alignment",
             msg="causal alignment (L=2, S=4): detected 'bottom_right', the default contract says 'top_left'")
    leak = res("causal", "test_future_weights_zero", msg="9 future (query, key) pairs get weight", mask="is_causal",
               L=3, S=6)
    assert [c["kind"] for c in triage([leak, fp])] == ["causal_alignment"]
    wide = [res("correctness", "test_base_case", "pass"), res("correctness", "test_matches_reference", E=192, Ev=128),
            res("normalization", "test_convex_hull", E=160, Ev=160)]
    assert triage(wide)[0]["kind"] == "head_dim"
    strided = [res("correctness", "test_base_case", "pass"),
               res("correctness", "test_matches_reference", layout="q=transposed,kv=broadcast"),
               res("correctness", "test_tile_boundaries", layout="kv=broadcast")]
    (c,) = triage(strided)
    assert c["kind"] == "layout" and "kv=broadcast" in c["title"]
    # Weights on masked keys are zero, yet masked keys move the output: mask after the softmax.
    after = [res("correctness", "test_base_case", "pass"), res("causal", "test_future_weights_zero", "pass"),
             res("causal", "test_future_perturbation_invariance", mask="is_causal", policy="causal()"),
             res("normalization", "test_ones_values_give_ones", mask="bool", mask_shape="B11S")]
    assert [c["kind"] for c in triage(after)] == ["mask_after_softmax"]


def test_unenforced_tiers_are_not_causes_unless_strict():
    r = res("strict", "test_nan_in_masked_slots", msg="nan stored in 3 masked slots reached 3 rows")
    r["tier"] = "strict"
    assert triage([r]) == []
    assert [c["kind"] for c in triage([r], strict=True)] == ["nan_leak"]


SCRIPT = """
    import json, sys
    import harness
    from harness.fixtures.planted import padding_mask_ignored

    try:
        harness.assert_passes(padding_mask_ignored, suites={suites!r}, dtypes={dtypes!r}, profile="quick",
                              report_dir={report_dir!r})
        raised = None
    except AssertionError as e:
        raised = str(e)
    print("RESULT " + json.dumps({{"raised": raised}}))
"""


@pytest.mark.slow  # an in-process check of two suites in float32
def test_assert_passes_on_a_mask_ignoring_kernel_is_short_and_names_the_mask(tmp_path):
    script = tmp_path / "user_test.py"
    report_dir = tmp_path / "report"
    script.write_text(textwrap.dedent(SCRIPT).format(suites=["padding", "fingerprint"],
                                                     dtypes=["float32"], report_dir=str(report_dir)))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    msg = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])["raised"]
    assert msg is not None and len(msg) < 4000, len(msg or "")
    lines = msg.splitlines()
    assert lines[0].startswith("attention-harness: FAIL (padding_mask_ignored fail)")
    first = next(ln for ln in lines if ln.startswith("1. "))
    assert "attn_mask" in first and "ignore" in first, first
    assert "reproduce: harness.check(padding_mask_ignored, " in msg and "attn-harness check" not in msg
    assert f"report: {report_dir}" in msg and "report.failures" in msg
    # Nothing is hidden: every failure is in report.json, and each is explained by one cause.
    rep = json.loads((report_dir / "report.json").read_text())
    (impl,) = rep["implementations"]
    bad = sorted(key(x) for x in impl["results"] if x["status"] in ("fail", "error"))
    assert len(bad) >= 5 and sorted(k for c in impl["causes"] for k in c["results"]) == bad
    html = (report_dir / "report.html").read_text()
    assert html.index("<h2>Causes</h2>") < html.index("<h2>Comparison matrix</h2>")
    assert html.count('href="#fail-0-') >= len(bad)
    md = (report_dir / "report.md").read_text()
    assert md.index("## Causes") < md.index("| property")
