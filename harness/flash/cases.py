"""``FlashCase``: one call of a flash_attn-convention kernel, printable and rebuilt from its seed.

A case holds per-sequence lengths, so the same description serves the three conventions: equal
lengths for ``func``, ragged packed batches (empty sequences and length 1 included) for
``varlen``, and for ``kvcache`` the cache length before the call, the tokens appended by it and,
when ``page_size`` > 0, a paged cache: pages handed out in a shuffled order, the first
``shared_pages`` pages of sequence 0 shared by every sequence (prefix sharing), spare pages that
no block table reaches, and partly filled last pages. Everything random comes from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from harness.cases import DTYPES

FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
MODES = ("func", "varlen", "kvcache")


def torch_dtype(name: str) -> torch.dtype:
    return FP8[name] if name in FP8 else DTYPES[name]


def out_dtype(name: str) -> torch.dtype:
    """What the kernel returns: the input dtype, bfloat16 for FP8 inputs (as FlashAttention-3)."""
    return torch.bfloat16 if name in FP8 else DTYPES[name]


@dataclass(frozen=True)
class FlashCase:
    mode: str = "varlen"  # drawn cases are ragged; fit() moves them into the kernel's convention
    B: int = 1
    H: int = 1
    Hkv: int = 1
    E: int = 16
    seqlens_q: tuple = (4,)
    seqlens_k: tuple = (4,)  # kvcache: the cache length before the call (cache_seqlens)
    new: int = 0  # kvcache: tokens appended by the call (k, v arguments)
    dtype: str = "float32"
    causal: bool = False
    window: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: object = False  # True: slopes (H,); "per_batch": (B, H), as flash_attn also takes them
    sinks: bool = False
    scale: Optional[float] = None
    page_size: int = 0  # kvcache: 0 = one contiguous cache row per sequence
    shared_pages: int = 0  # kvcache, paged: pages of sequence 0 every sequence starts with
    num_splits: int = 0  # kvcache: 0 = not passed
    magnitude: float = 1.0  # multiplies q: logits far beyond a soft-cap
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if len(self.seqlens_q) != self.B or len(self.seqlens_k) != self.B:
            raise ValueError(f"seqlens_q and seqlens_k need B={self.B} entries")
        if self.mode != "varlen" and len(set(self.seqlens_q)) > 1:
            raise ValueError(f"{self.mode}: every sequence has the same number of queries")
        if self.mode == "func" and len(set(self.seqlens_k)) > 1:
            raise ValueError("func: every sequence has the same number of keys")
        if self.H % self.Hkv:
            raise ValueError(f"H={self.H} is not a multiple of Hkv={self.Hkv}")
        if self.shared_pages and (not self.page_size or self.shared_pages * self.page_size > min(self.seqlens_k)):
            raise ValueError("shared_pages must lie inside every sequence's cache (shared_pages * page_size "
                             "<= min(seqlens_k)): an append may not write into a shared page")

    def replace(self, **kw) -> "FlashCase":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def keys(self, b: int) -> int:
        """Keys sequence ``b`` attends to (the cache plus what the call appends)."""
        return self.seqlens_k[b] + (self.new if self.mode == "kvcache" else 0)

    def pages(self, b: int) -> int:
        return math.ceil(self.keys(b) / self.page_size) if self.page_size else 0

    def short(self) -> str:
        bits = [self.mode, f"B={self.B}", f"H={self.H}/{self.Hkv}", f"E={self.E}", self.dtype,
                f"q={list(self.seqlens_q)}", f"k={list(self.seqlens_k)}"]
        if self.new:
            bits.append(f"append {self.new}")
        if self.page_size:
            bits.append(f"pages of {self.page_size}" + (f", {self.shared_pages} shared" if self.shared_pages else ""))
        if self.causal:
            bits.append("causal")
        if self.window != (-1, -1):
            bits.append(f"window={tuple(self.window)}")
        if self.softcap:
            bits.append(f"softcap={self.softcap:g}")
        if self.alibi:
            bits.append("ALiBi (B, H)" if self.alibi == "per_batch" else "ALiBi")
        if self.sinks:
            bits.append("sinks")
        if self.scale is not None:
            bits.append(f"scale={self.scale:g}")
        if self.num_splits:
            bits.append(f"num_splits={self.num_splits}")
        if self.magnitude != 1.0:
            bits.append(f"q x{self.magnitude:g}")
        return ", ".join(bits)

    def materialize(self, device: str = "cpu") -> "FlashInputs":
        return build(self, device)


def _randn(g, shape, dtype_name):
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if dtype_name in FP8:
        # FP8 data spans its range: per-tensor quantised activations are scaled to use it.
        x = (x * 40.0).clamp(-400, 400).to(FP8[dtype_name])
    return x.to(torch_dtype(dtype_name))


@dataclass
class FlashInputs:
    """The logical truth of a case (per sequence) and the tensors handed to the kernel."""

    case: FlashCase
    qs: list  # per sequence (Lq_b, H, E), in the case dtype
    ks: list  # per sequence (keys(b), Hkv, E): every key the sequence attends to, appended ones included
    vs: list
    alibi_slopes: Optional[torch.Tensor]  # (H,) or (B, H) float32
    sinks: Optional[torch.Tensor]  # (H,) float32
    descale: Optional[dict]  # {"q_descale": (B, Hkv), ...} float32, FP8 only
    tensors: dict  # what the kernel gets, by flash_attn parameter name
    slot_of: list  # kvcache: per sequence, the (block, slot) of each key position (a LongTensor (keys, 2))
    garbage: Optional[torch.Tensor] = None  # kvcache: bool (blocks, page) slots no sequence may read

    def slopes(self, b: int) -> Optional[torch.Tensor]:
        """Sequence b's ALiBi slopes (H,), or None."""
        if self.alibi_slopes is None:
            return None
        return self.alibi_slopes[b] if self.alibi_slopes.dim() == 2 else self.alibi_slopes

    def dequant(self, x: torch.Tensor, b: int, which: str) -> torch.Tensor:
        """x of sequence b in float64 as the kernel must read it (FP8: times its descale)."""
        x = x.to(torch.float64)
        if self.descale is None:
            return x
        d = self.descale[f"{which}_descale"][b].to(torch.float64)  # (Hkv,)
        if which == "q":
            d = d.repeat_interleave(self.case.H // self.case.Hkv)
        return x * d.view(1, -1, 1)


def _slopes(H: int, g) -> torch.Tensor:
    # Geometric slopes as in the ALiBi paper, jittered so a head mix-up shows.
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])
    return (base * (0.5 + torch.rand(H, generator=g))).to(torch.float32)


def build(c: FlashCase, device: str = "cpu") -> FlashInputs:
    g = torch.Generator().manual_seed(c.seed)
    qs = [_randn(g, (c.seqlens_q[b], c.H, c.E), c.dtype) for b in range(c.B)]
    if c.magnitude != 1.0:
        qs = [(q.to(torch.float32) * c.magnitude).to(q.dtype) for q in qs]
    ks = [_randn(g, (c.keys(b), c.Hkv, c.E), c.dtype) for b in range(c.B)]
    vs = [_randn(g, (c.keys(b), c.Hkv, c.E), c.dtype) for b in range(c.B)]
    if c.mode == "kvcache" and c.page_size and c.shared_pages:
        n = c.shared_pages * c.page_size  # every sequence begins with sequence 0's first pages
        for b in range(1, c.B):
            ks[b][:n] = ks[0][:n]
            vs[b][:n] = vs[0][:n]
    alibi = None
    if c.alibi:
        alibi = torch.stack([_slopes(c.H, g) for _ in range(c.B)]) if c.alibi == "per_batch" else _slopes(c.H, g)
    sinks = (torch.randn(c.H, generator=g) * 2).to(torch.float32) if c.sinks else None
    descale = None
    if c.dtype in FP8:
        descale = {f"{w}_descale": (0.01 + torch.rand(c.B, c.Hkv, generator=g) * 0.1).to(torch.float32)
                   for w in ("q", "k", "v")}
    tensors, slot_of, garbage = {}, [], None
    if c.mode == "func":
        tensors = {"q": torch.stack(qs), "k": torch.stack(ks), "v": torch.stack(vs)}
    elif c.mode == "varlen":
        cu_q = torch.tensor([0, *torch.tensor(c.seqlens_q).cumsum(0).tolist()], dtype=torch.int32)
        cu_k = torch.tensor([0, *torch.tensor(c.seqlens_k).cumsum(0).tolist()], dtype=torch.int32)
        tensors = {"q": torch.cat(qs), "k": torch.cat(ks), "v": torch.cat(vs), "cu_seqlens_q": cu_q,
                   "cu_seqlens_k": cu_k, "max_seqlen_q": max(c.seqlens_q), "max_seqlen_k": max(c.seqlens_k)}
    else:
        tensors, slot_of, garbage = _kv_cache(c, g, qs, ks, vs)
    if descale is not None:
        tensors.update(descale)
    inp = FlashInputs(c, qs, ks, vs, alibi, sinks, descale, tensors, slot_of, garbage)
    if device != "cpu":
        inp.tensors = {k: (t.to(device) if isinstance(t, torch.Tensor) else t) for k, t in inp.tensors.items()}
    return inp


def _kv_cache(c: FlashCase, g, qs, ks, vs):
    dt = torch_dtype(c.dtype)
    cache_len = torch.tensor(c.seqlens_k, dtype=torch.int32)
    slot_of = []
    if c.page_size:
        P = c.page_size
        own = [c.pages(b) - (c.shared_pages if b else 0) for b in range(c.B)]
        spare = 2  # pages no block table reaches: a read there is a read of someone else's memory
        nblocks = sum(own) + spare
        order = torch.randperm(nblocks, generator=g).tolist()  # shuffled, non-monotone page ids
        tables, nxt = [], 0
        for b in range(c.B):
            if b and c.shared_pages:
                pages = tables[0][:c.shared_pages] + order[nxt:nxt + own[b]]
            else:
                pages = order[nxt:nxt + own[b]]
            nxt += own[b]
            tables.append(pages)
        width = max(1, max((len(t) for t in tables), default=1))
        # Unused table entries point at a page another sequence owns: reading past one's own pages
        # reads someone else's keys, never a harmless zero page.
        filler = order[-1]
        block_table = torch.tensor([t + [filler] * (width - len(t)) for t in tables], dtype=torch.int32)
        k_cache = _randn(g, (nblocks, P, c.Hkv, c.E), c.dtype)
        v_cache = _randn(g, (nblocks, P, c.Hkv, c.E), c.dtype)
        garbage = torch.ones(nblocks, P, dtype=torch.bool)
        for b in range(c.B):
            pos = torch.arange(c.keys(b))
            blk = torch.tensor(tables[b], dtype=torch.long)[pos // P] if len(pos) else pos
            slot = torch.stack([blk, pos % P], dim=-1)
            slot_of.append(slot)
            n0 = c.seqlens_k[b]
            if n0:
                k_cache[slot[:n0, 0], slot[:n0, 1]] = ks[b][:n0].to(dt)
                v_cache[slot[:n0, 0], slot[:n0, 1]] = vs[b][:n0].to(dt)
            garbage[slot[:, 0], slot[:, 1]] = False
        tensors = {"k_cache": k_cache, "v_cache": v_cache, "block_table": block_table}
    else:
        smax = max(c.keys(b) for b in range(c.B)) + 3  # slots past every sequence's end
        k_cache = _randn(g, (c.B, smax, c.Hkv, c.E), c.dtype)
        v_cache = _randn(g, (c.B, smax, c.Hkv, c.E), c.dtype)
        garbage = torch.ones(c.B, smax, dtype=torch.bool)
        for b in range(c.B):
            n0 = c.seqlens_k[b]
            k_cache[b, :n0] = ks[b][:n0]
            v_cache[b, :n0] = vs[b][:n0]
            pos = torch.arange(c.keys(b))
            slot_of.append(torch.stack([torch.full_like(pos, b), pos], dim=-1))
            garbage[b, :c.keys(b)] = False
        tensors = {"k_cache": k_cache, "v_cache": v_cache}
    tensors["q"] = torch.stack(qs)
    tensors["cache_seqlens"] = cache_len
    if c.new:
        tensors["k"] = torch.stack([ks[b][c.seqlens_k[b]:] for b in range(c.B)])
        tensors["v"] = torch.stack([vs[b][c.seqlens_k[b]:] for b in range(c.B)])
    return tensors, slot_of, garbage
