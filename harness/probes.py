"""Black-box instruments: run a kernel under the contract, extract its effective weights with
one-hot values, perturb exactly what must not matter, and take gradients where they must be zero.

Properties stay short because the probes do the work. Every probe raises
:class:`PropertyViolation` (an ``AssertionError``) with the numbers when the contract is broken,
and turns ``NotImplementedError`` from the kernel into an ``unsupported`` case: inside a
hypothesis property only that case is skipped; the property is ``unsupported`` when no case ran.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Optional

import pytest
import torch

from harness.cases import Inputs
from harness.contract import Implementation


class PropertyViolation(AssertionError):
    """The implementation broke a property. The message carries the numbers."""


class ImplementationError(RuntimeError):
    """The implementation raised (anything but NotImplementedError) or hung."""


CALL_TIMEOUT_S = 30.0
# After this many NotImplementedError cases in a row, with no call of the property answered yet,
# the property stops as unsupported: a kernel that supports nothing here (a CUDA-only operator on
# CPU) would otherwise have hypothesis draw hundreds of cases to learn nothing.
UNSUPPORTED_STOP_AFTER = 20


class _UnsupportedLog(list):
    """Why each generated case of the running property was unsupported. The pytest plugin clears
    it per test and reports the count; clearing also restarts the run of unsupported cases.

    A case counts as answered once a later case starts without it having raised
    NotImplementedError (a decode property's prefill call may succeed and its decode call not)."""

    consecutive = 0
    answered = False
    _case = None  # hypothesis's build context of the case the last call belonged to
    _case_raised = False

    def clear(self):
        super().clear()
        self.consecutive = 0
        self.answered = False
        self._case, self._case_raised = None, False

    def on_call(self):
        try:
            from hypothesis.control import current_build_context

            ctx = current_build_context()
        except Exception:  # outside hypothesis: each call is its own case
            ctx = object()
        if ctx is not self._case:
            if self._case is not None and not self._case_raised:
                self.consecutive, self.answered = 0, True
            self._case, self._case_raised = ctx, False

    def on_unsupported(self) -> bool:
        """Count one unsupported case; True when the property should stop as unsupported."""
        self._case_raised = True
        self.consecutive += 1
        return not self.answered and self.consecutive >= UNSUPPORTED_STOP_AFTER


UNSUPPORTED_CASES: list = _UnsupportedLog()
_hung: set = set()


def has_hung(impl: Implementation) -> bool:
    """Whether a call to ``impl`` in this process ran past its timeout (later calls are refused)."""
    return impl.name in _hung


@contextmanager
def _deadline(seconds: float, name: str):
    # SIGALRM interrupts Python-level hangs in the main thread; a kernel stuck inside C is caught
    # by the per-implementation process timeout of `attn-harness check` instead.
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"call did not return within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def guarded(name: str, thunk: Callable, allow_unsupported: bool = True, timeout: Optional[float] = None):
    """Run one kernel call (``thunk()``) under the harness's rules: a deadline, NotImplementedError
    as an unsupported case (only this case inside hypothesis; the property after
    UNSUPPORTED_STOP_AFTER in a row), any other exception as an ImplementationError. Every call of
    an implementation, in any call convention, goes through here."""
    if isinstance(UNSUPPORTED_CASES, _UnsupportedLog):
        UNSUPPORTED_CASES.on_call()
    try:
        with _deadline(CALL_TIMEOUT_S if timeout is None else timeout, name):
            return thunk()
    except NotImplementedError as e:
        if not allow_unsupported:
            raise PropertyViolation(f"raised NotImplementedError on a case it must support: {e}") from None
        why = f"{name} raised NotImplementedError: {e}"
        from hypothesis.control import currently_in_test_context

        log = UNSUPPORTED_CASES
        if isinstance(log, _UnsupportedLog):
            if log.on_unsupported():
                # pytest's skip passes through hypothesis and ends the property; the plugin
                # records a skip whose reason says "unsupported:" as unsupported.
                log.append(why)
                pytest.skip(f"unsupported: NotImplementedError on the first {log.consecutive} cases, none "
                            f"answered; stopped early. Last: {why}")
        if currently_in_test_context():
            # Only this case is unsupported: skip it and keep drawing others. (pytest.skip here
            # would end the whole property at the first such case, often an @example.)
            from hypothesis import reject

            UNSUPPORTED_CASES.append(why)
            reject()
        pytest.skip(f"unsupported: {why}")
    except TimeoutError as e:
        _hung.add(name)
        raise ImplementationError(f"{name}: {e}") from None
    except PropertyViolation:
        raise
    except Exception as e:
        raise ImplementationError(f"{name} raised {type(e).__name__}: {e}") from e


def call(impl: Implementation, inp: Inputs, q=None, k=None, v=None, attn_mask=...,
         timeout: Optional[float] = None, allow_unsupported: bool = True,
         handed: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Call the implementation on ``inp`` (optionally with replaced tensors) and check the output
    against the contract: a tensor of shape (B, H, L, Ev), the query's dtype and device.
    ``handed`` sees the tensors exactly as the kernel gets them ({"query", "key", "value",
    "attn_mask"}: in the case's layout, views of copies for a transposed or sliced one) just before
    the call: what an in-place write by the kernel would change."""
    q = inp.q if q is None else q
    k = inp.k if k is None else k
    v = inp.v if v is None else v
    kw = inp.kwargs()
    if attn_mask is not ...:
        kw["attn_mask"] = attn_mask
    if impl.name in _hung:
        raise ImplementationError(f"{impl.name} hung on an earlier call; not calling it again")
    q, k, v, kw = inp.laid_out(q, k, v, kw)  # the case's memory layout, kept for replaced tensors
    if handed is not None:
        handed({"query": q, "key": k, "value": v, "attn_mask": kw.get("attn_mask")})
    out = guarded(impl.name, lambda: impl(q, k, v, **kw), allow_unsupported, timeout)
    B, H, L, _ = q.shape
    want = (B, H, L, v.shape[-1])
    if not isinstance(out, torch.Tensor):
        raise PropertyViolation(f"returned {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != want:
        raise PropertyViolation(f"output shape {tuple(out.shape)}, expected {want} (B, H, L, Ev)")
    if out.dtype != q.dtype:
        raise PropertyViolation(f"output dtype {out.dtype}, expected the query's {q.dtype}")
    if out.device != q.device:
        raise PropertyViolation(f"output on {out.device}, expected the query's {q.device}")
    return out


def call_kept(impl: Implementation, inp: Inputs, **kw) -> torch.Tensor:
    """:func:`call`, with the output copied out of the kernel's hands: the "before" side of a
    perturbation comparison. A kernel that returns one storage every call (a CUDA graph's static
    output, a reused buffer) would otherwise overwrite it with the perturbed answer, and "bitwise
    unchanged" would hold for any leak. (Called in the same grad mode as the call it is compared
    with: a kernel may take another path under no_grad.)"""
    return call(impl, inp, **kw).detach().clone()


def effective_weights(impl: Implementation, inp: Inputs) -> torch.Tensor:
    """The weights the kernel actually applied, (B, H, L, S) in float64, read off by feeding
    one-hot values: with V = identity columns, output column c is the weight of key c. Works on
    any black box; chunks of Ev keys per call."""
    B, Hkv, S, Ev = inp.v.shape
    cols = []
    for s0 in range(0, S, Ev):
        n = min(Ev, S - s0)
        v = torch.zeros(B, Hkv, S, Ev, dtype=inp.v.dtype, device=inp.v.device)
        idx = torch.arange(n, device=v.device)
        v[:, :, s0 + idx, idx] = 1
        with torch.no_grad():
            out = call(impl, inp, v=v)
        cols.append(out[..., :n].to(torch.float64, copy=True))  # a copy: the next call may reuse the storage
    return torch.cat(cols, dim=-1)


def fixed_rows(inp: Inputs, caps=None) -> torch.Tensor:
    """(B, H, L) rows whose output the contract fixes whatever masked keys hold: every row with a
    visible key, and the rows with none only where ``caps`` declares them zero. A row with no
    visible key declared ``uniform`` (finfo.min additive masking) averages every value, masked or
    not, so by contract it reads them; undeclared (or unknown: ``caps`` None) it is judged by
    nothing. Properties hold only these rows to "masked keys must not matter"."""
    rows = inp.has_visible
    if caps is not None and caps.fully_masked_rows == "zero":
        rows = torch.ones_like(rows)
    return rows


def assert_no_forbidden_weight(w: torch.Tensor, inp: Inputs, what: str, caps=None):
    """Effective weights (from :func:`effective_weights`) exactly zero on every (query, key) pair
    the case forbids, and some weight on a visible key in every row that has one. Rows with no
    visible key are judged by the declaration in ``caps`` (zero: no weight anywhere; uniform:
    1/S on every key) and skipped when it is unknown."""
    leak = (w != 0) & ~inp.visible & fixed_rows(inp, caps).to(w.device).unsqueeze(-1)
    if bool(leak.any()):
        b, h, i, j = (int(x) for x in leak.nonzero()[0])
        raise PropertyViolation(f"{int(leak.sum())} {what} (query, key) pairs get weight; first: query {i} -> "
                                f"key {j} (b={b}, h={h}) weight {float(w[b, h, i, j]):.3g}")
    missing = inp.has_visible & ~(w > 0).any(-1)
    if bool(missing.any()):
        b, h, i = (int(x) for x in missing.nonzero()[0])
        raise PropertyViolation(f"query {i} (b={b}, h={h}) gives no weight to any visible key")
    empty = ~inp.has_visible.to(w.device)
    if caps is not None and caps.fully_masked_rows == "uniform" and bool(empty.any()):
        S = w.shape[-1]
        # 1/S rounded once in the dtype, and the one-hot readout is exact
        off = ((w * S - 1).abs() > 4 * torch.finfo(inp.q.dtype).eps).any(-1) & empty
        if bool(off.any()):
            b, h, i = (int(x) for x in off.nonzero()[0])
            raise PropertyViolation(f"{int(off.sum())} rows with no visible key are not uniform as declared; first: "
                                    f"query {i} (b={b}, h={h}) weights in [{float(w[b, h, i].min()):.3g}, "
                                    f"{float(w[b, h, i].max()):.3g}], declared 1/S = {1 / S:.3g}")


def blocked_rows(inp: Inputs, keys: torch.Tensor, caps=None) -> torch.Tensor:
    """(B, H, L) rows that may read none of the keys in ``keys`` ((B, Hkv, S) or (S,) bool):
    whatever is stored at those keys must not reach these rows. Rows with no visible key at all
    count only where ``caps`` declares them zero (see :func:`fixed_rows`)."""
    B, H, L, S = inp.visible.shape
    Hkv = inp.case.Hkv
    kk = keys.expand(B, Hkv, S) if keys.dim() == 1 else keys
    kk = kk.repeat_interleave(H // Hkv, dim=1)  # query head h reads kv head h // (H // Hkv)
    return ~(inp.visible & kk.unsqueeze(2)).any(dim=-1) & fixed_rows(inp, caps).to(kk.device)


def perturb_keys(inp: Inputs, keys: torch.Tensor, how: str, seed: int = 0):
    """New (k, v) with the selected key slots ((B, Hkv, S) bool) overwritten: ``random``,
    ``huge`` (large but finite in the dtype), ``adversarial`` (keys aligned with the queries so
    their logits dominate, values far from the rest), ``nan`` or ``inf``."""
    g = torch.Generator().manual_seed(seed)
    k, v = inp.k.clone(), inp.v.clone()
    sel = keys if keys.dim() == 3 else keys.expand(k.shape[0], k.shape[1], k.shape[2])
    dt = k.dtype
    if how == "random":
        nk = torch.randn(k.shape, generator=g).to(dt)
        nv = torch.randn(v.shape, generator=g).to(dt) * 3
    elif how == "huge":
        big = 30.0 if dt in (torch.float16, torch.bfloat16) else 1e4
        nk = (torch.randn(k.shape, generator=g) * big).to(dt)
        nv = (torch.randn(v.shape, generator=g) * big).to(dt)
    elif how == "adversarial":
        qmean = inp.q.float().mean(dim=2, keepdim=True)  # (B, H, 1, E)
        B, H = qmean.shape[:2]
        qk = qmean.view(B, inp.case.Hkv, H // inp.case.Hkv, 1, -1).mean(2)
        big = 8.0 if dt in (torch.float16, torch.bfloat16) else 50.0
        nk = (qk / (qk.norm(dim=-1, keepdim=True) + 1e-6) * big).expand(k.shape).to(dt)
        nv = torch.full(v.shape, 100.0 if dt != torch.float16 else 50.0).to(dt)
    elif how in ("nan", "inf"):
        val = float("nan") if how == "nan" else float("inf")
        nk = torch.full(k.shape, val).to(dt)
        nv = torch.full(v.shape, val).to(dt)
    else:
        raise ValueError(how)
    k = torch.where(sel.unsqueeze(-1).to(k.device), nk.to(k.device), k)
    v = torch.where(sel.unsqueeze(-1).to(v.device), nv.to(v.device), v)
    return k, v


def assert_rows_unchanged(before: torch.Tensor, after: torch.Tensor, rows: torch.Tensor, what: str):
    """Bitwise equality on the selected (B, H, L) rows; NaN == NaN counts as unchanged.
    ``before`` must come from :func:`call_kept`: compared with memory the second call wrote, any
    change would read as none."""
    from harness.integrity import shared_storage

    if shared_storage(before, {"after": after}):
        raise ValueError("assert_rows_unchanged: 'before' shares memory with 'after' (the kernel returned the same "
                         "storage twice); take 'before' with probes.call_kept")
    a, b = before.detach(), after.detach()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    bad = rows & ~same.all(dim=-1)
    if bool(bad.any()):
        n = int(bad.sum())
        b_, h_, i_ = (int(x) for x in bad.nonzero()[0])
        delta = float((a[b_, h_, i_].double() - b[b_, h_, i_].double()).abs().nan_to_num(float("inf")).max())
        raise PropertyViolation(
            f"{what}: {n} of {int(rows.sum())} rows that must not depend on it changed; first at "
            f"(b={b_}, h={h_}, row={i_}), max change {delta:.3g}")


GRAD_PATH = "torch.autograd.grad"
GRAD_PATH_FALLBACK = ".backward() and .grad"
# The path the last gradients of :func:`grads` came through (for the recorded numbers).
last_grad_path = {"path": GRAD_PATH, "why": ""}


def grads(impl: Implementation, inp: Inputs, cotangent: torch.Tensor, target=None):
    """(dq, dk, dv) of <out, cotangent> through the implementation: by ``torch.autograd.grad``,
    or, where the kernel's graph does not support it (a reentrant ``torch.utils.checkpoint``
    raises there), by ``.backward()`` on a fresh forward and the leaves' ``.grad``. The path is
    kept in :data:`last_grad_path` and recorded on ``target`` as ``gradient_path``.

    Rows whose output the contract does not fix (no visible key, declared ``uniform``: they
    average every value) get no cotangent, so no property holds their gradient to "masked keys
    get none" (see :func:`fixed_rows`)."""
    cotangent = cotangent * fixed_rows(inp, getattr(impl, "capabilities", None)).to(cotangent.device).unsqueeze(-1)

    def leaves():
        return tuple(t.detach().clone().requires_grad_(True) for t in (inp.q, inp.k, inp.v))

    q, k, v = leaves()
    out = call(impl, inp, q=q, k=k, v=v)
    if not out.requires_grad and not bool(inp.has_visible.any()):
        # Every row sees no key (a fully padded batch): the output is a constant that needs no
        # graph, and every gradient is zero.
        return tuple(torch.zeros_like(t) for t in (q, k, v))
    if not out.requires_grad:
        from harness.contract import declaration_hint

        raise PropertyViolation("output does not require grad, but the contract includes autograd; "
                                + declaration_hint(impl, autograd=False))
    path, why = GRAD_PATH, ""
    try:
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), cotangent.to(out.dtype), allow_unused=True)
    except NotImplementedError as e:
        pytest.skip(f"unsupported: backward raised NotImplementedError: {e}")
    except Exception as e:
        first = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        # The first graph may be half consumed: a fresh forward for .backward().
        q, k, v = leaves()
        out = call(impl, inp, q=q, k=k, v=v)
        try:
            out.backward(cotangent.to(out.dtype))
        except NotImplementedError as e2:
            pytest.skip(f"unsupported: backward raised NotImplementedError: {e2}")
        except Exception as e2:
            raise ImplementationError(f"{impl.name} backward raised {type(e2).__name__}: {e2} (through .backward(); "
                                      f"torch.autograd.grad raised {first})") from e2
        dq, dk, dv = q.grad, k.grad, v.grad
        path, why = GRAD_PATH_FALLBACK, f"torch.autograd.grad raised {first}"[:300]
    last_grad_path.update(path=path, why=why)
    if target is not None:
        target.record(gradient_path=path, **({"gradient_path_why": why} if why else {}))
    zeros = torch.zeros_like
    return (dq if dq is not None else zeros(q), dk if dk is not None else zeros(k),
            dv if dv is not None else zeros(v))


def _grad_path_note() -> str:
    p = last_grad_path
    return "" if p["path"] == GRAD_PATH else f" [gradients via {p['path']}: {p['why']}]"


def reference_grads(inp: Inputs, cotangent: torch.Tensor, same_dtype: bool = False):
    """(dq, dk, dv) from float64 autograd through the reference formula, or through the plain
    same-dtype computation (the baseline)."""
    from harness.reference import attention_naive

    dt = inp.q.dtype if same_dtype else torch.float64
    q = inp.q.detach().to(dt).requires_grad_(True)
    k = inp.k.detach().to(dt).requires_grad_(True)
    v = inp.v.detach().to(dt).requires_grad_(True)
    mask = inp.attn_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(dt)
    out = attention_naive(q, k, v, attn_mask=mask, is_causal=inp.is_causal, scale=inp.scale,
                          enable_gqa=inp.enable_gqa, causal_alignment=inp.case.alignment)
    return torch.autograd.grad(out, (q, k, v), cotangent.to(dt))


def assert_zero(t: torch.Tensor, where: torch.Tensor, what: str):
    """Exactly zero at ``where`` (broadcast over the last dim)."""
    vals = t.detach()[where]
    if vals.numel() and bool((vals != 0).any()):
        nz = int((vals != 0).any(dim=-1).sum())
        raise PropertyViolation(f"{what}: {nz} of {int(where.sum())} positions that must have zero "
                                f"gradient do not (max |grad| {float(vals.abs().nan_to_num(float('inf')).max()):.3g})"
                                + _grad_path_note())


def compare_output(out: torch.Tensor, inp: Inputs, caps, factor: float, ref: Optional[torch.Tensor] = None,
                   baseline: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None,
                   logit_absmax: Optional[torch.Tensor] = None):
    """``out`` against the float64 reference under the dtype-aware per-row bound. Rows without a
    visible key count only when the implementation declares they are zero."""
    from harness.tolerance import baselines, compare

    ref = inp.reference() if ref is None else ref
    baseline = baselines(inp) if baseline is None else baseline
    baseline = baseline.to(out.device) if isinstance(baseline, torch.Tensor) else [b.to(out.device) for b in baseline]
    logit_absmax = inp.logit_absmax() if logit_absmax is None else logit_absmax
    if rows is None and caps.fully_masked_rows != "zero":
        rows = inp.has_visible.to(out.device)  # declared (or undefined) behaviour elsewhere
    scale = inp.value_scale().to(out.device)
    scale = torch.maximum(scale, ref.detach().abs().amax(dim=-1).to(out.device)) if ref.shape[-1] else scale
    return compare(out, ref.to(out.device), baseline, inp.q.dtype, factor, rows=rows,
                   logit_absmax=logit_absmax.to(out.device), scale=scale)


def judge(target, out: torch.Tensor, inp: Inputs, what: str = "output", ref: Optional[torch.Tensor] = None,
          baseline: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None):
    """Hold ``out`` to the bound (:func:`compare_output`); record the worst ratio on the target;
    raise PropertyViolation with the numbers when over."""
    cmp = compare_output(out, inp, target.caps, target.forward_factor, ref, baseline, rows)
    target.record(cmp)
    if not cmp.ok:
        raise PropertyViolation(cmp.describe(what))
    return cmp


def compare_grads(got, ref, base, inp: Inputs, cotangent: torch.Tensor, factor: float,
                  logit_absmax: Optional[float] = None) -> list:
    """[(name, Comparison)] for dq, dk, dv against float64 autograd with the same-dtype gradients
    as the baseline. Each floor is measured at the gradient's natural magnitude (dq ~ scale |dO|
    |v| |k|, dk ~ scale |dO| |v| |q|, dv ~ |dO|), so a row whose true gradient is zero (the first
    causal row's dq) is not held to a zero baseline error."""
    from harness.tolerance import compare

    sc = inp.scale if inp.scale is not None else inp.q.shape[-1] ** -0.5
    amax = lambda t: float(t.detach().double().abs().max()) if t.numel() else 0.0  # noqa: E731
    mags = {"dq": sc * amax(cotangent) * amax(inp.v) * amax(inp.k),
            "dk": sc * amax(cotangent) * amax(inp.v) * amax(inp.q), "dv": amax(cotangent)}
    absmax = float(inp.logit_absmax().max()) if logit_absmax is None else logit_absmax
    # A gradient row sums over many terms (dv over every query of every head in its GQA group),
    # so its rounding scale is at least the tensor's largest true gradient, not its own value.
    return [(name, compare(g, r.to(g.device), b.to(g.device), inp.q.dtype, factor,
                           scale=max(mags[name], amax(r)), logit_absmax=absmax))
            for name, g, r, b in zip(("dq", "dk", "dv"), got, ref, base)]
