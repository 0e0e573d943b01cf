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

import copy
import logging
import threading
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from camlib.utils.batched import batched_target_scores
from camlib.utils.fx_split import LayerSplit, outputs_match, split_after_layer
from camlib.utils.model_state import eager_module
from camlib.utils.validation import model_device, model_float_dtype

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


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    if scores.shape[-1] == 1:  # one logit: its sigmoid
        return torch.sigmoid(scores.float())
    return torch.softmax(scores.float(), dim=-1)


def class_probabilities(outputs: Any, scores_of: Optional[Callable[[Any], Any]] = None) -> Any:
    """The model's output with its class scores replaced by their softmax (float32; the sigmoid of a
    single logit). The output transform of the methods that score class probabilities (ReciproCAM,
    GroupCAM, PolyCAM), so their targets see probabilities where they would see logits.

    Args:
        outputs: the model's output for a batch.
        scores_of: finds the ``[N, classes]`` scores in ``outputs`` (a CAM's
            :meth:`~camlib.base_cam.BaseCAM.model_scores`: its ``output_adapter``, or
            :func:`~camlib.utils.model_outputs.logits_of`); None: only a plain tensor output is scores.

    Returns:
        ``outputs`` of the same structure (a tensor, a tuple, a dict, a Hugging Face ``ModelOutput``)
        with the scores tensor replaced by probabilities; unchanged when there are no ``[N, classes]``
        floating-point scores (a segmentation map, a detector's dicts) or when the scores are computed
        from the output rather than found in it (an adapter that is not a plain selection).

    Example:
        >>> import torch
        >>> out = class_probabilities({"logits": torch.zeros(1, 4), "aux": torch.ones(1, 2)}, lambda o: o["logits"])
        >>> out["logits"].tolist(), out["aux"].tolist()
        ([[0.25, 0.25, 0.25, 0.25]], [[1.0, 1.0]])
    """
    if isinstance(outputs, torch.Tensor) or scores_of is None:
        scores = outputs
    else:
        try:
            scores = scores_of(outputs)
        except (TypeError, KeyError, AttributeError, IndexError):
            return outputs  # no class scores in this output (a detector's boxes)
    if not (isinstance(scores, torch.Tensor) and scores.ndim == 2 and scores.is_floating_point()):
        return outputs
    if scores is outputs:
        return _probabilities(scores)
    leaves, spec = tree_flatten(outputs)
    found = [i for i, leaf in enumerate(leaves) if leaf is scores]
    if not found:
        return outputs
    probabilities = _probabilities(scores)
    return tree_unflatten([probabilities if i in found else leaf for i, leaf in enumerate(leaves)], spec)


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
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    raw: Any,
    outputs: Any,
    cache: Optional[dict] = None,
) -> Optional[LayerSplit]:
    """The split of ``model`` after ``layer``, if it reproduces ``outputs`` from ``raw`` (the
    layer's output on ``x``); None when the model cannot be split there or the split disagrees.

    ``cache``: a dict the caller keeps between calls (a CAM object's), so the model is traced once
    per layer, not once per call. A cached split is still checked against ``outputs`` on every
    call, and traced again if it no longer reproduces them (the model was changed)."""
    eager = eager_module(model)
    key = (eager, layer)
    cached = cache is not None and key in cache
    split = cache[key] if cached else split_after_layer(eager, layer)
    if cache is not None:
        cache[key] = split
    if split is None:
        return None
    if not _reproduces(split, x, raw, outputs):
        if cached:
            cache.pop(key, None)
            return checked_split(model, layer, x, raw, outputs, cache)
        logger.debug("the split model does not reproduce the model's output; running the whole model")
        return None
    return split


def _reproduces(split: LayerSplit, x: torch.Tensor, raw: Any, outputs: Any) -> bool:
    with torch.no_grad():
        side = () if split.prefix is None else split.prefix(x.clone())
        reproduced = split.rest(_clone(raw), *side)
    return outputs_match(reproduced, outputs)


def _runs_in_half_precision(model: torch.nn.Module, device: torch.device) -> bool:
    dtype = model_float_dtype(model)
    return dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(device.type)


def _to_float32(tree: Any) -> Any:
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, tree)


def _float32_copies(make_copies: Callable[[int, int], Any]) -> Callable[[int, int], Any]:
    return lambda start, stop: _to_float32(make_copies(start, stop))


def _float32_split(cut: LayerSplit) -> LayerSplit:
    """``cut`` with its tail replaced by a float32 copy that runs with autocast off (the prefix, which
    computes side values from the input, stays the model's: its outputs are cast to float32)."""
    tail = copy.deepcopy(cut.rest).float()
    device = model_device(tail, torch.device("cpu"))

    def rest(*args: Any) -> Any:
        with torch.autocast(device.type, enabled=False):
            return tail(*_to_float32(args))

    prefix = cut.prefix
    if prefix is not None:
        original = prefix

        def prefix(*args: Any) -> Any:
            return _to_float32(original(*args))

    return cut._replace(rest=rest, prefix=prefix)


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
    float32_tail: bool = False,
    split_cache: Optional[dict] = None,
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
        float32_tail: when the split path is taken and the model runs in half precision
            (``float16``/``bfloat16`` parameters, or under ``torch.autocast``), run a float32 copy of
            the part after the layer, autocast off, on float32 copies (the user's model is not
            touched). For methods whose map is the small differences between the copies' scores,
            which half precision would round away.
        split_cache: a dict kept between calls to trace the model once per layer (see
            :func:`checked_split`).

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

    cut = checked_split(model, layer, x, raw, outputs, split_cache) if split and count else None
    if cut is not None and float32_tail and _runs_in_half_precision(model, device):
        cut = _float32_split(cut)
        make_copies = _float32_copies(make_copies)
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
