"""The model suite (all-MiniLM-L6-v2 in the loop): correct kernels pass through the CLI, the
planted padding leak and the naive transformers integration are caught, and the ablation table
reaches report.json. Skipped when the ``[model]`` extra is not installed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs transformers (pip install '.[model]')")

from harness import model as M  # noqa: E402

if M.unavailable():
    pytest.skip(f"model suite: {M.unavailable()}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "fixtures/planted.py:padding_mask_ignored"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def passing_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("model-pass")
    r = run("check", "--suite", "model", "--impl", "reference", "--impl", "sdpa", "--impl", "flex",
            "--profile", "quick", "--report-dir", str(d))
    return r, d


def test_correct_implementations_pass(passing_report):
    r, d = passing_report
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((d / "report.json").read_text())
    assert [i["verdict"] for i in rep["implementations"]] == ["pass"] * 3
    for impl in rep["implementations"]:
        status = {x["property"]: x["status"] for x in impl["results"] if x["suite"] == "model"}
        assert status["test_model_outputs_match_reference"] == "pass"
        assert status["test_batch_composition_invariance"] == "pass"
        assert status["test_real_padding_content_invariance"] == "pass"


def test_ablation_numbers_in_report(passing_report):
    r, d = passing_report
    rep = json.loads((d / "report.json").read_text())
    res = next(x for x in rep["implementations"][0]["results"] if x["property"] == "test_head_ablation")
    assert res["tier"] == "info" and res["status"] == "pass"
    ab = res["worst"]["ablation"]
    assert (ab["layers"], ab["heads"]) == (6, 12)
    assert len(ab["impact"]) == 6 and all(len(row) == 12 for row in ab["impact"])
    assert len(ab["entropy"]) == 6 and all(len(row) == 12 for row in ab["entropy"])
    assert len(ab["ranking"]) == 72 and ab["ranking"][0]["impact"] >= ab["ranking"][-1]["impact"]
    assert max(max(row) for row in ab["impact"]) > 0.01  # some head matters
    assert "evidence" in ab["caveat"]


def test_planted_padding_leak_fails_at_model_level(tmp_path):
    r = run("check", "--suite", "model", "--impl", PLANTED, "--profile", "quick", "--report-dir", str(tmp_path),
            "--property", "test_batch_composition_invariance or test_model_outputs_match_reference")
    assert r.returncode == 1, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    res = {x["property"]: x for x in rep["implementations"][0]["results"]}
    bc = res["test_batch_composition_invariance"]
    assert bc["status"] == "fail" and bc["tier"] == "gate"
    assert "A short one." in bc["message"] and "padded keys reached real tokens" in bc["message"]
    assert res["test_model_outputs_match_reference"]["status"] == "fail"


def test_naive_integration_is_caught():
    """Registering only the attention function (no mask function): transformers passes
    attention_mask=None and a short sentence's embedding moves when batched with a long one."""
    sys.path.insert(0, str(ROOT))
    from fixtures.model_glue import naive_integration
    from harness.probes import PropertyViolation

    naive = naive_integration("sdpa")
    _, alone = naive(["A short one."])
    _, batched = naive(["A short one.", M.SENTENCES[-1]])
    assert float((batched[0] - alone[0]).norm()) > 0.1  # the leak itself

    with pytest.raises(PropertyViolation, match="padded keys reached real tokens"):
        M.batch_composition_check("sdpa", "float32", wire_mask=False)
    assert M.batch_composition_check("sdpa", "float32")["max_movement"] < M.batch_tolerance("float32")


def test_mask_reaches_the_attention_function():
    """The wired integration hands the kernel a (B, 1, S, S) bool mask, True = real key."""
    cap = {}
    _, _, keep = M.forward(["A short one.", "A somewhat longer sentence here."], "sdpa", capture=cap)
    m = cap[0]["mask"]
    assert m is not None and m.dtype.is_floating_point is False and tuple(m.shape) == (2, 1, *keep.shape[1:2] * 2)
    assert bool((m[:, 0, 0, :] == keep).all())


def test_fixture_is_small_and_consistent():
    import torch

    path = ROOT / "fixtures" / "model_activations.pt"
    assert path.stat().st_size < 2_000_000
    d = torch.load(path, weights_only=True)
    assert d["q"].dtype == torch.float16 and d["q"].shape[:3] == (6, 6, 12)
    assert d["attention_mask"].dtype == torch.bool and d["attention_mask"].shape[0] == 6


def test_every_model_property_is_proven_by_a_planted_bug(tmp_path):
    """Each gate property of the model suite catches at least one planted bug."""
    bugs = ["padding_mask_ignored", "causal_leaks_next", "mask_after_softmax"]
    args = ["check", "--suite", "model", "--profile", "quick", "--jobs", "2", "--report-dir", str(tmp_path)]
    for b in bugs:
        args += ["--impl", f"fixtures/planted.py:{b}"]
    r = run(*args)
    assert r.returncode == 1, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    gate = {x["property"] for i in rep["implementations"] for x in i["results"] if x["tier"] == "gate"}
    caught = {x["property"] for i in rep["implementations"] for x in i["results"]
              if x["tier"] == "gate" and x["status"] == "fail"}
    assert gate and gate == caught, f"not proven by any planted bug: {sorted(gate - caught)}"
