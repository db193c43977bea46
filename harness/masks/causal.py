from harness.masks.core import MaskPolicy


def causal(offset: int = 0) -> MaskPolicy:
    """Query i reads keys j <= i + offset. offset 0 is SDPA's top-left alignment; offset S - L is
    FlashAttention's bottom-right alignment; a chunk of queries starting at position p of a
    longer prompt uses offset p (chunked prefill)."""
    return MaskPolicy(lambda b, h, q, kv: kv <= q + offset,
                      "causal()" if offset == 0 else f"causal({offset})")
