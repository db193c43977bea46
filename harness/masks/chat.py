import json

import torch

from harness.masks.core import MaskPolicy

ROLES = ("system", "user", "assistant", "tool", "retrieved", "delim")
UNTRUSTED = ("tool", "retrieved")


def chat_roles(turns) -> MaskPolicy:
    """A chat transcript as a list of (role, length) turns, causal, with an isolation rule that
    holds across layers: untrusted content (``tool`` output and ``retrieved`` text) reads only
    untrusted content. A token that read the system prompt would carry it to the next layer, so
    "untrusted may not read the system segment" alone is not enough; closing the untrusted set
    keeps the system prompt (and anything that saw it) away from injected text. A delimiter
    (``delim``) belongs to the turn it opens: the delimiter before a tool turn is untrusted too.
    Trusted roles read everything before them.
    """
    turns = tuple((str(r), int(n)) for r, n in turns)
    for r, n in turns:
        if r not in ROLES:
            raise ValueError(f"unknown role {r!r} (known: {ROLES})")
    trust = []
    for i, (r, n) in enumerate(turns):
        owner = r
        if r == "delim":
            owner = next((t for t, _ in turns[i + 1:] if t != "delim"), "assistant")
        trust += [owner not in UNTRUSTED] * n
    trusted = torch.tensor(trust, dtype=torch.bool)
    n = len(trusted)

    def mod(b, h, q, kv):
        tr = trusted.to(q.device)
        tq, tk = tr[q.clamp(max=n - 1)], tr[kv.clamp(max=n - 1)]
        return (kv <= q) & (tq | ~tk)

    segs, start = [], 0
    for r, m in turns:
        segs.append((start, start + m))
        start += m
    return MaskPolicy(mod, f"chat_roles({json.dumps([list(t) for t in turns])})", tuple(segs), length=n)
