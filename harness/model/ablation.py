"""Head ablation (zero one head's output at a time) and per-head attention entropy: evidence about
what the heads do, not an explanation of the model (see CAVEAT)."""

from __future__ import annotations


import torch

from harness.model.data import CAVEAT, INACTIVE_THRESHOLD, PAIRS
from harness.model.run import capture_activations, forward
from harness.model.wiring import load



# --- head ablation and entropy -------------------------------------------------------------

def _pair_cosines(impl, dtype, ablate=None) -> torch.Tensor:
    sents = [s for p in PAIRS for s in p]
    _, pooled, _ = forward(sents, impl, dtype, ablate=ablate)
    a, b = pooled[0::2].double(), pooled[1::2].double()
    return (a * b).sum(-1)


def _ablated_cosines(impl, dtype, layers: int, heads: int, device: str = "cpu") -> torch.Tensor:
    """(1 + layers * heads, pairs) cosines: intact first, then each head zeroed in turn. One
    forward pass: the pair batch is repeated once per ablation, each copy zeroing its own head."""
    sents = [s for p in PAIRS for s in p]
    n = len(sents)
    reps = 1 + layers * heads
    zero = {l: torch.zeros(reps * n, heads, dtype=torch.bool) for l in range(layers)}
    for l in range(layers):
        for h in range(heads):
            r = 1 + l * heads + h
            zero[l][r * n:(r + 1) * n, h] = True
    _, pooled, _ = forward(sents * reps, impl, dtype, ablate=zero, device=device)
    pooled = pooled.double().view(reps, n, -1)
    return (pooled[:, 0::2] * pooled[:, 1::2]).sum(-1)


def head_entropy(acts: dict) -> list:
    """Mean attention entropy (nats) over real query tokens per (layer, head), from float64
    reference weights on captured Q, K with the padding mask."""
    from harness.reference import attention_weights_reference

    keep = acts["attention_mask"].bool()  # (B, S)
    kmask = keep[:, None, None, :]
    out = []
    for layer in range(acts["q"].shape[0]):
        w = attention_weights_reference(acts["q"][layer], acts["k"][layer], attn_mask=kmask, scale=acts["scale"])
        ent = -(w * torch.log(torch.where(w > 0, w, torch.ones_like(w)))).sum(-1)  # (B, H, L)
        rows = keep[:, None, :].expand_as(ent)
        out.append([round(float(ent[:, h][rows[:, h]].mean()), 4) for h in range(ent.shape[1])])
    return out


def ablation(impl=None, dtype: str = "float32", threshold: float = INACTIVE_THRESHOLD, device: str = "cpu") -> dict:
    """Zero one head's output at a time (per layer); impact = mean |change of the cosine
    similarity| over :data:`PAIRS`. Also per-head entropy. Returns the dict the report draws."""
    _, model = load(dtype)
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    cos = _ablated_cosines(impl, dtype, L, H, device)
    base = cos[0]
    delta = (cos[1:] - base).abs().mean(-1).view(L, H)
    impact = [[round(float(delta[l, h]), 6) for h in range(H)] for l in range(L)]
    acts = {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in capture_activations([s for p in PAIRS for s in p], impl, "float32", device).items()}
    entropy = head_entropy(acts)
    flat = sorted(((impact[l][h], l, h) for l in range(L) for h in range(H)), reverse=True)
    ranking = [{"layer": l, "head": h, "impact": v, "entropy": entropy[l][h]} for v, l, h in flat]
    inactive = [{"layer": l, "head": h} for v, l, h in flat if v < threshold]
    return {"layers": L, "heads": H, "impact": impact, "entropy": entropy, "ranking": ranking,
            "inactive": inactive, "threshold": threshold, "base_cosines": [round(float(c), 4) for c in base],
            "pairs": [list(p) for p in PAIRS], "dtype": dtype,
            "metric": "mean |change of pair cosine|",
            "impact_definition": "mean over 6 sentence pairs of |cos(ablated) - cos(intact)| with that head's output zeroed",
            "entropy_definition": "mean entropy (nats) of the float64 reference attention weights over real query tokens",
            "caveat": CAVEAT}


def format_ablation(res: dict, top: int = 12) -> str:
    from tabulate import tabulate

    rows = [(r["layer"], r["head"], f"{r['impact']:.4g}", f"{r['entropy']:.3g}") for r in res["ranking"][:top]]
    lines = [f"head ablation ({res['layers']} layers x {res['heads']} heads, {res['dtype']}): "
             f"{res['impact_definition']}", tabulate(rows, headers=["layer", "head", "impact", "entropy"]), ""]
    grid = [[f"L{l}"] + [f"{v:.3f}" for v in res["impact"][l]] for l in range(res["layers"])]
    lines += ["impact per layer x head:", tabulate(grid, headers=[""] + [f"h{h}" for h in range(res["heads"])]), ""]
    grid = [[f"L{l}"] + [f"{v:.2f}" for v in res["entropy"][l]] for l in range(res["layers"])]
    lines += ["entropy (nats) per layer x head:", tabulate(grid, headers=[""] + [f"h{h}" for h in range(res["heads"])]), ""]
    ina = ", ".join(f"L{d['layer']}h{d['head']}" for d in res["inactive"]) or "none"
    lines += [f"inactive/redundant (impact < {res['threshold']:g}): {ina}", f"caveat: {res['caveat']}"]
    return "\n".join(lines)
