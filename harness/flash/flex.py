"""``flex-flash``: torch's FlexAttention behind flash_attn_func's signature, a built-in.

The variants become FlexAttention's own means: soft-cap and ALiBi a ``score_mod`` on the scaled
score, causal (bottom-right) and windows a ``-inf`` there, the LSE flex's ``return_lse``, GQA its
``enable_gqa``. Sinks have no flex form: the output is rescaled by exp(lse - logaddexp(lse, sink))
and the LSE becomes logaddexp(lse, sink), as a serving stack wraps a kernel without them. So the
flash suites check torch's kernel, code nobody here wrote, in the convention vendors ship.
"""

from __future__ import annotations

import torch


def _flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    if torch.cuda.is_available():
        return torch.compile(flex_attention, dynamic=False)
    return flex_attention


def make():
    state = {}

    def flex_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                             learnable_sink=None):
        if dropout_p:
            raise NotImplementedError("FlexAttention has no dropout")
        if "fa" not in state:
            state["fa"] = _flex_attention()
        L, H = q.shape[1], q.shape[2]
        S, Hkv = k.shape[1], k.shape[2]
        off = S - L
        left, right = window_size
        if causal:
            right = 0 if right < 0 else min(right, 0)
        slopes = None if alibi_slopes is None else alibi_slopes.to(q.device, torch.float32)

        def score_mod(s, b, h, qi, ki):
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            if slopes is not None:
                sl = slopes[b, h] if slopes.dim() == 2 else slopes[h]
                s = s - sl * (qi + off - ki).abs()
            ok = ki >= 0
            if left >= 0:
                ok = ok & (ki >= qi + off - left)
            if right >= 0:
                ok = ok & (ki <= qi + off + right)
            return torch.where(ok, s, -float("inf"))

        out, lse = state["fa"](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), score_mod=score_mod,
                               scale=softmax_scale, enable_gqa=Hkv != H, return_lse=True)
        if learnable_sink is not None:
            sink = learnable_sink.to(lse.device, torch.float32).view(1, -1, 1)
            total = torch.logaddexp(lse.float(), sink)
            out = (out.float() * torch.exp(lse.float() - total).unsqueeze(-1)).to(q.dtype)
            lse = total
        out = out.transpose(1, 2)
        return (out, lse, None) if return_attn_probs else out

    return flex_flash_attn_func
