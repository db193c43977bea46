"""Black-box instruments for flash_attn-convention kernels: fit a case to the kernel, call it in
its own convention, judge the output and the LSE against the float64 reference, read effective
weights over every physical key slot with one-hot values, and perturb or poison exactly the
slots a sequence must not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from harness import probes
from harness.flash import reference as R
from harness.flash.cases import FP8, FlashCase, FlashInputs, out_dtype
from harness.tolerance import compare

PropertyViolation = probes.PropertyViolation


def kernel_of(target):
    """The kernel in its own convention, or the property is unsupported for this implementation."""
    native = getattr(target.impl, "native", None)
    if native is None:
        pytest.skip("unsupported: not a flash_attn-convention kernel (check it with --api flash_attn)")
    return native


def require(target, *fields, modes=None):
    """Skip as unsupported unless the kernel declares every variant in ``fields`` (and is written
    to one of ``modes``)."""
    k = kernel_of(target)
    if modes is not None and k.mode not in modes:
        pytest.skip(f"unsupported: needs {' or '.join(modes)}; {k.name} is written to {k.convention}")
    for f in fields:
        if not getattr(k.caps, f):
            pytest.skip(f"unsupported: {k.name} declares no {f} support")
    return k


def fit(target, case: FlashCase, dtype: Optional[str] = None) -> FlashCase:
    """The drawn case inside the kernel's convention and declaration (or the --case replay)."""
    k = kernel_of(target)
    caps = k.caps
    if target._replay:
        case = eval(target._replay, {"FlashCase": FlashCase})  # noqa: S307 - the user's own repro string
    else:
        c = case
        kw = dict(mode=k.mode, dtype=dtype or target.dtype)
        lq, lk = list(c.seqlens_q), list(c.seqlens_k)
        if k.mode != "varlen":
            lq = [max(1, lq[0])] * c.B
        if k.mode == "func":
            lk = [max(1, lk[0])] * c.B
        if k.mode == "kvcache":
            kw["new"] = c.new if caps.cache_append else 0
            kw["page_size"] = c.page_size if caps.paged and (caps.page_sizes is None or c.page_size in caps.page_sizes) \
                else 0
            kw["num_splits"] = c.num_splits if caps.num_splits else 0
            if kw["new"] == 0:
                lk = [max(1, n) for n in lk]
        else:
            kw.update(new=0, page_size=0, num_splits=0)
        kw["shared_pages"] = c.shared_pages if kw["page_size"] and c.B > 1 and \
            kw["page_size"] * c.shared_pages <= min(lk) else 0
        kw.update(seqlens_q=tuple(lq), seqlens_k=tuple(lk))
        if not caps.gqa:
            kw["Hkv"] = c.H
        if caps.causal is None:
            kw["causal"] = False
        for f, off in (("window", (-1, -1)), ("softcap", 0.0), ("alibi", False), ("sinks", False)):
            if not getattr(caps, f):
                kw[f] = off
        if not caps.head_dim_ok(c.E):
            kw["E"] = 16
        case = c.replace(**kw)
    target.cases += 1
    target.last_case = case
    return case


@dataclass
class Result:
    out: torch.Tensor  # (total_q, H, E), packed over the sequences
    lse: Optional[torch.Tensor]  # (H, total_q) float32
    handed: dict  # the tensors the kernel was given (after the call: what it wrote in place)


def keywords(kernel, inp: FlashInputs, *, lse: bool = False, tensors: Optional[dict] = None, **overrides) -> dict:
    """flash_attn's keyword arguments for the case: fresh copies of its tensors (``tensors``
    replaces some; clones of tensors that require grad keep the graph) and each variant's
    keyword only when the case uses it."""
    c = inp.case
    kw = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in {**inp.tensors, **(tensors or {})}.items()}
    kw.update(softmax_scale=c.scale, causal=c.causal)
    if c.window != (-1, -1):
        kw["window_size"] = tuple(c.window)
    if c.softcap:
        kw["softcap"] = c.softcap
    if inp.alibi_slopes is not None:
        kw["alibi_slopes"] = inp.alibi_slopes.clone()
    if inp.sinks is not None:
        kw["learnable_sink"] = inp.sinks.clone()
    if c.num_splits:
        kw["num_splits"] = c.num_splits
    if lse:
        kw["return_softmax_lse" if kernel.mode == "kvcache" else "return_attn_probs"] = True
    kw.update(overrides)
    return kw


def call(kernel, inp: FlashInputs, *, lse: bool = False, tensors: Optional[dict] = None, **overrides) -> Result:
    """Call the kernel with :func:`keywords` and check the result against the convention."""
    c = inp.case
    kw = keywords(kernel, inp, lse=lse, tensors=tensors, **overrides)
    handed = dict(kw)
    r = probes.guarded(kernel.name, lambda: kernel.fn(**kw))
    out, got_lse = (r[0], r[1] if len(r) > 1 else None) if isinstance(r, (tuple, list)) else (r, None)
    T = sum(c.seqlens_q)
    want = (T, c.H, c.E) if kernel.mode == "varlen" else (c.B, c.seqlens_q[0], c.H, c.E)
    if not isinstance(out, torch.Tensor):
        raise PropertyViolation(f"returned {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != want:
        raise PropertyViolation(f"output shape {tuple(out.shape)}, expected {want} for {kernel.convention}")
    if out.dtype != out_dtype(c.dtype):
        raise PropertyViolation(f"output dtype {out.dtype}, expected {out_dtype(c.dtype)} for {c.dtype} inputs")
    packed = out.detach().reshape(T, c.H, c.E).clone()
    if lse:
        if not isinstance(got_lse, torch.Tensor):
            raise PropertyViolation(f"asked for the LSE, got {type(got_lse).__name__} as the second result")
        lwant = (c.H, T) if kernel.mode == "varlen" else (c.B, c.H, c.seqlens_q[0])
        if tuple(got_lse.shape) != lwant:
            raise PropertyViolation(f"LSE shape {tuple(got_lse.shape)}, expected {lwant} for {kernel.convention}")
        got_lse = got_lse.detach().clone()
        if kernel.mode != "varlen":
            got_lse = got_lse.permute(1, 0, 2).reshape(c.H, T)
    return Result(packed, got_lse, handed)


def _bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 0, 2).unsqueeze(0)  # (T, H, E) -> (1, H, T, E)


def judge(target, res: Result, inp: FlashInputs, what: str = "output", ref=None):
    """The output against the float64 reference under the per-row bound (every row: a row with
    no visible key must be exactly zero, as in FlashAttention)."""
    ref_out = R.reference(inp)[0] if ref is None else ref
    absmax, vscale = R.row_stats(inp)
    scale = torch.maximum(vscale, _bhtd(ref_out).abs().amax(dim=-1)) if ref_out.numel() else vscale
    base = [_bhtd(b) for b in R.baselines(inp)]
    cmp = compare(_bhtd(res.out), _bhtd(ref_out), base, out_dtype(inp.case.dtype), target.forward_factor,
                  logit_absmax=absmax, scale=scale)
    target.record(cmp)
    if not cmp.ok:
        b, h, t = cmp.worst_index
        raise PropertyViolation(cmp.describe(what) + f" [packed row {t} is {_where(inp, t)}]")
    return cmp


def _where(inp: FlashInputs, t: int) -> str:
    n = 0
    for b, lq in enumerate(inp.case.seqlens_q):
        if t < n + lq:
            return f"sequence {b}, query {t - n} of {lq} (keys {inp.case.keys(b)})"
        n += lq
    return "past the last sequence"


def judge_lse(target, res: Result, inp: FlashInputs):
    """The LSE against the reference's natural-log LSE: the same bound (baseline: the LSE of
    scores formed in the dtype), rows with no visible key and no sink exactly -inf (or +inf where
    declared), NaN never."""
    _, ref = R.reference(inp)
    got = res.lse.to(torch.float64)
    if bool(torch.isnan(got).any()):
        h, t = (int(x) for x in torch.isnan(got).nonzero()[0])
        raise PropertyViolation(f"LSE is NaN at head {h}, {_where(inp, t)}")
    empty = torch.isinf(ref) & (ref < 0)
    want = float("inf") if kernel_of(target).caps.empty_row_lse == "+inf" else float("-inf")
    bad = empty & (got != want)
    if bool(bad.any()):
        h, t = (int(x) for x in bad.nonzero()[0])
        raise PropertyViolation(f"LSE of a row with no visible key is {float(got[h, t]):.6g}, expected {want} "
                                f"(declare empty_row_lse to change it): head {h}, {_where(inp, t)}")
    fin = ~empty
    z = torch.zeros_like(ref)
    absmax, _ = R.row_stats(inp)
    base = torch.where(fin, R.lse_baseline(inp), z)
    mag = torch.where(fin, ref.abs(), z).clamp(min=1.0).unsqueeze(0)
    cmp = compare(torch.where(fin, got, z).view(1, *ref.shape, 1), torch.where(fin, ref, z).view(1, *ref.shape, 1),
                  base.view(1, *ref.shape, 1), out_dtype(inp.case.dtype), target.forward_factor,
                  scale=mag, logit_absmax=absmax)
    target.record(cmp)
    if not cmp.ok:
        _, h, t = cmp.worst_index
        raise PropertyViolation(cmp.describe("LSE") + f" [head {h}, {_where(inp, t)}; got {float(got[h, t]):.6g}, "
                                f"reference {float(ref[h, t]):.6g}]")
    return cmp


def slot_index(inp: FlashInputs) -> list:
    """Per sequence, the flat index of each of its keys among the value tensor's slots: rows of
    the packed k/v for func and varlen, (block, slot) of the cache for kvcache."""
    c = inp.case
    if c.mode == "kvcache":
        P = inp.tensors["k_cache"].shape[1]
        return [s[:, 0] * P + s[:, 1] for s in inp.slot_of]
    if c.mode == "func":
        S = c.seqlens_k[0]
        return [torch.arange(S) + b * S for b in range(c.B)]
    cu = [0, *torch.tensor(c.seqlens_k).cumsum(0).tolist()]
    return [torch.arange(cu[b], cu[b + 1]) for b in range(c.B)]


def value_name(kernel) -> str:
    return "v_cache" if kernel.mode == "kvcache" else "v"


def effective_weights(kernel, inp: FlashInputs) -> torch.Tensor:
    """(H, total_q, slots) float64: the weight each query row puts on each physical value slot,
    read with one-hot values (E slots per call). For kvcache the appended values are one-hot too
    (their slots are where the call writes them)."""
    c = inp.case
    name = value_name(kernel)
    v0 = inp.tensors[name]
    flat = v0.shape[:-2].numel()  # every physical value slot: rows of k/v, or (block, slot) of the cache
    cols = []
    for s0 in range(0, flat, c.E):
        n = min(c.E, flat - s0)
        v = torch.zeros(flat, c.Hkv, c.E, dtype=v0.dtype)
        idx = torch.arange(n)
        v[s0 + idx, :, idx] = 1
        over = {name: v.reshape(v0.shape)}
        if kernel.mode == "kvcache" and c.new:
            # the appended tokens land in their slots: give them those slots' one-hot rows
            new_v = torch.zeros(c.B, c.new, c.Hkv, c.E, dtype=v0.dtype)
            for b in range(c.B):
                sl = slot_index(inp)[b][c.seqlens_k[b]:]
                new_v[b] = v[sl]
            over["v"] = new_v
        if inp.descale is not None:
            over["v_descale"] = torch.ones_like(inp.descale["v_descale"])
        with torch.no_grad():
            res = call(kernel, inp, tensors=over)
        cols.append(res.out[..., :n].permute(1, 0, 2).to(torch.float64))  # (H, T, n)
    return torch.cat(cols, dim=-1) if cols else torch.zeros(c.H, sum(c.seqlens_q), 0, dtype=torch.float64)


def allowed_slots(inp: FlashInputs, flat: int) -> torch.Tensor:
    """(total_q, slots) bool: the physical slots each packed query row may read."""
    rows = []
    for b, idx in enumerate(slot_index(inp)):
        ok = R.allowed(inp.case, b)  # (Lq, keys)
        m = torch.zeros(ok.shape[0], flat, dtype=torch.bool)
        if ok.numel():
            m[:, idx] = ok
        rows.append(m)
    return torch.cat(rows) if rows else torch.zeros(0, flat, dtype=torch.bool)


def assert_no_forbidden_weight(w: torch.Tensor, inp: FlashInputs, what: str):
    """Exactly zero weight on every slot a row may not read."""
    ok = allowed_slots(inp, w.shape[-1]).unsqueeze(0)
    leak = (w != 0) & ~ok
    if bool(leak.any()):
        h, t, j = (int(x) for x in leak.nonzero()[0])
        raise PropertyViolation(f"{int(leak.sum())} (query, slot) pairs outside the {what} get weight; first: head {h}, "
                                f"{_where(inp, t)} -> value slot {j}, weight {float(w[h, t, j]):.3g}")


def assert_rows_unchanged(before: torch.Tensor, after: torch.Tensor, rows: torch.Tensor, what: str, inp: FlashInputs):
    """Bitwise equality of the packed rows selected by ``rows`` ((total_q,) bool)."""
    a, b = before.detach(), after.detach()
    same = ((a == b) | (torch.isnan(a) & torch.isnan(b))).flatten(1).all(dim=-1)
    bad = rows & ~same
    if bool(bad.any()):
        t = int(bad.nonzero()[0])
        delta = float((a[t].double() - b[t].double()).abs().nan_to_num(float("inf")).max())
        raise PropertyViolation(f"{what}: {int(bad.sum())} of {int(rows.sum())} query rows that must not depend on "
                                f"it changed; first: {_where(inp, t)}, max change {delta:.3g}")


def seq_rows(inp: FlashInputs, b: int) -> torch.Tensor:
    """(total_q,) bool: the packed rows of sequence ``b``."""
    T = sum(inp.case.seqlens_q)
    start = sum(inp.case.seqlens_q[:b])
    r = torch.zeros(T, dtype=torch.bool)
    r[start:start + inp.case.seqlens_q[b]] = True
    return r


def fp8_names() -> tuple:
    return tuple(FP8)
