"""The one rule for "slower by more than a fraction", shared by ``attn-harness bench --baseline``
(:mod:`harness.bench.baselines`) and ``attn-harness compare`` (:mod:`harness.report.compare`).

Torch-free and import-free so that the report code can use it without loading the bench."""

from __future__ import annotations


def slower_by_more_than(new_ms: float, base_ms: float, fraction: float) -> bool:
    """True when ``new_ms`` exceeds ``base_ms`` by more than ``fraction`` (0.05 = 5%). Swap the
    arguments for "faster by more than": base slower than new by the same fraction."""
    # Multiplied, not divided: a zero base time needs no special case.
    return new_ms > base_ms * (1 + fraction)
