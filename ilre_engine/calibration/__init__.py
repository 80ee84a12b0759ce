"""Offline calibration (step 1 of the method): choosing a model's retrieval layer and kernels.

- `layer_search`: `calibrate` reads retrieval tasks once through every candidate layer and
  measures each layer's answer recall; ``ilre calibrate`` is its command line.
- `tasks`: the retrieval task generators over real prose, shared with the quality benchmark.
- `hard_tasks`: further families aimed at observed weaknesses (long unbroken answers, numbers
  in words, paraphrased and split facts, counts, long chains, more essay questions);
  `families.ALL_FAMILIES` merges both registries (`tasks` does not import `hard_tasks`).
- `hybrid_search`: `calibrate_hybrid` measures the weight of the sentence-embedding prior at
  the chosen layer (`calibrate` runs it last; the profile carries the weight).
- `metric`: answer recall, the measure of both.
"""

from .hybrid_search import (
    HYBRID_FAMILIES,
    HYBRID_PASSAGE_TOKENS,
    HYBRID_WEIGHTS,
    HybridChoice,
    calibrate_hybrid,
)
from .layer_search import (
    CALIBRATION_FAMILIES,
    KERNEL_CANDIDATES,
    CalibrationSettings,
    calibrate,
    observe_layers,
)

__all__ = [
    "CALIBRATION_FAMILIES",
    "HYBRID_FAMILIES",
    "HYBRID_PASSAGE_TOKENS",
    "HYBRID_WEIGHTS",
    "KERNEL_CANDIDATES",
    "CalibrationSettings",
    "HybridChoice",
    "calibrate",
    "calibrate_hybrid",
    "observe_layers",
]
