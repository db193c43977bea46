"""The in-process API: a function defined in a script's __main__ (or a notebook cell) is checked
without writing it to a file, and assert_passes() works inside a user's own tests."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
    import json, sys
    import torch
    import harness

    def good(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    def ignores_causal(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, scale=scale, enable_gqa=enable_gqa)

    if __name__ == "__main__":
        kw = dict(dtypes=["float32"], suites=["causal"], profile="quick")
        ok = harness.check(good, **kw)
        bad = harness.check(ignores_causal, **kw)
        try:
            harness.assert_passes(ignores_causal, **kw)
            raised = None
        except AssertionError as e:
            raised = str(e)
        replayed = eval(bad.failures[0]["repro"], {"harness": harness, "ignores_causal": ignores_causal})
        html = ok._repr_html_()
        print("RESULT " + json.dumps({"ok": ok.verdict, "bad": bad.verdict, "raised": raised,
                                      "failures": [f["property"] for f in bad.failures],
                                      "repro": bad.failures[0]["repro"], "html": html[:400],
                                      "replayed": [(f["property"], f["cases"]) for f in replayed.failures],
                                      "md": ok.to_markdown()[:200], "json": json.loads(ok.to_json())["schema_version"]}))
"""


@pytest.mark.slow  # a whole `attn-harness check` run
def test_check_a_main_defined_function(tmp_path):
    script = tmp_path / "notebook_like.py"
    script.write_text(textwrap.dedent(SCRIPT))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert out["ok"] == "pass" and out["bad"] == "fail"
    assert "test_future_perturbation_invariance" in out["failures"]
    assert out["raised"] and "reproduce: harness.check(ignores_causal, " in out["raised"]
    assert out["raised"].splitlines()[2].startswith("1. the causal mask lets queries see future keys")
    # In-process, the repro is the in-process call (the function may live where no shell can
    # name it), and it replays exactly the one counterexample.
    assert out["repro"].startswith("harness.check(ignores_causal, suites=['causal'], properties=[")
    assert "case='Case(" in out["repro"] and "attn-harness" not in out["repro"]
    assert [p for p, _ in out["replayed"]] == [out["failures"][0]] and out["replayed"][0][1] == 1
    assert "<table" in out["html"] and "my_attention" not in out["html"]
    assert out["json"] == 1


def test_check_rejects_unknown_suite():
    import pytest

    import harness

    with pytest.raises(ValueError, match="unknown suite"):
        harness.check("sdpa", suites=["nope"])
