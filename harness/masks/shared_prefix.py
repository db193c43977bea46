import torch

from harness.masks.core import MaskPolicy


def shared_prefix(prefix: int, continuations) -> MaskPolicy:
    """One shared prompt of ``prefix`` tokens followed by several continuations packed in one
    row (beam search, parallel sampling): each continuation reads the prefix and itself,
    causally, never a sibling continuation."""
    continuations = tuple(int(c) for c in continuations)
    n = prefix + sum(continuations)
    branch = torch.zeros(n, dtype=torch.long)
    start = prefix
    segs = [(0, prefix)]
    for i, c in enumerate(continuations):
        branch[start:start + c] = i + 1
        segs.append((start, start + c))
        start += c

    def mod(b, h, q, kv):
        br = branch.to(q.device)
        bq, bk = br[q.clamp(max=n - 1)], br[kv.clamp(max=n - 1)]
        return ((bk == 0) | (bq == bk)) & (kv <= q)

    return MaskPolicy(mod, f"shared_prefix({prefix}, {list(continuations)})", tuple(segs), length=n)
