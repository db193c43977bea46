"""Dtype-aware error bounds, after the FlashAttention test rule, evaluated per row.

The implementation's error against the float64 reference may be at most ``factor`` times the
error of a plain same-dtype PyTorch computation against the same reference. A fixed absolute
tolerance gets looser as context grows (the output's spread shrinks with length), a ratio does
not. The comparison is made per (batch, head, query row), so a leak confined to a few rows is not
hidden by a global maximum. Each row's allowance is ``factor`` times the larger of the baseline's
error on that row and a floor of a few units in the last place, measured at the row's value scale
and conditioned on its largest |logit|: without the floor, a row that the baseline happens to get
exactly right would demand perfection, and chance row-to-row differences between equally precise
kernels would fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from harness.defaults import BACKWARD_FACTOR, FORWARD_FACTOR  # noqa: F401 (one home: harness.defaults)
from harness.reference import attention_naive

# Units in the last place (of the dtype, at the row's value magnitude) that any kernel may be
# off by, whatever the baseline did. Measured on the correct fixtures: see tests/test_tolerance.py.
FLOOR_ULPS = 4.0
# A plain same-dtype computation rounds its logits in the dtype, so a row whose largest |logit| is
# a carries output errors up to about eps(dtype) * a times its value scale (saturating at the
# value scale itself). The baseline rows that the same-dtype orderings happen to get nearly right
# are held to at least this fraction of it: a single lucky baseline row must not set the bar.
# Measured in tests/test_fairness.py; in float32 the ulps floor above is always the larger.
NATURAL_FRACTION = 0.25


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


@dataclass
class Comparison:
    ok: bool
    worst_ratio: float  # error / max(baseline error, floor); the bound is ``factor``
    factor: float
    worst_index: tuple  # (b, h, row) of the worst row
    worst_error: float
    worst_baseline: float
    max_error: float
    rows_failed: int
    rows: int
    nonfinite: int  # rows with NaN/Inf where the reference is finite
    nan_entries: int = 0  # entries of those rows that are NaN
    inf_entries: int = 0  # ... and that are +-inf
    finite_error: float = 0.0  # the largest error among the finite entries
    # The worst row's error in units in the last place of the output dtype at the row's value
    # scale, and the baseline's: "3.1x the bound, 14 ulps" settles a tolerance argument.
    worst_ulps: Optional[float] = None
    baseline_ulps: Optional[float] = None

    def describe(self, what: str = "output") -> str:
        b, h, i = self.worst_index
        if self.nonfinite:
            # "error inf" says nothing about a NaN: name what is there, then the finite part.
            return (f"{what}: {nonfinite_counts(self.nan_entries, self.inf_entries)} in {self.nonfinite}/{self.rows} "
                    f"rows where the reference is finite (first at b={b}, h={h}, row={i}); largest finite error "
                    f"{self.finite_error:.3g}; {self.rows_failed}/{self.rows} rows over the bound")
        return (f"{what}: worst row (b={b}, h={h}, row={i}) error {self.worst_error:.3g} = "
                f"{self.worst_ratio:.3g}x the same-dtype PyTorch error {self.worst_baseline:.3g} "
                f"(limit {self.factor:g}x){self._ulps_text()}; {self.rows_failed}/{self.rows} rows over the bound")

    def _ulps_text(self) -> str:
        if self.worst_ulps is None:
            return ""
        return f", {self.worst_ratio / self.factor:.3g}x the bound, {_finite(round(self.worst_ulps, 1))} ulps"

    def rule(self) -> dict:
        """The rule this comparison applied, for the failure record."""
        from harness.ulps import TOLERANCE_RULE

        return {"kind": "tolerance", "factor": self.factor, "baseline": TOLERANCE_RULE,
                "baseline_error": _finite(self.worst_baseline),
                "baseline_ulps": None if self.baseline_ulps is None else _finite(round(self.baseline_ulps, 2)),
                "times_the_bound": _finite(self.worst_ratio / self.factor) if self.factor else None}

    def to_dict(self) -> dict:
        d = {"ratio": _finite(self.worst_ratio), "factor": self.factor,
             "ulps": None if self.worst_ulps is None else _finite(round(self.worst_ulps, 2)),
             "where": dict(zip(("b", "h", "row"), self.worst_index)),
             "error": _finite(self.worst_error), "baseline_error": _finite(self.worst_baseline),
             "rows_failed": self.rows_failed, "rows": self.rows, "nonfinite_rows": self.nonfinite}
        if self.nonfinite:
            d.update(nan_entries=self.nan_entries, inf_entries=self.inf_entries, finite_error=self.finite_error)
        return d


def nonfinite_counts(nan: int, inf: int) -> str:
    """``"3 NaN entries, 0 inf entries"``: what a failure message says instead of ``error inf``."""
    return f"{nan} NaN {'entry' if nan == 1 else 'entries'}, {inf} inf {'entry' if inf == 1 else 'entries'}"


def describe_values(t: torch.Tensor, what: str = "max |value|") -> str:
    """``max |value| 0.25`` for finite values; NaN and inf counted first otherwise
    (``2 NaN entries, 0 inf entries, max finite |value| 0.25``)."""
    t = t.detach()
    fin = torch.isfinite(t)
    top = float(t[fin].abs().max()) if bool(fin.any()) else 0.0
    if bool(fin.all()):
        return f"{what} {top:.3g}"
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return f"{nonfinite_counts(nan, inf)}, {what.replace('max ', 'max finite ', 1)} {top:.3g}"


def _finite(x: float):
    return x if x == x and abs(x) != float("inf") else str(x)


def row_errors(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Max absolute error per leading index (all dims but the last), NaN/Inf mapped to inf."""
    d = (x.detach().to(torch.float64) - ref.to(torch.float64)).abs()
    d = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))
    return d.amax(dim=-1) if d.shape[-1] else torch.zeros(d.shape[:-1], dtype=torch.float64)


def compare(out: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, dtype: torch.dtype,
            factor: float = FORWARD_FACTOR, scale: Optional[torch.Tensor] = None,
            rows: Optional[torch.Tensor] = None, floor_ulps: float = FLOOR_ULPS,
            logit_absmax=0.0, natural_fraction: float = NATURAL_FRACTION) -> Comparison:
    """Judge ``out`` (B, H, L, D) against the float64 ``ref`` with the same-dtype ``baseline``
    (a tensor, or a list of them: the family of same-dtype orderings from :func:`baselines`).

    ``scale`` (broadcastable to (B, H, L)) is the magnitude the floor is measured at; by default
    the row's largest reference value, at least 1e-3 of the tensor's largest. ``logit_absmax``
    (a float, or per row) is the largest visible |logit|. ``rows`` (bool, (B, H, L)) limits the
    verdict to some rows.
    """
    err = row_errors(out, ref)
    if isinstance(baseline, torch.Tensor):
        base = row_errors(baseline, ref)
    else:  # a family of same-dtype orderings: each row is held to the least lucky of them
        base = torch.stack([row_errors(b, ref) for b in baseline]).amax(dim=0)
    if scale is None:
        mag = ref.detach().abs().to(torch.float64)
        rmax = mag.amax(dim=-1) if mag.shape[-1] else torch.zeros(mag.shape[:-1], dtype=torch.float64)
        scale = torch.clamp(rmax, min=max(float(mag.max()) if mag.numel() else 0.0, 1.0) * 1e-3)
    # A kernel's rounding error in exp(s) grows with |s|: logits are formed in (at least) float32
    # and rounded there, so a row with logits ~1e3 is legitimately ~1e3 ulps off. The floor
    # follows that conditioning; below it, any two correct kernels differ by chance.
    absmax = torch.as_tensor(logit_absmax, dtype=torch.float64)
    cond = eps(dtype) + eps(torch.float32) * absmax
    natural = natural_fraction * torch.clamp(eps(dtype) * absmax, max=1.0)
    floor = torch.as_tensor(scale, dtype=torch.float64) * torch.maximum(floor_ulps * cond, natural)
    floor = floor.expand_as(err) if floor.dim() else floor.expand(err.shape)
    denom = torch.maximum(base, floor)
    ratio = torch.where(err == 0, torch.zeros_like(err), err / denom)  # exact rows pass even at scale 0
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, float("inf")), ratio)
    if rows is not None:
        ratio = torch.where(rows.expand_as(ratio), ratio, torch.zeros_like(ratio))
        considered = int(rows.expand_as(ratio).sum())
    else:
        considered = ratio.numel()
    flat = int(torch.argmax(ratio)) if ratio.numel() else 0
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape)) if ratio.numel() else (0,)
    idx = (idx + (0, 0, 0))[:3] if len(idx) < 3 else idx[-3:]
    out_rows = out.detach()
    ref_finite = torch.isfinite(ref).all(dim=-1)
    nonfinite = (~torch.isfinite(out_rows.to(torch.float32))).any(dim=-1) & ref_finite
    if rows is not None:
        nonfinite = nonfinite & rows.expand_as(nonfinite)
    bad_rows = nonfinite.unsqueeze(-1).expand(out_rows.shape) if out_rows.shape[-1] else None
    nan_entries = int((torch.isnan(out_rows) & bad_rows).sum()) if bad_rows is not None else 0
    inf_entries = int((torch.isinf(out_rows) & bad_rows).sum()) if bad_rows is not None else 0
    fin_err = torch.where(torch.isfinite(err), err, torch.zeros_like(err))
    if rows is not None:
        fin_err = torch.where(rows.expand_as(fin_err), fin_err, torch.zeros_like(fin_err))
    worst = float(ratio.reshape(-1)[flat]) if ratio.numel() else 0.0
    ulp = None
    if err.numel():
        from harness.ulps import spacing

        ulp = spacing(dtype, float(torch.as_tensor(scale, dtype=torch.float64).expand_as(err).reshape(-1)[flat]))
    werr = float(err.reshape(-1)[flat]) if err.numel() else 0.0
    wden = float(denom.reshape(-1)[flat]) if denom.numel() else 0.0
    return Comparison(
        worst_ulps=None if ulp is None else werr / ulp, baseline_ulps=None if ulp is None else wden / ulp,
        ok=bool((ratio <= factor).all()),
        worst_ratio=worst, factor=factor, worst_index=idx,
        worst_error=float(err.reshape(-1)[flat]) if err.numel() else 0.0,
        worst_baseline=float(denom.reshape(-1)[flat]) if denom.numel() else 0.0,
        max_error=float(err.max()) if err.numel() else 0.0,
        rows_failed=int((ratio > factor).sum()), rows=considered, nonfinite=int(nonfinite.sum()),
        nan_entries=nan_entries, inf_entries=inf_entries, finite_error=float(fin_err.max()) if fin_err.numel() else 0.0)


# The orders a plain same-dtype implementation commonly uses for the softmax scale: on q (the
# FlashAttention tests' baseline), on k, on the scores after the matmul (HF eager,
# x-transformers). In bfloat16 at |logit| ~ 30 they round differently enough that one of them
# alone is 3-7x off another on some rows; the bound takes each row's worst of them, so it accepts
# every order and no single lucky row sets the bar. (Softmax in float32 or in the input dtype
# rounds the same: torch's half softmax computes in float32 and rounds once.)
BASELINE_ORDERS = ("q", "k", "scores")


def same_dtype_attention(query, key, value, attn_mask=None, is_causal=False, scale=None,
                         enable_gqa=False, *, causal_alignment="top_left", scale_at="q"):
    """The plain same-dtype computation (:func:`harness.reference.attention_naive`) with the
    scale applied at ``scale_at``: ``q``, ``k`` or ``scores``."""
    return attention_naive(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                           enable_gqa=enable_gqa, causal_alignment=causal_alignment, scale_at=scale_at)


def baselines(inp, orders=BASELINE_ORDERS) -> list:
    """The same-dtype baselines of ``inp`` (a :class:`harness.cases.Inputs`), one per order."""
    kw = dict(attn_mask=inp.attn_mask, is_causal=inp.is_causal, scale=inp.scale, enable_gqa=inp.enable_gqa,
              causal_alignment=inp.case.alignment)
    with torch.no_grad():
        return [same_dtype_attention(inp.q, inp.k, inp.v, scale_at=o, **kw) for o in orders]
