"""The model-level properties: batch composition (a sentence's embedding must not depend on what it
is batched with, through any integration) and the model's outputs against the float64 reference."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from harness.model.data import DTYPES, SENTENCES
from harness.model.run import _run, forward, tokenize
from harness.model.wiring import _impl, _wire, integration_name, load



# --- batch composition (the integration-leak property) -------------------------------------

def batch_tolerance(dtype: str) -> float:
    """How far (L2, between unit vectors) a sentence's embedding may move when only its batch
    changes: the matmuls of the model's linear layers see other shapes and round differently.
    Measured (CPU, torch 2.13, probe 'A short one.'; ``tests/test_model.py`` prints them):
    reference, sdpa and flex move it at most 7.5e-7 (float32) and 8.5e-3 (bfloat16); a padding leak
    (naive integration, or a kernel ignoring its mask) moves it 0.59-0.60 in both dtypes."""
    return {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}[dtype]


# Sentences the probe may be batched with when it has their exact token count: a batch-mate
# that needs no padding separates "batch-mates leak" from "padding leaks".
SAME_LENGTH_CANDIDATES = ("Bread is good.", "It rained today.", "The cat sat.", "We went home.",
                          "A long one.", "Hello there.", "Thanks a lot.", "This is a test sentence.")


class _KernelCalls:
    """Stands between an integration and the kernel and records what reached the kernel: per
    call, whether a mask came and how many (real query, padded key) pairs it left visible."""

    def __init__(self, kernel):
        from harness.contract import Implementation

        self.kernel, self.keep, self.calls = kernel, None, []
        self.impl = Implementation(name=kernel.name, spec=kernel.spec, fn=self, capabilities=kernel.capabilities,
                                   description=kernel.description)

    def start(self, keep: torch.Tensor) -> None:
        self.keep, self.calls = keep.bool().cpu(), []

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        self.calls.append(self._summary(attn_mask, is_causal, query.shape[2], key.shape[2]))
        return self.kernel(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                           enable_gqa=enable_gqa)

    def _summary(self, m, is_causal, L, S) -> dict:
        keep = self.keep
        kind = "none" if m is None else "bool" if m.dtype == torch.bool else "float"
        if keep is None or keep.shape[1] != S or L != S:
            return {"mask": kind, "exposed": None, "pairs": None}
        B = keep.shape[0]
        if m is None:
            vis = torch.ones(B, L, S, dtype=torch.bool)
            if is_causal:
                vis = vis & torch.ones(L, S, dtype=torch.bool).tril()
        else:
            m = m.detach().cpu()
            vis = m if m.dtype == torch.bool else m.float() > torch.finfo(m.dtype).min / 2
            while vis.dim() < 4:
                vis = vis.unsqueeze(0)
            vis = vis.expand(B, vis.shape[1], L, S).any(1)
        pairs = keep[:, :, None] & ~keep[:, None, :]  # (B, L, S): real query, padded key
        return {"mask": kind, "exposed": int((vis & pairs).sum()), "pairs": int(pairs.sum())}


def _same_length(probe: str, pool: Sequence[str], ntok) -> Optional[str]:
    n = ntok(probe)
    return next((s for s in pool if s != probe and ntok(s) == n), None)


def batch_composition_check(impl=None, dtype: str = "float32", integration=None,
                            probe: str = SENTENCES[0], companions: Sequence[str] = SENTENCES[1:],
                            device: str = "cpu") -> dict:
    """Run ``probe`` alone and in other batches through ``integration`` (default: the harness's
    wiring; or any ``integration(model, kernel)``, or its ``file.py:fn`` spec) and raise
    PropertyViolation when its embedding depends on its batch: who else is in it, its position,
    how much padding it gets (right and left). The message is a diagnosis from measurements: how
    far the embedding moved in each batch, whether padding alone (no batch-mate) or a batch-mate
    of equal length (no padding) moves it, which of its tokens changed most, and what masks the
    kernel actually received. Returns the measurements."""
    from harness.probes import PropertyViolation

    tol = batch_tolerance(dtype)
    tok, _ = load("float32")

    def ntok(s):
        return len(tok(s)["input_ids"])

    calls = _KernelCalls(_impl(impl))
    model = _wire(integration, calls.impl, dtype, device)

    def run(batch, side="right", pad_to=None):
        enc = tokenize(batch, side, pad_to)
        calls.start(enc["attention_mask"])
        hidden, pooled, keep = _run(model, enc, device)
        return hidden, pooled, keep, list(calls.calls)

    n_probe = ntok(probe)
    alone_h, alone_p, _, _ = run([probe])
    longest = max(companions, key=ntok)
    n_long = ntok(longest)
    twin = _same_length(probe, [*companions, *SAME_LENGTH_CANDIDATES], ntok)
    variants = [
        (f"batched with a {n_long}-token sentence (right padding)", [probe, longest], 0, "right", None),
        (f"placed second after a {n_long}-token sentence", [longest, probe], 1, "right", None),
        (f"batched with a {n_long}-token sentence (left padding)", [probe, longest], 0, "left", None),
        (f"in a batch of {len(companions) + 1} sentences", [*companions[:2], probe, *companions[2:]], 2, "right", None),
        (f"padded alone from {n_probe} to {n_probe + 29} tokens (no batch-mate)", [probe], 0, "right", n_probe + 29),
    ]
    if twin is not None:
        variants.append((f"batched with the {n_probe}-token {twin!r} (no padding)", [twin, probe], 1, "right", None))
    probe_tokens = tok.convert_ids_to_tokens(tok(probe)["input_ids"])
    results = []
    for what, batch, idx, side, pad_to in variants:
        hidden, pooled, keep, kc = run(batch, side, pad_to)
        moved = float((pooled[idx] - alone_p[0]).norm())
        change = (hidden[idx][keep[idx]].double() - alone_h[0].double()).abs().amax(-1)  # per probe token
        t = int(torch.argmax(torch.nan_to_num(change, nan=float("inf"))))
        known = [c for c in kc if c["pairs"]]
        results.append({
            "what": what, "moved": moved if math.isfinite(moved) else float("inf"),
            "pads_on_row": int((~keep[idx]).sum()), "padded_keys": int((~keep).sum()),
            "token_change": float(change[t]), "token": probe_tokens[t] if t < len(probe_tokens) else str(t),
            "kernel_calls": len(kc), "calls_without_mask": sum(c["mask"] == "none" for c in known),
            "calls_on_padding": len(known), "exposed_pairs": sum(c["exposed"] for c in known),
            "pairs": sum(c["pairs"] for c in known),
            "no_padding": "(no padding)" in what, "padding_only": "(no batch-mate)" in what,
        })
    worst = max(r["moved"] for r in results)
    out = {"max_movement": worst, "limit": tol, "integration": integration_name(integration),
           "variants": [{k: r[k] for k in ("what", "moved", "token_change", "pads_on_row", "calls_without_mask",
                                           "calls_on_padding", "exposed_pairs")} for r in results]}
    bad = [r for r in results if not r["moved"] <= tol]
    if bad:
        raise PropertyViolation(_diagnose(probe, n_probe, dtype, tol, results, bad, out["integration"]))
    return out


def _diagnose(probe, n_probe, dtype, tol, results, bad, integration) -> str:
    """The failure message, every clause read off the measurements."""
    bad = sorted(bad, key=lambda r: -r["moved"])
    w = bad[0]
    moves = "; ".join(f"{r['moved']:.3g} {r['what']}" for r in bad)
    msg = [f"embedding of {probe!r} ({n_probe} tokens) depends on its batch [{integration}, {dtype}; limit "
           f"{tol:g}, L2 between unit embeddings]: moved {moves}; its token {w['token']!r} changed most "
           f"(hidden state by up to {w['token_change']:.3g}, {w['what'].split(' (')[0]})"]
    pad_only = next((r for r in results if r["padding_only"]), None)
    twin = next((r for r in results if r["no_padding"]), None)
    padded_bad = [r for r in bad if r["pads_on_row"] or r["padded_keys"]]
    if pad_only is not None and pad_only in bad:
        msg.append(f"padding alone moves it ({pad_only['moved']:.3g} with {pad_only['pads_on_row']} pad tokens, "
                   "no batch-mate): padded keys reached real tokens")
    elif padded_bad:
        msg.append("it moves only in padded batches with other sentences: padded keys reached real tokens")
    if twin is not None:
        if twin in bad:
            msg.append(f"a batch-mate of equal length moves it by {twin['moved']:.3g} with no padding at all: "
                       "another sentence's tokens reached it")
        else:
            msg.append(f"a batch-mate of equal length with no padding moves it only {twin['moved']:.2g} "
                       "(within the limit): the leak comes with padding, not from the batch-mate itself")
    calls = sum(r["calls_on_padding"] for r in padded_bad)
    if calls:
        none = sum(r["calls_without_mask"] for r in padded_bad)
        exposed, pairs = sum(r["exposed_pairs"] for r in padded_bad), sum(r["pairs"] for r in padded_bad)
        if none == calls:
            msg.append(f"in those padded batches the kernel was called {calls} times, always with attn_mask=None: "
                       "the padding mask never reached the kernel (the integration does not pass it on)")
        elif exposed:
            msg.append(f"the masks the kernel received ({calls} calls, {none} without a mask) left {exposed} of "
                       f"{pairs} (real query, padded key) pairs visible: the integration hands the kernel a "
                       "wrong mask")
        else:
            msg.append(f"every one of the {calls} kernel calls on those padded batches received a mask hiding "
                       "all padded keys, yet the embedding moved: the kernel does not honour its mask")
    return "; ".join(msg)


MODEL_FACTOR = 4.0
MODEL_FLOOR_ULPS = 4.0
MODEL_BASELINE = "harness.reference:attention_naive"  # the same-dtype baseline of the output bound


def model_outputs_check(impl=None, dtype: str = "float32", device: str = "cpu", factor: float = MODEL_FACTOR,
                        sentences: Sequence[str] = SENTENCES) -> tuple:
    """(hidden, pooled, keep): :func:`compare_model_outputs` of the model run with ``impl`` against
    the run with the float64 reference, for the last hidden state (rows: real tokens) and the pooled
    embeddings (rows: sentences), with :data:`MODEL_BASELINE` as the same-dtype baseline."""
    ref_h, ref_p, keep = forward(sentences, "reference", dtype, device=device)
    base_h, base_p, _ = forward(sentences, MODEL_BASELINE, dtype, device=device)
    out_h, out_p, _ = forward(sentences, impl, dtype, device=device)
    rows = torch.ones(out_p.shape[0], dtype=torch.bool)
    return (compare_model_outputs(out_h, ref_h, base_h, keep, dtype, factor),
            compare_model_outputs(out_p, ref_p, base_p, rows, dtype, factor), keep)


def compare_model_outputs(out: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, rows: torch.Tensor,
                          dtype: str, factor: float = MODEL_FACTOR) -> dict:
    """The model-level bound. Rows are real tokens (hidden states) or sentences (pooled).

    error(row) = max |out - ref| over features, ``ref`` being the same model in the same dtype
    with the float64 reference as attention; the allowance is ``factor`` x the larger of the
    baseline's error on that row (``baseline``: the same model with :data:`MODEL_BASELINE`, a plain
    same-dtype matmul-softmax-matmul, as attention -- the FlashAttention rule, and no built-in kernel
    under test), its mean over all rows (errors compound through six LayerNorm/GELU layers, so
    equally precise kernels trade places row by row), and a floor of ``MODEL_FLOOR_ULPS`` units in
    the last place of the row's largest value. Measured on CPU (torch 2.13): sdpa, sdpa-math and
    flex at <= 1.83x (float32) and <= 0.96x (bfloat16, where the floor dominates); sdpa with its
    scale off by 1e-4 at 251x, with TF32-rounded inputs at 476x (float32); an ignored padding mask
    at ~68x (bfloat16). bfloat16 only sees errors of a few percent of the output (x(1 + 2^-5) of the
    output: 4.6x)."""
    eps = float(torch.finfo(DTYPES[dtype]).eps)
    d = (out.detach().double() - ref.double()).abs()
    err = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf"))).amax(-1)[rows]
    base = (baseline.double() - ref.double()).abs().amax(-1)[rows]
    floor = MODEL_FLOOR_ULPS * eps * ref.double().abs().amax(-1)[rows]
    allow = torch.maximum(torch.maximum(base, base.mean().expand_as(base)), floor)
    ratio = err / allow
    i = int(torch.argmax(ratio))
    return {"ok": bool((ratio <= factor).all()), "ratio": float(ratio[i]), "factor": factor,
            "worst_row": i, "error": float(err[i]), "allowance": float(allow[i]),
            "rows_failed": int((ratio > factor).sum()), "rows": int(rows.sum())}
