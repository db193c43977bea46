"""The invariance tier: ulp arithmetic, each certificate against a kernel that holds it and the
planted kernel that breaks it, the tier's place in the report (its own section, its own JUnit
suite, in the gate only with --certify) and the CLI/API switches."""

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch

from harness import certify, invariance
from harness.loading import load
from harness.ulps import first_difference, spacing, ulp_distance

ROOT = Path(__file__).resolve().parents[1]


def planted(name):
    return load(f"{ROOT}/fixtures/planted_invariance.py:{name}")


def test_ulp_distance_counts_representable_steps():
    a = torch.tensor([1.0, -1.0, 0.0, 3.0])
    b = torch.nextafter(a, torch.full_like(a, 10.0))
    assert ulp_distance(a, b).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert ulp_distance(torch.tensor([0.0]), torch.tensor([-0.0])).item() == 1.0  # bitwise is bitwise
    assert ulp_distance(torch.tensor([float("nan")]), torch.tensor([1.0])).item() == float("inf")
    x = torch.tensor([1.0], dtype=torch.bfloat16)
    assert ulp_distance(x, x + spacing(torch.bfloat16, 1.0)).item() == 1.0
    assert spacing(torch.float32, 1.0) == torch.finfo(torch.float32).eps


def test_first_difference_names_the_element_and_both_values():
    a = torch.zeros(2, 3)
    b = a.clone()
    b[1, 2] = 1e-45  # the smallest subnormal: one ulp from zero
    d = first_difference(a, b, ("alone", "other"))
    assert d["index"] == [1, 2] and d["alone"] == 0.0 and d["other"] > 0 and d["ulps"] == 1.0
    assert d["elements_differing"] == 1 and first_difference(a, a.clone()) is None


@pytest.mark.parametrize("kind,name", [("batch", "batch_size_split_kv"), ("split", "chunked_prefill_last_bits"),
                                       ("rerun", "atomic_order_backward")])
def test_each_certificate_is_broken_by_its_planted_kernel_and_held_by_the_reference(kind, name):
    cert, declared = invariance.certify(planted(name), kind, "float32", reruns=5)
    assert declared and cert.held is False
    assert cert.first_difference["index"] is not None and cert.first_difference["ulps"] >= 1
    assert cert.shapes and cert.where and cert.compared
    assert "first differing element" in cert.describe()
    ref, ref_declared = invariance.certify(load("reference"), kind, "float32", reruns=5)
    assert ref.held is True and ref.comparisons > 0 and ref.first_difference is None


def test_a_kernel_holds_the_certificates_it_does_not_break():
    # the split planted bug is right within rounding and batch-invariant; the atomic one is
    # batch-invariant too: a certificate sees only its own bug
    assert invariance.certify(planted("chunked_prefill_last_bits"), "batch", "float32")[0].held
    assert invariance.certify(planted("atomic_order_backward"), "batch", "float32")[0].held
    assert invariance.certify(planted("batch_size_split_kv"), "rerun", "float32", reruns=5)[0].held


def test_certificates_are_filed_apart_and_gate_only_when_asked():
    res = {"suite": "invariance", "property": "test_batch_invariance", "tier": "certify", "dtype": "float32",
           "device": "cpu", "status": "fail", "message": "m", "repro": "r", "seed": 1, "duration_s": 0.5,
           "certificate": {"kind": "batch", "held": False, "declared": True, "declared_as": "batch_invariant",
                           "compared": "c", "shapes": {"L": 8}, "comparisons": 2,
                           "first_difference": {"index": [0, 0, 0, 0]}, "where": {"batch_size": 2}}}
    other = {"suite": "causal", "property": "test_x", "tier": "gate", "status": "pass"}
    kept, certs = certify.split([res, other], [])
    assert kept == [other] and certs[0]["kind"] == "batch" and not certs[0]["enforced"]
    assert certify.verdict("pass", kept, certs) == "pass"
    kept, certs = certify.split([res, other], ["invariance"])
    assert certs[0]["enforced"] and certify.verdict("pass", kept, certs) == "fail"
    assert certify.suites_with(None, ["invariance"], ["causal"]) == ["causal", "invariance"]
    assert certify.suites_with(["causal"], [], ["x"]) == ["causal"]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", "check", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("certify")
    spec = f"{ROOT}/fixtures/planted_invariance.py:batch_size_split_kv"
    r = _run("--impl", spec, "--impl", "reference", "--suite", "invariance", "--certify", "invariance",
             "--dtype", "float32", "--reruns", "4", "--shards", "1", "--report-dir", str(out),
             "--junit", str(out / "junit.xml"), cwd=out)
    return r, out


def test_certify_gates_the_run_and_every_report_shows_the_tier(certified_run):
    r, out = certified_run
    assert r.returncode == 1, r.stderr[-2000:]
    assert "invariance certificates:" in r.stderr and "added" in r.stderr  # the closing note's time
    rep = json.loads((out / "report.json").read_text())
    assert rep["options"]["certify"] == ["invariance"] and rep["options"]["reruns"] == 4
    planted_impl, reference = rep["implementations"]
    assert planted_impl["results"] == [] and planted_impl["verdict"] == "fail" and reference["verdict"] == "pass"
    batch = next(c for c in planted_impl["certificates"] if c["kind"] == "batch")
    assert batch["status"] == "fail" and batch["held"] is False and batch["enforced"]
    assert batch["first_difference"]["index"] and "--certify invariance" in batch["repro"]
    rerun = next(c for c in reference["certificates"] if c["kind"] == "rerun")
    assert rerun["held"] and rerun["reruns"] == 4
    from harness.report.model import validate

    validate(rep)
    md = (out / "report.md").read_text()
    assert "## Invariance certificates" in md and "broken" in md
    assert "Invariance certificates" in (out / "report.html").read_text()
    suites = {ts.get("name"): ts for ts in ET.parse(out / "junit.xml").getroot()}
    ts = suites["batch_size_split_kv invariance certificates"]
    assert ts.get("failures") == "1" and "first" not in ts.get("name")
    fail = ts.find("testcase/failure")
    assert "batch_invariant=True" in fail.get("message") and "ulps" in fail.text


def test_without_certify_the_tier_is_reported_not_gated(tmp_path):
    spec = f"{ROOT}/fixtures/planted_invariance.py:batch_size_split_kv"
    r = _run("--impl", spec, "--suite", "invariance", "--property", "test_batch_invariance", "--dtype", "float32",
             "--shards", "1", "--report-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads((tmp_path / "report.json").read_text())["implementations"][0]["certificates"][0]
    assert c["status"] == "fail" and not c["enforced"]


def test_unknown_certify_tier_and_too_few_reruns_are_usage_errors(tmp_path):
    r = _run("--impl", "sdpa", "--certify", "bits", cwd=tmp_path)
    assert r.returncode == 2 and "invariance" in r.stderr
    r = _run("--impl", "sdpa", "--certify", "invariance", "--reruns", "1", cwd=tmp_path)
    assert r.returncode == 2 and "--reruns" in r.stderr


def test_api_certify(tmp_path):
    import harness

    fn = planted("atomic_order_backward").fn
    rep = harness.check(fn, dtypes=["float32"], suites=["invariance"], certify=("invariance",), reruns=3)
    assert rep.verdict == "fail"
    assert [c["kind"] for c in rep.certificates if c["status"] == "fail"] == ["rerun"]
    assert any(f.get("kind") == "rerun" for f in rep.failures)
    assert harness.check(fn, dtypes=["float32"], suites=["invariance"], reruns=3).verdict == "pass"
    with pytest.raises(ValueError):
        harness.check(fn, certify=("bits",))
