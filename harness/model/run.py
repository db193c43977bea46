"""Running the model: tokenizing with right or left padding, and the forward, embedding and
activation-capture calls every check is made of."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from harness.model.data import FIXTURE_SENTENCES
from harness.model.wiring import _hooks, _impl, _wire, load



# --- running the model ---------------------------------------------------------------------

def tokenize(sentences: Sequence[str], padding: str = "right", pad_to: Optional[int] = None) -> dict:
    """Padded batch with explicit position ids (real tokens at 0..n-1 whatever the side), so left
    padding changes nothing but the padding."""
    tok, _ = load("float32")
    ids = [tok(s)["input_ids"] for s in sentences]
    S = max(max(len(i) for i in ids), pad_to or 0)
    pad = tok.pad_token_id or 0
    input_ids = torch.full((len(ids), S), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), S), dtype=torch.long)
    pos = torch.zeros((len(ids), S), dtype=torch.long)
    for b, i in enumerate(ids):
        n = len(i)
        sl = slice(0, n) if padding == "right" else slice(S - n, S)
        input_ids[b, sl] = torch.tensor(i)
        mask[b, sl] = 1
        pos[b, sl] = torch.arange(n)
    return dict(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                token_type_ids=torch.zeros_like(input_ids))


def _run(model, batch: dict, device: str = "cpu", ablate=None, capture=None):
    batch = {k: t.to(device) for k, t in batch.items()}
    with _hooks(ablate, capture), torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
    pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return hidden.cpu(), pooled.cpu(), batch["attention_mask"].bool().cpu()


def forward(sentences: Sequence[str], impl=None, dtype: str = "float32", padding: str = "right",
            pad_to: Optional[int] = None, integration=None, ablate: Optional[tuple] = None,
            capture: Optional[dict] = None, device: str = "cpu"):
    """(last_hidden_state [B, S, 384], pooled [B, 384] unit vectors, 2-D attention mask [B, S]) of
    the model with ``impl`` wired in by ``integration`` (default: :func:`harness_integration`)."""
    model = _wire(integration, _impl(impl), dtype, device)
    return _run(model, tokenize(sentences, padding, pad_to), device, ablate, capture)


def embed(sentences: Sequence[str], impl=None, dtype: str = "float32", padding: str = "right",
          integration=None, device: str = "cpu"):
    """(last_hidden_state, mean-pooled normalized sentence embeddings) with ``impl`` as the
    model's attention, wired by ``integration`` (default: the harness's correct wiring)."""
    hidden, pooled, _ = forward(sentences, impl, dtype, padding, integration=integration, device=device)
    return hidden, pooled


def capture_activations(sentences: Sequence[str] = FIXTURE_SENTENCES, impl=None, dtype: str = "float32",
                        device: str = "cpu") -> dict:
    """Q, K, V (each [layers, B, H, S, D]) and the mask every layer received, recorded from inside
    the model's attention calls, plus the 2-D padding mask and the softmax scale."""
    cap: dict = {}
    _, _, mask2d = forward(sentences, impl, dtype, capture=cap, device=device)
    layers = sorted(cap)
    _, model = load(dtype)
    return {
        "sentences": list(sentences),
        "q": torch.stack([cap[i]["q"] for i in layers]),
        "k": torch.stack([cap[i]["k"] for i in layers]),
        "v": torch.stack([cap[i]["v"] for i in layers]),
        "masks": [cap[i]["mask"] for i in layers],
        "attention_mask": mask2d.cpu(),
        "scale": float(model.config.hidden_size // model.config.num_attention_heads) ** -0.5,
    }
