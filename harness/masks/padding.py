import torch

from harness.masks.core import MaskPolicy


def key_padding(lengths) -> MaskPolicy:
    """Batch element b has ``lengths[b]`` real tokens followed by padding that no query may read
    (right padding, as produced by a tokenizer's attention_mask)."""
    lengths = tuple(int(x) for x in lengths)
    lt = torch.tensor(lengths)

    def mod(b, h, q, kv):
        return kv < lt.to(kv.device)[b]

    return MaskPolicy(mod, f"key_padding({list(lengths)})", depends_on=frozenset({"b"}))


def key_visible(keys: int, spans) -> MaskPolicy:
    """Padding at arbitrary key positions: batch element b's real tokens are the key ranges
    ``spans[b]`` (a list of [start, stop)), everything else of the ``keys`` keys is padding.
    Covers left padding (generation-time batching, ``[[3, 8]]`` of 8), holes in the middle
    (packed, masked or dropped tokens, ``[[0, 2], [5, 8]]``), scattered positions and batch rows
    padded entirely (``[]``), none of which right padding reaches."""
    keys = int(keys)
    spans = [[(int(a), int(b)) for a, b in row] for row in spans]
    if not spans or any(not 0 <= a < b <= keys for row in spans for a, b in row):
        raise ValueError(f"key_visible({keys}, ...): spans must be non-empty [start, stop) within 0..{keys}")
    pat = torch.zeros(len(spans), keys, dtype=torch.bool)
    for i, row in enumerate(spans):
        for a, b in row:
            pat[i, a:b] = True

    def mod(b, h, q, kv):
        return pat.to(kv.device)[b, kv]

    text = [[list(x) for x in row] for row in spans]
    return MaskPolicy(mod, f"key_visible({keys}, {text})", depends_on=frozenset({"b"}), keys=keys)


def spans_of(row) -> list:
    """[start, stop) runs of True in a sequence of booleans (one batch row of visible keys)."""
    out, start = [], None
    for i, x in enumerate(list(row) + [False]):
        if x and start is None:
            start = i
        elif not x and start is not None:
            out.append([start, i])
            start = None
    return out
