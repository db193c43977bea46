"""Tests for harness.calculators against numbers worked out by hand (see comments)."""

from __future__ import annotations

import argparse

import pytest

from harness.calculators import (
    DEVICES,
    MODELS,
    DevicePeak,
    attention_cost,
    bytes_per_element,
    get_device,
    get_model,
    kv_cache_bytes,
    roofline,
)
from harness.cli.cost import register

# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("float32", 4),
        ("fp32", 4),
        ("bfloat16", 2),
        ("bf16", 2),
        ("float16", 2),
        ("fp16", 2),
        ("float8", 1),
        ("fp8", 1),
        ("int8", 1),
        ("BF16", 2),
        ("torch.bfloat16", 2),
    ],
)
def test_bytes_per_element(name, expected):
    assert bytes_per_element(name) == expected


def test_bytes_per_element_accepts_torch_dtype():
    torch = pytest.importorskip("torch")
    assert bytes_per_element(torch.float32) == 4
    assert bytes_per_element(torch.bfloat16) == 2


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="unknown dtype"):
        bytes_per_element("float64x")


# --------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------


def test_kv_cache_llama3_8b_seq8192_is_one_gib():
    # 2 * 32 layers * 1 batch * 8192 seq * 8 kv_heads * 128 head_dim * 2 bytes
    # = 2^1 * 2^5 * 2^13 * 2^3 * 2^7 * 2^1 = 2^30 = 1,073,741,824 bytes = 1 GiB
    m = get_model("llama-3-8b")
    got = kv_cache_bytes(m.layers, m.kv_heads, m.head_dim, seq=8192, batch=1, dtype="bf16")
    assert got == 1_073_741_824 == 2**30


def test_kv_cache_tiny_model_by_hand():
    # layers 2, kv_heads 2, head_dim 4, seq 3, batch 5, fp32 (4 B):
    # 2*2 = 4; *5 = 20; *3 = 60; *2 = 120; *4 = 480; *4 B = 1920 bytes
    assert kv_cache_bytes(2, 2, 4, seq=3, batch=5, dtype="float32") == 1920


def test_kv_cache_llama3_70b_and_scaling():
    # per token: 2 * 80 * 8 * 128 * 2 = 327,680 bytes; * 8192 tokens = 2,684,354,560 = 2.5 GiB
    assert kv_cache_bytes(80, 8, 128, seq=1, batch=1, dtype="bf16") == 327_680
    assert kv_cache_bytes(80, 8, 128, seq=8192, batch=1, dtype="bf16") == 2_684_354_560
    # linear in batch and in seq; halves going bf16 -> fp8
    base = kv_cache_bytes(32, 8, 128, seq=1024, batch=1, dtype="bf16")
    assert kv_cache_bytes(32, 8, 128, seq=1024, batch=4, dtype="bf16") == 4 * base
    assert kv_cache_bytes(32, 8, 128, seq=2048, batch=1, dtype="bf16") == 2 * base
    assert kv_cache_bytes(32, 8, 128, seq=1024, batch=1, dtype="fp8") == base // 2


def test_kv_cache_gqa_vs_mha_common_mistake_8():
    # Using heads (32) instead of kv_heads (8) for llama-3-8b overestimates 4x; forgetting
    # the factor 2 for K *and* V underestimates 2x. Both are the lesson's mistake 8.
    mha = kv_cache_bytes(32, 32, 128, seq=8192, batch=1, dtype="bf16")
    gqa = kv_cache_bytes(32, 8, 128, seq=8192, batch=1, dtype="bf16")
    assert mha == 4 * gqa == 4 * 2**30


def test_kv_cache_minilm_by_hand():
    # all-MiniLM-L6-v2: 6 layers, 12 kv heads, head_dim 32 (384 / 12)
    # per token bf16: 2*6*12*32*2 = 9216 B; seq 256 -> 2,359,296 B = 2.25 MiB
    m = get_model("all-minilm-l6-v2")
    assert (m.layers, m.heads, m.kv_heads, m.head_dim) == (6, 12, 12, 32)
    assert kv_cache_bytes(m.layers, m.kv_heads, m.head_dim, 256, 1, "bf16") == 2_359_296


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layers=0, kv_heads=8, head_dim=128, seq=1, batch=1, dtype="bf16"),
        dict(layers=1, kv_heads=-1, head_dim=128, seq=1, batch=1, dtype="bf16"),
        dict(layers=1, kv_heads=8, head_dim=128, seq=0, batch=1, dtype="bf16"),
        dict(layers=1, kv_heads=8, head_dim=128, seq=1, batch=1, dtype="nope"),
    ],
)
def test_kv_cache_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        kv_cache_bytes(**kwargs)


# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------


def test_model_presets_by_hand():
    assert {n: (m.layers, m.heads, m.kv_heads, m.head_dim) for n, m in MODELS.items()} == {
        "llama-3-8b": (32, 32, 8, 128),
        "llama-3-70b": (80, 64, 8, 128),
        "mistral-7b": (32, 32, 8, 128),
        "gpt2": (12, 12, 12, 64),
        "all-minilm-l6-v2": (6, 12, 12, 32),
    }
    for m in MODELS.values():
        assert m.heads % m.kv_heads == 0


def test_device_presets():
    assert (DEVICES["h100-sxm"].tflops, DEVICES["h100-sxm"].tbps) == (989.0, 3.35)
    assert (DEVICES["h200"].tflops, DEVICES["h200"].tbps) == (989.0, 4.8)
    assert (DEVICES["a100-80gb"].tflops, DEVICES["a100-80gb"].tbps) == (312.0, 2.04)
    assert (DEVICES["l4"].tflops, DEVICES["l4"].tbps) == (121.0, 0.3)
    assert "placeholder" in DEVICES["cpu-2core"].note
    # ridge = 989e12 / 3.35e12 = 295.22 FLOP/byte
    assert get_device("h100-sxm").ridge == pytest.approx(295.2239, rel=1e-4)


def test_unknown_presets_raise():
    with pytest.raises(ValueError, match="unknown model preset"):
        get_model("llama-9")
    with pytest.raises(ValueError, match="unknown device preset"):
        get_device("tpu-v9")


# --------------------------------------------------------------------------------------
# attention cost
# --------------------------------------------------------------------------------------

# Small shape used below: B=1, H=2, Hkv=1, D=4, seq=8, fp16 (2 B).
SMALL = dict(heads=2, kv_heads=1, head_dim=4, seq=8, batch=1, dtype="fp16")


def test_prefill_and_decode_by_hand_non_causal():
    c = attention_cost(**SMALL, causal=False)
    # prefill FLOPs = 4*B*H*L*S*D = 4*1*2*8*8*4 = 2048
    assert c.prefill.flops == 2048
    # prefill bytes = (B*H*L*D + 2*B*Hkv*S*D + B*H*L*D) * 2 = (64 + 64 + 64) * 2 = 384
    assert c.prefill.bytes_moved == 384
    assert c.prefill.intensity == pytest.approx(2048 / 384)  # 5.333
    # decode FLOPs = 4*1*2*1*8*4 = 256
    assert c.decode.flops == 256
    # decode bytes = (1*2*1*4 [q] + 2*1*1*8*4 [K,V] + 1*2*1*4 [o]) * 2 = (8 + 64 + 8) * 2 = 160
    assert c.decode.bytes_moved == 160
    assert c.decode.intensity == pytest.approx(1.6)
    assert (c.prefill.queries, c.prefill.keys) == (8, 8)
    assert (c.decode.queries, c.decode.keys) == (1, 8)
    # no device -> no verdict
    assert c.prefill.bound is None and c.prefill.time_s is None and c.ridge is None


def test_causal_halves_prefill_only():
    full = attention_cost(**SMALL, causal=False)
    causal = attention_cost(**SMALL, causal=True)
    assert causal.prefill.flops == full.prefill.flops // 2 == 1024
    assert causal.prefill.bytes_moved == full.prefill.bytes_moved == 384
    assert causal.prefill.intensity == pytest.approx(1024 / 384)  # 2.667
    # decode: the one new token sees the whole cache, so no halving
    assert causal.decode.flops == full.decode.flops == 256
    assert "/ 2" in causal.prefill.flops_formula
    assert "/ 2" not in full.prefill.flops_formula
    assert "4*B*H*L*S*D" in full.prefill.flops_formula


def test_bound_classification_with_hand_made_device():
    # toy device: 1 TFLOP/s, 0.5 TB/s -> ridge = 1e12 / 0.5e12 = 2 FLOP/byte
    toy = DevicePeak("toy", tflops=1.0, tbps=0.5)
    assert toy.ridge == pytest.approx(2.0)
    c = attention_cost(**SMALL, causal=True, device=toy)
    assert c.ridge == pytest.approx(2.0)
    # prefill: intensity 2.667 >= 2 -> compute-bound
    # time = max(1024 / 1e12, 384 / 0.5e12) = max(1.024e-9, 0.768e-9) = 1.024e-9 s
    assert c.prefill.bound == "compute"
    assert c.prefill.time_s == pytest.approx(1.024e-9)
    # decode: intensity 1.6 < 2 -> memory-bound
    # time = max(256 / 1e12, 160 / 0.5e12) = max(0.256e-9, 0.32e-9) = 0.32e-9 s
    assert c.decode.bound == "memory"
    assert c.decode.time_s == pytest.approx(0.32e-9)
    # roofline() agrees and a workload exactly at the ridge counts as compute-bound
    assert roofline(1024, 384, toy) == ("compute", pytest.approx(1.024e-9))
    assert roofline(200, 100, toy)[0] == "compute"
    assert roofline(199, 100, toy)[0] == "memory"


def test_llama3_8b_on_h100_prefill_compute_decode_memory():
    # B=1, H=32, Hkv=8, D=128, seq=8192, bf16
    # prefill causal FLOPs = 4*32*8192*8192*128 / 2 = 2^39 = 549,755,813,888
    # prefill bytes = (32*8192*128 + 2*8*8192*128 + 32*8192*128) * 2 = 83,886,080 * 2 = 167,772,160
    # intensity = 3276.8 > ridge 295.2 -> compute
    # decode FLOPs = 4*32*8192*128 = 134,217,728
    # decode bytes = (32*128 + 2*8*8192*128 + 32*128) * 2 = 16,785,408 * 2 = 33,570,816
    # intensity ~ 3.998 < 295.2 -> memory
    c = attention_cost(32, 8, 128, 8192, 1, "bf16", causal=True, device="h100-sxm")
    assert c.prefill.flops == 549_755_813_888
    assert c.prefill.bytes_moved == 167_772_160
    assert c.prefill.intensity == pytest.approx(3276.8)
    assert c.prefill.bound == "compute"
    assert c.prefill.time_s == pytest.approx(549_755_813_888 / 989e12)
    assert c.decode.flops == 134_217_728
    assert c.decode.bytes_moved == 33_570_816
    assert c.decode.intensity == pytest.approx(134_217_728 / 33_570_816)
    assert c.decode.bound == "memory"
    assert c.decode.time_s == pytest.approx(33_570_816 / 3.35e12)


def test_attention_cost_rejects_bad_input():
    with pytest.raises(ValueError, match="must divide"):
        attention_cost(heads=6, kv_heads=4, head_dim=8, seq=4, batch=1, dtype="bf16")
    with pytest.raises(ValueError):
        attention_cost(heads=0, kv_heads=1, head_dim=8, seq=4, batch=1, dtype="bf16")
    with pytest.raises(ValueError):
        attention_cost(heads=4, kv_heads=1, head_dim=8, seq=4, batch=1, dtype="bf16", device="x")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="attn-harness")
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_kv_cache_model_preset(capsys):
    args = _parse(["kv-cache", "--model", "llama-3-8b", "--seq", "8192"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 x 32 x 1 x 8192 x 8 x 128 x 2" in out
    assert "1,073,741,824 bytes" in out
    assert "1,024.00 MiB" in out and "1.0000 GiB" in out
    assert "binary" in out
    assert "131,072 bytes" in out  # per token: 2*32*8*128*2


def test_cli_kv_cache_explicit_flags_override_preset(capsys):
    # preset llama-3-8b but --kv-heads 32 (as if MHA) and fp32: 2*32*1*1024*32*128*4 = 1 GiB
    args = _parse(
        ["kv-cache", "--model", "llama-3-8b", "--kv-heads", "32", "--seq", "1024", "--dtype", "fp32"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 x 32 x 1 x 1024 x 32 x 128 x 4" in out
    assert "1,073,741,824 bytes" in out


def test_cli_kv_cache_explicit_only(capsys):
    args = _parse(
        ["kv-cache", "--layers", "2", "--kv-heads", "2", "--head-dim", "4", "--seq", "3",
         "--batch", "5", "--dtype", "float32"]
    )
    assert args.func(args) == 0
    assert "1,920 bytes" in capsys.readouterr().out


def test_cli_cost_table(capsys):
    args = _parse(["cost", "--model", "llama-3-8b", "--seq", "8192", "--device", "h100-sxm"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "decode" in out
    assert "549,755,813,888" in out and "134,217,728" in out
    assert "compute" in out and "memory" in out
    assert "4*B*H*L*S*D" in out
    assert "ridge" in out
    # intensities keep two decimals (prefill 3276.8, decode 134,217,728 / 33,570,816 = 3.998)
    assert "3,276.80" in out and "4.00" in out


def test_cli_cost_no_causal(capsys):
    args = _parse(
        ["cost", "--heads", "2", "--kv-heads", "1", "--head-dim", "4", "--seq", "8",
         "--dtype", "fp16", "--no-causal", "--device", "cpu-2core"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2,048" in out and "384" in out and "causal=False" in out
    assert "placeholder" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["kv-cache", "--model", "llama-9", "--seq", "8"],
        ["kv-cache", "--model", "gpt2", "--seq", "0"],
        ["kv-cache", "--model", "gpt2", "--seq", "8", "--dtype", "float64x"],
        ["kv-cache", "--layers", "2", "--kv-heads", "2", "--head-dim", "4"],  # no --seq
        ["cost", "--heads", "6", "--kv-heads", "4", "--head-dim", "8", "--seq", "4"],
        ["cost", "--model", "gpt2", "--seq", "-3"],
        ["cost", "--model", "gpt2", "--seq", "8", "--device", "tpu-v9"],
        ["cost", "--model", "nope", "--seq", "8"],
    ],
)
def test_cli_errors_return_2(argv, capsys):
    args = _parse(argv)
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("attn-harness: error:")
    assert "\n" not in err
