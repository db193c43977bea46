"""Comparing a bench run with an earlier report.json: which entries got slower."""

from __future__ import annotations

import json

from harness.slowdown import slower_by_more_than


def entry_key(e: dict) -> tuple:
    s = e["shape"]
    return (e["impl"], e["mode"], e.get("direction", "forward"),
            tuple((k, s[k]) for k in ("B", "H", "Hkv", "L", "S", "E", "causal")), e["dtype"], e["device"])


def find_slowdowns(current: list, baseline: list, threshold: float = 0.05) -> list:
    """Entries whose median is more than ``threshold`` (a fraction) above the baseline's."""
    old = {entry_key(e): e for e in baseline}
    slow = []
    for e in current:
        o = old.get(entry_key(e))
        if o is None or not o.get("median_ms"):
            continue
        if slower_by_more_than(e["median_ms"], o["median_ms"], threshold):
            slow.append({"impl": e["impl"], "mode": e["mode"], "direction": e.get("direction", "forward"),
                         "shape": e["shape"], "dtype": e["dtype"], "device": e["device"],
                         "baseline_ms": o["median_ms"], "median_ms": e["median_ms"],
                         "slowdown": e["median_ms"] / o["median_ms"] - 1.0})
    return slow


def load_baseline(path) -> list:
    with open(path) as f:
        rep = json.load(f)
    if not isinstance(rep, dict) or not isinstance(rep.get("throughput"), list):
        raise ValueError(f"{path}: no \"throughput\" list (not an `attn-harness bench` report.json)")
    return rep["throughput"]
