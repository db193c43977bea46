"""M. Model in the loop (opt-in: ``attn-harness check --suite model --impl X``): all-MiniLM-L6-v2
with the implementation as its attention, plugged in through transformers' AttentionInterface
together with the matching AttentionMaskInterface function (see :mod:`harness.model`).

Catches what the synthetic suites can miss in a real integration: padding that reaches real
tokens inside a batched encoder, errors that compound through six layers, and kernels that go
wrong only on real activation statistics. Needs ``pip install 'attention-harness[model]'``.

Bounds: model outputs are held to ``harness.model.MODEL_FACTOR`` (4) times the error of the same
model with a plain same-dtype matmul-softmax-matmul as attention (``harness.model.MODEL_BASELINE``,
never a built-in kernel that may itself be under test), both against the run with the float64
reference as attention (per real token / sentence, at least the baseline's mean and a 4-ulp
floor); batch composition to ``harness.model.batch_tolerance(dtype)`` (L2 movement of the unit
embedding); the stored real activations to the synthetic suites' own rules (probes.judge, bitwise
padding invariance). The suite wires the kernel with the harness's own (correct) integration; to
test your own glue code use ``harness.model.batch_composition_check(impl, integration=...)`` or
``attn-harness integration --integration my_glue.py:wire``.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="model suite needs transformers (pip install 'attention-harness[model]')")

from harness import model as M  # noqa: E402
from harness import probes  # noqa: E402
from harness.cases import Case, Inputs  # noqa: E402

_why = M.unavailable()
if _why:
    pytest.skip(f"model suite: {_why}", allow_module_level=True)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "model_activations.pt"


def _mask_kind(target) -> str:
    kind = M.mask_kind_for(target.impl)
    if kind is None:
        target.require(mask_kind="bool")
    return kind


# --- (a) model outputs against the float64-reference model ---------------------------------

def test_model_outputs_match_reference(target):
    """Last hidden state (real tokens) and pooled embeddings of a batch of six sentences (3-38
    tokens) match the same model run with the float64 reference as attention, within
    MODEL_FACTOR x the error of the same model with a plain same-dtype attention (MODEL_BASELINE)."""
    _mask_kind(target)
    h, p, keep = M.model_outputs_check(target.impl, target.dtype, target.device)
    target.record(model_hidden=h, model_pooled=p)
    pos = keep.nonzero()
    for what, c, where in (("last hidden state", h, lambda i: f"sentence {int(pos[i][0])} token {int(pos[i][1])}"),
                           ("pooled embedding", p, lambda i: f"sentence {i}")):
        if not c["ok"]:
            i = c["worst_row"]
            sent = M.SENTENCES[int(pos[i][0]) if what.startswith("last") else i]
            raise probes.PropertyViolation(
                f"model {what}: worst at {where(i)} ({sent[:40]!r}) error {c['error']:.3g} = {c['ratio']:.3g}x "
                f"the allowance {c['allowance']:.3g} from the plain same-dtype attention run (limit "
                f"{c['factor']:g}x); {c['rows_failed']}/{c['rows']} rows over")


# --- (b) batch composition ------------------------------------------------------------------

def test_batch_composition_invariance(target):
    """A sentence's embedding does not depend on the other sentences in its batch, its position
    there, or how much padding it gets (right and left): padded keys never reach real tokens."""
    _mask_kind(target)
    res = M.batch_composition_check(target.impl, target.dtype, device=target.device)
    target.record(batch_movement=res["max_movement"], batch_limit=res["limit"],
                  batch_variants={v["what"]: v["moved"] for v in res["variants"]})


# --- (c) the property suites' checks on stored real activations ----------------------------

def _fixture():
    if not FIXTURE.is_file():
        pytest.skip(f"skip: activation fixture {FIXTURE} missing (python fixtures/model_glue.py)")
    return torch.load(FIXTURE, weights_only=True)


def _layer_inputs(target, data, layer: int, mask: str = "bool") -> Inputs:
    keep = data["attention_mask"]
    B, S = keep.shape
    H, E = data["q"].shape[2], data["q"].shape[-1]
    lengths = [int(n) for n in keep.sum(1)]
    if mask == "is_causal":
        case = Case(B=B, H=H, Hkv=H, L=S, S=S, E=E, Ev=E, dtype=target.dtype, device=target.device,
                    policy="causal()", mask="is_causal", scale=data["scale"], seed=layer)
    else:
        case = Case(B=B, H=H, Hkv=H, L=S, S=S, E=E, Ev=E, dtype=target.dtype, device=target.device,
                    policy=f"key_padding({lengths})", mask=mask, mask_shape="B11S", scale=data["scale"], seed=layer)
    visible = case.visible()
    dt = case.torch_dtype
    q, k, v = (data[n][layer].to(dt).to(target.device) for n in ("q", "k", "v"))
    m = case._mask_tensor(visible, dt)
    return Inputs(case, q, k, v, m if m is None else m.to(target.device), mask == "is_causal",
                  data["scale"], False, visible.to(target.device))


def test_real_activations_match_reference(target):
    """On the stored Q, K, V of all six layers (six sentences, right padding, the real mask),
    outputs match the float64 reference within the dtype-aware bound (probes.judge)."""
    kind = _mask_kind(target)
    data = _fixture()
    for layer in range(data["q"].shape[0]):
        inp = _layer_inputs(target, data, layer, kind)
        probes.judge(target, probes.call(target.impl, inp), inp, what=f"layer {layer} real activations")


def test_real_padding_content_invariance(target):
    """On the stored activations, what the padded keys/values hold does not change any row (bitwise)."""
    kind = _mask_kind(target)
    data = _fixture()
    for layer in range(data["q"].shape[0]):
        inp = _layer_inputs(target, data, layer, kind)
        keys = ~inp.kv_visible().any(dim=2)
        rows = probes.blocked_rows(inp, keys)
        out0 = probes.call_kept(target.impl, inp)
        for how in ("random", "huge", "adversarial"):
            k, v = probes.perturb_keys(inp, keys, how, seed=layer)
            probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                         f"layer {layer} real activations: {how} change to padded keys/values")


def test_real_normalization(target):
    """On the stored queries and keys with V = ones, every row outputs one (weights sum to one
    over the real keys)."""
    kind = _mask_kind(target)
    data = _fixture()
    for layer in range(data["q"].shape[0]):
        inp = _layer_inputs(target, data, layer, kind)
        inp = inp.replace(v=torch.ones_like(inp.v))
        probes.judge(target, probes.call(target.impl, inp), inp, what=f"layer {layer} real activations, V = ones")


def test_real_causal(target):
    """The stored activations under is_causal: outputs match the reference, and rows before a cut
    do not change (bitwise) when the keys/values after it are replaced."""
    target.require(is_causal=True)
    data = _fixture()
    for layer in range(data["q"].shape[0]):
        inp = _layer_inputs(target, data, layer, "is_causal")
        out0 = probes.call_kept(target.impl, inp)
        probes.judge(target, out0, inp, what=f"layer {layer} real activations, is_causal")
        S = inp.k.shape[2]
        cut = S // 2
        keys = torch.zeros(inp.k.shape[:3], dtype=torch.bool, device=inp.k.device)
        keys[:, :, cut:] = True
        k, v = probes.perturb_keys(inp, keys, "huge", seed=layer)
        rows = probes.blocked_rows(inp, keys)
        probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                     f"layer {layer} real activations: keys at positions >= {cut} replaced")


# --- (d) head ablation and entropy (information) -------------------------------------------

@pytest.mark.tier("info")
def test_head_ablation(target, request):
    """Head ablation (zero one head at a time; change of six sentence-pair cosines), ranking,
    inactive heads and per-head attention entropy; recorded for the report. Computed in the
    run's first dtype only (the table is a property of the model, not of the dtype)."""
    _mask_kind(target)
    dtypes = request.config._attention_harness.dtypes
    if dtypes and target.dtype != dtypes[0]:
        pytest.skip(f"skip: ablation table computed in {dtypes[0]} only")
    res = M.ablation(target.impl, target.dtype, device=target.device)
    keep = ("layers", "heads", "metric", "impact", "entropy", "ranking", "inactive", "threshold", "caveat",
            "impact_definition", "entropy_definition", "dtype")
    target.record(ablation={k: res[k] for k in keep})
