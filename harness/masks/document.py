import torch

from harness.masks.core import MaskPolicy


def _doc_ids(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def _segments(lengths):
    out, start = [], 0
    for n in lengths:
        out.append((start, start + n))
        start += n
    return tuple(out)


def document(lengths, causal: bool = True) -> MaskPolicy:
    """Document packing: several sequences of the given lengths packed into one row; a token
    reads only its own document (block-diagonal), causally unless ``causal=False``."""
    lengths = tuple(int(x) for x in lengths)
    ids = _doc_ids(lengths)

    def mod(b, h, q, kv):
        d = ids.to(q.device)
        same = d[q.clamp(max=len(d) - 1)] == d[kv.clamp(max=len(d) - 1)]
        return same & (kv <= q) if causal else same

    spec = f"document({list(lengths)})" if causal else f"document({list(lengths)}, causal=False)"
    return MaskPolicy(mod, spec, _segments(lengths), length=sum(lengths))
