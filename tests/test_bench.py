"""Tests for harness.bench (``attn-harness bench``) and the throughput suite: formulas against
hand-computed numbers, the CLI on tiny shapes, a wrong kernel getting no timing, a planted
slowdown against a baseline, cheat guards, and the Triton fixture on a machine without it.

Nothing here asserts on wall-clock time. Kept small: the whole file runs in well under a minute
on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import bench
from harness.bench import Shape
from harness.cli import main
from harness.loading import load

ROOT = Path(__file__).resolve().parents[1]
TINY = "prefill:1x2x64x16"
FAKE_PEAK = {"matmul_tflops": 1.0, "copy_gbps": 10.0, "matmul": "fake", "copy": "fake"}
ENTRY_KEYS = {"impl", "spec", "mode", "shape", "dtype", "device", "median_ms", "iqr_ms", "repeats", "tflops",
              "gbps", "peak_mem_bytes", "fraction_of_peak", "flops_formula"}
TRITON = "fixtures/triton_attention.py:triton_attention"


@pytest.fixture
def fake_peak(monkeypatch):
    """Skip the (slow) machine-peak measurement where a test does not look at it."""
    monkeypatch.setattr(bench.run, "machine_peak", lambda device, dtype: dict(FAKE_PEAK))  # where run_bench reads it


def run_cli(args, tmp_path, capsys, name="r"):
    d = tmp_path / name
    rc = main(["bench", *args, "--report-dir", str(d)])
    out = capsys.readouterr()
    rep = json.loads((d / "report.json").read_text()) if (d / "report.json").exists() else None
    return rc, out.out, out.err, rep, d


# --- formulas ------------------------------------------------------------------------------------

def test_forward_flops_by_hand():
    s = Shape("prefill", 1, 8, 8, 1024, 1024, 64, False)
    assert bench.forward_flops(s) == 4 * 1 * 8 * 1024 * 1024 * 64 == 2_147_483_648
    assert bench.forward_flops(s.replace(causal=True)) == 1_073_741_824  # halved
    assert bench.flops(s, backward=True) == 5_368_709_120  # 2.5 x forward
    # 2.147483648e9 FLOPs in 1 ms = 2.147483648 TFLOP/s
    assert bench.tflops_of(s, 1.0) == pytest.approx(2.147483648)
    assert bench.tflops_of(s, 2.0, backward=True) == pytest.approx(2.68435456)
    assert "4*B*H*L*S*E" in bench.flops_formula(s) and "2.147e+09" in bench.flops_formula(s)
    assert "0.5 (causal)" in bench.flops_formula(s.replace(causal=True))


def test_decode_bytes_by_hand():
    s = Shape("decode", 1, 32, 8, 1, 4096, 128, False)
    assert bench.kv_bytes(s, "float32") == 2 * 1 * 8 * 4096 * 128 * 4 == 33_554_432
    assert bench.kv_bytes(s, "bfloat16") == 16_777_216
    # 33,554,432 bytes in 2 ms = 16.777216 GB/s (GB = 1e9)
    assert bench.gbps_of(s, "float32", 2.0) == pytest.approx(16.777216)
    assert bench.forward_flops(s) == 4 * 32 * 1 * 4096 * 128
    # a materialised (B, H, L, S) score matrix, for the peak-memory column
    assert bench.scores_bytes(Shape("prefill", 2, 4, 4, 128, 128, 64), "float16") == 2 * 4 * 128 * 128 * 2


def test_robust_stats_drops_outliers():
    st = bench.robust_stats([1.0, 1.1, 0.9, 1.0, 50.0])
    assert st["median_ms"] == pytest.approx(1.0)
    assert st["repeats"] == 4 and st["dropped"] == 1
    assert st["iqr_ms"] == pytest.approx(0.05)
    assert bench.robust_stats([3.0])["median_ms"] == 3.0


# --- shapes --------------------------------------------------------------------------------------

def test_shape_list_syntax():
    got = bench.parse_shapes("prefill:1x8x1024x64,decode:1x32x8x4096x128,prefill:2x32x8x512x128:causal")
    assert got == [Shape("prefill", 1, 8, 8, 1024, 1024, 64, False),
                   Shape("decode", 1, 32, 8, 1, 4096, 128, False),
                   Shape("prefill", 2, 32, 8, 512, 512, 128, True)]
    for s in got:
        assert bench.parse_shape(s.spec()) == s
    for bad in ("prefill:1x8x64", "decode:1x8x64x16", "nope:1x1x1x1", "prefill:1x8x1024x64:sideways",
                "prefill:axbxcxd", "decode:1x6x4x64x16"):
        with pytest.raises(ValueError):
            bench.parse_shapes(bad)


def test_presets_scale_down_on_cpu():
    gpu = bench.parse_shapes("default", "cuda")
    assert max(s.L for s in gpu if s.mode == "prefill") == 16384
    assert max(s.S for s in gpu if s.mode == "decode") == 131072
    assert {s.E for s in gpu if s.mode == "prefill"} == {64, 128} and {s.causal for s in gpu} == {False, True}
    assert all(s.H == 32 and s.Hkv == 8 for s in gpu if s.mode == "decode")
    cpu = bench.parse_shapes("default", "cpu")
    assert all(s.B == 1 and s.H <= 8 for s in cpu)
    assert max(s.L for s in cpu if s.mode == "prefill") == 2048
    assert max(s.S for s in cpu if s.mode == "decode") == 16384
    assert all(s.H // s.Hkv == 4 for s in cpu if s.mode == "decode")  # GQA kept
    assert len(cpu) == len(set(cpu))
    assert bench.parse_shapes("prefill:1x1x4096x64", "cpu")[0].L == 4096  # a LIST is used as given
    for p in ("small", "gpu-large"):
        assert bench.parse_shapes(p, "cpu")


def test_check_shape_keeps_structure():
    s = Shape("prefill", 4, 32, 8, 16384, 16384, 128, True)
    c = bench.check_shape(s)
    assert (c.mode, c.E, c.causal, c.H // c.Hkv) == ("prefill", 128, True, 4)
    assert c.L == c.S and c.B * c.H * c.L * c.S <= bench.CHECK_MAX_SCORES
    d = bench.check_shape(Shape("decode", 16, 32, 8, 1, 131072, 128))
    assert d.L == 1 and d.H // d.Hkv == 4
    small = Shape("prefill", 1, 2, 2, 64, 64, 16)
    assert bench.check_shape(small) == small


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_table_and_report(tmp_path, capsys):
    rc, out, err, rep, d = run_cli(["--impl", "sdpa", "--impl", "reference", "--shapes",
                                    TINY + ",decode:1x4x2x128x16", "--repeats", "3"], tmp_path, capsys)
    assert rc == 0, err
    for word in ("sdpa ms", "reference ms", "TFLOP/s", "GB/s", "%peak", "peak mem", "4*B*H*L*S*E", "GB = 1e9"):
        assert word in out, word
    assert (d / "report.md").read_text().count("| prefill B1 H2 L=S=64 E16") == 1
    assert rep["schema_version"] == 1 and rep["environment"]["torch"]
    assert set(rep["machine_peak"]) >= {"matmul_tflops", "copy_gbps"} and rep["machine_peak"]["matmul_tflops"] > 0
    assert rep["bench_failures"] == []
    assert len(rep["throughput"]) == 4
    for e in rep["throughput"]:
        assert ENTRY_KEYS <= set(e)
        assert set(e["shape"]) == {"B", "H", "Hkv", "L", "S", "E", "causal"}
        assert e["median_ms"] > 0 and e["iqr_ms"] >= 0 and 1 <= e["repeats"] <= 3
        assert e["tflops"] > 0 and e["fraction_of_peak"] > 0 and e["peak_mem_bytes"] >= 0
        assert (e["gbps"] is not None) == (e["mode"] == "decode")
    # The chunked float64 reference allocates far more than SDPA's fused CPU kernel.
    mem = {e["impl"]: e["peak_mem_bytes"] for e in rep["throughput"] if e["mode"] == "prefill"}
    assert mem["reference"] > mem["sdpa"]
    assert [i["verdict"] for i in rep["implementations"]] == ["pass", "pass"]


def test_wrong_kernel_gets_no_timing(tmp_path, capsys, fake_peak):
    rc, out, err, rep, _ = run_cli(["--impl", "sdpa", "--impl", "fixtures/planted.py:missing_scale",
                                    "--shapes", TINY, "--repeats", "2"], tmp_path, capsys)
    assert rc == 1
    assert rep["machine_peak"] == FAKE_PEAK  # the fixture's patch reached run_bench
    assert [e["impl"] for e in rep["throughput"]] == ["sdpa"]
    (f,) = rep["bench_failures"]
    assert f["impl"] == "missing_scale" and f["shape"]["L"] == 64 and "limit 2x" in f["message"]
    assert "FAIL" in out and "Correctness failures" in out
    assert rep["implementations"][1]["verdict"] == "fail"


def test_planted_slowdown_is_flagged(tmp_path, capsys, fake_peak):
    rc, out, err, rep, d = run_cli(["--impl", "sdpa", "--shapes", TINY, "--repeats", "2"], tmp_path, capsys)
    assert rc == 0
    cur = rep["throughput"]
    # Baseline 20% faster than now: the current run is a 20% slowdown against it.
    base = [dict(e, median_ms=e["median_ms"] / 1.2) for e in cur]
    (s,) = bench.find_slowdowns(cur, base, 0.05)
    assert s["slowdown"] == pytest.approx(0.2) and s["impl"] == "sdpa"
    assert bench.find_slowdowns(cur, base, 0.25) == []
    assert bench.find_slowdowns(cur, cur, 0.05) == []
    other = [dict(e, dtype="bfloat16", median_ms=e["median_ms"] / 1.2) for e in cur]
    assert bench.find_slowdowns(cur, other, 0.05) == []  # different configuration: not compared
    # Through the CLI, with margins no timing noise can cross.
    old = json.loads((d / "report.json").read_text())
    old["throughput"] = [dict(e, median_ms=e["median_ms"] / 1000) for e in cur]
    slow_path = tmp_path / "slow-baseline.json"
    slow_path.write_text(json.dumps(old))
    rc, out, err, rep2, _ = run_cli(["--impl", "sdpa", "--shapes", TINY, "--repeats", "2", "--baseline",
                                     str(slow_path)], tmp_path, capsys, "r2")
    assert rc == 1 and "SLOWER sdpa" in out and len(rep2["slowdowns"]) == 1
    old["throughput"] = [dict(e, median_ms=e["median_ms"] * 1000) for e in cur]
    slow_path.write_text(json.dumps(old))
    rc, out, err, rep3, _ = run_cli(["--impl", "sdpa", "--shapes", TINY, "--repeats", "2", "--baseline",
                                     str(slow_path)], tmp_path, capsys, "r3")
    assert rc == 0 and rep3["slowdowns"] == [] and "no slowdowns" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    rc, _, err, _, _ = run_cli(["--impl", "no_such_builtin", "--shapes", TINY], tmp_path, capsys)
    assert rc == 2 and "unknown built-in" in err and len(err.strip().splitlines()) == 1
    rc, _, err, _, _ = run_cli(["--impl", "sdpa", "--shapes", "prefill:1x2"], tmp_path, capsys)
    assert rc == 2 and "bad shape" in err
    rc, _, err, _, _ = run_cli(["--impl", "sdpa", "--shapes", TINY, "--baseline", str(tmp_path / "missing.json")],
                               tmp_path, capsys)
    assert rc == 2 and "--baseline" in err
    rc, _, err, _, _ = run_cli([], tmp_path, capsys)
    assert rc == 2


# --- cheat guards ----------------------------------------------------------------------------------

def _sdpa(q, k, v, **kw):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)


def _impl(fn, name):
    from harness.contract import Implementation

    return Implementation(name=name, spec=name, fn=fn)


def test_kernel_writing_into_its_inputs_fails(fake_peak):
    def scribbles(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        out = _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        k.mul_(0.5)  # after computing: the output is right, the caller's key is not
        return out

    data = bench.ShapeData(bench.parse_shape(TINY), "float32", "cpu")
    oc = bench.bench_one(_impl(scribbles, "scribbles"), data, repeats=2)
    assert oc.status == "fail" and "modified its input k" in oc.message and oc.entry is None


def test_timed_output_checked_on_sampled_rows(monkeypatch):
    """A configuration too big for a full check is checked at a reduced size; a kernel right
    there but wrong on long rows is caught on sampled rows of the timed output."""
    monkeypatch.setattr(bench.checks, "CHECK_MAX_SCORES", 2 * 32 * 32)  # where check_shape reads it

    def long_rows_wrong(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        out = _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        if q.shape[2] > 40:
            out = out.clone()
            out[:, :, 40:] = 0
        return out

    data = bench.ShapeData(bench.parse_shape(TINY + ":causal"), "float32", "cpu")
    assert not data.exact and data.check.L == 32
    good = bench.bench_one(load("sdpa"), data, repeats=2, peak=FAKE_PEAK)
    assert good.status == "ok" and good.entry["checked_at"]["L"] == 32 and good.entry["shape"]["L"] == 64
    bad = bench.bench_one(_impl(long_rows_wrong, "long_rows_wrong"), data, repeats=2, peak=FAKE_PEAK)
    assert bad.status == "fail" and "sampled rows" in bad.message


def test_backward_is_checked_and_timed(fake_peak):
    data = bench.ShapeData(bench.parse_shape("prefill:1x2x32x16:causal"), "float32", "cpu")
    oc = bench.bench_one(load("sdpa"), data, backward=True, repeats=2, peak=FAKE_PEAK)
    assert oc.status == "ok", oc.message
    assert oc.entry["direction"] == "backward" and "2.5 (backward)" in oc.entry["flops_formula"]
    assert bench.bench_one(load("reference"), data, backward=True, repeats=2).status == "unsupported"


# --- the Triton fixture on a machine without it ----------------------------------------------------

needs_no_triton_gpu = pytest.mark.skipif(
    torch.cuda.is_available() and bool(os.environ.get("ATTN_HARNESS_HAS_TRITON")),
    reason="this machine can run the Triton kernel")


@needs_no_triton_gpu
def test_triton_fixture_imports_and_is_unsupported(tmp_path, capsys, fake_peak):
    from harness.fixtures import triton_attention as mod

    impl = load(TRITON)
    assert impl.capabilities.devices == ("cuda",)
    assert impl.capabilities.why_not(device="cpu") is not None
    if mod.TRITON_IMPORT_ERROR is not None or not torch.cuda.is_available():
        q = torch.randn(1, 2, 8, 64, dtype=torch.float16)
        with pytest.raises(NotImplementedError, match="triton_attention: "):
            impl(q, q, q)
    rc, out, err, rep, _ = run_cli(["--impl", TRITON, "--shapes", TINY], tmp_path, capsys)
    assert rc == 0
    assert rep["throughput"] == [] and rep["bench_failures"] == []
    assert rep["bench_unsupported"] and "device cpu" in rep["bench_unsupported"][0]["message"]
    assert rep["implementations"][0]["verdict"] == "unsupported"
    assert "unsupported" in out and "nothing was timed" in err


@pytest.mark.slow  # a whole `attn-harness check` run
@needs_no_triton_gpu
def test_triton_fixture_check_reports_unsupported(tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--impl", TRITON, "--suite", "decode",
                        "--profile", "quick", "--report-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # nothing certified is not a pass
    rep = json.loads((tmp_path / "report.json").read_text())
    statuses = {x["status"] for i in rep["implementations"] for x in i["results"]}
    assert statuses == {"unsupported"}
    assert rep["implementations"][0]["verdict"] == "unsupported"


# --- the pytest-benchmark suite ------------------------------------------------------------------

@pytest.mark.slow  # a pytest run of the throughput suite
def test_suite_skips_when_benchmark_disabled(tmp_path):
    env = dict(os.environ, ATTN_HARNESS_BENCH_SHAPES="prefill:1x2x32x16")
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.suites.test_throughput",
                        "--attn-impl", "sdpa", "--benchmark-disable", "-rs", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                        "--rootdir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "pytest-benchmark is disabled" in r.stdout
    assert " passed" not in r.stdout


# --- throughput integrity --------------------------------------------------------------------------

INTEGRITY = str(ROOT / "fixtures/integrity.py")


def test_replaying_kernel_is_caught_on_fresh_timed_inputs(tmp_path, capsys, fake_peak):
    """Right on its first call, then replays that answer: timing clones of the checked inputs
    would show correct outputs far above the machine's peak. Fresh input values in the timed
    repeats, each output checked after its timing, give it no timing (the fake peak is far above
    any figure here, so only the output checks can catch it)."""
    rc, out, err, rep, _ = run_cli(["--impl", "sdpa", "--impl", INTEGRITY + ":bench_right_once",
                                    "--shapes", "prefill:1x2x40x16", "--repeats", "3"], tmp_path, capsys)
    assert rc == 1
    assert [e["impl"] for e in rep["throughput"]] == ["sdpa"]
    assert rep["throughput"][0]["fresh_input_repeats"] == 2 and rep["throughput"][0]["flags"] == []
    (f,) = rep["bench_failures"]
    assert f["impl"] == "bench_right_once" and "fresh inputs" in f["message"] and "limit 2x" in f["message"]
    assert "replays or caches answers" in f["message"]


def test_figures_above_the_machine_peak_get_no_timing():
    """The replaying kernel against a peak set from sdpa's own speed on this shape (so load on the
    machine can neither make the honest kernel look impossible nor hide the cheat): its replayed
    answers are instant, its figure is far above the peak, and it is rejected for that first."""
    data = bench.ShapeData(bench.parse_shape("prefill:1x8x512x64"), "float32", "cpu")
    honest = bench.bench_one(load("sdpa"), data, repeats=3)
    assert honest.status == "ok", honest.message
    assert honest.entry["fresh_input_repeats"] == 2
    peak = {"matmul_tflops": 4 * honest.entry["tflops"], "copy_gbps": 1e3, "matmul": "4x sdpa here", "copy": "-"}
    assert bench.bench_one(load("sdpa"), data, repeats=3, peak=peak).status == "ok"
    fast = bench.bench_one(load(INTEGRITY + ":bench_right_once"), data, repeats=3, peak=peak)
    assert fast.status == "fail" and fast.entry is None, fast.message
    assert fast.message.startswith("faster than the hardware: ") and "measured peak" in fast.message


def test_precomputed_answers_do_not_reach_the_timed_repeats(fake_peak):
    """A kernel that does its work before timing starts (answers kept from the check and warm-up
    calls, keyed by the input values) would answer every timed clone of the checked inputs for
    free; with fresh values only the one checked-input repeat can hit, so the median is honest."""
    impl = load(INTEGRITY + ":bench_too_fast")
    data = bench.ShapeData(bench.parse_shape("prefill:1x2x96x16"), "float32", "cpu")
    before = impl.fn.hits
    impl(data.q.clone(), data.k.clone(), data.v.clone(), **data.kwargs)
    impl(data.q.clone(), data.k.clone(), data.v.clone(), **data.kwargs)
    assert impl.fn.hits == before + 1  # the cheat works on clones
    before = impl.fn.hits
    oc = bench.bench_one(impl, data, repeats=5, warmup=1)
    assert oc.status == "ok", oc.message
    # peak-memory call + warm-up + the checked-input repeat: the only answers it did not compute
    assert impl.fn.hits - before == 3 and oc.entry["fresh_input_repeats"] == 4


def test_deferred_output_is_rejected(fake_peak):
    data = bench.ShapeData(bench.parse_shape(TINY), "float32", "cpu")
    oc = bench.bench_one(load(INTEGRITY + ":lazy_output"), data, repeats=2)
    assert oc.status == "fail" and "torch.Tensor subclass" in oc.message, oc.message


def test_ceiling_rules():
    s = bench.parse_shape("prefill:1x8x1024x64")
    peak = {"matmul_tflops": 1.0, "copy_gbps": 10.0}

    def ms_at(tflops):
        return bench.flops(s) / (tflops * 1e12) * 1e3

    assert bench.ceiling_violation(s, "float32", "cpu", ms_at(1.4), False, peak) is None  # within the margin
    msg = bench.ceiling_violation(s, "float32", "cpu", ms_at(100), False, peak)
    assert msg.startswith("faster than the hardware: 100 TFLOP/s is 100x") and "No timing is recorded" in msg
    # A half-precision run is held to the faster of its own and the float32 matmul.
    both = {"matmul_tflops": 0.1, "matmul_float32_tflops": 1.5}
    assert bench.ceiling_violation(s, "bfloat16", "cpu", ms_at(2), False, both) is None
    assert bench.ceiling_violation(s, "bfloat16", "cpu", ms_at(3), False, both) is not None
    # Decode: 8 MiB of K and V stays in a CPU cache, so the DRAM copy peak does not bound it there;
    # on CUDA (L2 flushed before every repeat) it does.
    d = bench.parse_shape("decode:1x8x2x4096x128")
    ms_50gbps = bench.kv_bytes(d, "float32") / 50e9 * 1e3
    assert bench.ceiling_violation(d, "float32", "cpu", ms_50gbps, False, peak) is None
    assert "GB/s of K and V is 5x" in bench.ceiling_violation(d, "float32", "cuda", ms_50gbps, False, peak)
    assert bench.ceiling_violation(s, "float32", "cpu", 1e-9, False, None) is None  # no peak measured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: events against the wall clock")
def test_side_stream_work_is_flagged():
    """Work launched on a side stream is outside the CUDA events recorded on the current stream,
    but not outside a whole-device synchronize: the entry is flagged and reports the wall clock."""
    side = torch.cuda.Stream()

    def side_stream(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
            for _ in range(20):  # enough work that launch latency cannot explain the gap
                out = out + 0.0 * _sdpa(q, k, v, is_causal=is_causal)
        return out

    data = bench.ShapeData(bench.parse_shape("prefill:2x16x2048x64"), "bfloat16", "cuda")
    oc = bench.bench_one(_impl(side_stream, "side_stream"), data, repeats=5)
    assert oc.status == "ok", oc.message
    e = oc.entry
    assert e["flags"] and "side stream" in e["flags"][0], e
    assert e["wall_median_ms"] > 2 * e["event_median_ms"] and e["median_ms"] >= e["event_median_ms"]
    honest = bench.bench_one(load("sdpa"), data, repeats=5)
    assert honest.status == "ok" and honest.entry["flags"] == [], honest.entry
