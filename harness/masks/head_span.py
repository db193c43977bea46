import torch

from harness.masks.core import MaskPolicy


def head_span(spans) -> MaskPolicy:
    """Head h may read only the first ``spans[h % len(spans)]`` keys (per-head attention spans).
    The pattern varies by head but not by batch element or query, so it is the policy that a
    (1, H, 1, S) mask carries; a kernel that broadcasts the head axis of a mask wrongly shows here."""
    spans = tuple(int(x) for x in spans)
    st = torch.tensor(spans)

    def mod(b, h, q, kv):
        return kv < st.to(kv.device)[h % len(spans)]

    return MaskPolicy(mod, f"head_span({list(spans)})", depends_on=frozenset({"h"}))
