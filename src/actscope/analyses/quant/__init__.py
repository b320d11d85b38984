"""Quantization stress tests: per-site sensitivity, co-variation, perplexity, imatrix export.

>>> from actscope.analyses.quant import QuantConfig, run_quant
>>> res = run_quant(lm, "/tmp/q", config=QuantConfig(grid="fast", eval_tokens=4096))
>>> res.sensitivity          # one row per (site, quantizer)
"""

from actscope.analyses.quant.calibrate import Calibration, Calibrator
from actscope.analyses.quant.covary import covariation_frame, rank_correlations
from actscope.analyses.quant.e2e import nll_under, perplexity_sweep
from actscope.analyses.quant.groups import OutputProbe, SiteGroup, expand_patterns, site_groups
from actscope.analyses.quant.imatrix import ImatrixCollector
from actscope.analyses.quant.run import QuantConfig, QuantResult, analyze_quant, run_quant
from actscope.analyses.quant.sensitivity import SensitivityMeter

__all__ = [
    "Calibration",
    "Calibrator",
    "ImatrixCollector",
    "OutputProbe",
    "QuantConfig",
    "QuantResult",
    "SensitivityMeter",
    "SiteGroup",
    "analyze_quant",
    "covariation_frame",
    "expand_patterns",
    "nll_under",
    "perplexity_sweep",
    "rank_correlations",
    "run_quant",
    "site_groups",
]
