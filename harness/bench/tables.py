"""The bench tables and notes (terminal and Markdown), rendered from the report dict alone."""

from __future__ import annotations

import json

from harness.bench.formulas import BYTES_FORMULA, FLOPS_FORMULA, kv_bytes, scores_bytes
from harness.bench.peak import PEAK_MARGIN
from harness.bench.shapes import Shape


def _fmt_bytes(n) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _fmt_ms(e) -> str:
    return f"{e['median_ms']:.3g} ±{e['iqr_ms']:.2g}"


def table_rows(rep: dict) -> dict:
    """{section title: (headers, rows)}, one row per (shape, direction), columns per implementation."""
    impls = list(dict.fromkeys([i["name"] for i in rep.get("implementations", [])] +
                               [e["impl"] for e in rep.get("throughput", [])]))
    entries = {(e["impl"], e["mode"], e.get("direction", "forward"), json.dumps(e["shape"], sort_keys=True)): e
               for e in rep.get("throughput", [])}
    other = {}
    for r in rep.get("bench_failures", []):
        other[(r["impl"], r.get("mode"), r.get("direction", "forward"), json.dumps(r["shape"], sort_keys=True))] = "FAIL"
    for r in rep.get("bench_unsupported", []):
        other[(r["impl"], r.get("mode"), r.get("direction", "forward"), json.dumps(r["shape"], sort_keys=True))] = "unsupported"
    dtype = rep.get("options", {}).get("dtype", "float32")
    out = {}
    for mode, direction in (("prefill", "forward"), ("prefill", "backward"), ("decode", "forward")):
        shapes = [s for s in rep.get("shapes", []) if s["mode"] == mode]
        if direction == "backward" and not rep.get("options", {}).get("backward"):
            continue
        if not shapes:
            continue
        thr = "TFLOP/s" if mode == "prefill" else "GB/s"
        headers = ["shape"] + (["L×S scores"] if mode == "prefill" else ["K+V bytes"])
        for n in impls:
            headers += [f"{n} ms", f"{n} {thr}"] + ([f"{n} TFLOP/s"] if mode == "decode" else []) + [
                f"{n} %peak", f"{n} peak mem"]
        rows = []
        for s in shapes:
            sh = Shape(**s)
            key_shape = json.dumps(sh.to_dict(), sort_keys=True)
            row = [sh.label(), _fmt_bytes(scores_bytes(sh, dtype) if mode == "prefill" else kv_bytes(sh, dtype))]
            for n in impls:
                e = entries.get((n, mode, direction, key_shape))
                width = 5 if mode == "decode" else 4
                if e is None:
                    row += [other.get((n, mode, direction, key_shape), "—")] + [""] * (width - 1)
                    continue
                frac = "" if e["fraction_of_peak"] is None else f"{100 * e['fraction_of_peak']:.1f}%"
                if mode == "prefill":
                    row += [_fmt_ms(e), f"{e['tflops']:.3g}", frac, _fmt_bytes(e["peak_mem_bytes"])]
                else:
                    row += [_fmt_ms(e), f"{e['gbps']:.3g}", f"{e['tflops']:.3g}", frac, _fmt_bytes(e["peak_mem_bytes"])]
            rows.append(row)
        title = f"{mode} ({direction})" if mode == "prefill" else "decode (forward, one query token)"
        out[title] = (headers, rows)
    return out


def notes(rep: dict) -> list:
    mp = rep.get("machine_peak", {})
    o = rep.get("options", {})
    methods = sorted({e.get("peak_mem_method", "") for e in rep.get("throughput", [])} - {""})
    lines = [
        f"ms: median ±IQR over the timed repeats (outliers beyond 1.5 IQR dropped), fresh input values every "
        f"forward repeat but one (clones of the checked inputs), every timed output checked afterwards; "
        f"figures above {PEAK_MARGIN:g}x this run's measured peak rejected; device {o.get('device')}, dtype {o.get('dtype')}.",
        f"TFLOP/s = FLOPs / median / 1e12 with FLOPs = {FLOPS_FORMULA}.",
        f"GB/s (decode) = bytes / median / 1e9 (GB = 1e9 bytes) with bytes = {BYTES_FORMULA}.",
        f"%peak: prefill TFLOP/s over this run's matmul ({mp.get('matmul_tflops', float('nan')):.3g} TFLOP/s, "
        f"{mp.get('matmul', '')}); decode GB/s over this run's copy ({mp.get('copy_gbps', float('nan')):.3g} GB/s, "
        f"{mp.get('copy', '')}).",
        "peak mem: extra bytes allocated during one call above its inputs (output + workspace), measured with "
        + (", ".join(methods) or "-") + (". On CPU this sees torch's CPU allocator only (approximate)."
                                          if o.get("device") != "cuda" else ".")
        + " Compare with the L×S scores column: a kernel at or above it materialises the score matrix.",
    ]
    return lines


def render_tables(rep: dict, fmt: str = "simple") -> str:
    from tabulate import tabulate

    parts = []
    for title, (headers, rows) in table_rows(rep).items():
        parts += [f"{'## ' if fmt == 'github' else ''}{title}", "",
                  tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True), ""]
    parts += [("- " if fmt == "github" else "") + n for n in notes(rep)]
    flagged = [e for e in rep.get("throughput", []) if e.get("flags")]
    if flagged:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Flagged timings", ""]
        for e in flagged:
            parts.append(f"{'- ' if fmt == 'github' else '  '}FLAGGED {e['impl']} · {Shape(mode=e['mode'], **e['shape']).label()} · "
                         f"{e.get('direction', 'forward')}: " + "; ".join(e["flags"]))
    fails = rep.get("bench_failures", [])
    if fails:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Correctness failures (no timing recorded)", ""]
        for f in fails:
            parts.append(f"{'- ' if fmt == 'github' else '  '}{f['impl']} · {Shape(mode=f['mode'], **f['shape']).label()} · "
                         f"{f.get('direction', 'forward')}: {f['message']}".replace("\n", " "))
    uns = rep.get("bench_unsupported", [])
    if uns:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Unsupported (declared capabilities or NotImplementedError)", ""]
        seen = set()
        for u in uns:
            key = (u["impl"], u["message"])
            if key in seen:
                continue
            seen.add(key)
            parts.append(f"{'- ' if fmt == 'github' else '  '}{u['impl']}: {u['message']}")
    slow = rep.get("slowdowns")
    if slow is not None:
        parts += ["", f"{'## ' if fmt == 'github' else ''}Against the baseline "
                      f"({rep.get('options', {}).get('baseline')}, threshold "
                      f"{100 * rep.get('options', {}).get('slowdown', 0.05):.0f}%)", ""]
        if not slow:
            parts.append("no slowdowns")
        for s in slow:
            parts.append(f"{'- ' if fmt == 'github' else '  '}SLOWER {s['impl']} · {Shape(mode=s['mode'], **s['shape']).label()} · "
                         f"{s['direction']}: {s['baseline_ms']:.3g} ms -> {s['median_ms']:.3g} ms "
                         f"(+{100 * s['slowdown']:.1f}%)")
    return "\n".join(parts)


def to_markdown(rep: dict) -> str:
    env = rep.get("environment", {})
    head = ["# attention-harness throughput", "",
            f"Created {rep.get('created')} · torch {env.get('torch')} · {env.get('gpu') or env.get('cpu')} "
            f"({env.get('cpu_count')} CPUs) · command `{' '.join(rep.get('command') or [])}`", "", ""]
    return "\n".join(head) + render_tables(rep, "github") + "\n"
