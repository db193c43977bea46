"""Sanity checks of the fixtures themselves: the correct ones agree with an inline float64 formula
(forward and gradients), and every planted bug really changes the result on an input that
triggers it. The harness proper is tested elsewhere."""

from __future__ import annotations

import math
import os

import pytest
import torch

from harness.loading import load

from fixtures import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(spec):
    path, attr = spec.rsplit(":", 1)
    return load(os.path.join(ROOT, path) + ":" + attr)


CORRECT = {name: _load(spec) for name, spec in catalog.CORRECT.items()}
PLANTED = {name: _load(entry["spec"]) for name, entry in catalog.PLANTED.items()}


def ref(q, k, v, mask=None, is_causal=False, scale=None, gqa=False, alignment="top_left",
        fully="zero"):
    """float64, differentiable, loop-free reference."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, L, E = q.shape
    S = k.shape[2]
    g = H // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(E) if scale is None else scale)
    vis = torch.ones(B, H, L, S, dtype=torch.bool)
    if is_causal:
        off = 0 if alignment == "top_left" else S - L
        vis = vis & (torch.arange(S)[None] <= torch.arange(L)[:, None] + off)
    if mask is not None:
        if mask.dtype == torch.bool:
            vis = vis & mask
        else:
            s = s + mask.double()
            vis = vis & (mask != float("-inf"))
    s = s.masked_fill(~vis, float("-inf"))
    empty = (~vis).all(-1, keepdim=True)
    w = torch.softmax(s.masked_fill(empty, 0.0), -1)
    if fully == "zero":
        w = w.masked_fill(empty, 0.0)
    return w @ v


def _mask(shape_kind, B, H, L, S, kind, gen):
    shapes = {"LS": (L, S), "B11S": (B, 1, 1, S), "B1LS": (B, 1, L, S), "BHLS": (B, H, L, S),
              "1H1S": (1, H, 1, S)}
    m = torch.rand(shapes[shape_kind], generator=gen) > 0.4
    if shape_kind in ("B1LS", "BHLS", "LS"):
        m[..., 0, :] = False  # a fully masked row
    if kind == "bool":
        return m
    f = torch.randn(m.shape, generator=gen)
    return f.masked_fill(~m, float("-inf"))


SHAPES = [  # B, H, Hkv, L, S, E, Ev
    (2, 4, 2, 5, 7, 8, 6),
    (1, 2, 1, 9, 4, 16, 16),
    (3, 3, 3, 1, 20, 8, 4),
    (2, 4, 4, 33, 30, 8, 8),
]
MASKS = [None, "causal"] + [(s, k) for s in ("LS", "B11S", "B1LS", "BHLS", "1H1S") for k in ("bool", "float")]


def _inputs(shape, gen, dtype=torch.float32, big=1.0):
    B, H, Hkv, L, S, E, Ev = shape
    q = torch.randn(B, H, L, E, generator=gen) * big
    k = torch.randn(B, Hkv, S, E, generator=gen)
    v = torch.randn(B, Hkv, S, Ev, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _case_kw(shape, mask_spec, gen):
    B, H, Hkv, L, S, E, Ev = shape
    if mask_spec is None:
        return {}
    if mask_spec == "causal":
        return {"is_causal": True}
    return {"attn_mask": _mask(mask_spec[0], B, H, L, S, mask_spec[1], gen)}


def _supported(impl, kw):
    caps = impl.capabilities
    if "attn_mask" in kw:
        return ("bool" if kw["attn_mask"].dtype == torch.bool else "float") in caps.mask_kinds
    return True


def _try(impl, *args, **kw):
    """The output, or None where the implementation declares the case unsupported (as the
    harness treats NotImplementedError: that case is skipped)."""
    try:
        return impl(*args, **kw)
    except NotImplementedError:
        return None


# Eager FlexAttention on CPU takes about 20 s for these shapes.
SDPA_CORRECT = [n for n in CORRECT if n not in catalog.FLASH_CORRECT]  # the others: tests/test_flash.py


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "flex" else n for n in SDPA_CORRECT])
def test_correct_forward(name):
    impl = CORRECT[name]
    caps = impl.capabilities
    gen = torch.Generator().manual_seed(0)
    n = 0
    for shape in SHAPES:
        for mask_spec in MASKS:
            for scale in (None, 0.3):
                kw = _case_kw(shape, mask_spec, gen)
                if not _supported(impl, kw):
                    continue
                q, k, v = _inputs(shape, gen)
                gqa = shape[1] != shape[2]
                out = _try(impl, q, k, v, scale=scale, enable_gqa=gqa, **kw)
                if out is None:
                    continue
                r = ref(q, k, v, kw.get("attn_mask"), kw.get("is_causal", False), scale, gqa,
                        alignment=caps.causal or "top_left", fully=caps.fully_masked_rows or "zero")
                assert out.dtype == q.dtype and out.shape == r.shape
                assert torch.allclose(out.double(), r, atol=2e-5, rtol=1e-4), (name, shape, mask_spec, scale)
                n += 1
    assert n >= 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SDPA_CORRECT)
def test_correct_half(name, dtype):
    impl = CORRECT[name]
    gen = torch.Generator().manual_seed(1)
    shape = (2, 4, 2, 6, 11, 8, 5)
    q, k, v = _inputs(shape, gen, dtype)
    for kw in ({}, {"is_causal": True}, {"attn_mask": _mask("B11S", 2, 4, 6, 11, "bool", gen)}):
        if not _supported(impl, kw):
            continue
        out = _try(impl, q, k, v, enable_gqa=True, **kw)
        if out is None:
            continue
        r = ref(q, k, v, kw.get("attn_mask"), kw.get("is_causal", False), None, True,
                alignment=impl.capabilities.causal or "top_left")
        assert out.dtype == dtype
        assert torch.allclose(out.double(), r, atol=2e-2, rtol=2e-2), name


@pytest.mark.parametrize("name", [n for n in SDPA_CORRECT if CORRECT[n].capabilities.autograd])
def test_correct_gradients(name):
    impl = CORRECT[name]
    caps = impl.capabilities
    gen = torch.Generator().manual_seed(2)
    for shape, mask_spec in [((2, 4, 2, 5, 7, 8, 6), ("B1LS", "bool")),
                             ((2, 4, 2, 5, 7, 8, 6), ("BHLS", "float")),
                             ((1, 2, 1, 9, 4, 16, 16), "causal"),
                             ((2, 2, 2, 6, 6, 8, 8), None)]:
        kw = _case_kw(shape, mask_spec, gen)
        if not _supported(impl, kw):
            continue
        q, k, v = _inputs(shape, gen)
        gqa = shape[1] != shape[2]
        do = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=gen)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = _try(impl, *leaves, scale=0.4, enable_gqa=gqa, **kw)
        if out is None:
            continue
        (out * do).sum().backward()
        rleaves = [t.double().requires_grad_() for t in (q, k, v)]
        (ref(*rleaves, kw.get("attn_mask"), kw.get("is_causal", False), 0.4, gqa,
             alignment=caps.causal or "top_left", fully=caps.fully_masked_rows or "zero") * do.double()).sum().backward()
        for a, b in zip(leaves, rleaves):
            assert a.grad is not None and torch.isfinite(a.grad).all(), name
            assert torch.allclose(a.grad.double(), b.grad, atol=1e-4, rtol=1e-3), (name, mask_spec)


def test_flash_adapter_rejects_masks():
    impl = CORRECT["flash_layout_adapter"]
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(NotImplementedError):
        impl(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool))


def test_varlen_adapter_takes_key_padding_and_rejects_other_masks():
    impl = CORRECT["varlen_adapter"]
    gen = torch.Generator().manual_seed(3)
    q, k, v = _inputs((3, 4, 2, 5, 9, 16, 8), gen)
    lens = torch.tensor([9, 1, 4])
    m = (torch.arange(9)[None, :] < lens[:, None])[:, None, None, :]
    out = impl(q, k, v, attn_mask=m, enable_gqa=True)
    assert torch.allclose(out.double(), ref(q, k, v, m, False, None, True), atol=2e-5)
    # The padded keys are never read: NaN there changes nothing, bit for bit.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 1:], v2[1, :, 1:] = float("nan"), float("nan")
    assert torch.equal(impl(q, k2, v2, attn_mask=m, enable_gqa=True), out)
    with pytest.raises(NotImplementedError):
        impl(q, k, v, attn_mask=torch.ones(5, 9, dtype=torch.bool).tril(), enable_gqa=True)


def test_mask_with_causal_raises():
    q = torch.randn(1, 1, 3, 4)
    for name, impl in CORRECT.items():
        if "bool" in impl.capabilities.mask_kinds:
            with pytest.raises(ValueError):
                impl(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True)


def test_masked_value_nan_does_not_leak():
    gen = torch.Generator().manual_seed(3)
    q, k, v = _inputs((2, 2, 2, 4, 9, 8, 8), gen)
    m = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    m[..., -2:] = False
    v[..., -2:, :] = float("nan")
    k[..., -1, :] = float("nan")
    for name, impl in CORRECT.items():
        # additive finfo.min masks multiply a zero weight by the NaN slot, as torch SDPA does
        if name in catalog.CORRECT_STRICT_FAILS or "bool" not in impl.capabilities.mask_kinds:
            continue
        assert torch.isfinite(impl(q, k, v, attn_mask=m)).all(), name


# ------------------------------------------------------------------------------ planted bugs
def _trigger(name, gen):
    """(inputs, kwargs) on which the planted bug must change the result."""
    base = (2, 4, 2, 6, 20, 8, 8)
    q, k, v = _inputs(base, gen)
    kw = {"enable_gqa": True}
    if name in ("missing_scale",):
        pass
    elif name == "ignored_scale_arg":
        kw["scale"] = 0.9
    elif name in ("mask_after_softmax", "padding_mask_ignored", "inverted_bool_polarity",
                  "bool_mask_added_as_float", "fully_masked_rows_nan"):
        kw["attn_mask"] = _mask("B1LS", 2, 4, 6, 20, "bool", gen)
    elif name == "self_attention_nan_rows":  # self-attention only: L == S, row 3 sees no key
        q, k, v = _inputs((2, 4, 2, 9, 9, 8, 8), gen)
        kw["attn_mask"] = torch.ones(9, 9, dtype=torch.bool)
        kw["attn_mask"][3] = False
    elif name == "transposed_mask":
        q, k, v = _inputs((2, 4, 2, 9, 9, 8, 8), gen)
        kw["attn_mask"] = torch.rand(9, 9, generator=gen) > 0.5
    elif name in ("causal_leaks_next", "causal_leak_in_static_buffer", "causal_blocks_self", "coarse_block_mask"):
        q, k, v = _inputs((2, 4, 2, 20, 20, 8, 8), gen)
        kw["is_causal"] = True
    elif name == "causal_bottom_right":
        kw["is_causal"] = True
    elif name in ("no_max_subtraction",):
        q = q * 60
    elif name == "half_accumulation":
        q, k = q * 300, k * 300
    elif name == "nan_through_masked_slots":
        m = torch.ones(2, 1, 1, 20, dtype=torch.bool)
        m[..., -3:] = False
        v[..., -3:, :] = float("nan")
        kw["attn_mask"] = m
    elif name == "online_no_rescale":
        q = q * 3
    elif name == "decode_drops_newest":
        q, k, v = _inputs((2, 4, 2, 1, 20, 8, 8), gen)
    elif name == "truncates_long":
        q, k, v = _inputs((1, 2, 2, 3, 300, 8, 8), gen)
    elif name == "mask_head_axis_dropped":
        m = torch.ones(1, 4, 1, 20, dtype=torch.bool)
        m[:, 1:, :, 5:] = False  # heads 1-3 may read only the first 5 keys
        kw["attn_mask"] = m
    return (q, k, v), kw


GRAD_BUGS = {"backward_ignores_mask", "backward_wrong_dq"}


# Integrity bugs are right on a single call; tests/test_integrity.py shows each one is real.
# Region bugs (fixtures/planted_regions.py) need their region's input: tests/test_regions.py.
# flash_attn-convention bugs (fixtures/flash_planted.py) need their variant's input: tests/test_flash.py.
@pytest.mark.parametrize("name", [n for n in PLANTED if catalog.PLANTED[n]["expected_suites"] != ["integrity"]
                                  and "planted_regions.py" not in catalog.PLANTED[n]["spec"]
                                  and n not in catalog.FLASH_PLANTED])
def test_planted_bug_is_real(name):
    impl = PLANTED[name]
    gen = torch.Generator().manual_seed(4)
    (q, k, v), kw = _trigger(name, gen)
    r = ref(q, k, v, kw.get("attn_mask"), kw.get("is_causal", False), kw.get("scale"), kw.get("enable_gqa", False))
    if name in GRAD_BUGS:
        kw["attn_mask"] = _mask("B1LS", 2, 4, 6, 20, "bool", gen)
        kw["attn_mask"][..., 0, :] = True
        kw["scale"] = 0.5
        r_leaves = [t.double().requires_grad_() for t in (q, k, v)]
        out_r = ref(*r_leaves, kw["attn_mask"], False, 0.5, True)
        out_r.sum().backward()
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = impl(*leaves, **kw)
        assert torch.allclose(out.double(), out_r.detach(), atol=1e-5), "forward should be exact"
        out.sum().backward()
        assert any(not torch.allclose(a.grad.double(), b.grad, atol=1e-3) for a, b in zip(leaves, r_leaves))
        return
    if name == "nondeterministic_split_k":
        # Right to within rounding, but not the same bits twice.
        a, b = impl(q, k, v, **kw), impl(q, k, v, **kw)
        assert torch.allclose(a.double(), r, atol=1e-5) and not torch.equal(a, b)
        return
    if name == "cache_by_shape":
        impl(q, k, v, **kw)
        q = torch.randn(q.shape, generator=gen)
        r = ref(q, k, v, None, False, None, True)
    out = impl(q, k, v, **kw)
    differs = (~torch.isfinite(out)).any() or not torch.allclose(out.double(), r, atol=1e-3, rtol=1e-3)
    assert differs, f"{name}: planted bug did not change the output"


# output_into_query overwrites q with the answer, so the reference below would read the answer.
@pytest.mark.parametrize("name", sorted(set(PLANTED) - {"dropout_left_on", "cache_by_shape", "output_into_query"}
                                        - catalog.FLASH_PLANTED))
def test_planted_bug_is_otherwise_correct(name):
    """On a plain benign input (no masks, moderate logits, S a multiple of 16, B = H = 1 where the
    bug is cross-batch/head) most planted bugs should agree with the reference."""
    benign_exempt = {"missing_scale", "values_weights_confused", "softmax_wrong_axis",
                     "half_accumulation", "online_no_rescale"}
    if name in benign_exempt:
        pytest.skip("bug shows on every input")
    gen = torch.Generator().manual_seed(5)
    L = 5 if PLANTED[name].capabilities.cross_attention else 32  # self-attention only: L == S
    q, k, v = _inputs((1, 1, 1, L, 32, 8, 8), gen)
    out = PLANTED[name](q, k, v)
    assert torch.allclose(out.double(), ref(q, k, v), atol=1e-5), name


def test_catalog_consistent():
    assert len(catalog.CORRECT) >= 7 and len(catalog.PLANTED) >= 24
    assert catalog.STRICT_ONLY == {"nan_through_masked_slots"}
    for name, entry in catalog.PLANTED.items():
        assert entry["spec"].split("@")[0].endswith(":" + name) and entry["bug"] and entry["expected_suites"]
