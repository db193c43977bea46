"""Integrity probes: checks that a stateful, lazy or adversarial kernel cannot pass by being right
once. A reference comparison sees one call; these look at what happens around it.

* :func:`not_plain_tensor` - the output is a plain ``torch.Tensor`` (not a subclass, lazy or
  deferred wrapper, meta/fake or non-strided tensor). Looks only at the type and flags, so a
  lazy tensor is not forced to compute by the check itself.
* :func:`shared_storage` - which inputs share memory with the output (views of an input, an
  output written into an input buffer).
* :func:`snapshot` / :func:`bits_equal` / :func:`describe_change` - bitwise comparisons (NaN and
  -0.0 exact) of outputs and inputs before and after later calls.
* :func:`poison_freed` - allocate and free same-shape buffers filled with NaN, so that memory a
  kernel leaves unwritten (``torch.empty``) cannot hold an earlier correct answer.
* :class:`OpTrace` / :func:`trace_ops` / :func:`forbidden_ops` - the aten ops a call dispatches,
  recorded with a ``TorchDispatchMode``, matched against ``--forbid-ops`` patterns.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from typing import Callable, Iterable, Optional

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- plain tensors -------------------------------------------------------------------------------

def not_plain_tensor(out) -> Optional[str]:
    """Why ``out`` is not a plain, materialised torch.Tensor (None when it is)."""
    if type(out) is not torch.Tensor:
        mro = " -> ".join(c.__name__ for c in type(out).__mro__[:3])
        return (f"returned a {type(out).__module__}.{type(out).__name__} ({mro}), a torch.Tensor subclass, "
                "not a plain torch.Tensor: a lazy or deferred wrapper can compute its values when first read, "
                "outside the call being judged or timed")
    if out.layout != torch.strided:
        return f"returned a {out.layout} tensor, not a dense strided one"
    if out.is_meta:
        return "returned a meta tensor (shape only, no data)"
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor

        if is_functorch_wrapped_tensor(out):
            return "returned a functorch-wrapped tensor (vmap/grad transform leaked out of the call)"
    except ImportError:  # older torch: nothing to ask
        pass
    is_functional = getattr(torch, "_is_functional_tensor", None)
    if is_functional is not None and is_functional(out):
        return "returned a functionalisation wrapper, not a materialised tensor"
    return None


# --- storage -------------------------------------------------------------------------------------

def _span(t: torch.Tensor):
    s = t.untyped_storage()
    return t.device, s.data_ptr(), s.data_ptr() + s.nbytes()


def shared_storage(out: torch.Tensor, named: dict) -> list:
    """Names in ``named`` ({name: tensor or None}) whose storage overlaps the output's."""
    if out.numel() == 0:
        return []
    dev, lo, hi = _span(out)
    hits = []
    for name, t in named.items():
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        d, a, b = _span(t)
        if d == dev and a < hi and lo < b:
            hits.append(name)
    return hits


# --- bitwise snapshots ---------------------------------------------------------------------------

def snapshot(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A detached copy in its own storage (None stays None)."""
    return None if t is None else t.detach().clone()


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    if t.is_floating_point() or t.is_complex():
        return t.view(_INT_OF_SIZE[t.element_size()]) if t.element_size() in _INT_OF_SIZE else t
    return t


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaN payloads and -0.0 included)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b.to(a.device)))


def describe_change(before: torch.Tensor, after: torch.Tensor) -> str:
    """What happened to a tensor between two snapshots, in words a reviewer recognises."""
    a, b = before.detach(), after.detach().to(before.device)
    n = a.numel()
    differ = _bits(a) != _bits(b)
    k = int(differ.sum())
    if a.dtype == torch.bool:
        if bool((b == ~a).all()):
            return f"all {n} entries inverted in place (True <-> False)"
        return f"{k} of {n} entries flipped"
    what = f"{k} of {n} elements changed"
    if bool((b == 0).all()) and not bool((a == 0).all()):
        return what + ", now all zero"
    if bool(torch.isnan(b).any()) and not bool(torch.isnan(a).any()):
        return what + ", now containing NaN"
    af, bf = a.double(), b.double()
    nz = af != 0
    if bool(nz.any()):
        ratio = bf[nz] / af[nz]
        if bool(torch.isfinite(ratio).all()) and float(ratio.max() - ratio.min()) <= 1e-3 * float(ratio.abs().max()):
            return what + f", scaled in place by {float(ratio.mean()):.4g}"
    delta = (af - bf).abs().nan_to_num(float("inf"))
    return what + f" (max |change| {float(delta.max()):.3g})"


# --- the allocator -------------------------------------------------------------------------------

def poison_freed(shapes: Iterable, dtype: torch.dtype, device, copies: int = 4) -> None:
    """Allocate ``copies`` buffers of each shape filled with NaN (or all ones for integer and
    bool dtypes), then free them. On CPU glibc hands recently freed chunks of the same size back
    first; on CUDA the caching allocator does. Memory a kernel leaves unwritten then reads as NaN
    instead of an earlier answer (the Sakana incident); large CPU chunks go back to the OS and
    come back zeroed, which no correct output equals either."""
    fill = float("nan") if dtype.is_floating_point else 1
    bufs = []
    for shape in shapes:
        for _ in range(copies):
            bufs.append(torch.full(tuple(shape), fill, dtype=dtype, device=device))
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    del bufs


# --- op trace --------------------------------------------------------------------------------------

try:
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover - torch without Python dispatch modes
    TorchDispatchMode = object


class OpTrace(TorchDispatchMode):
    """Counts every operator the calls inside it dispatch, by schema name (``aten::mm``). Ops run
    inside compiled code that never goes back through the dispatcher (a Triton or CUDA kernel,
    numpy) are not seen: the trace is evidence of what a kernel delegates to, not of its absence."""

    # Higher-order operators (flex_attention) refuse modes that do not declare this; they are
    # recorded by name and run as usual, their inner ops then dispatch through the mode too.
    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        try:
            name = func._schema.name
        except AttributeError:
            name = f"hop::{func.name()}" if hasattr(func, "name") else str(func)
        self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def trace_ops(fn: Callable[[], object]):
    """(fn()'s result, Counter of op names). Exceptions from fn propagate (after resetting
    torch.compile's caches, which a refused compile would otherwise poison)."""
    mode = OpTrace()
    try:
        with mode:
            out = fn()
    except BaseException:
        # torch.compile refuses to run under a Python dispatch mode, and the refusal sticks to the
        # compiled function (later plain calls fail too); forget it so the kernel works again.
        import sys

        if "torch._dynamo" in sys.modules:
            sys.modules["torch._dynamo"].reset()
        raise
    return out, mode.ops


def _base_name(op: str) -> str:
    """``aten::_scaled_dot_product_flash_attention_for_cpu.default`` -> ``scaled_dot_product_flash_attention_for_cpu``:
    no namespace, no overload, no leading underscores (private variants of a public op)."""
    return op.lower().split("::", 1)[-1].split(".", 1)[0].lstrip("_")


def op_matches(op: str, pattern: str) -> bool:
    """Case-insensitive fnmatch against the full name (``aten::_scaled_dot_product*``), the name
    without its namespace (``*scaled_dot_product*``, ``mm``) and, for a pattern without a
    namespace, the base name (:func:`_base_name`: ``scaled_dot_product*`` matches
    ``aten::_scaled_dot_product_flash_attention_for_cpu``, ``mm`` matches ``aten::mm.out``)."""
    p = pattern.strip().lower()
    full = op.lower()
    if fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(full.split("::", 1)[-1], p):
        return True
    return "::" not in p and fnmatch.fnmatchcase(_base_name(op), p.lstrip("_"))


def forbidden_ops(ops: Iterable[str], patterns: Iterable[str]) -> list:
    """[(op, pattern)] for every traced op matching a pattern (:func:`op_matches`)."""
    hits = []
    pats = [p.strip().lower() for p in patterns if p and p.strip()]
    for op in ops:
        for p in pats:
            if op_matches(op, p):
                hits.append((op, p))
                break
    return hits


def pattern_warnings(patterns: Iterable[str]) -> list:
    """One line per ``--forbid-ops`` pattern that no trace could ever match: it names no aten op
    registered here, or only composite ops, which run as the ops they decompose into and so never
    reach the dispatch trace (``aten::scaled_dot_product_attention`` is one). Such a pattern would
    pass every kernel; the CLI prints these lines at start."""
    import torch

    names = list(torch._C._dispatch_get_all_op_names())
    has = torch._C._dispatch_has_kernel_for_dispatch_key

    def composite(n):
        try:
            return bool(has(n, "CompositeImplicitAutograd"))
        except RuntimeError:
            return False

    out = []
    for p in (p.strip() for p in patterns):
        if not p:
            continue
        hits = [n for n in names if op_matches(n, p)]
        seen = [n for n in hits if not composite(n)]
        if seen:
            continue
        # A wider pattern to suggest: the name as a prefix, then without its last word or two
        # ("scaled_dot_product_attention" -> "scaled_dot_product*"), the first that several ops match.
        stem, wider, alt = p.rstrip("*"), p, []
        for _ in range(3):
            cand = stem + "*"
            alt = [n for n in names if op_matches(n, cand) and not composite(n)]
            wider = cand
            if len(alt) >= 2 or "_" not in stem:
                break
            stem = stem.rsplit("_", 1)[0]
        hint = (f"; {wider!r} matches {len(alt)} that can: {', '.join(sorted(alt, key=len)[:4])}{', ...' if len(alt) > 4 else ''}"
                if alt and wider != p else "")
        if hits:
            out.append(f"--forbid-ops {p!r} matches only composite ops ({', '.join(sorted(hits)[:3])}), which run as "
                       f"the ops they decompose into and never appear in a trace{hint}")
        else:
            out.append(f"--forbid-ops {p!r} matches no aten op this torch knows, so it can never fail a kernel{hint}")
    return out
