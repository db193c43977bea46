"""The policy type and its combinators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class MaskPolicy:
    """A named predicate. ``spec`` is a one-line expression that :func:`harness.masks.from_spec`
    turns back into the same policy (it goes into reproduction commands). ``segments`` lists
    key ranges (start, stop) that are natural units to perturb (documents, chat turns, chunks);
    ``depends_on`` says which of b, h, q the predicate reads, which decides the smallest dense
    mask shape that can carry it."""

    mask_mod: MaskMod
    spec: str
    segments: tuple = ()
    depends_on: frozenset = frozenset({"q"})
    length: Optional[int] = None  # the sequence length the policy was built for, if fixed
    keys: Optional[int] = None  # the key count alone, when only that is fixed (key_visible)

    def __call__(self, b, h, q_idx, kv_idx):
        return self.mask_mod(b, h, q_idx, kv_idx)

    def __repr__(self):
        return self.spec

    def __eq__(self, other):
        return isinstance(other, MaskPolicy) and other.spec == self.spec

    def __hash__(self):
        return hash(self.spec)


def full() -> MaskPolicy:
    """Every key visible."""
    return MaskPolicy(lambda b, h, q, kv: (kv >= 0) & (q >= 0), "full()", depends_on=frozenset())


def _combine(parts: Sequence[MaskPolicy], op, name) -> MaskPolicy:
    if not parts:
        raise ValueError(f"{name}_masks needs at least one policy")

    def mod(b, h, q, kv):
        out = parts[0](b, h, q, kv)
        for p in parts[1:]:
            out = op(out, p(b, h, q, kv))
        return out

    segs = tuple(dict.fromkeys(s for p in parts for s in p.segments))
    deps = frozenset().union(*(p.depends_on for p in parts))
    lengths = {p.length for p in parts if p.length is not None}
    keys = {p.keys for p in parts if p.keys is not None}
    return MaskPolicy(mod, f"{name}_masks({', '.join(p.spec for p in parts)})", segs, deps,
                      lengths.pop() if len(lengths) == 1 else None, keys.pop() if len(keys) == 1 else None)


def and_masks(*parts: MaskPolicy) -> MaskPolicy:
    """Visible only where every policy allows it."""
    return _combine(parts, torch.logical_and, "and")


def or_masks(*parts: MaskPolicy) -> MaskPolicy:
    """Visible where any policy allows it."""
    return _combine(parts, torch.logical_or, "or")


def not_mask(p: MaskPolicy) -> MaskPolicy:
    return MaskPolicy(lambda b, h, q, kv: ~p(b, h, q, kv), f"not_mask({p.spec})", p.segments, p.depends_on, p.length, p.keys)


def render(policy: MaskPolicy, B: int, H: int, L: int, S: int, device=None) -> torch.Tensor:
    """Dense boolean mask of shape (B, H, L, S)."""
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    q = torch.arange(L, device=device).view(1, 1, L, 1)
    kv = torch.arange(S, device=device).view(1, 1, 1, S)
    return policy(b, h, q, kv).expand(B, H, L, S).to(torch.bool)
