"""Real MiniLM activations as inputs to the property suites (harness.activations)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import activations as real
from harness.cases import Case, real_case
from harness.contract import Capabilities

ROOT = Path(__file__).resolve().parents[1]


def test_real_case_materializes_the_captured_tensors_and_mask():
    c = real_case(3)
    inp = c.materialize()
    d = torch.load(real.path(), weights_only=True)
    assert torch.equal(inp.q, d["q"][3].float()) and torch.equal(inp.v, d["v"][3].float())
    assert torch.equal(inp.attn_mask[:, 0, 0], d["attention_mask"])  # the model's own padding
    assert eval(repr(c), {"Case": Case}) == c  # repro strings round-trip
    assert "real MiniLM activations, layer 3" in c.short()


def test_fit_never_reshapes_real_activations():
    c = real_case(0)
    assert c.fit(Capabilities(), "bfloat16", "cpu").activations == 0
    assert c.fit(Capabilities(head_dims=(64, 128)), "float32", "cpu") is None  # E=32 is what was captured
    assert c.fit(Capabilities(gqa=False), "float32", "cpu") is not None  # no GQA in MiniLM: unaffected
    with pytest.raises(ValueError):
        Case(E=16, Ev=16, activations=1).materialize()


@pytest.mark.slow  # a whole `attn-harness check` run
def test_planted_padding_leak_is_caught_on_real_activations(tmp_path):
    case = repr(real_case(2))
    r = subprocess.run([sys.executable, "-m", "harness", "check", "--impl", "fixtures/planted.py:padding_mask_ignored",
                        "--suite", "padding", "--property", "test_padding_content_invariance", "--case", case,
                        "--example", json.dumps({"how": "adversarial"}), "--dtype", "float32", "--report-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    [res] = json.loads((tmp_path / "report.json").read_text())["implementations"][0]["results"]
    assert res["status"] == "fail" and "real MiniLM activations, layer 2" in res["counterexample_text"]
    assert res["counterexample"]["activations"] == 2
