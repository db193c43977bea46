"""The float64 truth for flash_attn-convention cases, and the same-dtype baselines.

Per sequence, in FlashAttention's meaning: causal and windows aligned bottom-right (query i
stands at position i + Lk - Lq), a window (left, right) admits keys in [i' - left, i' + right]
(-1 = unbounded on that side), the soft-cap applies to the scaled score before the mask and the
ALiBi bias (-slope * |i' - j|) are added, a sink is one more logit per head in the denominator
with no value. The one chunked reference of :mod:`harness.reference` does the arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch

from harness.flash.cases import FP8, FlashInputs, out_dtype
from harness.reference import _gqa_expand, attention_naive, attention_reference

NEG_INF = float("-inf")
# The baseline's scale orders, as for SDPA kernels (harness.tolerance.BASELINE_ORDERS).
ORDERS = ("q", "k", "scores")


def allowed(c, b: int) -> torch.Tensor:
    """(Lq, Lk) bool: which keys each query of sequence ``b`` may read."""
    Lq, Lk = c.seqlens_q[b], c.keys(b)
    off = Lk - Lq
    i = torch.arange(Lq).unsqueeze(1) + off
    j = torch.arange(Lk).unsqueeze(0)
    ok = torch.ones(Lq, Lk, dtype=torch.bool)
    left, right = c.window
    if c.causal:
        right = 0 if right < 0 else min(right, 0)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def additive_mask(inp: FlashInputs, b: int) -> Optional[torch.Tensor]:
    """(1, H, Lq, Lk) float64: -inf where forbidden, the ALiBi bias elsewhere; None when neither."""
    c = inp.case
    Lq, Lk = c.seqlens_q[b], c.keys(b)
    ok = allowed(c, b)
    if bool(ok.all()) and inp.alibi_slopes is None:
        return None
    bias = torch.zeros(c.H, Lq, Lk, dtype=torch.float64)
    if inp.alibi_slopes is not None:
        dist = (torch.arange(Lq).unsqueeze(1) + (Lk - Lq) - torch.arange(Lk).unsqueeze(0)).abs()
        bias = -inp.slopes(b).to(torch.float64).view(-1, 1, 1) * dist.to(torch.float64)
    return torch.where(ok, bias, torch.full_like(bias, NEG_INF)).unsqueeze(0)


def _bhle(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 0, 2).unsqueeze(0)  # (L, H, E) -> (1, H, L, E)


def _packed(per_seq: list, H: int, E: int, dtype) -> torch.Tensor:
    rows = [o.squeeze(0).permute(1, 0, 2) for o in per_seq]  # (L, H, E)
    return torch.cat(rows) if rows else torch.zeros(0, H, E, dtype=dtype)


def reference(inp: FlashInputs, value_override: Optional[list] = None):
    """(out (total_q, H, E) float64, lse (H, total_q) float64) over every sequence."""
    c = inp.case
    outs, lses = [], []
    for b in range(c.B):
        q = _bhle(inp.dequant(inp.qs[b], b, "q"))
        k = _bhle(inp.dequant(inp.ks[b], b, "k"))
        v = _bhle(inp.dequant(value_override[b] if value_override else inp.vs[b], b, "v"))
        o, lse = attention_reference(q, k, v, attn_mask=additive_mask(inp, b), scale=c.scale, enable_gqa=True,
                                     softcap=c.softcap, sinks=inp.sinks, return_lse=True)
        outs.append(o)
        lses.append(lse.squeeze(0))  # (H, Lq)
    lse = torch.cat(lses, dim=-1) if lses else torch.zeros(c.H, 0, dtype=torch.float64)
    return _packed(outs, c.H, c.E, torch.float64), lse


def _fp8_probs_baseline(q, k, v, mask, c, sinks, fp8) -> torch.Tensor:
    # What a plain FP8 attention does (FlashAttention-3's FP8 path): scores and softmax in float32,
    # the probabilities rounded to FP8 before the product with V, the output in bfloat16.
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (c.scale if c.scale is not None else c.E ** -0.5)
    if c.softcap:
        s = c.softcap * torch.tanh(s / c.softcap)
    if mask is not None:
        s = s + mask.float()
    if sinks is not None:
        s = torch.cat([s, sinks.float().view(1, -1, 1, 1).expand(*s.shape[:-1], 1)], dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)[..., :k.shape[-2]]
    return torch.matmul(p.to(fp8).float(), v.float()).to(torch.bfloat16)


def baselines(inp: FlashInputs) -> list:
    """The plain same-dtype computations, packed like :func:`reference`: one per scale order (and
    for FP8, also the FP8-probabilities path). FP8 inputs are dequantised into bfloat16."""
    c = inp.case
    dt = out_dtype(c.dtype)
    fams = [[] for _ in ORDERS] + ([[]] if c.dtype in FP8 else [])
    for b in range(c.B):
        q, k, v = (_bhle(inp.dequant(x, b, w)).to(dt) for x, w in ((inp.qs[b], "q"), (inp.ks[b], "k"), (inp.vs[b], "v")))
        k, v = _gqa_expand(k, c.H, True), _gqa_expand(v, c.H, True)
        m = additive_mask(inp, b)
        for fam, order in zip(fams, ORDERS):
            with torch.no_grad():
                fam.append(attention_naive(q, k, v, attn_mask=m, scale=c.scale, scale_at=order, softcap=c.softcap,
                                           sinks=inp.sinks))
        if c.dtype in FP8:
            fams[-1].append(_fp8_probs_baseline(q, k, v, m, c, inp.sinks, FP8[c.dtype]))
    return [_packed(f, c.H, c.E, dt) for f in fams]


def lse_baseline(inp: FlashInputs) -> torch.Tensor:
    """(H, total_q) the LSE of the plain computation: scores formed in the dtype, then float32."""
    c = inp.case
    dt = out_dtype(c.dtype)
    out = []
    for b in range(c.B):
        q, k = (_bhle(inp.dequant(x, b, w)).to(dt) for x, w in ((inp.qs[b], "q"), (inp.ks[b], "k")))
        k = _gqa_expand(k, c.H, True)
        s = (torch.matmul(q * (c.scale if c.scale is not None else c.E ** -0.5), k.transpose(-1, -2))).float()
        if c.softcap:
            s = c.softcap * torch.tanh(s / c.softcap)
        m = additive_mask(inp, b)
        if m is not None:
            s = s + m.float()
        if inp.sinks is not None:
            s = torch.cat([s, inp.sinks.view(1, -1, 1, 1).expand(*s.shape[:-1], 1)], dim=-1)
        out.append(torch.logsumexp(s, dim=-1).squeeze(0).double() if s.shape[-1] else
                   torch.full(s.shape[1:-1], NEG_INF, dtype=torch.float64))
    return torch.cat(out, dim=-1) if out else torch.zeros(c.H, 0, dtype=torch.float64)


def row_stats(inp: FlashInputs):
    """Per packed row (1, H, total_q): the largest visible |logit| (after cap and bias) and the
    value scale sum_j w_j |v_j| (largest column), which the bound's floor is measured at."""
    c = inp.case
    absmax, vscale = [], []
    for b in range(c.B):
        q = _bhle(inp.dequant(inp.qs[b], b, "q"))
        k = _bhle(inp.dequant(inp.ks[b], b, "k"))
        kk = _gqa_expand(k, c.H, True)
        s = torch.matmul(q, kk.transpose(-1, -2)) * (c.scale if c.scale is not None else c.E ** -0.5)
        if c.softcap:
            s = c.softcap * torch.tanh(s / c.softcap)
        m = additive_mask(inp, b)
        if m is not None:
            s = s + m
        s = torch.where(torch.isfinite(s), s.abs(), torch.zeros_like(s))
        absmax.append(s.amax(dim=-1) if s.shape[-1] else torch.zeros(s.shape[:-1], dtype=torch.float64))
        va = _bhle(inp.dequant(inp.vs[b], b, "v").abs())
        o = attention_reference(q, k, va, attn_mask=m, scale=c.scale, enable_gqa=True, softcap=c.softcap,
                                sinks=inp.sinks)
        vscale.append(o.amax(dim=-1) if o.shape[-1] else torch.zeros(o.shape[:-1], dtype=torch.float64))
    cat = lambda xs: torch.cat(xs, dim=-1) if xs else torch.zeros(1, c.H, 0, dtype=torch.float64)  # noqa: E731
    return cat(absmax), cat(vscale)


def visible_rows(inp: FlashInputs) -> torch.Tensor:
    """(1, H, total_q) bool: rows with at least one key to read."""
    rows = [allowed(inp.case, b).any(dim=-1) for b in range(inp.case.B)]
    r = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.bool)
    return r.view(1, 1, -1).expand(1, inp.case.H, r.numel())
