"""Mask policies: FlexAttention-style predicates ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

True means the query may read that key. Predicates are evaluated on broadcast index tensors
(b: (B,1,1,1), h: (1,H,1,1), q_idx: (1,1,L,1), kv_idx: (1,1,1,S)), so they are written with
tensor operations, and compose with :func:`and_masks`, :func:`or_masks` and :func:`not_mask`.
One small module per pattern, as in attention-gym. Policies are also the harness's description
of which (query, key) pairs are forbidden: the leakage probes perturb exactly those.

    from harness.masks import and_masks, causal, sliding_window, render
    policy = and_masks(causal(), sliding_window(4))
    dense = render(policy, B=1, H=1, L=8, S=8)       # bool (1, 1, 8, 8)
"""

from __future__ import annotations

import ast
from typing import Callable

import torch

from harness.masks.core import MaskPolicy, and_masks, not_mask, or_masks, render, full
from harness.masks.causal import causal
from harness.masks.padding import key_padding, key_visible
from harness.masks.document import document
from harness.masks.prefix_lm import prefix_lm
from harness.masks.sliding_window import sliding_window
from harness.masks.rag import rag
from harness.masks.chat import chat_roles
from harness.masks.shared_prefix import shared_prefix
from harness.masks.head_span import head_span

POLICIES: dict[str, Callable[..., MaskPolicy]] = {
    "full": full,
    "causal": causal,
    "key_padding": key_padding,
    "key_visible": key_visible,
    "document": document,
    "prefix_lm": prefix_lm,
    "sliding_window": sliding_window,
    "rag": rag,
    "chat_roles": chat_roles,
    "shared_prefix": shared_prefix,
    "head_span": head_span,
}


def from_spec(spec: str) -> MaskPolicy:
    """Rebuild a policy from its one-line description, e.g. ``"document([3, 4])"`` or
    ``"and_masks(causal(), sliding_window(4))"``. Descriptions round-trip: ``from_spec(p.spec) == p``."""
    tree = ast.parse(spec.strip(), mode="eval").body

    def build(node):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError(f"not a mask policy expression: {spec!r}")
        name = node.func.id
        if name in ("and_masks", "or_masks"):
            parts = [build(a) for a in node.args]
            return and_masks(*parts) if name == "and_masks" else or_masks(*parts)
        if name == "not_mask":
            return not_mask(build(node.args[0]))
        if name not in POLICIES:
            raise ValueError(f"unknown mask policy {name!r} (known: {', '.join(POLICIES)})")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        return POLICIES[name](*args, **kwargs)

    return build(tree)


__all__ = ["MaskPolicy", "and_masks", "or_masks", "not_mask", "render", "from_spec", "POLICIES",
           *POLICIES]
