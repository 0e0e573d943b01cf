"""Score many modified copies of a layer's output through the part of the model after it.

AblationCAM (a copy per ablated channel) and ReciproCAM (a copy per spatial
position) need the same thing: given a target layer's output for a batch of
images, build N modified copies of it (copy i belongs to image
``image_of[i]``), run each through the rest of the network and apply the
image's target to the result. :func:`score_layer_copies` does that once for
every method:

* **split path**: when the model can be cut after the layer
  (:func:`camlib.utils.fx_split.split_after_layer`) and the cut reproduces the
  model's output on the input, only the part after the layer runs. When that
  part also needs values computed before the layer (the input of a residual
  block an inner layer sits in), those are computed once per image and chunk
  size and passed along.
* **full path**: otherwise the whole model runs on copies of the input, and a
  forward hook (removed in ``finally``, ignoring other threads' forward passes)
  replaces the layer's output with the modified copies. A ``torch.compile``'d
  model runs through the module it wraps, where hooks always run.

Copies are built lazily, ``batch_size`` at a time, the scores stay on the
device, and the user's model is never modified.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from camlib.utils.batched import batched_target_scores
from camlib.utils.fx_split import LayerSplit, outputs_match, split_after_layer
from camlib.utils.model_state import eager_module

__all__ = ["TailScores", "checked_split", "class_probabilities", "concat_outputs", "score_layer_copies"]

logger = logging.getLogger(__name__)


class TailScores(NamedTuple):
    """What :func:`score_layer_copies` returns.

    Attributes:
        scores: float32 ``[N]``, the target score of each copy, on the model's device.
        path: ``"split"`` (only the part after the layer ran) or ``"full"`` (the whole model).
    """

    scores: torch.Tensor
    path: str


def class_probabilities(outputs: Any) -> Any:
    """The softmax over classes of a ``[N, classes]`` floating-point output (as float32; the sigmoid
    of a single logit); any other
    output (a segmentation map, a detector's dicts) unchanged. The output transform of the methods
    that score class probabilities (ReciproCAM, GroupCAM, PolyCAM)."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.is_floating_point():
        if outputs.shape[-1] == 1:  # one logit: its sigmoid
            return torch.sigmoid(outputs.float())
        return torch.softmax(outputs.float(), dim=-1)
    return outputs


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def concat_outputs(parts: List[Any]) -> Any:
    """Concatenate layer outputs of the same structure (tensors, tuples, dicts) along dim 0."""
    if len(parts) == 1:
        return parts[0]
    flat = [tree_flatten(part) for part in parts]
    spec = flat[0][1]
    leaves = [
        torch.cat(group) if isinstance(group[0], torch.Tensor) else group[0]
        for group in zip(*(leaves for leaves, _ in flat))
    ]
    return tree_unflatten(leaves, spec)


def _count(activation: Any) -> int:
    """The number of copies in a batch of layer outputs (its first tensor's length)."""
    leaves, _ = tree_flatten(activation)
    return next(len(leaf) for leaf in leaves if isinstance(leaf, torch.Tensor))


def checked_split(
    model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, raw: Any, outputs: Any
) -> Optional[LayerSplit]:
    """The split of ``model`` after ``layer``, if it reproduces ``outputs`` from ``raw`` (the
    layer's output on ``x``); None when the model cannot be split there or the split disagrees."""
    split = split_after_layer(eager_module(model), layer)
    if split is None:
        return None
    with torch.no_grad():
        side = () if split.prefix is None else split.prefix(x.clone())
        reproduced = split.rest(_clone(raw), *side)
    if not outputs_match(reproduced, outputs):
        logger.debug("the split model does not reproduce the model's output; running the whole model")
        return None
    return split


def _spans(image_of: Sequence[int]) -> List[tuple]:
    """``(image, first, last)`` runs of consecutive copies of one image."""
    spans: List[tuple] = []
    for i, b in enumerate(image_of):
        if spans and spans[-1][0] == b and spans[-1][2] == i:
            spans[-1] = (b, spans[-1][1], i + 1)
        else:
            spans.append((b, i, i + 1))
    return spans


def score_layer_copies(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    raw: Any,
    outputs: Any,
    image_of: Sequence[int],
    make_copies: Callable[[int, int], Any],
    targets: Sequence[Callable],
    *,
    batch_size: int,
    progress: Optional[bool] = None,
    desc: Optional[str] = None,
    split: bool = True,
    transform_outputs: Optional[Callable[[Any], Any]] = None,
) -> TailScores:
    """Target scores of modified copies of ``layer``'s output, run through the rest of the model.

    Args:
        model: the model (not modified; run in the mode it is in).
        layer: the submodule whose output is replaced; called once per forward pass.
        x: the input ``[B, ...]`` the model ran on.
        raw: the layer's output on ``x``, as the layer returned it.
        outputs: the model's output on ``x`` (checks that a split reproduces it).
        image_of: for each copy, the image it belongs to (``N`` entries).
        make_copies: ``(start, stop) -> copies start..stop-1``, in the layer's output format
            (tensors with the copies on dim 0); called lazily, chunk by chunk.
        targets: one target per image; copy i is scored with ``targets[image_of[i]]``.
        batch_size: copies per forward pass.
        progress: show a progress bar (None: see :func:`camlib.utils.progress.progress_enabled`).
        desc: the progress bar's label.
        split: try to run only the part of the model after ``layer`` (default); False always
            runs the whole model.
        transform_outputs: applied to each chunk's output before the targets (e.g. a softmax).

    Returns:
        :class:`TailScores`: the ``[N]`` scores and the path taken.
    """
    image_of = [int(i) for i in image_of]
    count = len(image_of)
    device = x.device
    common = dict(batch_size=batch_size, progress=progress, desc=desc)

    def targets_for(start: int, stop: int) -> list:
        return [targets[image_of[i]] for i in range(start, stop)]

    def finish(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return run if transform_outputs is None else (lambda chunk: transform_outputs(run(chunk)))

    cut = checked_split(model, layer, x, raw, outputs) if split and count else None
    if cut is not None and cut.prefix is None:
        scores = batched_target_scores(finish(cut.rest), count, make_copies, targets_for, **common)
        return TailScores(scores.to(device), "split")
    if cut is not None:
        # The side values depend on the input only: computed once per image and chunk size
        # (n copies of the image), they are what the whole model computes for every chunk.
        results = []
        for image, first, last in _spans(image_of):
            side_of: dict = {}

            def run(activation: Any, image: int = image, side_of: dict = side_of) -> Any:
                n = _count(activation)
                if n not in side_of:
                    side_of[n] = cut.prefix(x[image : image + 1].expand(n, *x.shape[1:]).clone())
                return cut.rest(activation, *_clone(side_of[n]))

            def copies_of(start: int, stop: int, first: int = first) -> Any:
                return make_copies(first + start, first + stop)

            def targets_of(start: int, stop: int, first: int = first) -> list:
                return targets_for(first + start, first + stop)

            results.append(batched_target_scores(finish(run), last - first, copies_of, targets_of, **common))
        scores = torch.cat(results) if results else torch.zeros(0, device=device)
        return TailScores(scores.to(device), "split")

    rows = torch.tensor(image_of, device=device, dtype=torch.long)
    replacement: dict = {}
    owner = threading.get_ident()
    eager = eager_module(model)  # a compiled graph may skip the hook

    def replace_output(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if threading.get_ident() != owner:
            return None  # another thread's forward pass on the model (e.g. the user's own)
        return replacement["output"]

    def run_full(chunk: tuple) -> Any:
        inputs, replacement["output"] = chunk
        return eager(inputs)

    def make_inputs(start: int, stop: int) -> tuple:
        return x[rows[start:stop]], make_copies(start, stop)

    handle = layer.register_forward_hook(replace_output)
    try:
        scores = batched_target_scores(finish(run_full), count, make_inputs, targets_for, **common)
    finally:
        handle.remove()
        replacement.clear()
    return TailScores(scores.to(device), "full")
