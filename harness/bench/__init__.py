"""Throughput checks for prefill and decode: ``attn-harness bench`` and the opt-in pytest suite
``harness.suites.test_throughput`` share everything in this module.

For each (implementation, shape) the kernel is first checked for correctness (against the float64
chunked reference, with the dtype-aware per-row bound of :mod:`harness.tolerance`); a kernel that
fails gets no throughput entry, only a failure record. Then it is timed:

* forward: fresh input values (new random q, k, v, made outside the timed region) for every
  timed repeat but one, randomly chosen, which gets clones of the checked inputs; a kernel that
  caches or replays answers (by pointer, shape or content) is either honestly timed or wrong.
  Backward repeats get clones of the checked inputs. The inputs are compared with their
  originals after every call (a kernel must not write into them);
* every output produced inside the timed loop is checked after its timing: sampled rows of each
  fresh-input repeat against the float64 reference of those rows, and the whole output of the
  checked-input repeat (sampled rows when the configuration is too big for a full check);
* CPU: ``time.perf_counter`` (bound at import, so a kernel patching ``time`` cannot change it)
  around the call; CUDA: CUDA events, plus a whole-device ``torch.cuda.synchronize`` and the
  independent wall clock around the same call, and a 256 MB buffer zeroed before every repeat
  (L2 flush). When the wall clock's median exceeds the events' by more than 2x and 0.1 ms (work on
  a side stream, a patched ``Event.elapsed_time``), the entry is flagged and reports the wall clock;
* a figure above this machine's peak measured in the same run (FLOP/s over the best matmul,
  decode bytes/s over the best copy, each with a PEAK_MARGIN allowance for measurement noise) is
  rejected: the kernel gets no timing and a failure that says why;
* median and interquartile range after dropping outliers beyond 1.5 IQR.

Metrics (the formulas are repeated in every table and report):

* forward FLOPs = ``4*B*H*L*S*E`` (QK^T and PV, 2 FLOPs per multiply-add), halved for causal;
  backward = 2.5 x forward; TFLOP/s = FLOPs / median time / 1e12;
* decode GB/s = ``2*B*Hkv*S*E*bytes(dtype)`` (K and V read once) / median time / 1e9 (GB = 1e9 B);
* fraction of peak: prefill TFLOP/s over a same-dtype matmul measured in the same run, decode
  GB/s over a large device copy measured in the same run;
* peak memory: the extra bytes allocated during one call above its inputs (output + workspace).
  CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocation events of torch's CPU allocator
  recorded by ``torch.profiler`` (memory allocated outside torch's allocator, e.g. by a
  third-party library's own malloc, is not seen).

Modules: :mod:`~harness.bench.shapes` (Shape, presets, ``--shapes``), :mod:`~harness.bench.formulas`
(FLOPs, bytes, TFLOP/s, GB/s), :mod:`~harness.bench.stats` (median, IQR), :mod:`~harness.bench.checks`
(check configuration, reference, judging), :mod:`~harness.bench.timing` (Workload, the timed loop),
:mod:`~harness.bench.memory` (peak memory), :mod:`~harness.bench.peak` (machine peak, ceiling),
:mod:`~harness.bench.run` (bench_one, run_bench), :mod:`~harness.bench.baselines` (slowdowns),
:mod:`~harness.bench.tables` (tables, Markdown). The names below are the ones ``harness.bench``
has always offered; patch a constant or function in the submodule that reads it.
"""

from harness.bench.baselines import entry_key, find_slowdowns, load_baseline
from harness.bench.checks import (CHECK_MAX_SCORES, CHECK_TIMEOUT_S, SAMPLE_ROWS, ShapeData, case_for, check_backward,
                                  check_forward, check_shape, judge_grads, judge_output, sample_inputs,
                                  why_unsupported)
from harness.bench.formulas import (BACKWARD_FLOP_FACTOR, BYTES_FORMULA, FLOPS_FORMULA, flops, flops_formula,
                                    forward_flops, gbps_of, kv_bytes, scores_bytes, tflops_of)
from harness.bench.memory import _cpu_profiler_peak, peak_memory
from harness.bench.peak import CPU_BYTES_CEILING_MIN, PEAK_MARGIN, ceiling_violation, machine_peak
from harness.bench.run import Outcome, bench_one, run_bench
from harness.bench.shapes import CPU_CAPS, PRESETS, Shape, parse_shape, parse_shapes, scale_for_cpu
from harness.bench.stats import robust_stats
from harness.bench.tables import notes, render_tables, table_rows, to_markdown
from harness.bench.timing import (CLOCK_DISAGREE_MS, CLOCK_DISAGREE_RATIO, DEFAULT_REPEATS, DEFAULT_WARMUP,
                                  L2_FLUSH_BYTES, SLOW_CALL_S, Workload, _clock, _sync, plan_repeats, time_workload,
                                  timed_loop)

from harness.defaults import EXIT_FAIL, EXIT_OK, EXIT_USAGE  # noqa: E402 (the old names, one home)

__all__ = [
    "BACKWARD_FLOP_FACTOR", "BYTES_FORMULA", "CHECK_MAX_SCORES", "CHECK_TIMEOUT_S", "CLOCK_DISAGREE_MS",
    "CLOCK_DISAGREE_RATIO", "CPU_BYTES_CEILING_MIN", "CPU_CAPS", "DEFAULT_REPEATS", "DEFAULT_WARMUP", "EXIT_FAIL",
    "EXIT_OK", "EXIT_USAGE", "FLOPS_FORMULA", "L2_FLUSH_BYTES", "Outcome", "PEAK_MARGIN", "PRESETS", "SAMPLE_ROWS",
    "SLOW_CALL_S", "Shape", "ShapeData", "Workload", "_clock", "_cpu_profiler_peak", "_sync", "bench_one",
    "case_for", "ceiling_violation", "check_backward", "check_forward", "check_shape", "entry_key",
    "find_slowdowns", "flops", "flops_formula", "forward_flops", "gbps_of", "judge_grads", "judge_output",
    "kv_bytes", "load_baseline", "machine_peak", "notes", "parse_shape", "parse_shapes", "peak_memory",
    "plan_repeats", "render_tables", "robust_stats", "run_bench", "sample_inputs", "scale_for_cpu",
    "scores_bytes", "table_rows", "tflops_of", "time_workload", "timed_loop", "to_markdown", "why_unsupported",
]
