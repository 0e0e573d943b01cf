"""Metrics for class activation maps: how faithful is an explanation?

Each metric perturbs the input according to the maps and measures the change
of the model's score, batched on the model's device:

* :mod:`~camlib.metrics.cam_mult_image`: multiply the image by its map
  (:class:`DropInConfidence`, :class:`IncreaseInConfidence`).
* :mod:`~camlib.metrics.road`: ROAD, replace the most or least relevant
  pixels by a noisy linear interpolation of their neighbours.
* :mod:`~camlib.metrics.arcc`: ARCC, with Complexity and Coherency.
* :mod:`~camlib.metrics.perturbation_confidence`: the building blocks, for
  custom perturbations.
"""

from camlib.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from camlib.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from camlib.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from camlib.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    neighbors_weights,
)

__all__ = [
    "ARCC",
    "AveragerAcrossThresholds",
    "CamMultImageConfidenceChange",
    "Coherency",
    "Complexity",
    "DropInConfidence",
    "IncreaseInConfidence",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "batch_pearson_coherency",
    "multiply_tensor_with_cam",
    "neighbors_weights",
]
