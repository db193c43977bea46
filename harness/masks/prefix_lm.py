from harness.masks.core import MaskPolicy, or_masks
from harness.masks.causal import causal


def prefix_lm(prefix: int) -> MaskPolicy:
    """Prefix-LM: the first ``prefix`` tokens (the prompt) are read bidirectionally, the rest
    causally: or_masks(prefix, causal)."""
    pre = MaskPolicy(lambda b, h, q, kv: kv < prefix, f"prefix({prefix})")
    p = or_masks(pre, causal())
    return MaskPolicy(p.mask_mod, f"prefix_lm({prefix})", ((0, prefix),))
