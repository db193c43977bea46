"""Kernels written to flash-attn 2.x's public call conventions, as first-class targets.

``flash_attn_func`` (q (B, L, H, E)), ``flash_attn_varlen_func`` (packed (total, H, E) with
``cu_seqlens_q/k``) and ``flash_attn_with_kvcache`` (a contiguous or paged KV cache with
``block_table`` and ``cache_seqlens``, new k/v appended in place), with their variants: sliding
windows, soft-capping, ALiBi, attention sinks, the returned log-sum-exp, FP8 inputs with
descales and split-KV decode. Causal masks and windows are aligned bottom-right, as in
FlashAttention >= 2.1.

- :mod:`harness.flash.convention`: which of the three a function is (read from its parameters),
  how the harness calls it, and the SDPA-shaped adapter through which every SDPA suite runs on it.
- :mod:`harness.flash.cases`: :class:`FlashCase`, a printable description of one call (ragged
  lengths, shuffled block tables, shared prefix pages, partly filled last pages), and the tensors.
- :mod:`harness.flash.reference`: the float64 truth per sequence and the same-dtype baselines.
- :mod:`harness.flash.strategies`: hypothesis strategies drawing cases inside the declaration.
- :mod:`harness.flash.probes`: the black-box instruments of the ``flash`` and ``paged`` suites.
"""
