"""The invariance tier: bitwise certificates that deterministic inference needs.

Tolerance properties ask "is the answer right within rounding"; a serving stack that promises
"the same prompt gives the same tokens whatever else is in the batch" needs more: the *same bits*.
Three certificates, each a bitwise comparison of the kernel with itself:

- **batch**: one batch element computed alone (B = 1) and at a random position inside batches of
  growing size (up to 128 here) with random batch-mates. Split-KV heuristics that pick the number
  of splits from B x H, or a GEMM whose blocking depends on the batch, break it.
- **split**: the output of each query of a causal prefill computed whole, in chunks of queries
  (each chunk reading the cache so far), and one token at a time (decode, no mask).
- **rerun**: N repeated forward and backward calls on the same input (atomics in a backward, a
  split order that depends on the thread schedule break it).

Each certificate says what was compared, the shapes, and, when the bits differ, the first
differing element with both values and the ulp distance. A certificate is *held* or *broken*; it
fails only where the kernel declares it (``Capabilities.batch_invariant``, ``split_invariant``,
``deterministic``), and the run's gate includes it only with ``--certify invariance``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import pytest
import torch

from harness import probes
from harness.cases import Case, Inputs
from harness.ulps import describe_difference, first_difference

# Batch sizes the target row is placed among: small shapes up to 128 on CPU; on CUDA (the GPU
# validation) larger ones, where split-KV and tile heuristics actually switch.
BATCH_SIZES = (2, 3, 4, 8, 16, 32, 64, 128)
BATCH_SHAPE = dict(H=2, Hkv=2, L=8, S=24, E=16, Ev=16)
BATCH_SIZES_CUDA = (2, 3, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_SHAPE_CUDA = dict(H=8, Hkv=2, L=16, S=1024, E=128, Ev=128)
SPLIT_SHAPE = dict(B=1, H=2, Hkv=1, L=21, S=21, E=16, Ev=16)
SPLIT_CHUNKS = (1, 4, 7)
RERUN_SHAPE = dict(B=2, H=4, Hkv=2, L=33, S=33, E=16, Ev=16)
# Repeated calls per certificate (forward and backward): 0.2 s per dtype for torch SDPA on one CPU
# thread at RERUN_SHAPE; the GPU validation asks for 1000, as FlashAttention's own test does.
RERUNS = 100


@dataclass
class Certificate:
    kind: str  # batch | split | rerun
    held: Optional[bool]  # None: could not be measured (outside the declared contract)
    compared: str
    shapes: dict
    comparisons: int = 0
    first_difference: Optional[dict] = None
    where: dict = field(default_factory=dict)  # which call broke it (batch size and position, chunk, rerun)
    reruns: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.held:
            return f"held: {self.compared} ({self.comparisons} comparisons, all bitwise equal)"
        if self.held is None:
            return f"not measured: {self.compared}"
        at = ", ".join(f"{k}={v}" for k, v in self.where.items())
        return f"broken: {self.compared}; at {at}: " + describe_difference(self.first_difference, ("alone", "other"))


def _inputs(case: Case, caps, dtype: str, device: str) -> Optional[Inputs]:
    c = case.replace(dtype=dtype, device=device).fit(caps, dtype, device)
    return None if c is None else c.materialize()


def _mask_for(kind: str, caps) -> Optional[str]:
    """How a variant's mask reaches the kernel, inside the declaration (None: not expressible)."""
    if kind == "none":
        return "none"
    if kind == "causal":  # Case.fit aligns is_causal as declared (top-left or bottom-right)
        return "is_causal" if caps.causal is not None else ("bool" if "bool" in caps.mask_kinds else None)
    return "bool" if "bool" in caps.mask_kinds else ("float" if "float" in caps.mask_kinds else None)


def batch(impl, dtype: str, device: str = "cpu", seed: int = 0, sizes=None,
          variants=("none", "causal", "padding")) -> Certificate:
    """One batch element alone vs the same element at a random position in batches of ``sizes``."""
    caps = impl.capabilities
    rng = random.Random(seed)
    sizes = sizes or (BATCH_SIZES_CUDA if device == "cuda" else BATCH_SIZES)
    shp = dict(BATCH_SHAPE_CUDA if device == "cuda" else BATCH_SHAPE)
    compared, skipped, n = [], [], 0
    for variant in variants:
        how = _mask_for(variant, caps)
        if how is None:
            continue
        real = shp["S"] * 2 // 3  # the target's own real tokens under key padding
        policy = {"none": "full()", "causal": "causal()", "padding": f"key_padding([{real}])"}[variant]
        base = Case(B=1, **shp, policy=policy, mask=how, mask_shape="B11S" if variant == "padding" else "LS",
                    seed=seed)
        alone = _inputs(base, caps, dtype, device)
        if alone is None:
            continue
        try:
            broken = _batch_variant(impl, caps, dtype, device, rng, sizes, variant, base, alone, policy, real)
        except pytest.skip.Exception as e:  # NotImplementedError: this variant only is outside the kernel
            skipped.append(f"{variant} ({str(e).replace('unsupported: ', '')[:120]})")
            continue
        compared.append(variant)
        n += broken[0]
        if broken[1] is not None:
            return Certificate("batch", False, _batch_text(compared, skipped), _shapes(alone, sizes), n, *broken[1:])
    if not compared:
        why = "; ".join(skipped) or "no mask variant fits the declared capabilities"
        return Certificate("batch", None, why, _shapes(None, sizes))
    return Certificate("batch", True, _batch_text(compared, skipped), _shapes(alone, sizes), n)


def _batch_variant(impl, caps, dtype, device, rng, sizes, variant, base, alone, policy, real) -> tuple:
    """(comparisons, first difference or None, where) for one mask variant."""
    n = 0
    out1 = probes.call_kept(impl, alone)
    for b in sizes:
        pos = rng.randrange(b)
        # batch-mates of other lengths under key padding: the varlen situation of a serving batch
        lengths = [rng.randint(1, base.S) for _ in range(b)]
        lengths[pos] = real
        pol = f"key_padding({lengths})" if variant == "padding" else policy
        many = _inputs(base.replace(B=b, policy=pol, seed=base.seed + 1000 + b), caps, dtype, device)
        if many is None:
            continue
        q, k, v = many.q.clone(), many.k.clone(), many.v.clone()
        q[pos], k[pos], v[pos] = alone.q[0], alone.k[0], alone.v[0]
        out = probes.call_kept(impl, many.replace(q=q, k=k, v=v))[pos:pos + 1]
        n += 1
        diff = first_difference(out1, out, ("alone", "other"))
        if diff is not None:
            diff["index"] = [pos] + diff["index"][1:]
            return n, diff, {"variant": variant, "batch_size": b, "position": pos}
    return n, None, {}


def _batch_text(variants, skipped=()) -> str:
    return (f"output of one batch element computed alone (B=1) vs at a random position among random "
            f"batch-mates, masks: {', '.join(variants)}"
            + (f" (not expressible here: {'; '.join(skipped)})" if skipped else ""))


def _shapes(inp: Optional[Inputs], sizes) -> dict:
    d = {"batch_sizes": [1, *sizes]}
    if inp is not None:
        c = inp.case
        d.update(H=c.H, Hkv=c.Hkv, L=c.L, S=c.S, E=c.E, Ev=c.Ev)
    return d


def split(impl, dtype: str, device: str = "cpu", seed: int = 0, chunks=SPLIT_CHUNKS) -> Certificate:
    """Causal prefill of S tokens whole vs in chunks of queries vs one token at a time."""
    caps = impl.capabilities
    # Bottom-right is_causal is exactly a chunk's mask (its queries are the cache's last ones);
    # otherwise the chunk's causal offset goes in a dense mask.
    kind = None if caps.causal == "bottom_right" else (
        "bool" if "bool" in caps.mask_kinds else ("float" if "float" in caps.mask_kinds else None))
    if kind is None and caps.causal != "bottom_right":
        return Certificate("split", None, "needs dense masks or bottom-right is_causal to express chunked prefill",
                           dict(SPLIT_SHAPE))
    whole_case = Case(**SPLIT_SHAPE, policy="causal()", mask=kind or "is_causal", mask_shape="LS", seed=seed,
                      alignment="bottom_right" if kind is None else "top_left")
    whole = _inputs(whole_case, caps, dtype, device)
    if whole is None:
        return Certificate("split", None, "the prefill shape does not fit the declared capabilities", dict(SPLIT_SHAPE))
    c = whole.case
    out = probes.call_kept(impl, whole)
    text = (f"causal prefill of {c.S} tokens in one call vs in chunks of {', '.join(map(str, chunks))} queries "
            f"(each reading the cache so far, {kind or 'bottom-right is_causal'} mask) vs one token at a time "
            f"(L=1, no mask)")
    shapes = {**{k: getattr(c, k) for k in ("B", "H", "Hkv", "L", "S", "E", "Ev")}, "chunks": list(chunks)}
    n = 0
    for chunk in (*chunks, "decode"):
        size = 1 if chunk == "decode" else chunk
        for c0 in range(0, c.S, size):
            c1 = min(c.S, c0 + size)
            part = _part(whole, c0, c1, kind, decode=chunk == "decode")
            got = probes.call_kept(impl, part)
            n += 1
            diff = first_difference(out[:, :, c0:c1], got, ("alone", "other"))
            if diff is not None:
                diff["index"][2] += c0  # the query's position in the whole prefill
                where = {"call": "decode" if chunk == "decode" else f"chunk of {chunk}", "queries": f"{c0}..{c1 - 1}"}
                return Certificate("split", False, text, shapes, n, diff, where)
    return Certificate("split", True, text, shapes, n)


def _part(whole: Inputs, c0: int, c1: int, kind: Optional[str], decode: bool) -> Inputs:
    vis = torch.arange(c1).view(1, -1) <= torch.arange(c0, c1).view(-1, 1)
    B, H = whole.q.shape[:2]
    if decode:
        mask, causal = None, False
    elif kind == "bool":
        mask, causal = vis.to(whole.q.device), False
    elif kind == "float":
        mask = torch.zeros(vis.shape).masked_fill(~vis, float("-inf")).to(whole.q.dtype).to(whole.q.device)
        causal = False
    else:
        mask, causal = None, True  # bottom-right is_causal: the chunk's queries sit at the end
    case = whole.case.replace(L=c1 - c0, S=c1, policy=f"causal({c0})",
                              mask="none" if decode else (kind or "is_causal"))
    return whole.replace(q=whole.q[:, :, c0:c1], k=whole.k[:, :, :c1], v=whole.v[:, :, :c1], attn_mask=mask,
                         is_causal=causal, visible=vis.expand(B, H, c1 - c0, c1), case=case)


def rerun(impl, dtype: str, device: str = "cpu", seed: int = 0, reruns: int = RERUNS,
          backward: Optional[bool] = None) -> Certificate:
    """The same forward (and backward, where autograd is declared) ``reruns`` times, bitwise."""
    caps = impl.capabilities
    backward = caps.autograd if backward is None else backward
    how = _mask_for("causal", caps) or "none"
    case = Case(**RERUN_SHAPE, policy="causal()" if how != "none" else "full()", mask=how, mask_shape="LS",
                seed=seed)
    inp = _inputs(case, caps, dtype, device)
    if inp is None:
        return Certificate("rerun", None, "the rerun shape does not fit the declared capabilities", dict(RERUN_SHAPE))
    c = inp.case
    shapes = {k: getattr(c, k) for k in ("B", "H", "Hkv", "L", "S", "E", "Ev")}
    text = (f"{reruns} repeated {'forward and backward (dq, dk, dv)' if backward else 'forward'} calls on one input "
            f"({c.mask} mask), each against the first")
    cot = torch.randn(c.B, c.H, c.L, c.Ev, generator=torch.Generator().manual_seed(seed)).to(inp.q.dtype).to(inp.q.device)
    first: Optional[tuple] = None
    for i in range(reruns):
        got = _forward_backward(impl, inp, cot, backward)
        if first is None:
            first = got
            continue
        for name, a, b in zip(("output", "dq", "dk", "dv"), first, got):
            diff = first_difference(a, b, ("alone", "other"))
            if diff is not None:
                return Certificate("rerun", False, text, shapes, i, diff, {"rerun": i, "tensor": name}, reruns)
    return Certificate("rerun", True, text, shapes, max(0, reruns - 1), reruns=reruns)


def _forward_backward(impl, inp: Inputs, cot: torch.Tensor, backward: bool) -> tuple:
    if not backward:
        with torch.no_grad():
            return (probes.call_kept(impl, inp),)
    out = probes.call_kept(impl, inp)
    return (out, *(g.detach().clone() for g in probes.grads(impl, inp, cot)))


CERTIFICATES: dict = {"batch": (batch, "batch_invariant"), "split": (split, "split_invariant"),
                      "rerun": (rerun, "deterministic")}


def certify(impl, kind: str, dtype: str, device: str = "cpu", seed: int = 0, **kw) -> tuple:
    """(certificate, declared): measure one certificate and say whether the kernel declares it."""
    fn, field_name = CERTIFICATES[kind]
    if kind != "rerun":
        kw.pop("reruns", None)  # one option set serves all three
    return fn(impl, dtype, device, seed, **kw), bool(getattr(impl.capabilities, field_name))


def measure_all(impl, dtypes, device: str = "cpu", seed: int = 0, reruns: int = RERUNS,
                progress: Optional[Callable[[str], None]] = None) -> list:
    """Every certificate in every dtype, as dicts (the README's table of built-ins comes from this)."""
    rows = []
    for dtype in dtypes:
        for kind in CERTIFICATES:
            kw = {"reruns": reruns} if kind == "rerun" else {}
            cert, declared = certify(impl, kind, dtype, device, seed, **kw)
            rows.append({"dtype": dtype, "declared": declared, **cert.to_dict()})
            if progress:
                progress(f"{impl.name} {dtype} {kind}: {cert.describe()}")
    return rows
