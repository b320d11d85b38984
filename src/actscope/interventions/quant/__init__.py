"""Fake quantization of activations and weights, calibration histograms and SmoothQuant folding.

>>> spec = QuantSpec.parse("int8-sym-token-max")
>>> q, n_clipped = fake_quantize(x, spec)              # on x's device, no host round trip
>>> with quantized(lm, SCHEMES["W8A8"]):                # weights + Linear inputs fake-quantized
...     nll = evaluate_nll(lm, batches)
"""

from actscope.interventions.quant.apply import (
    SCHEMES,
    ActivationQuantizer,
    Scheme,
    get_scheme,
    linear_modules,
    linear_sites,
    quantized,
    smoothed_ranges,
)
from actscope.interventions.quant.fake import (
    BlockView,
    Range,
    exact_quantiles,
    fake_quantize,
    quantize_range,
    quantize_view,
)
from actscope.interventions.quant.histogram import SignedHistogram
from actscope.interventions.quant.smooth import (
    SmoothingError,
    folds,
    smoothed,
    smoothing_factors,
)
from actscope.interventions.quant.spec import (
    FP8_MAX,
    GRIDS,
    QuantSpec,
    QuantSpecError,
    default_grid,
    fast_grid,
    grid,
    parse_specs,
)
from actscope.interventions.quant.weights import quantize_weight, quantized_weights, weight_matrix

__all__ = [
    "FP8_MAX",
    "GRIDS",
    "SCHEMES",
    "ActivationQuantizer",
    "BlockView",
    "QuantSpec",
    "QuantSpecError",
    "Range",
    "Scheme",
    "SignedHistogram",
    "SmoothingError",
    "default_grid",
    "exact_quantiles",
    "fake_quantize",
    "fast_grid",
    "folds",
    "get_scheme",
    "grid",
    "linear_modules",
    "linear_sites",
    "parse_specs",
    "quantize_range",
    "quantize_view",
    "quantize_weight",
    "quantized",
    "quantized_weights",
    "smoothed",
    "smoothed_ranges",
    "smoothing_factors",
    "weight_matrix",
]
