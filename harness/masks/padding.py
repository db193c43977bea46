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
