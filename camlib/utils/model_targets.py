"""Targets: callables that turn one image's model output into the score to explain.

A target is called with the output of the model for ONE image (for a
classifier, a 1-D tensor of logits) and returns a scalar tensor. Calling it
with a batch (2-D tensor) returns one score per row, as in pytorch-grad-cam.

The built-in targets also accept outputs that are not tensors: a dict
(``{"out": ...}`` of torchvision's segmentation models), a Hugging Face
``ModelOutput`` (``.logits``) or a tuple whose first tensor holds the scores;
see :func:`camlib.utils.model_outputs.logits_of`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torchvision

from camlib.utils.model_outputs import embedding_of, logits_of

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SimilarityToConceptTarget",
    "SoftmaxOutputTarget",
]


def _pick(model_output: Any, category: int) -> torch.Tensor:
    """Column ``category`` of a 1-D output, or of every row of a batch."""
    model_output = logits_of(model_output)
    classes = int(model_output.shape[-1]) if model_output.ndim else 0
    if not -classes <= category < classes:
        raise IndexError(
            f"class index {category} is out of range: the model's output has {classes} class score(s) "
            f"(shape {list(model_output.shape)}), so the class must be in 0..{classes - 1}; check the target's "
            "category (and that the model has the head you expect)"
        )
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
        return _pick(torch.softmax(logits_of(model_output), dim=-1), self.category)


class ClassifierOutputReST(ClassifierOutputTarget):
    """Logit minus cross-entropy of one class (pre- and post-softmax together).

    From "CAMs as Shapley Value-based Explainers" (https://arxiv.org/abs/2501.06261):
    ``s_c - CE(s, c) = s_c + log softmax(s)_c``.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        model_output = logits_of(model_output)
        logits = model_output if model_output.ndim > 1 else model_output[None]
        labels = torch.full((logits.shape[0],), self.category, device=logits.device, dtype=torch.long)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        score = logits[:, self.category] - ce
        return score if model_output.ndim > 1 else score[0]


class BinaryClassifierOutputTarget(ClassifierOutputTarget):
    """The single logit of a binary classifier: itself for category 1, negated otherwise."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1 if self.category == 1 else -1
        return logits_of(model_output) * sign


class SoftmaxOutputTarget:
    """The whole softmax vector (summed into one score by the CAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits_of(model_output), dim=-1)


class RawScoresOutputTarget:
    """The whole raw output (summed into one score by the CAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return logits_of(model_output)


class SemanticSegmentationTarget:
    """Sum of one class's scores over the pixels (or voxels) of a mask.

    Works on the ``[K, H, W]`` output of a 2-D segmentation model for one image
    (``[K, D, H, W]`` with a ``[D, H, W]`` mask for a 3-D one), and on
    structured outputs such as ``{"out": ..., "aux": ...}`` of torchvision's
    segmentation models (the ``"out"`` entry is used, see
    :func:`camlib.utils.model_outputs.logits_of`). Called with a batch
    ``[B, K, *S]`` it returns one score per image.

    Args:
        category: the class channel of the segmentation output.
        mask: ``[H, W]`` (or ``[D, H, W]``) array or tensor, binary or soft,
            selecting the region; the output's spatial size.

    Example:
        >>> import numpy as np, torch
        >>> mask = np.zeros((4, 4), np.float32); mask[:2, :2] = 1
        >>> SemanticSegmentationTarget(1, mask)({"out": torch.ones(3, 4, 4)}).item()
        4.0
    """

    def __init__(self, category: int, mask: Union[np.ndarray, torch.Tensor]) -> None:
        self.category = int(category)
        mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if mask.ndim not in (2, 3):
            raise ValueError(
                "SemanticSegmentationTarget expects a 2-D [H, W] mask (or a 3-D [D, H, W] mask for a "
                f"volumetric model), got shape {tuple(mask.shape)}"
            )
        self.mask = mask

    def __call__(self, model_output: Any) -> torch.Tensor:
        scores = logits_of(model_output)
        spatial = self.mask.ndim
        if scores.ndim not in (spatial + 1, spatial + 2) or tuple(scores.shape[-spatial:]) != tuple(self.mask.shape):
            raise ValueError(
                f"SemanticSegmentationTarget has a mask of shape {tuple(self.mask.shape)} but the model's "
                f"output for one image has shape {tuple(scores.shape)}; expected [K, "
                f"{', '.join(str(s) for s in self.mask.shape)}]. Build the mask at the output's size "
                "(e.g. from output.argmax(0) == category)"
            )
        mask = self.mask.to(device=scores.device, dtype=scores.dtype)
        selected = scores.select(-spatial - 1, self.category) * mask
        return selected.sum(dim=tuple(range(-spatial, 0)))


class SimilarityToConceptTarget:
    r"""Cosine similarity between the model's embedding of the image and a concept embedding.

    For models that output an embedding instead of class scores: an image
    encoder (a ResNet whose ``fc`` is ``nn.Identity()``), the image tower of
    CLIP (``CLIPVisionModelWithProjection``, whose output's ``image_embeds`` is
    used, see :func:`camlib.utils.model_outputs.embedding_of`), a re-identification
    or retrieval model. The concept is any vector in the same space: the
    embedding of a text prompt (CLIP's ``get_text_features``), of another
    image, or the mean embedding of a set of images. For CLIP, the similarity
    to a prompt's text embedding is ``logits_per_image`` for that prompt divided
    by the model's ``logit_scale``.

    .. math::
        s = \frac{e \cdot c}{\lVert e \rVert \, \lVert c \rVert}

    Called with one image's embedding ``[D]`` it returns a scalar; with a batch
    ``[B, D]``, one score per image.

    Args:
        concept_embedding: ``[D]`` (or ``[1, D]``) tensor or array.

    Example:
        >>> import torch
        >>> target = SimilarityToConceptTarget(torch.tensor([1.0, 0.0]))
        >>> round(target(torch.tensor([1.0, 1.0])).item(), 4)
        0.7071
    """

    def __init__(self, concept_embedding: Union[np.ndarray, torch.Tensor]) -> None:
        concept = torch.as_tensor(
            np.asarray(concept_embedding) if not isinstance(concept_embedding, torch.Tensor) else concept_embedding
        )
        if concept.ndim == 2 and concept.shape[0] == 1:
            concept = concept[0]
        if concept.ndim != 1 or concept.numel() == 0 or not concept.is_floating_point():
            raise ValueError(
                "SimilarityToConceptTarget expects one float embedding of shape [D] (or [1, D]), got "
                f"{concept.dtype} of shape {tuple(concept.shape)}; for several concepts make one target each"
            )
        self.concept_embedding = concept.detach().float()

    def __call__(self, model_output: Any) -> torch.Tensor:
        embedding = embedding_of(model_output)
        dim = self.concept_embedding.numel()
        if embedding.shape[-1] != dim:
            if embedding.numel() == dim:  # e.g. [D, 1, 1] from a pooled conv feature map
                embedding = embedding.reshape(dim)
            elif embedding.ndim > 1 and embedding[0].numel() == dim:
                embedding = embedding.reshape(embedding.shape[0], dim)
            else:
                raise ValueError(
                    f"the model's embedding has shape {tuple(embedding.shape)} but the concept has {dim} "
                    "dimensions; compute the concept with the same model (or projection)"
                )
        concept = self.concept_embedding.to(device=embedding.device, dtype=torch.float32)
        return torch.nn.functional.cosine_similarity(embedding.float(), concept.expand_as(embedding), dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.concept_embedding.numel()})"


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

    def __init__(
        self, labels: Sequence[int], bounding_boxes: Union[torch.Tensor, np.ndarray, Sequence], iou_threshold: float = 0.5
    ) -> None:
        self.labels = labels
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    @classmethod
    def from_detections(
        cls,
        detections: Mapping[str, torch.Tensor],
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_boxes: Optional[int] = None,
    ) -> FasterRCNNBoxScoreTarget:
        """The target that explains a detector's own detections for one image.

        Typically ``detections = model(x)[i]`` from a ``torch.no_grad()`` forward
        pass of a torchvision detector (Faster R-CNN, RetinaNet, FCOS, ...): the
        detections scoring at least ``score_threshold`` (the ``max_boxes`` best
        of them, when given) become the reference boxes and labels.

        Args:
            detections: a dict with ``"boxes"`` ``[N, 4]``, ``"labels"`` ``[N]`` and ``"scores"`` ``[N]``.
            score_threshold: keep detections scoring at least this.
            iou_threshold: passed to the target.
            max_boxes: keep at most this many (the highest-scoring).

        Example:
            >>> import torch
            >>> detections = {"boxes": torch.tensor([[0., 0., 4., 4.], [1., 1., 3., 3.]]),
            ...               "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.2])}
            >>> target = FasterRCNNBoxScoreTarget.from_detections(detections)
            >>> target.labels, round(target(detections).item(), 4)
            ([2], 1.9)
        """
        if not isinstance(detections, Mapping) or not {"boxes", "labels", "scores"} <= set(detections):
            raise TypeError(
                "from_detections expects one image's detections: a dict with 'boxes', 'labels' and 'scores' "
                f"(an item of a torchvision detector's output list), got {type(detections).__name__}"
            )
        scores = detections["scores"].detach()
        keep = torch.nonzero(scores >= score_threshold).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        if max_boxes is not None:
            keep = keep[: int(max_boxes)]
        boxes = detections["boxes"].detach()[keep].cpu()
        labels = [int(label) for label in detections["labels"][keep].tolist()]
        return cls(labels, boxes, iou_threshold)

    def __call__(self, model_outputs: dict) -> torch.Tensor:
        if not isinstance(model_outputs, Mapping) or "boxes" not in model_outputs:
            raise TypeError(
                "FasterRCNNBoxScoreTarget scores one image's detections (a dict with 'boxes', 'labels' and "
                f"'scores', as torchvision's detection models return), got {type(model_outputs).__name__}"
            )
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
        model_output = logits_of(model_output)
        main = _pick(model_output, self.main_category)
        prob = torch.softmax(model_output, dim=-1)
        numerator = torch.zeros_like(main)
        denominator = torch.zeros_like(main)
        for idx in self.comparison_categories:
            weight = _pick(prob, idx)
            numerator = numerator + weight * (main - self.alpha * _pick(model_output, idx))
            denominator = denominator + weight
        return numerator / (denominator + 1e-9)
