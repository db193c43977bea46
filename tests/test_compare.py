"""``attn-harness compare`` / ``merge`` on small synthetic reports: planted regressions are caught
(exit 1), identical reports pass (exit 0), unreadable files exit 2, merged columns are labelled."""

from __future__ import annotations

import argparse
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report import compare as C
from harness import report as R


def _result(prop, status="pass", ratio=0.1, suite="correctness", tier="gate", dtype="float32"):
    return {"suite": suite, "property": prop, "tier": tier, "dtype": dtype, "device": "cpu", "impl": "spec",
            "status": status, "cases": 4, "worst": {"ratio": ratio, "factor": 2.0}, "message": "",
            "counterexample": None, "counterexample_text": None, "repro": "", "seed": 1, "duration_s": 0.1,
            "doc": ""}


def _base(gpu="NVIDIA H100 80GB HBM3", torch="2.4.0"):
    impls = []
    for name in ("sdpa", "flash"):
        impls.append({"name": name, "spec": name, "verdict": "pass", "capabilities": {}, "description": "",
                      "duration_s": 1.0, "log": "", "problem": None,
                      "fingerprint": {"causal_alignment": "top_left", "deterministic": True},
                      "results": [_result("test_matches_reference"), _result("test_ones", ratio=0.05),
                                  _result("test_matches_reference", dtype="bfloat16", ratio=0.3),
                                  _result("test_info", tier="info", ratio=None)]})
    return {"schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "harness_version": "0.1.0",
            "command": ["attn-harness"], "options": {"device": "cuda", "dtypes": ["float32", "bfloat16"],
                                                     "profile": "quick", "strict": False, "seed": 1},
            "environment": {"torch": torch, "python": "3.11", "device": "cuda", "gpu": gpu},
            "implementations": impls,
            "throughput": [{"impl": n, "mode": m, "shape": {"B": 2, "H": 8, "L": 1024, "E": 64}, "dtype": "bfloat16",
                            "median_ms": 1.0, "tflops": 100.0} for n in ("sdpa", "flash") for m in ("fwd", "bwd")]}


def _res(rep, impl, prop, dtype="float32"):
    i = next(i for i in rep["implementations"] if i["name"] == impl)
    return next(r for r in i["results"] if r["property"] == prop and r["dtype"] == dtype)


def _parser():
    p = argparse.ArgumentParser()
    from harness.cli.compare import register

    register(p.add_subparsers(dest="command"))
    return p


def run(argv, capsys):
    args = _parser().parse_args(argv)
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _write(tmp_path, name, rep):
    p = tmp_path / name
    p.write_text(json.dumps(rep))
    return str(p)


@pytest.fixture
def base():
    return _base()


def test_identical_reports_exit_0(tmp_path, base, capsys):
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", base)], capsys)
    assert rc == 0, out
    assert "No regressions" in out


def test_newly_failing_property_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    r = _res(new, "flash", "test_ones")
    r.update(status="fail", message="row 3 leaked | badly", repro="attn-harness check --impl flash")
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1
    cmp = C.compare_reports(base, new)
    assert [(x["impl"], x["property"], x["dtype"]) for x in cmp["newly_failing"]] == \
        [("flash", "correctness::test_ones", "float32")]
    assert "Newly failing" in out and "attn-harness check --impl flash" in out
    # and back: started passing is good news, exit 0
    rc, out, _ = run(["compare", _write(tmp_path, "b.json", new), _write(tmp_path, "a.json", base)], capsys)
    assert rc == 0 and "Started passing" in out


def test_info_tier_failure_is_not_a_regression(base):
    new = copy.deepcopy(base)
    _res(new, "sdpa", "test_info")["status"] = "fail"
    cmp = C.compare_reports(base, new)
    assert not cmp["regressed"] and len(cmp["newly_failing_not_enforced"]) == 1


def test_error_ratio_growth_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    _res(new, "sdpa", "test_matches_reference", "bfloat16")["worst"]["ratio"] = 3.0  # 10x, still "pass"
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1
    g = C.compare_reports(base, new)["ratio_growth"]
    assert len(g) == 1 and g[0]["growth"] == pytest.approx(10.0) and g[0]["dtype"] == "bfloat16"
    # growth below 0.5 of the bound is noise; a higher threshold lets 10x through
    small = copy.deepcopy(base)
    _res(small, "sdpa", "test_ones")["worst"]["ratio"] = 0.4  # 8x but below 0.5
    assert not C.compare_reports(base, small)["regressed"]
    assert not C.compare_reports(base, new, ratio_threshold=20)["regressed"]


def test_throughput_slowdown_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    new["throughput"][2]["median_ms"] = 1.2  # flash fwd, 20 % slower
    new["throughput"][3]["median_ms"] = 0.5  # flash bwd, faster
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1
    cmp = C.compare_reports(base, new)
    assert [(s["impl"], s["mode"]) for s in cmp["slowdowns"]] == [("flash", "fwd")]
    assert cmp["slowdowns"][0]["change"] == pytest.approx(0.2)
    assert [(s["impl"], s["mode"]) for s in cmp["speedups"]] == [("flash", "bwd")]
    assert "+20.0%" in out
    assert not C.compare_reports(base, new, slowdown=0.25)["regressed"]
    # only one report with throughput: nothing to compare, no crash
    del new["throughput"]
    assert not C.compare_reports(base, new)["slowdowns"]


def test_fingerprint_change_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    new["implementations"][1]["fingerprint"]["causal_alignment"] = "bottom_right"
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1 and "bottom_right" in out


@pytest.mark.parametrize("kind", ["missing", "garbage", "schema", "not_a_report"])
def test_unreadable_exit_2(tmp_path, base, capsys, kind):
    good = _write(tmp_path, "a.json", base)
    bad = str(tmp_path / "missing.json")
    if kind == "garbage":
        bad = str(tmp_path / "g.json")
        Path(bad).write_text("{not json")
    elif kind == "schema":
        bad = _write(tmp_path, "s.json", {**base, "schema_version": 99})
    elif kind == "not_a_report":
        bad = _write(tmp_path, "n.json", [1, 2])
    rc, out, err = run(["compare", good, bad], capsys)
    assert rc == 2 and "cannot read report" in err


def test_html_output(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    _res(new, "sdpa", "test_ones")["status"] = "error"
    new["implementations"][0]["name"] = "sdpa"
    out_file = tmp_path / "cmp.html"
    rc, _, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new),
                    "--format", "html", "--output", str(out_file)], capsys)
    assert rc == 1
    text = out_file.read_text()
    HTMLParser().feed(text)
    assert "Newly failing" in text and "correctness::test_ones" in text


def test_merge_labels_columns(tmp_path, capsys):
    a = _base("NVIDIA H100 80GB HBM3", "2.4.0")
    b = _base("NVIDIA A100-SXM4-40GB", "2.5.1")
    c = _base("NVIDIA H100 80GB HBM3", "2.4.0")  # collides with a: file names added
    paths = [_write(tmp_path, "h100.json", a), _write(tmp_path, "a100.json", b), _write(tmp_path, "h100-again.json", c)]
    out_dir = tmp_path / "merged"
    rc, out, _ = run(["merge", *paths, "--output-dir", str(out_dir)], capsys)
    assert rc == 0
    assert out.strip() == str(out_dir / "report.md")
    merged = R.load(out_dir / "report.json")
    names = [i["name"] for i in merged["implementations"]]
    assert "sdpa @ NVIDIA A100-SXM4-40GB torch 2.5.1" in names
    assert "sdpa @ NVIDIA H100 80GB HBM3 torch 2.4.0 (h100.json)" in names
    assert "flash @ NVIDIA H100 80GB HBM3 torch 2.4.0 (h100-again.json)" in names
    assert len(names) == len(set(names)) == 6
    assert merged["implementations"][2]["environment"]["gpu"] == "NVIDIA A100-SXM4-40GB"
    assert {e["impl"] for e in merged["throughput"]} >= {"flash @ NVIDIA A100-SXM4-40GB torch 2.5.1"}
    md = (out_dir / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| property"))
    assert all(n in header for n in names)
    html = (out_dir / "report.html").read_text()
    assert "sdpa @ NVIDIA A100-SXM4-40GB torch 2.5.1" in html
    # the merged report compares against itself cleanly
    assert not C.compare_reports(merged, merged)["regressed"]


def test_merge_from_python_same_file_names():
    a, b = _base("cpu", "2.4"), _base("cpu", "2.4")
    for e in (a, b):
        e["environment"].pop("gpu")
        e["environment"]["device"] = "cpu"
    merged = C.merge_reports([("x/report.json", a), ("y/report.json", b)])
    names = [i["name"] for i in merged["implementations"]]
    assert names[0] == "sdpa @ cpu torch 2.4 (x/report.json)" and len(set(names)) == 4


def test_registered_in_cli(tmp_path, base, capsys):
    from harness import cli

    p = _write(tmp_path, "a.json", base)
    assert cli.main(["compare", p, p]) == 0
    assert cli.main(["compare", p, str(tmp_path / "nope.json")]) == 2


# --- throughput recorded by `check --suite throughput` -----------------------------------------

def _tp_result(shape, median_ms, backward=False, status="pass"):
    """A result as suites/test_throughput.py stores it: the check's comparison, the timed shape,
    mode, direction and the timing numbers merged into ``worst``."""
    f = 4.0 * shape["B"] * shape["H"] * shape["L"] * shape["S"] * shape["E"] * (0.5 if shape["causal"] else 1.0) * \
        (2.5 if backward else 1.0)
    r = _result("test_throughput_backward" if backward else "test_throughput", status=status, suite="throughput",
                ratio=0.2)
    r["worst"].update(shape=dict(shape), mode="prefill", direction="backward" if backward else "forward",
                      median_ms=median_ms, tflops=f / (median_ms * 1e-3) / 1e12, gbps=None)
    return r


SHAPES = [dict(B=1, H=2, Hkv=2, L=64, S=64, E=16, causal=False),
          dict(B=1, H=2, Hkv=2, L=128, S=128, E=16, causal=True)]


def _check_tp_report():
    rep = _base()
    del rep["throughput"]  # a check report: timings live in the results only
    for impl in rep["implementations"]:
        impl["results"] += [_tp_result(sh, 0.02 * (i + 1), bw) for bw in (False, True) for i, sh in enumerate(SHAPES)]
    return rep


def test_check_report_throughput_slowdown_exit_1(tmp_path, capsys):
    base = _check_tp_report()
    a = _write(tmp_path, "a.json", base)
    rc, out, _ = run(["compare", a, _write(tmp_path, "same.json", copy.deepcopy(base))], capsys)
    assert rc == 0 and "No regressions" in out
    new = copy.deepcopy(base)
    r = [r for r in new["implementations"][1]["results"] if r["property"] == "test_throughput"][1]  # flash, 2nd shape
    r["worst"]["tflops"] *= r["worst"]["median_ms"] / (r["worst"]["median_ms"] * 1.3)
    r["worst"]["median_ms"] *= 1.3
    rc, out, _ = run(["compare", a, _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1 and "Throughput slowdowns" in out and "+30.0%" in out
    s = C.compare_reports(base, new)["slowdowns"]
    assert [(x["impl"], x["direction"], x["shape"]) for x in s] == \
        [("flash", "forward", "B=1 E=16 H=2 Hkv=2 L=128 S=128 causal=True")]
    # the shapes do not collapse onto one property key: a status change in one shape is seen
    bad = copy.deepcopy(base)
    bad["implementations"][0]["results"][-1].update(status="fail", message="wrong output")
    nf = C.compare_reports(base, bad)["newly_failing"]
    assert [x["property"] for x in nf] == \
        ["throughput::test_throughput_backward[B=1 E=16 H=2 Hkv=2 L=128 S=128 causal=True]"]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_real_check_throughput_report(tmp_path, capsys):
    """The keys above are the ones a real `check --suite throughput` run writes."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ATTN_HARNESS_BENCH_SHAPES": "prefill:1x2x32x16,prefill:1x2x64x16:causal"}
    proc = subprocess.run([sys.executable, "-m", "harness", "check", "--impl", "sdpa", "--suite", "throughput",
                           "--profile", "quick", "--dtype", "float32", "--report-dir", str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base = json.loads((tmp_path / "report.json").read_text())
    timed = [r for r in base["implementations"][0]["results"] if "median_ms" in (r.get("worst") or {})]
    if not timed:
        pytest.skip("no timings recorded (pytest-benchmark unavailable in the check run)")
    assert len(timed) == 4  # two shapes, forward and backward
    new = copy.deepcopy(base)
    r = next(r for r in new["implementations"][0]["results"]
             if r["property"] == "test_throughput" and r["worst"]["shape"]["L"] == 64)
    r["worst"]["median_ms"] *= 2
    r["worst"]["tflops"] /= 2
    a, b = _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)
    assert run(["compare", a, a], capsys)[0] == 0
    rc, out, _ = run(["compare", a, b], capsys)
    assert rc == 1 and "+100.0%" in out
    assert [x["shape"] for x in C.compare_reports(base, new)["slowdowns"]] == \
        ["B=1 E=16 H=2 Hkv=2 L=64 S=64 causal=True"]


# --- corner cases ----------------------------------------------------------------------------

def test_gate_pass_to_unsupported_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    _res(new, "flash", "test_ones").update(status="unsupported", message="needs dense boolean or float masks")
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1
    lc = C.compare_reports(base, new)["lost_coverage"]
    assert [(x["impl"], x["property"]) for x in lc] == [("flash", "correctness::test_ones")]
    assert "REGRESSION: passed in " in out and "unsupported in " in out and "no longer certified" in out
    # an info-tier property going unsupported is coverage information, not a regression
    info = copy.deepcopy(base)
    _res(info, "flash", "test_info")["status"] = "unsupported"
    cmp = C.compare_reports(base, info)
    assert not cmp["regressed"] and len(cmp["newly_unsupported"]) == 1


def test_implementation_missing_from_new_exit_1(tmp_path, base, capsys):
    new = copy.deepcopy(base)
    new["implementations"] = [i for i in new["implementations"] if i["name"] != "flash"]
    new["throughput"] = [e for e in new["throughput"] if e["impl"] != "flash"]
    rc, out, _ = run(["compare", _write(tmp_path, "a.json", base), _write(tmp_path, "b.json", new)], capsys)
    assert rc == 1
    cmp = C.compare_reports(base, new, base_label="a.json", new_label="b.json")
    assert [x["impl"] for x in cmp["missing_implementations"]] == ["flash"] and not cmp["removed"]
    assert "REGRESSION: implementation 'flash' is in" in out and "but missing from" in out
    # the other way round, a new implementation is information
    assert not C.compare_reports(new, base)["regressed"]


@pytest.mark.parametrize("strict", [False, True])
def test_ratio_growth_follows_tiers(base, strict):
    for tier in ("info", "strict"):
        new = copy.deepcopy(base)
        new["options"]["strict"] = strict
        r = _res(new, "sdpa", "test_ones")
        r["tier"] = tier
        r["worst"]["ratio"] = 1.8  # 36x, still passing
        b = copy.deepcopy(base)
        _res(b, "sdpa", "test_ones")["tier"] = tier
        cmp = C.compare_reports(b, new)
        regress = tier == "strict" and strict  # harness.tiers.enforced
        assert cmp["regressed"] == regress, (tier, strict)
        assert len(cmp["ratio_growth"]) == int(regress)
        assert len(cmp["ratio_growth_not_enforced"]) == int(not regress)


def test_a_report_from_before_the_property_renames_still_compares():
    from harness.report import compare as C

    def rep(prop):
        return {"implementations": [{"name": "k", "results": [
            {"suite": "causal", "property": prop, "dtype": "float32", "status": "pass", "worst": {"ratio": 1.0}}]}]}

    old, new = C._index(rep("test_exercise2_future_weights_zero")), C._index(rep("test_future_weights_zero"))
    assert set(old) == set(new) == {("k", "causal::test_future_weights_zero", "float32")}
