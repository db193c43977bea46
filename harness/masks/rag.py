import torch

from harness.masks.core import MaskPolicy


def rag(instruction: int, chunks, question: int) -> MaskPolicy:
    """Retrieval-augmented prompt: [instruction][chunk 1]...[chunk n][question + answer].

    The instruction is causal. Each retrieved chunk reads the instruction and itself (causally)
    but never another chunk: retrieved passages must not contaminate each other. The question and
    the answer that follows read everything before them (all chunks), causally.
    """
    chunks = tuple(int(c) for c in chunks)
    bounds = [instruction]
    for c in chunks:
        bounds.append(bounds[-1] + c)
    n = bounds[-1] + question
    seg = torch.zeros(n, dtype=torch.long)  # 0 instruction, 1..k chunks, k+1 question
    for i, (a, z) in enumerate(zip(bounds[:-1], bounds[1:])):
        seg[a:z] = i + 1
    seg[bounds[-1]:] = len(chunks) + 1
    last = len(chunks) + 1

    def mod(b, h, q, kv):
        s = seg.to(q.device)
        sq, sk = s[q.clamp(max=n - 1)], s[kv.clamp(max=n - 1)]
        ok = (sk == 0) | (sq == sk) | (sq == last)
        return ok & (kv <= q)

    segments = ((0, instruction),) + tuple(zip(bounds[:-1], bounds[1:])) + ((bounds[-1], n),)
    return MaskPolicy(mod, f"rag({instruction}, {list(chunks)}, {question})", segments, length=n)
