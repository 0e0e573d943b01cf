"""Output adapters: find the scores (or the embedding) in whatever a model returns.

Many models do not return a plain tensor: torchvision's segmentation models
return ``{"out": ..., "aux": ...}``, Hugging Face models a ``ModelOutput`` with
``.logits``, CLIP ``logits_per_image``, models trained with auxiliary heads a
tuple. Targets such as :class:`~camlib.utils.model_targets.ClassifierOutputTarget`
call :func:`logits_of` on what they receive, and :class:`~camlib.base_cam.BaseCAM`
calls it to pick the top class when ``targets=None``, so these models need no
wrapper.

The functions only *select* from the structure; they work the same on the
output for a batch and on the output for one image (BaseCAM splits a batch's
output into one output per image, keeping its structure, before calling the
targets).

When the guess is wrong or impossible, pass ``output_adapter=`` to the CAM: a
function of the model's output that returns the tensor the targets should see,
for example ``output_adapter=lambda out: out["cls_logits"]``. It is applied
before every target call (and to choose the top class for ``targets=None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "EMBEDDING_KEYS",
    "LOGIT_KEYS",
    "OutputAdaptedTarget",
    "embedding_of",
    "is_detection_output",
    "logits_of",
]

#: Keys (or attributes) that hold class scores, tried in this order: Hugging Face
#: ``ModelOutput.logits``, torchvision segmentation's ``"out"``, CLIP's ``logits_per_image``.
LOGIT_KEYS: tuple[str, ...] = ("logits", "out", "logits_per_image")
#: Keys (or attributes) that hold an embedding, tried in this order (Hugging Face
#: CLIP ``image_embeds``/``text_embeds``, ``pooler_output``, and common names).
EMBEDDING_KEYS: tuple[str, ...] = (
    "image_embeds",
    "embeddings",
    "embedding",
    "embeds",
    "features",
    "pooler_output",
    "text_embeds",
)


def is_detection_output(output: Any) -> bool:
    """Whether ``output`` is a detector's output for one image or a batch: a dict
    with ``"boxes"``, or a list of such dicts (torchvision's detection models)."""
    if isinstance(output, Mapping):
        return "boxes" in output
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(isinstance(item, Mapping) and "boxes" in item for item in output)
    )


def _details(output: Any) -> str:
    """`` (keys: [...])`` for a mapping, `` (N items)`` for a sequence, else nothing."""
    if isinstance(output, Mapping):
        return f" (keys: {list(output.keys())})"
    if isinstance(output, (list, tuple)):
        return f" ({len(output)} items)"
    return ""


def _lookup(output: Any, keys: Sequence[str]) -> Any:
    """The first tensor found under one of ``keys`` (mapping key or attribute), or None."""
    for key in keys:
        if isinstance(output, Mapping):
            value = output.get(key)
        else:
            value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _find(output: Any, keys: Sequence[str]) -> Any:
    """The tensor under the first of ``keys`` present, else a tuple's or list's first tensor, else None."""
    found = _lookup(output, keys)
    if found is None and isinstance(output, (list, tuple)):
        found = next((item for item in output if isinstance(item, torch.Tensor)), None)
    return found


def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model's output.

    * a tensor: itself (the reference's behaviour, unchanged);
    * a mapping (``dict``, ``OrderedDict``, a Hugging Face ``ModelOutput``):
      the first of :data:`LOGIT_KEYS` present, so ``"logits"``, then
      ``"out"`` (torchvision segmentation), then ``"logits_per_image"`` (CLIP);
    * a tuple or list (auxiliary heads, ``return (logits, features)``): its
      ``logits`` field if it is a named tuple that has one, else its first tensor;
    * any other object with a tensor attribute named in :data:`LOGIT_KEYS`.

    Args:
        output: what the model returned, for a batch or for one image.

    Returns:
        The tensor of scores (not a copy).

    Raises:
        TypeError: when no scores can be found, e.g. a detector's boxes or a
            dict without a known key; the message shows what was received and
            how to pass ``output_adapter=``.

    Example:
        >>> import torch
        >>> logits_of({"out": torch.ones(1, 3, 4, 4), "aux": torch.zeros(1, 3, 4, 4)}).shape
        torch.Size([1, 3, 4, 4])
        >>> logits_of((torch.tensor([1.0, 2.0]), torch.zeros(8))).tolist()
        [1.0, 2.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    if is_detection_output(output):
        raise TypeError(
            f"the model returned a {type(output).__name__} of detections (boxes, labels, scores), not a "
            "tensor of class scores; explain detections with FasterRCNNBoxScoreTarget (e.g. "
            "FasterRCNNBoxScoreTarget.from_detections(detections) built from a torch.no_grad() forward pass)"
        )
    found = _find(output, LOGIT_KEYS)
    if found is not None:
        return found
    raise TypeError(
        f"the model returned a {type(output).__name__}, not a tensor of class scores{_details(output)}, and "
        f"camlib cannot tell which part holds them (it looks for {', '.join(repr(k) for k in LOGIT_KEYS)}, or the first "
        "tensor of a tuple); pass output_adapter=lambda out: ... to the CAM to select them (for example "
        "output_adapter=lambda out: out['scores']), or targets that take this output"
    )


def embedding_of(output: Any) -> torch.Tensor:
    """The embedding in a model's output (for similarity targets).

    * a tensor: itself;
    * a mapping or an object with attributes (a Hugging Face ``ModelOutput``):
      the first of :data:`EMBEDDING_KEYS` present (``image_embeds`` of
      ``CLIPVisionModelWithProjection``, ``pooler_output``, ...);
    * a tuple or list: its first tensor.

    Args:
        output: what the model returned, for a batch or for one image.

    Returns:
        The embedding tensor (not a copy).

    Raises:
        TypeError: when no embedding can be found.

    Example:
        >>> import torch
        >>> embedding_of({"image_embeds": torch.ones(4), "last_hidden_state": torch.zeros(5, 8)}).shape
        torch.Size([4])
    """
    if isinstance(output, torch.Tensor):
        return output
    found = _find(output, EMBEDDING_KEYS)
    if found is not None:
        return found
    raise TypeError(
        f"the model returned a {type(output).__name__}, not an embedding tensor{_details(output)}, and camlib "
        f"cannot tell which part is the embedding (it looks for {', '.join(repr(k) for k in EMBEDDING_KEYS)}); pass "
        "output_adapter=lambda out: ... to the CAM to select it"
    )


class OutputAdaptedTarget:
    """A target called on ``adapter(model_output)`` instead of the raw output.

    :class:`~camlib.base_cam.BaseCAM` wraps every target in one of these when it
    is given ``output_adapter=``. Attributes of the wrapped target (such as
    ``category``, which :class:`~camlib.cam.CAM` reads) are passed through.

    Args:
        target: the target (a callable of one image's output).
        adapter: selects, from one image's output, what ``target`` is called with.

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> target = OutputAdaptedTarget(ClassifierOutputTarget(1), lambda out: out["scores"])
        >>> target({"scores": torch.tensor([0.5, 2.0])}).item(), target.category
        (2.0, 1)
    """

    def __init__(self, target: Callable, adapter: Callable[[Any], Any]) -> None:
        self.target = target
        self.adapter = adapter

    def __call__(self, model_output: Any) -> torch.Tensor:
        return self.target(self.adapter(model_output))

    def __getattr__(self, name: str) -> Any:
        if name in ("target", "adapter") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.target, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, {getattr(self.adapter, '__name__', self.adapter)!r})"
