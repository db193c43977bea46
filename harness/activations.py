"""Real Q, K, V captured from all-MiniLM-L6-v2 on six sentences (``fixtures/model_activations.pt``,
float16, 0.9 MB; needs only torch). The property suites run on them beside generated inputs:
real activations have outliers, long-tailed logits and real padding that random tensors lack.

A pure data loader: :func:`harness.cases.real_case` builds the cases. A
:class:`harness.cases.Case` with ``activations=layer`` takes its q, k, v from that layer
(the first B batch rows, H heads, L queries and S keys); everything else about the case (policy,
mask kind and shape, dtype, scale) works as for generated cases, so every probe applies.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

LAYERS, B, H, S, E = 6, 6, 12, 11, 32


def path() -> Path:
    import harness.fixtures

    return Path(harness.fixtures.__file__).resolve().parent / "model_activations.pt"


@functools.lru_cache(maxsize=1)
def _load() -> dict:
    return torch.load(path(), map_location="cpu", weights_only=True)


def padding_lengths() -> list:
    """Real tokens per sentence (right padding): the model's own attention mask."""
    return [int(n) for n in _load()["attention_mask"].sum(dim=1)]


def qkv(layer: int, b: int, h: int, l: int, s: int, e: int, ev: int):
    """float32 (q, k, v) of ``layer``, cut to (b, h, l, e) / (b, h, s, e) / (b, h, s, ev)."""
    if not (0 <= layer < LAYERS and b <= B and h <= H and l <= S and s <= S and e == E and ev == E):
        raise ValueError(f"real activations are {LAYERS} layers of B<={B}, H<={H}, L,S<={S}, E=Ev={E}; "
                         f"asked for layer {layer}, B={b}, H={h}, L={l}, S={s}, E={e}, Ev={ev}")
    d = _load()
    return (d["q"][layer, :b, :h, :l].float(), d["k"][layer, :b, :h, :s].float(),
            d["v"][layer, :b, :h, :s].float())
