"""The integrity suite: its probes (harness/integrity.py), its planted fixtures (each is right on
one fresh call and broken in exactly the way its property names), and the suite end to end
through `attn-harness check`, including --forbid-ops and the report's Integrity section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures import catalog
from harness import integrity as I
from harness.loading import load

ROOT = Path(__file__).resolve().parents[1]
FIX = "fixtures/integrity.py"
F = torch.nn.functional


def _load(name):
    return load(str(ROOT / FIX) + ":" + name)


def _qkv(seed=0, B=2, H=2, L=5, S=6, E=16, Ev=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, E, generator=g), torch.randn(B, H, S, E, generator=g),
            torch.randn(B, H, S, Ev, generator=g))


def _pad_mask(B=2, S=6, keep=(6, 2)):
    m = torch.zeros(B, 1, 1, S, dtype=torch.bool)
    for b, n in enumerate(keep):
        m[b, ..., :n] = True
    return m


# --- probes --------------------------------------------------------------------------------------

def test_bits_equal_is_bitwise():
    a = torch.tensor([0.0, float("nan"), 1.0])
    assert I.bits_equal(a, a.clone())  # NaN == NaN bitwise
    assert not I.bits_equal(a, torch.tensor([-0.0, float("nan"), 1.0]))  # -0.0 is not 0.0
    assert not I.bits_equal(a, a.double())
    m = torch.tensor([True, False])
    assert I.bits_equal(m, m.clone()) and not I.bits_equal(m, ~m)
    assert I.bits_equal(torch.ones(3, 4).t(), torch.ones(4, 3))  # non-contiguous compares by value


def test_shared_storage_sees_views_and_fresh_storage():
    q, k, v = _qkv()
    named = {"query": q, "key": k, "value": v, "attn_mask": None}
    assert I.shared_storage(q[:, :, 1:], named) == ["query"]
    assert I.shared_storage(v.transpose(1, 2), named) == ["value"]
    assert I.shared_storage(q.clone(), named) == []
    fresh_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not fresh_view.is_contiguous() and I.shared_storage(fresh_view, named) == []


def test_not_plain_tensor():
    q, k, v = _qkv()
    assert I.not_plain_tensor(q) is None and I.not_plain_tensor(q.transpose(1, 2)) is None
    lazy = _load("lazy_output")(q, k, v)
    why = I.not_plain_tensor(lazy)
    assert why and "subclass" in why and "_Deferred" in why
    assert lazy._thunk is not None, "the type check must not force the lazy tensor to compute"
    assert "meta" in I.not_plain_tensor(torch.empty(2, device="meta"))
    assert "sparse" in I.not_plain_tensor(torch.eye(3).to_sparse())


def test_describe_change_names_what_happened():
    m = _pad_mask()
    assert "inverted in place" in I.describe_change(m, ~m)
    x = torch.randn(10)
    assert "now all zero" in I.describe_change(x, torch.zeros(10))
    assert "scaled in place by 0.25" in I.describe_change(x, x * 0.25)
    assert "3 of 10 elements changed" in I.describe_change(x, torch.cat([x[:7], x[7:] + 1]))


def test_forbidden_ops_patterns_and_trace():
    ops = ["aten::_scaled_dot_product_flash_attention_for_cpu", "aten::mm", "aten::softmax"]
    assert I.forbidden_ops(ops, ["aten::_scaled_dot_product*"]) == [(ops[0], "aten::_scaled_dot_product*")]
    assert I.forbidden_ops(ops, ["MM", "*softmax"]) == [(ops[1], "mm"), (ops[2], "*softmax")]
    assert I.forbidden_ops(ops, ["", " "]) == [] and I.forbidden_ops(ops, ["bmm"]) == []
    # What a user types first: a bare name matches by base name (no namespace, overload or
    # leading underscore), and a prefix wildcard reaches the private variants SDPA dispatches to.
    assert I.forbidden_ops(ops, ["scaled_dot_product*"]) == [(ops[0], "scaled_dot_product*")]
    assert I.forbidden_ops(["aten::scaled_dot_product_attention"], ["scaled_dot_product_attention"]) != []
    assert I.forbidden_ops(["aten::mm.out"], ["mm"]) == [("aten::mm.out", "mm")]
    assert I.forbidden_ops(ops, ["aten::scaled_dot_product*"]) == []  # a namespaced pattern means what it says


def test_forbid_ops_patterns_that_can_never_match_are_warned_about():
    assert I.pattern_warnings(["scaled_dot_product*", "aten::_scaled_dot_product*", "mm", "*softmax*"]) == []
    (w,) = I.pattern_warnings(["scaled_dot_product"])
    assert "matches no aten op" in w and "'scaled_dot_product*' matches" in w
    (w,) = I.pattern_warnings(["scaled_dot_product_attention"])
    # SDPA is a composite op: the trace only ever sees the kernel it dispatches to.
    assert "only composite ops (aten::scaled_dot_product_attention)" in w and "'scaled_dot_product*'" in w
    assert len(I.pattern_warnings(["no_such_op_anywhere", "mm"])) == 1
    q, k, v = _qkv()
    out, seen = I.trace_ops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert any("scaled_dot_product" in op for op in seen), seen
    _, seen = I.trace_ops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert not any("scaled_dot_product" in op for op in seen) and sum(seen.values()) >= 3


# --- the fixtures: right once, broken exactly as named -------------------------------------------

def _right(out, q, k, v, **kw):
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                         **{**kw, "attn_mask": kw.get("attn_mask")})
    return torch.allclose(out.double(), ref, atol=1e-5)


def test_static_output_buffer_overwrites_its_previous_answer():
    fn = _load("static_output_buffer")
    q, k, v = _qkv(1)
    out1 = fn(q, k, v)
    assert _right(out1, q, k, v)
    kept = out1.clone()
    q2, k2, v2 = _qkv(2)
    out2 = fn(q2, k2, v2)
    assert _right(out2, q2, k2, v2) and not torch.equal(out1, kept) and out1.data_ptr() == out2.data_ptr()


def test_output_into_query_aliases_the_query():
    fn = _load("output_into_query")
    q, k, v = _qkv(3)
    q0 = q.clone()
    out = fn(q, k, v)
    assert _right(out, q0, k, v) and I.shared_storage(out, {"query": q}) == ["query"]


def test_lazy_output_computes_on_first_read_from_current_inputs():
    fn = _load("lazy_output")
    q, k, v = _qkv(4)
    out = fn(q, k, v)
    assert out.shape == (2, 2, 5, 16) and out._thunk is not None
    v.mul_(2)  # the caller reuses v before reading the output: the lazy value follows the change
    assert _right(out + 0, q, k, v) and out._thunk is None
    assert type(out + 0) is torch.Tensor  # laziness does not spread to results


def test_mask_inverted_in_place_is_right_once():
    fn = _load("mask_inverted_in_place")
    q, k, v = _qkv(5)
    m = _pad_mask()
    m0 = m.clone()
    out = fn(q, k, v, attn_mask=m)
    assert _right(out, q, k, v, attn_mask=m0) and torch.equal(m, ~m0)


def test_masked_values_zeroed_in_place_is_right_once():
    fn = _load("masked_values_zeroed_in_place")
    q, k, v = _qkv(6)
    v0 = v.clone()
    m = _pad_mask()
    out = fn(q, k, v, attn_mask=m)
    assert _right(out, q, k, v0, attn_mask=m)
    assert torch.equal(v[0], v0[0]) and bool((v[1, :, 2:] == 0).all()) and torch.equal(v[1, :, :2], v0[1, :, :2])


def test_scales_strided_key_in_place_is_right_and_leaves_contiguous_keys_alone():
    fn = _load("scales_strided_key_in_place")
    q, k, v = _qkv(7)
    k0 = k.clone()
    assert _right(fn(q, k, v), q, k0, v) and torch.equal(k, k0)  # contiguous: untouched
    cache = k0.transpose(1, 2).contiguous()  # the caller's (B, S, H, E) cache
    kt = cache.transpose(1, 2)
    assert _right(fn(q, kt, v), q, k0, v)
    assert torch.allclose(cache.transpose(1, 2), k0 * k0.shape[-1] ** -0.5)  # ...but the cache is scaled


def test_pointer_cache_misses_new_tensors_and_hits_overwritten_ones():
    fn = _load("pointer_cache")
    q, k, v = _qkv(7)
    out1 = fn(q, k, v)
    assert _right(out1, q, k, v)
    q2, k2, v2 = _qkv(8)
    assert _right(fn(q2, k2, v2), q2, k2, v2)  # new tensors: computed
    q.copy_(q2)
    k.copy_(k2)
    v.copy_(v2)
    assert torch.equal(fn(q, k, v), out1)  # same tensors, new values: the old answer


def test_empty_for_untuned_head_dims_returns_unwritten_memory():
    fn = _load("empty_for_untuned_head_dims")
    q, k, v = _qkv(9, Ev=16)
    assert _right(fn(q, k, v), q, k, v)
    q, k, v = _qkv(9, E=24, Ev=24)
    torch.full((2, 2, 5, 24), 123.0)  # allocated and freed: what an unwritten output may hold
    assert not _right(fn(q, k, v), q, k, v)


@pytest.mark.parametrize("name", ["fresh_transposed_view", "rows_into_empty"])
def test_correct_integrity_fixtures_are_right(name):
    fn = _load(name)
    for seed, kw in ((10, {}), (11, {"is_causal": True}), (12, {"attn_mask": _pad_mask()})):
        q, k, v = _qkv(seed, L=6)
        out = fn(q, k, v, **kw)
        assert type(out) is torch.Tensor and _right(out, q, k, v, **kw)
    q, k, v = _qkv(13, L=6)
    assert not fn(q, k, v).is_contiguous() if name == "fresh_transposed_view" else True
    m = torch.zeros(6, 6, dtype=torch.bool)  # every row fully masked: zeros, not leftover memory
    assert torch.equal(fn(q, k, v, attn_mask=m), torch.zeros(2, 2, 6, 16))


def test_catalog_lists_the_integrity_fixtures():
    planted = {n for n, e in catalog.PLANTED.items() if e["spec"].startswith(FIX)}
    assert planted == set(PROPERTY_OF)
    assert all(catalog.PLANTED[n]["expected_suites"] == ["integrity"] for n in planted)
    assert {"fresh_transposed_view", "rows_into_empty"} <= set(catalog.CORRECT)
    assert "integrity" in catalog.SUITES


# --- end to end ----------------------------------------------------------------------------------

# The integrity property each planted fixture is built to fail, and words its message must carry.
PROPERTY_OF = {
    "static_output_buffer": ("test_outputs_stay_outputs", "same storage every call"),
    "output_into_query": ("test_outputs_stay_outputs", "shares storage with input query"),
    "lazy_output": ("test_outputs_stay_outputs", "torch.Tensor subclass"),
    "mask_inverted_in_place": ("test_inputs_stay_inputs", "attn_mask: all 12 entries inverted in place"),
    "masked_values_zeroed_in_place": ("test_inputs_stay_inputs", "changed its inputs in place: value"),
    "scales_strided_key_in_place": ("test_inputs_stay_inputs", "changed its inputs in place: key"),
    "output_into_strided_query": ("test_outputs_stay_outputs", "shares storage with input query"),
    "pointer_cache": ("test_fresh_data_same_storage", "did not change after q, k and v were overwritten"),
    "empty_for_untuned_head_dims": ("test_no_free_answer_from_allocator", "memory it never wrote"),
}
# Only these fixtures are also caught by a second integrity property: writing into the query is
# input mutation too, and an in-place inverted mask is inverted back (wrongly) by the next call.
ALSO = {"output_into_strided_query": {"test_inputs_stay_inputs"},
        "output_into_query": {"test_inputs_stay_inputs", "test_fresh_data_same_storage",
                              "test_no_free_answer_from_allocator"},
        "mask_inverted_in_place": {"test_fresh_data_same_storage"}}
PASSING = ["sdpa", "reference", f"{FIX}:fresh_transposed_view", f"{FIX}:rows_into_empty"]


def _check(tmp_path, impls, *extra):
    args = [sys.executable, "-m", "harness", "check", "--suite", "integrity", "--dtype", "float32",
            "--jobs", "2", "--report-dir", str(tmp_path)]
    for s in impls:
        args += ["--impl", str(ROOT / s) if s.startswith("fixtures/") else s]
    r = subprocess.run(args + list(extra), capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env={**os.environ, "ATTN_HARNESS_VALIDATE_REPORTS": "1"})
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r, json.loads((tmp_path / "report.json").read_text())


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity")
    return _check(d, PASSING + [f"{FIX}:{n}" for n in PROPERTY_OF]) + (d,)


def _failing(impl):
    return {r["property"] for r in impl["results"] if r["status"] in ("fail", "error") and r["tier"] == "gate"}


@pytest.mark.slow  # a whole `attn-harness check` run
@pytest.mark.parametrize("name", sorted(PROPERTY_OF))
def test_planted_fixture_caught_by_its_property(suite_run, name):
    _, rep, _ = suite_run
    impl = next(i for i in rep["implementations"] if i["spec"].endswith(":" + name))
    prop, words = PROPERTY_OF[name]
    assert impl["verdict"] == "fail"
    assert prop in _failing(impl) and _failing(impl) <= {prop} | ALSO.get(name, set()), _failing(impl)
    r = next(r for r in impl["results"] if r["property"] == prop)
    assert words in r["message"], r["message"]
    assert r["counterexample"] is not None and r["repro"].startswith("attn-harness check")
    assert "--property " + prop in r["repro"] and "--case" in r["repro"]


@pytest.mark.slow  # a whole `attn-harness check` run
def test_correct_kernels_pass_the_integrity_suite(suite_run):
    _, rep, _ = suite_run
    for spec in PASSING:
        impl = next(i for i in rep["implementations"] if i["spec"].endswith(spec.split("/")[-1]))
        assert impl["verdict"] == "pass", [(r["property"], r["message"][:300]) for r in impl["results"]
                                           if r["status"] != "pass"]
        trace = next(r for r in impl["results"] if r["property"] == "test_op_trace")
        assert trace["tier"] == "info" and trace["worst"]["op_trace"]["ops"]
    sdpa = next(i for i in rep["implementations"] if i["name"] == "sdpa")
    ops = next(r for r in sdpa["results"] if r["property"] == "test_op_trace")["worst"]["op_trace"]["ops"]
    assert any("scaled_dot_product" in op for op in ops), ops


def test_report_has_an_integrity_section(suite_run):
    _, rep, d = suite_run
    md = (d / "report.md").read_text()
    sec = md[md.index("## Integrity"):]
    for prop in ("test_outputs_stay_outputs", "test_inputs_stay_inputs", "test_fresh_data_same_storage",
                 "test_no_free_answer_from_allocator", "test_op_trace"):
        assert sec.count(f"| {prop} ") == 1, prop
    assert "**sdpa** op trace (float32): `aten::_scaled_dot_product" in sec
    html = (d / "report.html").read_text()
    assert "<h2>Integrity</h2>" in html and "sdpa · op trace (float32)" in html


@pytest.mark.slow  # a whole `attn-harness check` run
def test_forbid_ops_makes_the_op_trace_a_gate(tmp_path):
    r, rep = _check(tmp_path, ["sdpa", f"{FIX}:rows_into_empty"], "--property", "test_op_trace",
                    "--forbid-ops", "aten::_scaled_dot_product*,*flash_attention*,scaled_dot_product")
    assert r.returncode == 1
    assert "warning: --forbid-ops 'scaled_dot_product' matches no aten op" in r.stderr
    by = {i["name"]: i for i in rep["implementations"]}
    (res,) = by["sdpa"]["results"]
    assert res["tier"] == "gate" and res["status"] == "fail"
    assert "forbidden operator(s): aten::_scaled_dot_product_flash_attention_for_cpu" in res["message"]
    assert res["repro"].startswith("attn-harness check")
    (ok,) = by["rows_into_empty"]["results"]
    assert ok["status"] == "pass" and ok["tier"] == "gate" and by["rows_into_empty"]["verdict"] == "pass"
