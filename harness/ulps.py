"""Units in the last place: how far apart two outputs are in the output dtype's own grid, and the
numbers a failure record carries (the ratio to the bound, the ulps, the rule that was applied).

A tolerance argument ("3.1x the bound" from one side, "it is only rounding" from the other) is
settled by the ulps: 14 ulps in float32 is not rounding, 1 ulp in bfloat16 is.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def spacing(dtype: torch.dtype, magnitude: float) -> float:
    """The distance between adjacent values of ``dtype`` at ``magnitude`` (its ulp there);
    subnormal magnitudes get the smallest normal's spacing."""
    fi = torch.finfo(dtype)
    m = max(abs(float(magnitude)), float(fi.tiny))
    if not math.isfinite(m):
        return float("inf")
    return float(fi.eps) * 2.0 ** math.floor(math.log2(m))


def ordered(t: torch.Tensor) -> torch.Tensor:
    """The bits of a floating tensor as int64 numbers that are adjacent exactly when the floats
    are adjacent (sign-magnitude mapped to two's complement): ulp distance is a subtraction."""
    t = t.detach().contiguous()
    iv = t.view(_INT_VIEW[t.dtype]).to(torch.int64)  # sign-extended: negative exactly when the sign bit is set
    mag = iv & ((1 << (torch.finfo(t.dtype).bits - 1)) - 1)
    return torch.where(iv < 0, -mag - 1, iv)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in ulps of their common dtype (0.0 and -0.0 are one step apart: bitwise
    is bitwise). NaN against anything counts as infinitely far, NaN against NaN as equal."""
    d = (ordered(a) - ordered(b)).abs().to(torch.float64)
    na, nb = torch.isnan(a), torch.isnan(b)
    d = torch.where(na | nb, torch.full_like(d, float("inf")), d)
    return torch.where(na & nb, torch.zeros_like(d), d)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool((ordered(a) == ordered(b)).all())


def first_difference(a: torch.Tensor, b: torch.Tensor, names=("a", "b")) -> Optional[dict]:
    """The first element (in index order) whose bits differ, with both values and the ulp
    distance there and at the worst element; None when the tensors are bitwise equal."""
    if a.shape != b.shape:
        return {"index": None, "shape_a": list(a.shape), "shape_b": list(b.shape), "ulps": None, "max_ulps": None,
                "elements_differing": None}
    differs = ordered(a) != ordered(b)
    if not bool(differs.any()):
        return None
    flat = int(differs.reshape(-1).nonzero()[0])
    idx = [int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)]
    d = ulp_distance(a, b)
    return {"index": idx, names[0]: float(a.reshape(-1)[flat]), names[1]: float(b.reshape(-1)[flat]),
            "ulps": _num(float(d.reshape(-1)[flat])), "max_ulps": _num(float(d.max())),
            "elements_differing": int(differs.sum()), "elements": a.numel()}


def describe_difference(diff: dict, names=("a", "b")) -> str:
    if diff.get("index") is None:
        return f"shapes differ: {diff.get('shape_a')} vs {diff.get('shape_b')}"
    return (f"first differing element at {tuple(diff['index'])}: {diff[names[0]]!r} vs {diff[names[1]]!r} "
            f"({diff['ulps']} ulps; {diff['elements_differing']} of {diff['elements']} elements differ, "
            f"at most {diff['max_ulps']} ulps)")


def _num(x: float):
    return x if math.isfinite(x) else str(x)


# --- the numbers of the latest violation, for the failure record ------------------------------
# A property raises PropertyViolation with a message; the plugin, which writes the record, never
# sees the comparison. The instruments note its numbers here just before raising, and the plugin
# takes them when it stores the failure (cleared per property by the target fixture).
_last: dict = {}

TOLERANCE_RULE = ("per-row error <= factor x the worst same-dtype PyTorch error (scale on q, on k, "
                  "on the scores) against the float64 reference, at least a 4-ulp floor")


def note(numbers: dict) -> None:
    _last.clear()
    _last.update(numbers)


def take() -> dict:
    out = dict(_last)
    _last.clear()
    return out


def clear() -> None:
    _last.clear()
