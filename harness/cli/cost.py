"""``attn-harness kv-cache`` and ``attn-harness cost``: the calculators of :mod:`harness.calculators`
on the command line."""

from __future__ import annotations

import argparse
from typing import Optional

from harness.calculators import (DEVICES, DTYPE_BYTES, GIB, KV_CACHE_FORMULA, MIB, MODELS, _check_positive, _fmt_bytes,
                                  _fmt_count, _fmt_time, attention_cost, bytes_per_element, get_device, get_model,
                                  kv_cache_bytes)
from harness.cli.usage import usage_error
from harness.defaults import EXIT_OK


def _resolve_shape(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, int]:
    """Fill shape fields from --model, then let explicit flags override. Raises ValueError."""
    values: dict[str, Optional[int]] = {f: None for f in fields}
    if getattr(args, "model", None):
        preset = get_model(args.model)
        for f in fields:
            if hasattr(preset, f):
                values[f] = getattr(preset, f)
    for f in fields:
        explicit = getattr(args, f, None)
        if explicit is not None:
            values[f] = explicit
    missing = [f for f, v in values.items() if v is None]
    if missing:
        flags = ", ".join("--" + f.replace("_", "-") for f in missing)
        raise ValueError(f"missing {flags} (give them or pass --model PRESET)")
    _check_positive(**values)  # type: ignore[arg-type]
    return values  # type: ignore[return-value]


def _cmd_kv_cache(args: argparse.Namespace) -> int:
    try:
        shape = _resolve_shape(args, ("layers", "kv_heads", "head_dim", "seq", "batch"))
        bpe = bytes_per_element(args.dtype)
        total = kv_cache_bytes(dtype=args.dtype, **shape)
    except ValueError as exc:
        return usage_error(str(exc))
    per_token = total // (shape["seq"] * shape["batch"])
    header = f"KV cache ({args.model})" if args.model else "KV cache"
    print(f"{header}, dtype {args.dtype}")
    print(f"  bytes = {KV_CACHE_FORMULA}")
    print(
        f"        = 2 x {shape['layers']} x {shape['batch']} x {shape['seq']} x "
        f"{shape['kv_heads']} x {shape['head_dim']} x {bpe}"
    )
    print(f"        = {total:,} bytes")
    print(f"        = {total / MIB:,.2f} MiB = {total / GIB:,.4f} GiB (binary: MiB = 2^20 B, GiB = 2^30 B)")
    print(f"        = {total / 1e9:,.4f} GB (decimal: GB = 10^9 B)")
    print(
        f"  per token (one sequence) = 2 x {shape['layers']} x {shape['kv_heads']} x "
        f"{shape['head_dim']} x {bpe} = {per_token:,} bytes ({_fmt_bytes(per_token)})"
    )
    return EXIT_OK


def _cmd_cost(args: argparse.Namespace) -> int:
    try:
        shape = _resolve_shape(args, ("heads", "kv_heads", "head_dim", "seq", "batch"))
        device = get_device(args.device)
        cost = attention_cost(dtype=args.dtype, causal=not args.no_causal, device=device, **shape)
    except ValueError as exc:
        return usage_error(str(exc))
    from tabulate import tabulate

    rows = []
    for w in (cost.prefill, cost.decode):
        rows.append(
            [
                w.name,
                f"{w.queries} x {w.keys}",
                f"{w.flops:,} ({_fmt_count(w.flops)}FLOP)",
                f"{w.bytes_moved:,} ({_fmt_bytes(w.bytes_moved)})",
                f"{w.intensity:,.2f}",
                w.bound,
                _fmt_time(w.time_s),  # type: ignore[arg-type]
            ]
        )
    title = f"Attention cost ({args.model})" if args.model else "Attention cost"
    print(
        f"{title}: B={cost.batch} H={cost.heads} Hkv={cost.kv_heads} D={cost.head_dim} "
        f"seq={cost.seq} dtype={args.dtype} causal={cost.causal}"
    )
    print(
        f"Device {device.name}: {device.tflops:g} TFLOP/s, {device.tbps:g} TB/s, "
        f"ridge = {device.ridge:,.1f} FLOP/byte" + (f"  [{device.note}]" if device.note else "")
    )
    print(
        tabulate(
            rows,
            headers=["workload", "L x S", "FLOPs", "bytes", "FLOP/byte", "bound", "time >="],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    print("Formulas (attention only; B batch, H heads, Hkv kv heads, L queries, S keys, D head_dim):")
    print(f"  prefill FLOPs: {cost.prefill.flops_formula}")
    print(f"  decode  FLOPs: {cost.decode.flops_formula}")
    print(f"  prefill bytes: {cost.prefill.bytes_formula}")
    print(f"  decode  bytes: {cost.decode.bytes_formula}")
    print("  intensity = FLOPs / bytes; compute-bound if intensity >= ridge = peak FLOP/s / peak B/s")
    print("  time >= max(FLOPs / peak FLOP/s, bytes / peak B/s)  (roofline lower bound)")
    return EXIT_OK


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"model preset: {', '.join(MODELS)}")
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=None, help="key/value heads (GQA/MQA: fewer than query heads)")
    p.add_argument("--head-dim", dest="head_dim", type=int, default=None, help="dimension of one head")
    p.add_argument("--seq", type=int, default=None, help="sequence length (cached tokens)")
    p.add_argument("--batch", type=int, default=1, help="sequences at once (default 1)")
    p.add_argument("--dtype", default="bf16", help=f"one of {', '.join(DTYPE_BYTES)}")


def register(subparsers) -> None:
    """Add the ``kv-cache`` and ``cost`` subcommands to an argparse subparsers object."""
    kv = subparsers.add_parser(
        "kv-cache",
        help="KV-cache memory for a model shape",
        description="KV-cache bytes = " + KV_CACHE_FORMULA + ". Explicit flags override --model.",
    )
    kv.add_argument("--layers", type=int, default=None, help="transformer layers")
    _add_common(kv)
    kv.set_defaults(func=_cmd_kv_cache)

    cost = subparsers.add_parser(
        "cost",
        help="prefill vs decode attention FLOPs, bytes and roofline bound",
        description="Attention-only roofline for prefill (L = S = seq) and one decode step "
        "(L = 1). Explicit flags override --model.",
    )
    cost.add_argument("--heads", type=int, default=None, help="query heads")
    _add_common(cost)
    cost.add_argument("--device", default="h100-sxm", help=f"device preset: {', '.join(DEVICES)}")
    cost.add_argument("--no-causal", dest="no_causal", action="store_true",
                      help="full (bidirectional) attention: every query reads every key")
    cost.set_defaults(func=_cmd_cost)
