"""``attn-harness compare`` and ``attn-harness merge``: regressions between two reports, and one
comparison from reports made on several machines."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

from harness import report as R
from harness.cli.usage import usage_error
from harness.report.compare import EXIT_OK, EXIT_REGRESSED, compare_reports, merge_reports, to_html, to_markdown


def _load(path: str):
    rep = R.load(path)
    if not isinstance(rep.get("implementations"), list):
        raise ValueError(f"{path}: no implementations list")
    return rep


def cmd_compare(args) -> int:
    reps = []
    for p in (args.base, args.new):
        try:
            reps.append(_load(p))
        except (OSError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
            return usage_error(f"cannot read report {p}: {e}")
    cmp = compare_reports(reps[0], reps[1], args.ratio_threshold, args.slowdown, args.base, args.new)
    text = to_html(cmp) if args.format == "html" else to_markdown(cmp)
    if args.output:
        R.atomic_write(args.output, text)
        sys.stderr.write(f"wrote {args.output}\n")
    else:
        print(text)
    return EXIT_REGRESSED if cmp["regressed"] else EXIT_OK


def cmd_merge(args) -> int:
    pairs = []
    names = [os.path.basename(p) for p in args.reports]
    for p, nm in zip(args.reports, names):
        try:
            pairs.append((p if names.count(nm) > 1 else nm, _load(p)))
        except (OSError, ValueError, AttributeError) as e:
            return usage_error(f"cannot read report {p}: {e}")
    merged = merge_reports(pairs)
    out = Path(args.output_dir or Path("reports") / ("merged-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    from harness.report import writer as report_writer

    paths = report_writer.write_all(merged, out)
    for k, p in paths.items():
        sys.stderr.write(f"wrote {p}\n")
    print(paths["md"])
    return EXIT_OK


def register(subparsers) -> None:
    c = subparsers.add_parser("compare", help="what changed between two report.json files (exit 1 on regressions)",
                              description="Newly failing properties, error-ratio growth, fingerprint changes and "
                                          "throughput slowdowns from BASE to NEW. Exit 0: no regression; 1: "
                                          "regressions; 2: unreadable file or wrong schema.")
    c.add_argument("base", metavar="BASE.json")
    c.add_argument("new", metavar="NEW.json")
    c.add_argument("--ratio-threshold", type=float, default=1.5,
                   help="flag error ratios that grew beyond this factor (and past 0.5) (default 1.5)")
    c.add_argument("--slowdown", type=float, default=0.05,
                   help="flag throughput entries whose median time grew by more than this fraction (default 0.05)")
    c.add_argument("--format", choices=("md", "html"), default="md", help="output format (default md)")
    c.add_argument("--output", default=None, metavar="FILE", help="write the comparison here")
    c.set_defaults(func=cmd_compare)

    m = subparsers.add_parser("merge", help="one comparison from reports made on several machines",
                              description="Columns '<impl> @ <gpu or device> torch <version>'; writes report.json, "
                                          "report.md and report.html into --output-dir and prints the md path.")
    m.add_argument("reports", nargs="+", metavar="REPORT.json")
    m.add_argument("--output-dir", default=None, metavar="DIR", help="default reports/merged-<timestamp>/")
    m.set_defaults(func=cmd_merge)
