"""Activation steering: contrast datasets, vector extraction, application, conditions, files.

See ``docs/steering.md`` for the definitions and the measured results; the public API is
re-exported by :mod:`actscope.steer`.
"""

from actscope.interventions.steering.apply import MODES, Steering, Window, parse_positions, steering
from actscope.interventions.steering.conditional import (
    Condition,
    ConditionSearch,
    all_of,
    any_of,
    search_condition,
)
from actscope.interventions.steering.datasets import (
    ABItem,
    ContrastDataset,
    list_datasets,
    load_dataset,
    load_prompts,
)
from actscope.interventions.steering.encoding import Read, parse_read
from actscope.interventions.steering.extract import METHODS, collect, layer_vector, train_vector
from actscope.interventions.steering.generate import encode_prompts, generate, instruction_window
from actscope.interventions.steering.vector import SteeringVector

__all__ = [
    "METHODS",
    "MODES",
    "ABItem",
    "Condition",
    "ConditionSearch",
    "ContrastDataset",
    "Read",
    "Steering",
    "SteeringVector",
    "Window",
    "all_of",
    "any_of",
    "collect",
    "encode_prompts",
    "generate",
    "instruction_window",
    "layer_vector",
    "list_datasets",
    "load_dataset",
    "load_prompts",
    "parse_positions",
    "parse_read",
    "search_condition",
    "steering",
    "train_vector",
]
