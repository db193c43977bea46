"""``attn-harness bench``: correctness-checked throughput (:mod:`harness.bench`) on the command line."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

from harness.cli.usage import load_specs, usage_error
from harness.contract import ALL_DTYPES
from harness.defaults import BACKWARD_FACTOR, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, FORWARD_FACTOR


def _cmd_bench(args) -> int:
    # torch is imported here, not at module level: every subcommand builds this parser, and
    # `check` starts its suite launcher before paying for torch.
    import torch

    from harness import report as R
    from harness.bench import find_slowdowns, load_baseline, parse_shapes, render_tables, run_bench, to_markdown

    def usage(msg):
        return usage_error(msg, "bench")

    if not args.impl:
        return usage("give at least one --impl SPEC (see `attn-harness list`)")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if dtype not in ALL_DTYPES:
        return usage(f"unknown dtype {dtype!r} (known: {', '.join(ALL_DTYPES)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        return usage("--device cuda, but CUDA is not available on this machine")
    try:
        shapes = parse_shapes(args.shapes, args.device)
    except ValueError as e:
        return usage(str(e))
    if args.repeats is not None and args.repeats < 1:
        return usage("--repeats must be >= 1")
    baseline = None
    if args.baseline:
        try:
            baseline = load_baseline(args.baseline)
        except (OSError, ValueError) as e:
            return usage(f"--baseline: {e}")
    impls = load_specs(args.impl, args.traceback, "bench")
    report_dir = Path(args.report_dir or Path("reports") / ("bench-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    options = {"device": args.device, "dtype": dtype, "dtypes": [dtype], "shapes": args.shapes or "default",
               "backward": args.backward, "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed,
               "baseline": args.baseline, "slowdown": args.slowdown, "profile": "bench", "suites": ["throughput"],
               "strict": False, "forward_factor": args.forward_factor, "backward_factor": args.backward_factor}
    rep = R.new_report(options, ["attn-harness"] + sys.argv[1:], args.device)
    sys.stderr.write(f"attn-harness bench: {len(impls)} implementation(s) x {len(shapes)} shape(s) on {args.device} "
                     f"{dtype}; measuring this machine's peak first; report in {report_dir}\n")
    t_start = time.time()

    def progress(rep, impl, shape, direction, oc):
        what = f"{impl.name} · {shape.label()}" + (" · backward" if direction == "backward" else "")
        if oc.status == "ok":
            e = oc.entry
            thr = f"{e['gbps']:.3g} GB/s" if e["gbps"] is not None else f"{e['tflops']:.3g} TFLOP/s"
            sys.stderr.write(f"  {what}: {e['median_ms']:.3g} ms ±{e['iqr_ms']:.2g} ({thr}, n={e['repeats']})\n")
        else:
            sys.stderr.write(f"  {what}: {oc.status.upper()}: {oc.message.splitlines()[0] if oc.message else ''}\n")
        sys.stderr.flush()
        R.atomic_write(report_dir / "report.json", json.dumps(rep, indent=1, default=str))

    try:
        run_bench(impls, shapes, device=args.device, dtype=dtype, backward=args.backward, repeats=args.repeats,
                  warmup=args.warmup, seed=args.seed, forward_factor=args.forward_factor,
                  backward_factor=args.backward_factor, report=rep, on_result=progress)
    except KeyboardInterrupt:
        sys.stderr.write(f"\ninterrupted: {report_dir / 'report.json'} keeps what finished\n")
        return EXIT_INTERRUPTED
    if baseline is not None:
        rep["slowdowns"] = find_slowdowns(rep["throughput"], baseline, args.slowdown)
    rep["duration_s"] = round(time.time() - t_start, 2)
    R.atomic_write(report_dir / "report.json", json.dumps(rep, indent=1, default=str))
    R.atomic_write(report_dir / "report.md", to_markdown(rep))
    print(render_tables(rep))
    sys.stderr.write(f"wrote {report_dir / 'report.json'}\nwrote {report_dir / 'report.md'}\n")
    if not rep["throughput"] and not rep["bench_failures"]:
        sys.stderr.write("attn-harness bench: nothing was timed: every (implementation, shape) is unsupported here\n")
    if rep["bench_failures"] or rep.get("slowdowns"):
        return EXIT_FAIL
    return EXIT_OK


SHAPES_HELP = """\
shapes:
  --shapes PRESET   one of: small, default, gpu-large (default: default). The presets are
                    defined for a GPU; on --device cpu they are scaled down automatically:
                    B=1, H=8 (decode keeps the GQA ratio: H=8, Hkv=2), prefill L=S capped
                    at 2048, decode S capped at 16384 (duplicates removed).
                      default:   prefill B2 H16 L=S in 512,2048,8192,16384, E in 64,128,
                                 causal and not; decode B8 H32 Hkv8 S in 1k,8k,32k,128k, E128
                      small:     prefill L=S 512,1024, E64; decode S 1k,4k
                      gpu-large: prefill B4 H32 L=S 512..16k; decode B16 H32/8 S 1k..128k
  --shapes LIST     comma-separated, used exactly as given (not scaled):
                      prefill:BxHxLxE          e.g. prefill:1x8x1024x64   (L = S)
                      prefill:BxHxHkvxLxE      e.g. prefill:1x32x8x2048x128 (GQA)
                      decode:BxHxHkvxSxE       e.g. decode:1x32x8x4096x128 (L = 1)
                    append :causal for is_causal, e.g. prefill:1x8x1024x64:causal

metrics:
  forward FLOPs = 4*B*H*L*S*E (halved for causal), backward = 2.5 x forward;
  decode GB/s = 2*B*Hkv*S*E*bytes(dtype) / time, GB = 1e9 bytes; %peak against a
  same-dtype matmul (prefill) or a large copy (decode) measured in the same run.

exit status: 0 all checked and timed; 1 a kernel failed its correctness check (it gets no
timing) or a slowdown against --baseline; 2 usage or loading error.
"""


def register(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="correctness-checked throughput for prefill and decode shapes",
        description="Check each implementation on each shape against the float64 reference, then time it "
                    "(fresh inputs every repeat, median and IQR) and write a table, report.json and report.md.",
        epilog=SHAPES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--impl", action="append", default=[], metavar="SPEC",
                   help="built-in name, path/to/file.py:function or package.module:function (repeatable)")
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the kernel runs (default cpu)")
    b.add_argument("--dtype", default=None, choices=ALL_DTYPES,
                   help="default: float32 on cpu, bfloat16 on cuda")
    b.add_argument("--shapes", default=None, metavar="PRESET|LIST", help="see 'shapes' below (default: default)")
    b.add_argument("--backward", action="store_true",
                   help="also check gradients and time the backward pass of the prefill shapes")
    b.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="timed repeats per entry (default 7 on cpu, 3 for calls slower than 0.5 s; 20 on cuda)")
    b.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed warm-up calls (default 1 cpu, 3 cuda)")
    b.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    b.add_argument("--report-dir", default=None, metavar="DIR", help="default reports/bench-<timestamp>/")
    b.add_argument("--baseline", default=None, metavar="REPORT.json",
                   help="an earlier bench report.json: flag entries slower by more than --slowdown (exit 1)")
    b.add_argument("--slowdown", type=float, default=0.05, metavar="FRACTION",
                   help="slowdown threshold against --baseline (default 0.05 = 5%%)")
    b.add_argument("--forward-factor", type=float, default=FORWARD_FACTOR, help="forward error bound factor (default 2)")
    b.add_argument("--backward-factor", type=float, default=BACKWARD_FACTOR, help="gradient error bound factor (default 3)")
    b.add_argument("--traceback", action="store_true", help="show tracebacks for loading errors")
    b.set_defaults(func=_cmd_bench)
