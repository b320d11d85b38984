"""Public steering API: ``import actscope.steer as steer``.

    ds = steer.load_dataset("sentiment-pairs")
    train, test = ds.split(0.5)
    vec = steer.train_vector(lm, train, layers="all", method="mean_diff")
    vec.save("sentiment.safetensors"); vec.to_gguf("sentiment.gguf")
    with steer.Steering(lm, vec, layers=[12], coef=2.0, positions=steer.instruction_window(lm)):
        ...                                          # any forward pass or model.generate
    texts = steer.generate(lm, ["Tell me about your weekend."], steer.Steering(lm, vec, coef=2))

Definitions and measured results: ``docs/steering.md``. Implementation:
:mod:`actscope.interventions.steering` and :mod:`actscope.analyses.steer_ab` /
:mod:`actscope.analyses.steer_eval`.
"""

from actscope.analyses.steer_ab import Scorer, ab_scores, ab_sweep, choices, letter_ids
from actscope.analyses.steer_eval import (
    SteerEval,
    choose_layer,
    evaluate,
    is_monotonic,
    neutral_batches,
    report,
    side_effects,
)
from actscope.interventions.steering import (
    METHODS,
    MODES,
    ABItem,
    Condition,
    ConditionSearch,
    ContrastDataset,
    Read,
    Steering,
    SteeringVector,
    Window,
    all_of,
    any_of,
    collect,
    encode_prompts,
    generate,
    instruction_window,
    layer_vector,
    list_datasets,
    load_dataset,
    load_prompts,
    parse_positions,
    parse_read,
    search_condition,
    steering,
    train_vector,
)

__all__ = [
    "METHODS",
    "MODES",
    "ABItem",
    "Condition",
    "ConditionSearch",
    "ContrastDataset",
    "Read",
    "Scorer",
    "SteerEval",
    "Steering",
    "SteeringVector",
    "Window",
    "ab_scores",
    "ab_sweep",
    "all_of",
    "any_of",
    "choices",
    "choose_layer",
    "collect",
    "encode_prompts",
    "evaluate",
    "generate",
    "instruction_window",
    "is_monotonic",
    "layer_vector",
    "letter_ids",
    "list_datasets",
    "load_dataset",
    "load_prompts",
    "neutral_batches",
    "parse_positions",
    "parse_read",
    "report",
    "search_condition",
    "side_effects",
    "steering",
    "train_vector",
]
