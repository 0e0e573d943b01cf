"""The one loop for methods and metrics that score many perturbed inputs.

ScoreCAM, AblationCAM and the perturbation metrics all need the same thing:
run the model over N inputs that are built lazily, chunk by chunk, and apply
each input's target to its output. Keeping that loop here means the chunking,
progress bar, no-grad mode and device handling are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from camlib.utils.messages import warn_user
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_bar
from camlib.utils.validation import all_finite

__all__ = ["batched_target_scores", "check_finite_scores", "score_outputs", "split_outputs", "warn_if_scores_equal"]


def split_outputs(outputs: Any, batch: int) -> list:
    """One output per image from a model's batch output.

    A tensor is split along its first dimension; a list of ``batch`` dicts
    (torchvision detection models) is taken as it is; any other structure
    (dict, tuple, named tuple) is split leaf by leaf, every tensor leaf that has
    ``batch`` rows giving its i-th row to image i.
    """
    if isinstance(outputs, torch.Tensor):
        if outputs.ndim == 0 or outputs.shape[0] != batch:
            raise ValueError(
                f"the model returned a tensor of shape {list(outputs.shape)} for a batch of {batch} images; "
                "expected the batch as its first dimension"
            )
        return list(outputs.unbind(0))
    if isinstance(outputs, (list, tuple)) and len(outputs) == batch and all(isinstance(o, Mapping) for o in outputs):
        return list(outputs)
    leaves, spec = tree_flatten(outputs)
    batched = [isinstance(leaf, torch.Tensor) and leaf.ndim > 0 and leaf.shape[0] == batch for leaf in leaves]
    if not any(batched):
        raise ValueError(
            f"cannot split the model's {type(outputs).__name__} output into {batch} per-image outputs: no "
            "tensor in it has the batch as its first dimension; wrap the model so it returns a tensor"
        )
    return [
        tree_unflatten([leaf[i] if is_batched else leaf for leaf, is_batched in zip(leaves, batched)], spec)
        for i in range(batch)
    ]


def check_finite_scores(scores: torch.Tensor, what: str, consequence: str) -> None:
    """Raise a ``ValueError`` if some of ``scores`` are NaN or Inf, saying which and why it matters.

    Args:
        scores: the scores, one per input (first dimension).
        what: what they are, for the message ("the target score", "the score of a masked input").
        consequence: what a non-finite score would break.
    """
    if all_finite(scores):
        return
    finite = torch.isfinite(scores)
    bad = (~finite).reshape(finite.shape[0], -1).any(dim=1).nonzero()[:, 0].tolist() if finite.ndim else [0]
    values = scores.reshape(-1)[~finite.reshape(-1)][:3].tolist()
    raise ValueError(
        f"{what} is not finite ({', '.join(str(v) for v in values)}) for {len(bad)} of {finite.shape[0] if finite.ndim else 1} "
        f"input(s) (first: {bad[:5]}); {consequence}. The model's output holds NaN or Inf for this input: check "
        "the input (torch.isfinite(x).all()), the weights, and the output (a float16 model can overflow; run it "
        "in float32)"
    )


#: The message's advice on degenerate scores, shared by the methods that warn.
DEGENERATE_HINT = (
    "The likely cause is an untrained or zero-initialised classification head (torchvision zero-initialises "
    "the head of its ViTs when weights=None): check model(x) - every class gets the same logit when the head "
    "is zero - and load trained weights."
)


def warn_if_scores_equal(
    scores: torch.Tensor, image: torch.Tensor, method: str, what: str, consequence: str
) -> None:
    """Warn when, for some image, every one of its (at least two) scored inputs gets the same score.

    Args:
        scores: ``[N]`` scores of perturbed inputs.
        image: ``[N]`` the image each belongs to (``0..B-1``).
        method: the method's name, for the message.
        what: what was scored ("masked inputs", "ablated channels").
        consequence: what that does to the map.
    """
    if scores.numel() < 2:
        return
    image = image.to(scores.device).long()
    batch = int(image.max()) + 1
    scores = scores.float()
    high = torch.full((batch,), -torch.inf, device=scores.device).scatter_reduce(0, image, scores, "amax")
    low = torch.full((batch,), torch.inf, device=scores.device).scatter_reduce(0, image, scores, "amin")
    count = torch.bincount(image, minlength=batch)
    equal = (high == low) & (count >= 2)
    if bool(equal.any()):
        images = equal.nonzero()[:, 0].tolist()
        warn_user(
            f"{method}: all {int(count[images[0]])} {what} of image(s) {images[:5]} get exactly the same target "
            f"score ({float(high[images[0]]):.4g}), so {consequence}. {DEGENERATE_HINT}",
        )


def score_outputs(outputs: Any, targets: Sequence[Callable]) -> torch.Tensor:
    """Apply ``targets[i]`` to the i-th image's output; one score per image.

    The scores stay on the device (no ``.item()``), so there is no host sync per
    sample. A target returning several values (e.g. ``RawScoresOutputTarget``)
    contributes their sum.
    """
    fast = _class_scores(outputs, targets)
    if fast is not None:
        return fast
    per_image = split_outputs(outputs, len(targets))
    scores = [torch.as_tensor(target(output)).reshape(-1).sum() for target, output in zip(targets, per_image)]
    return torch.stack(scores).float()


def _class_scores(outputs: Any, targets: Sequence[Callable]) -> Optional[torch.Tensor]:
    """One gather instead of one call per image, for the common case: a ``[B, K]``
    logits tensor and plain :class:`ClassifierOutputTarget` targets (same values as
    calling them). None when the case does not apply."""
    if not (isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.shape[0] == len(targets) > 0):
        return None
    if not all(type(target) is ClassifierOutputTarget for target in targets):
        return None
    classes = outputs.shape[1]
    categories = [target.category for target in targets]
    if not all(-classes <= c < classes for c in categories):
        return None  # the per-image call raises the usual IndexError
    index = torch.tensor([c % classes for c in categories], device=outputs.device)
    return outputs.gather(1, index[:, None])[:, 0].float()


@torch.no_grad()
def batched_target_scores(
    model: Callable,
    num_inputs: int,
    make_inputs: Callable[[int, int], Any],
    targets_for: Callable[[int, int], Sequence[Callable]],
    batch_size: int,
    progress: Optional[bool] = None,
    desc: Optional[str] = None,
) -> torch.Tensor:
    """Score ``num_inputs`` lazily built inputs in chunks of ``batch_size``.

    Args:
        model: called on each chunk (anything ``make_inputs`` returns).
        num_inputs: how many inputs there are.
        make_inputs: ``(start, stop) -> batch`` for inputs ``start..stop-1``; built
            only when needed, so the whole set never sits in memory at once.
        targets_for: ``(start, stop) -> targets``, one callable per input of the chunk.
        batch_size: inputs per forward pass.
        progress: show a tqdm bar (None: see :func:`camlib.base_cam.progress_enabled`).
        desc: the bar's label.

    Returns:
        float32 scores ``[num_inputs]`` on the model output's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    results = []
    with progress_bar(total=num_inputs, progress=progress, desc=desc, leave=False, unit="input") as bar:
        for start in range(0, num_inputs, batch_size):
            stop = min(start + batch_size, num_inputs)
            outputs = model(make_inputs(start, stop))
            results.append(score_outputs(outputs, targets_for(start, stop)))
            del outputs  # not alive during the next chunk's forward pass (it adds to the peak)
            bar.update(stop - start)
    if not results:
        return torch.zeros(0)
    return torch.cat(results)
