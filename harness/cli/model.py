"""``attn-harness ablate`` and ``attn-harness integration``: the model in the loop (:mod:`harness.model`)
on the command line."""

from __future__ import annotations

from harness.cli.usage import usage_error
from harness.defaults import EXIT_FAIL, EXIT_OK

# The names only: every subcommand builds this parser, and harness.model imports torch (see
# harness.cli.bench). float64 as harness.cases.DTYPES has it.
DTYPES = ("float32", "bfloat16", "float16", "float64")


def register(subparsers) -> None:
    p = subparsers.add_parser("ablate", help="all-MiniLM-L6-v2 head ablation and attention entropy "
                                             "with an implementation as the model's attention (needs the [model] extra)")
    p.add_argument("--impl", default="reference", metavar="SPEC", help="implementation (default: reference)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="the model's dtype (default float32)")
    p.add_argument("--top", type=int, default=12, help="rows of the ranking to print")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_cmd_ablate)

    p = subparsers.add_parser("integration", help="batch-composition check of all-MiniLM-L6-v2 with a kernel wired in "
                                                  "by your own integration code (needs the [model] extra)")
    p.add_argument("--integration", default="harness", metavar="SPEC",
                   help="integration(model, kernel) that wires the kernel into the transformers model: "
                        "path/to/file.py:fn or package.module:fn (default: harness, the correct wiring)")
    p.add_argument("--impl", default="sdpa", metavar="SPEC", help="kernel to wire in (default: sdpa)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="the model's dtype (default float32)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    p.set_defaults(func=_cmd_integration)


def _cmd_ablate(args) -> int:
    import json
    from harness.contract import LoadError
    from harness.model import _impl, ablation, format_ablation, unavailable

    why = unavailable()
    if why:
        return usage_error(why)
    try:
        impl = _impl(args.impl)
    except LoadError as e:
        return usage_error(str(e))
    res = ablation(impl, args.dtype)
    print(format_ablation(res, args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return EXIT_OK


def _cmd_integration(args) -> int:
    """Exit 0: the embedding of the probe sentence does not depend on its batch; 1: it does (the
    diagnosis is printed); 2: usage or loading error."""
    from harness.contract import LoadError
    from harness.model import _impl, batch_composition_check, integration_name, load_integration, unavailable
    from harness.probes import PropertyViolation

    why = unavailable()
    if why:
        return usage_error(why)
    try:
        impl, integration = _impl(args.impl), load_integration(args.integration)
    except LoadError as e:
        return usage_error(str(e))
    name = integration_name(args.integration)
    try:
        res = batch_composition_check(impl, args.dtype, integration=integration, device=args.device)
    except PropertyViolation as e:
        print(f"FAIL batch composition through {name} ({impl.name}, {args.dtype}): {e}")
        return EXIT_FAIL
    print(f"pass: batch composition through {name} ({impl.name}, {args.dtype}): largest movement "
          f"{res['max_movement']:.3g} (limit {res['limit']:g})")
    for v in res["variants"]:
        print(f"  {v['moved']:.3g}  {v['what']}")
    return EXIT_OK
