"""Metrics for class activation maps: how faithful is an explanation, and does it find the object?

The reference's metrics, with its module paths (perturb the input according
to the maps and measure the change of the model's score, batched on the
model's device):

* :mod:`~camlib.metrics.cam_mult_image`: multiply the image by its map
  (:class:`DropInConfidence`, :class:`IncreaseInConfidence`).
* :mod:`~camlib.metrics.road`: ROAD, replace the most or least relevant
  pixels by a noisy linear interpolation of their neighbours.
* :mod:`~camlib.metrics.arcc`: ARCC, with Complexity and Coherency.
* :mod:`~camlib.metrics.perturbation_confidence`: the building blocks, for
  custom perturbations.

Beyond the reference:

* :mod:`~camlib.metrics.confidence`: Average Drop and Increase in Confidence
  as Grad-CAM++ defines them (:class:`AverageDrop`, :class:`ConfidenceIncrease`).
* :mod:`~camlib.metrics.deletion_insertion`: RISE's deletion and insertion
  AUCs (:class:`Deletion`, :class:`Insertion`).
* :mod:`~camlib.metrics.pointing_game`: localisation against ground-truth
  masks or boxes (:class:`PointingGame`, :class:`EnergyPointingGame`).
* :mod:`~camlib.metrics.sanity`: the model-parameter randomisation test of
  Adebayo et al. (:class:`ModelParameterRandomisation`).

Every metric returns one value per image (``np.float32 [B]``); average them
over a data set. Metrics that run the model show a progress bar, silenced by
``progress=False`` or ``CAMLIB_DISABLE_PROGRESS=1``.
"""

from camlib.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from camlib.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from camlib.metrics.confidence import AverageDrop, ConfidenceIncrease, explanation_map_scores
from camlib.metrics.deletion_insertion import (
    CurveResult,
    Deletion,
    Insertion,
    PixelOrderCurve,
    blur_substrate,
    gaussian_blur,
    pixel_ranks,
)
from camlib.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from camlib.metrics.pointing_game import EnergyPointingGame, PointingGame, boxes_to_masks
from camlib.metrics.road import (
    NoisyLinearImputer,
    ROADAverage,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    neighbors_weights,
)
from camlib.metrics.sanity import (
    ModelParameterRandomisation,
    RandomisationResult,
    randomisation_order,
    spearman_correlation,
)

__all__ = [
    "ARCC",
    "AverageDrop",
    "AveragerAcrossThresholds",
    "CamMultImageConfidenceChange",
    "Coherency",
    "Complexity",
    "ConfidenceIncrease",
    "CurveResult",
    "Deletion",
    "DropInConfidence",
    "EnergyPointingGame",
    "IncreaseInConfidence",
    "Insertion",
    "ModelParameterRandomisation",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "PixelOrderCurve",
    "PointingGame",
    "ROADAverage",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RandomisationResult",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "batch_pearson_coherency",
    "blur_substrate",
    "boxes_to_masks",
    "explanation_map_scores",
    "gaussian_blur",
    "multiply_tensor_with_cam",
    "neighbors_weights",
    "pixel_ranks",
    "randomisation_order",
    "spearman_correlation",
]
