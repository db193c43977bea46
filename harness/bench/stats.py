"""Robust summary of timed repeats: median and IQR after dropping outliers."""

from __future__ import annotations

import statistics


def _quartiles(xs: list) -> tuple:
    s = sorted(xs)
    if len(s) == 1:
        return s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[2]


def robust_stats(times_ms: list) -> dict:
    """Median and IQR after dropping samples beyond 1.5 IQR of the quartiles."""
    if not times_ms:
        raise ValueError("no samples")
    q1, q3 = _quartiles(times_ms)
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    kept = [t for t in times_ms if lo <= t <= hi] or list(times_ms)
    k1, k3 = _quartiles(kept)
    return {"median_ms": statistics.median(kept), "iqr_ms": k3 - k1, "repeats": len(kept),
            "dropped": len(times_ms) - len(kept)}
