"""Targets: callables that turn one image's model output into the score to explain.

A target is called with the output of the model for ONE image (for a
classifier, a 1-D tensor of logits) and returns a scalar tensor. Calling it
with a batch (2-D tensor) returns one score per row, as in pytorch-grad-cam.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torchvision

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SoftmaxOutputTarget",
]


def _pick(model_output: torch.Tensor, category: int) -> torch.Tensor:
    """Column ``category`` of a 1-D output, or of every row of a batch."""
    if model_output.ndim == 1:
        return model_output[category]
    return model_output[..., category]


class ClassifierOutputTarget:
    """The raw score (logit) of one class.

    Args:
        category: index of the class.
    """

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return _pick(model_output, self.category)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category})"


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of one class."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return _pick(torch.softmax(model_output, dim=-1), self.category)


class ClassifierOutputReST(ClassifierOutputTarget):
    """Logit minus cross-entropy of one class (pre- and post-softmax together).

    From "CAMs as Shapley Value-based Explainers" (https://arxiv.org/abs/2501.06261):
    ``s_c - CE(s, c) = s_c + log softmax(s)_c``.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        logits = model_output if model_output.ndim > 1 else model_output[None]
        labels = torch.full((logits.shape[0],), self.category, device=logits.device, dtype=torch.long)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        score = logits[:, self.category] - ce
        return score if model_output.ndim > 1 else score[0]


class BinaryClassifierOutputTarget(ClassifierOutputTarget):
    """The single logit of a binary classifier: itself for category 1, negated otherwise."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1 if self.category == 1 else -1
        return model_output * sign


class SoftmaxOutputTarget:
    """The whole softmax vector (summed into one score by the CAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=-1)


class RawScoresOutputTarget:
    """The whole raw output (summed into one score by the CAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output


class SemanticSegmentationTarget:
    """Sum of one class's scores over the pixels of a mask.

    Args:
        category: the class channel of the segmentation output ``[K, H, W]``.
        mask: ``[H, W]`` array or tensor (binary or soft) selecting the region.
    """

    def __init__(self, category: int, mask: Union[np.ndarray, torch.Tensor]) -> None:
        self.category = int(category)
        mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if mask.ndim != 2:
            raise ValueError(f"SemanticSegmentationTarget expects a 2-D [H, W] mask, got shape {tuple(mask.shape)}")
        self.mask = mask

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(device=model_output.device, dtype=model_output.dtype)
        return (model_output[self.category, :, :] * mask).sum()


class FasterRCNNBoxScoreTarget:
    """Score of detections matching reference boxes (IoU + class score).

    For every reference box and label, the detection with the highest IoU is
    taken; if the IoU exceeds ``iou_threshold`` and its label matches, IoU plus
    its class score is added. The target is the sum (0 if nothing matches).

    Args:
        labels: the class of each reference box.
        bounding_boxes: ``[N, 4]`` boxes in (x1, y1, x2, y2).
        iou_threshold: minimum IoU for a detection to count.
    """

    def __init__(self, labels: Sequence[int], bounding_boxes, iou_threshold: float = 0.5) -> None:
        self.labels = labels
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs: dict) -> torch.Tensor:
        boxes = model_outputs["boxes"]
        score = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        if len(boxes) == 0:
            return score
        for box, label in zip(self.bounding_boxes, self.labels):
            ref = torch.as_tensor(np.asarray(box) if not isinstance(box, torch.Tensor) else box)
            ref = ref.to(device=boxes.device, dtype=boxes.dtype).reshape(1, 4)
            ious = torchvision.ops.box_iou(ref, boxes)[0]
            best = ious.argmax()
            if ious[best] > self.iou_threshold and model_outputs["labels"][best] == label:
                score = score + ious[best] + model_outputs["scores"][best]
        return score


class FinerWeightedTarget:
    """Main class score minus similar classes' scores, weighted by their probabilities.

    Used by Finer-CAM: ``sum_k p_k (s_main - alpha * s_k) / sum_k p_k`` over the
    comparison classes ``k``.

    Args:
        main_category: the class to explain.
        comparison_categories: classes to contrast it with.
        alpha: how strongly to subtract the comparison scores.
    """

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float) -> None:
        self.main_category = int(main_category)
        self.comparison_categories = [int(c) for c in comparison_categories]
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        main = _pick(model_output, self.main_category)
        prob = torch.softmax(model_output, dim=-1)
        numerator = torch.zeros_like(main)
        denominator = torch.zeros_like(main)
        for idx in self.comparison_categories:
            weight = _pick(prob, idx)
            numerator = numerator + weight * (main - self.alpha * _pick(model_output, idx))
            denominator = denominator + weight
        return numerator / (denominator + 1e-9)
