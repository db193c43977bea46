from harness.masks.core import MaskPolicy


def sliding_window(window: int) -> MaskPolicy:
    """Causal sliding window: query i reads keys i - window < j <= i (and_masks(window, causal))."""
    return MaskPolicy(lambda b, h, q, kv: (kv <= q) & (q - kv < window), f"sliding_window({window})")
