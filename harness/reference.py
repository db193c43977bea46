"""The float64 reference every verdict is judged against, and the same-dtype baseline.

The reference streams over key chunks with an online softmax, so its memory is O(L x chunk)
rather than O(L x S): a 32k-token reference never materialises the score matrix. Masks are
applied to the logits before the exponent, row maxima are subtracted, and a query row with no
visible key is defined to produce zero output.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

NEG_INF = float("-inf")


def causal_bool(L: int, S: int, alignment: str = "top_left", device=None) -> torch.Tensor:
    """Boolean (L, S) causal mask. top_left: ``tril`` (torch SDPA); bottom_right: the last query
    sees every key (FlashAttention)."""
    offset = 0 if alignment == "top_left" else S - L
    q = torch.arange(L, device=device).unsqueeze(1)
    k = torch.arange(S, device=device).unsqueeze(0)
    return k <= q + offset


def _expand_mask(attn_mask: Optional[torch.Tensor], B, H, L, S) -> Optional[torch.Tensor]:
    if attn_mask is None:
        return None
    m = attn_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m.expand(B, H, L, S)


def _gqa_expand(k: torch.Tensor, H: int, enable_gqa: bool) -> torch.Tensor:
    Hkv = k.shape[1]
    if Hkv == H:
        return k
    if not enable_gqa or H % Hkv:
        raise ValueError(f"query has {H} heads, key/value {Hkv}: needs enable_gqa and H % Hkv == 0")
    return k.repeat_interleave(H // Hkv, dim=1)


def _softcap(logits: torch.Tensor, softcap: float) -> torch.Tensor:
    # FlashAttention and Gemma cap the scaled score, before any mask or bias is added.
    return logits if not softcap else softcap * torch.tanh(logits / softcap)


def attention_reference(query, key, value, attn_mask=None, is_causal=False, scale=None,
                        enable_gqa=False, *, causal_alignment="top_left", chunk=1024,
                        return_lse=False, softcap=0.0, sinks=None):
    """Exact attention in float64, chunked over keys.

    Returns the output in float64 (shape (B, H, L, Ev)), and with ``return_lse`` also the
    log-sum-exp of the masked, scaled logits per row (``-inf`` for fully masked rows).
    ``softcap`` > 0 replaces each scaled score s by ``softcap * tanh(s / softcap)`` before the mask
    (a float mask, e.g. an ALiBi bias, is added after the cap). ``sinks`` (H,) are attention-sink
    logits: each joins its head's softmax denominator and contributes no value, so the output is
    scaled by 1 - p(sink) and the LSE includes the sink term.
    """
    if attn_mask is not None and is_causal:
        raise ValueError("pass either attn_mask or is_causal, not both")
    q = query.detach().to(torch.float64)
    k = key.detach().to(torch.float64)
    v = value.detach().to(torch.float64)
    B, H, L, E = q.shape
    S = k.shape[-2]
    k = _gqa_expand(k, H, enable_gqa)
    v = _gqa_expand(v, H, enable_gqa)
    sc = (1.0 / math.sqrt(E)) if scale is None else float(scale)
    mask = _expand_mask(attn_mask, B, H, L, S)
    if is_causal:
        mask = causal_bool(L, S, causal_alignment, device=q.device).expand(B, H, L, S)

    run_max = torch.full((B, H, L, 1), NEG_INF, dtype=torch.float64, device=q.device)
    run_sum = torch.zeros((B, H, L, 1), dtype=torch.float64, device=q.device)
    acc = torch.zeros((B, H, L, v.shape[-1]), dtype=torch.float64, device=q.device)
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        logits = _softcap(torch.matmul(q, k[:, :, s0:s1].transpose(-1, -2)) * sc, softcap)
        if mask is not None:
            m = mask[..., s0:s1]
            if m.dtype == torch.bool:
                logits = logits.masked_fill(~m, NEG_INF)
            else:
                m = m.to(torch.float64)
                # -inf in a float mask forbids the key whatever its logit (even NaN/Inf there).
                logits = torch.where(m == NEG_INF, torch.full_like(logits, NEG_INF), logits + m)
        new_max = torch.maximum(run_max, logits.amax(dim=-1, keepdim=True))
        # Rows that have seen no visible key yet keep max -inf; shift by 0 there to avoid inf-inf.
        safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(logits - safe)
        corr = torch.exp(run_max - safe)
        run_sum = run_sum * corr + p.sum(dim=-1, keepdim=True)
        vc = v[:, :, s0:s1]
        bad = ~torch.isfinite(vc)
        if bool(bad.any()):
            # A masked slot holding NaN/Inf must not reach rows that may not read it (0 * NaN is
            # NaN): multiply finite values only, then poison exactly the rows that read a bad slot.
            poison = torch.matmul((p > 0).to(torch.float64), bad.to(torch.float64)) > 0
            contrib = torch.matmul(p, torch.where(bad, torch.zeros_like(vc), vc))
            contrib = torch.where(poison, torch.full_like(contrib, float("nan")), contrib)
        else:
            contrib = torch.matmul(p, vc)
        acc = acc * corr + contrib
        run_max = new_max
    if sinks is not None:
        sink = sinks.detach().to(torch.float64).reshape(1, H, 1, 1).expand(B, H, L, 1)
        new_max = torch.maximum(run_max, sink)
        corr = torch.exp(run_max - new_max)
        run_sum = run_sum * corr + torch.exp(sink - new_max)
        acc = acc * corr
        run_max = new_max
    visible = run_sum > 0
    out = torch.where(visible, acc / torch.where(visible, run_sum, torch.ones_like(run_sum)),
                      torch.zeros_like(acc))
    if return_lse:
        lse = torch.where(visible, run_max + torch.log(torch.where(visible, run_sum, torch.ones_like(run_sum))),
                          torch.full_like(run_sum, NEG_INF))
        return out, lse.squeeze(-1)
    return out


def attention_weights_reference(query, key, attn_mask=None, is_causal=False, scale=None,
                                enable_gqa=False, *, causal_alignment="top_left"):
    """Dense float64 softmax weights (B, H, L, S) for small cases; fully masked rows are zero."""
    q = query.detach().to(torch.float64)
    k = _gqa_expand(key.detach().to(torch.float64), q.shape[1], enable_gqa)
    B, H, L, E = q.shape
    S = k.shape[-2]
    sc = (1.0 / math.sqrt(E)) if scale is None else float(scale)
    logits = torch.matmul(q, k.transpose(-1, -2)) * sc
    mask = _expand_mask(attn_mask, B, H, L, S)
    if is_causal:
        mask = causal_bool(L, S, causal_alignment, device=q.device).expand(B, H, L, S)
    if mask is not None:
        logits = logits.masked_fill(~mask, NEG_INF) if mask.dtype == torch.bool else logits + mask.double()
    mx = logits.amax(dim=-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    p = torch.exp(logits - mx)
    tot = p.sum(dim=-1, keepdim=True)
    return torch.where(tot > 0, p / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.zeros_like(p))


def attention_naive(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False, *, causal_alignment="top_left", scale_at="q", softcap=0.0,
                    sinks=None):
    """The plain same-dtype PyTorch computation (the FlashAttention rule's baseline): every
    operation in the inputs' own dtype, masks before softmax, fully masked rows zeroed. Also the
    direct formula the chunked reference is tested against (call it with float64 tensors).
    ``scale_at`` (``q``, ``k`` or ``scores``) is where the scale multiplies: kernels legitimately
    differ there, and each order rounds differently in half precision."""
    dt = query.dtype
    B, H, L, E = query.shape
    S = key.shape[-2]
    k = _gqa_expand(key, H, enable_gqa)
    v = _gqa_expand(value, H, enable_gqa)
    sc = (1.0 / math.sqrt(E)) if scale is None else float(scale)
    if scale_at == "q":
        logits = torch.matmul(query * sc, k.transpose(-1, -2))
    elif scale_at == "k":
        logits = torch.matmul(query, (k * sc).transpose(-1, -2))
    elif scale_at == "scores":
        logits = torch.matmul(query, k.transpose(-1, -2)) * sc
    else:
        raise ValueError(f"scale_at must be q, k or scores, not {scale_at!r}")
    logits = _softcap(logits, softcap)
    mask = _expand_mask(attn_mask, B, H, L, S)
    if is_causal:
        mask = causal_bool(L, S, causal_alignment, device=query.device).expand(B, H, L, S)
    if mask is not None:
        logits = logits.masked_fill(~mask, NEG_INF) if mask.dtype == torch.bool else logits + mask.to(dt)
    if sinks is not None:  # the sink is one more logit per head whose value is zero
        col = sinks.to(logits.dtype).reshape(1, H, 1, 1).expand(B, H, L, 1)
        w = torch.softmax(torch.cat([logits, col], dim=-1), dim=-1)[..., :S]
    else:
        w = torch.softmax(logits, dim=-1)
    w = torch.nan_to_num(w, nan=0.0)  # fully masked rows: softmax of all -inf is NaN; defined as zero
    return torch.matmul(w, v).to(dt)
