"""Training-free activation sparsity: measure, calibrate, evaluate and time it.

* :func:`measure_sparsity` / :func:`measure_run`: zeros, small entries and CETT ratios;
* :func:`calibrate` / :func:`calibrate_run`: thresholds for TEAL, WINA and CHESS, uniform or
  greedy per-block allocation, saved as ``thresholds.json``;
* :func:`sparsity_sweep` / :func:`evaluate_run`: held-out perplexity per rule and target;
* :func:`gemv_benchmark`, :func:`decode_benchmark` / :func:`bench_run`: measured speed of the
  sparse CPU decode path against the dense one.

The intervention itself is :class:`actscope.interventions.sparsify.Sparsifier`; the sparse
kernels live in :mod:`actscope.kernels`. See docs/sparsity.md.
"""

from actscope.analyses.sparsity.calibrate import CalibrationResult, calibrate
from actscope.analyses.sparsity.cett import CettResult, cett, cett_threshold
from actscope.analyses.sparsity.data import Batches, corpus_part, token_batches
from actscope.analyses.sparsity.decode_bench import DecodeTrace, decode_benchmark, decode_steps
from actscope.analyses.sparsity.evaluate import SweepResult, held_out_nll, sparsity_sweep
from actscope.analyses.sparsity.gemv_bench import gemv_benchmark
from actscope.analyses.sparsity.measure import MeasureResult, measure_sparsity
from actscope.analyses.sparsity.refine import refine_plan
from actscope.analyses.sparsity.runs import (
    bench_run,
    calibrate_run,
    evaluate_run,
    load_calibration,
    measure_run,
)
from actscope.analyses.sparsity.timing import SpeedResult

__all__ = [
    "Batches",
    "CalibrationResult",
    "CettResult",
    "DecodeTrace",
    "MeasureResult",
    "SpeedResult",
    "SweepResult",
    "bench_run",
    "calibrate",
    "calibrate_run",
    "cett",
    "cett_threshold",
    "corpus_part",
    "decode_benchmark",
    "decode_steps",
    "evaluate_run",
    "gemv_benchmark",
    "held_out_nll",
    "load_calibration",
    "measure_run",
    "measure_sparsity",
    "refine_plan",
    "sparsity_sweep",
    "token_batches",
]
