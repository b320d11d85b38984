"""Explain: where a behaviour is computed, what a layer knows, whether an answer is wrong.

* Activation patching (:func:`patch_pairs`) and attribution patching (:func:`attribute_pairs`)
  of clean/corrupted prompt pairs, with their agreement (:func:`agreement`).
* Logit lens and tuned lens (:func:`lens_table`, :func:`fit_tuned_lens`).
* Per-layer linear probes with a control task (:func:`fit_probes`, :func:`control_labels`).
* CLUE-style verification of generated answers (:func:`cross_validated_scores`).

The ``*_study`` functions run a whole command (what the CLI calls) and return its tables.
"""

from actscope.analyses.explain.answers import Answer, generate_answers, summarise_answers
from actscope.analyses.explain.arithmetic import Problem, arithmetic_problems, is_correct
from actscope.analyses.explain.attribution import agreement, attribute_pairs, values_and_grads
from actscope.analyses.explain.clue import (
    auroc,
    centroids,
    cross_validated_scores,
    per_layer_auroc,
    score,
)
from actscope.analyses.explain.lens import (
    TunedLens,
    TunedLensFit,
    corpus_kl,
    fit_tuned_lens,
    lens_curves,
    lens_table,
    logit_lens,
)
from actscope.analyses.explain.pairs import PromptPair, TokenizedPair, load_pairs, tokenize_pairs
from actscope.analyses.explain.patching import aggregate, normalise, patch_pairs
from actscope.analyses.explain.probes import (
    collect_features,
    control_labels,
    cv_accuracy,
    fit_probes,
)
from actscope.analyses.explain.study_clue import ClueStudy, clue_study
from actscope.analyses.explain.study_lens import LensStudy, lens_study
from actscope.analyses.explain.study_patch import PatchStudy, make_units, patch_study
from actscope.analyses.explain.study_probe import ProbeStudy, probe_study
from actscope.analyses.explain.units import PatchUnit, head_units, position_units

__all__ = [
    "Answer",
    "ClueStudy",
    "LensStudy",
    "PatchStudy",
    "PatchUnit",
    "ProbeStudy",
    "Problem",
    "PromptPair",
    "TokenizedPair",
    "TunedLens",
    "TunedLensFit",
    "aggregate",
    "agreement",
    "arithmetic_problems",
    "attribute_pairs",
    "auroc",
    "centroids",
    "clue_study",
    "collect_features",
    "control_labels",
    "corpus_kl",
    "cross_validated_scores",
    "cv_accuracy",
    "fit_probes",
    "fit_tuned_lens",
    "generate_answers",
    "head_units",
    "is_correct",
    "lens_curves",
    "lens_study",
    "lens_table",
    "load_pairs",
    "logit_lens",
    "make_units",
    "normalise",
    "patch_pairs",
    "patch_study",
    "per_layer_auroc",
    "position_units",
    "probe_study",
    "score",
    "summarise_answers",
    "tokenize_pairs",
    "values_and_grads",
]
