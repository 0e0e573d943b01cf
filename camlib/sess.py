"""SESS: enhance any CAM method by scaling the image and sliding a window over it.

The image is resized to several scales; a square window slides over every
scale; each patch is scored by the model and explained by a base CAM method;
the patch maps, weighted by their patch's score, are put back where they came
from and fused into one map per image.

Everything runs batched, in torch, on the model's device: patches of all
images, scales and windows are cut lazily (one resized scale kept at a time),
scored through :func:`camlib.utils.batched.batched_target_scores` and explained
by the base method ``batch_size`` patches at a time, whatever image they come
from. Pasting a patch map back and resizing it to the image is one linear map,
so it is applied as two small matrix products per patch (the same bilinear
sampling as ``cv2.resize``) instead of building full-size canvases.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.transforms.functional import InterpolationMode, resize

from camlib.cam_wrapper import CAMWrapper, build_base_cam
from camlib.grad_cam import GradCAM
from camlib.registry import register_method
from camlib.utils.batched import batched_target_scores
from camlib.utils.image import gaussian_blur, linear_resize_matrix, scale_cam_image
from camlib.utils.model_state import eval_mode
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_bar
from camlib.utils.validation import check_input_tensor, model_device, model_float_dtype

__all__ = ["SESS", "sliding_window", "window_starts"]

#: Kernel size and standard deviation of the Gaussian blur applied with ``smooth=True``.
SMOOTH_KERNEL_SIZE = 11
SMOOTH_SIGMA = 5.0


# -- windows ---------------------------------------------------------------------------------------
def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def window_starts(length: int, step_size: int, window_size: int) -> List[int]:
    """Where windows start along one axis of ``length`` pixels.

    Windows start every ``step_size`` pixels; the first window reaching the end
    is moved back so that it ends exactly at the border (so the last two may
    overlap more than the others), and no window starts after it.

    Args:
        length: size of the axis.
        step_size: stride between window starts.
        window_size: size of a window.

    Returns:
        the start offsets, in increasing order.

    Example:
        >>> window_starts(10, 4, 4)
        [0, 4, 6]
    """
    step_size = _check_positive_int("step_size", step_size)
    window_size = _check_positive_int("window_size", window_size)
    starts = []
    for start in range(0, int(length), step_size):
        if start + window_size >= length:
            starts.append(max(int(length) - window_size, 0))
            break
        starts.append(start)
    return starts


def sliding_window(height: int, width: int, step_size: int, window_size: int) -> List[Tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the windows covering a ``height x width`` image.

    Row-major order (all windows of the first row first); see
    :func:`window_starts` for the positions along each axis.

    Example:
        >>> sliding_window(4, 6, 4, 4)
        [(0, 0), (2, 0)]
    """
    xs = window_starts(width, step_size, window_size)
    return [(x, y) for y in window_starts(height, step_size, window_size) for x in xs]


# -- torch helpers -------------------------------------------------------------------------------
def _resized_size(height: int, width: int, shorter: int) -> Tuple[int, int]:
    """The size torchvision's ``resize(img, shorter)`` gives: the shorter side set to
    ``shorter``, the longer scaled and truncated."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


class _PatchGrid:
    """Every window of every scale of a batch of images, cut on demand.

    Patch ``p`` is the window at ``(xs[p], ys[p])`` of scale ``scale_of[p]``;
    patches are ordered scale by scale, then row-major as :func:`sliding_window`.
    The resized images of one scale are kept at a time.
    """

    def __init__(self, images: torch.Tensor, scales: Sequence[int], window: int, step: int) -> None:
        self.images = images
        self.window = window
        self.height, self.width = images.shape[-2:]
        self.sizes = [_resized_size(self.height, self.width, scale) for scale in scales]
        scale_of, xs, ys = [], [], []
        for index, (height, width) in enumerate(self.sizes):
            for x, y in sliding_window(height, width, step, window):
                scale_of.append(index)
                xs.append(x)
                ys.append(y)
        self.scale_of = torch.tensor(scale_of, dtype=torch.long)
        self.xs = torch.tensor(xs, dtype=torch.long)
        self.ys = torch.tensor(ys, dtype=torch.long)
        self._resized: Optional[Tuple[int, torch.Tensor]] = None
        self._matrices: dict = {}

    def __len__(self) -> int:
        return len(self.scale_of)

    def _scaled(self, index: int) -> torch.Tensor:
        if self._resized is None or self._resized[0] != index:
            scaled = resize(
                self.images, list(self.sizes[index]), interpolation=InterpolationMode.BILINEAR, antialias=True
            )
            self._resized = (index, scaled)
        return self._resized[1]

    def _groups(self, patches: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(scale, positions)`` of the patches of each scale among ``patches``."""
        scale_of = self.scale_of[patches]
        for index in torch.unique(scale_of).tolist():
            yield index, (scale_of == index).nonzero().flatten()

    def _window_indices(self, starts: torch.Tensor) -> torch.Tensor:
        return (starts[:, None] + torch.arange(self.window)).to(self.images.device)

    def cut(self, patches: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Patch ``patches[i]`` of image ``images[i]`` (CPU index tensors): ``[n, C, w, w]``."""
        out = self.images.new_empty(len(patches), self.images.shape[1], self.window, self.window)
        for index, where in self._groups(patches):
            chosen = patches[where]
            rows = self._window_indices(self.ys[chosen])
            cols = self._window_indices(self.xs[chosen])
            image = images[where].to(self.images.device)
            # Advanced indices around a slice: the result is [n, w, w, C].
            cut = self._scaled(index)[image[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            out[where.to(out.device)] = cut.permute(0, 3, 1, 2)
        return out

    def paste(self, maps: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Put ``[n, w, w]`` patch maps back into their scale's frame (zeros elsewhere)
        and resize that frame to the image's size: ``[n, H, W]``.

        Both steps are linear, so patch ``p`` becomes ``Ry[:, rows_p] @ map @ Rx[:, cols_p]^T``
        with ``Ry``, ``Rx`` the resizing matrices of its scale.
        """
        out = maps.new_empty(len(patches), self.height, self.width)
        for index, where in self._groups(patches):
            resize_y, resize_x = self._resize_matrices(index, maps.device)
            chosen = patches[where]
            left = resize_y[:, self._window_indices(self.ys[chosen]).to(maps.device)].permute(1, 0, 2)
            right = resize_x[:, self._window_indices(self.xs[chosen]).to(maps.device)].permute(1, 2, 0)
            where = where.to(maps.device)
            out[where] = torch.bmm(torch.bmm(left, maps[where]), right).to(out.dtype)
        return out

    def _resize_matrices(self, index: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if index not in self._matrices:
            height, width = self.sizes[index]
            self._matrices[index] = (
                linear_resize_matrix(height, self.height, device),
                linear_resize_matrix(width, self.width, device),
            )
        return self._matrices[index]


# -- the method -----------------------------------------------------------------------------------
@register_method("sess", title="SESS")
class SESS(CAMWrapper):
    r"""SESS: Saliency Enhancing with Scaling and Sliding.

    Tursun, Denman, Sridharan & Fookes, "SESS: Saliency Enhancing with Scaling
    and Sliding", ECCV 2022. https://arxiv.org/abs/2207.01769

    A wrapper that makes any CAM method (``base_method``) more robust to object
    scale, to several instances of the target and to distractors. The image is
    resized so that its shorter side is each of ``scales``; a
    ``window_size``-pixel square window slides over each scale with stride
    ``step_size``. For patch :math:`p` with target score :math:`s_p` (the
    target applied to the softmax of the model's output, clipped at 0), the
    base method's map :math:`M_p \in [0, 1]` is weighted by the channel-wise
    weight :math:`\hat s_p = s_p / \max_q s_q` and pasted back at its place,
    :math:`P_p = \mathcal{R}(\hat s_p M_p)` (zero outside the patch, resized to
    the image). With ``pre_filter_ratio`` :math:`r` only the
    :math:`\lceil (1 - r) N \rceil` best-scoring patches are explained. The
    fusion is a spatial weighted average over the patches that cover each pixel
    with a value above ``theta``:

    .. math::
        L(x) = \frac{\sum_p P_p(x)\,[P_p(x) > \theta]}{\sum_p [P_p(x) > \theta]}

    (or :math:`\max_p P_p(x)` with ``pool="max"``), then optionally a Gaussian
    blur (11 x 11, :math:`\sigma = 5`), then min-max scaling.

    Cost: one forward pass per patch to score it, and the base method's cost
    for each kept patch; with the defaults (12 scales) about 120 patches for a
    square image. ``batch_size`` patches go through the model at a time, mixed
    across the images of the batch.
    Output: ``np.float32 [B, H, W]`` in [0, 1] (4-D image batches only).

    Args:
        model: the network; not modified (eval mode during calls only).
        target_layers: layers explained by the base method.
        reshape_transform: passed to the base method.
        base_method: the CAM class applied to every patch, e.g. ``GradCAM``.
        scales: sizes the shorter side of the image is resized to; every one
            must be at least ``window_size``. None: ``num_scales`` scales from
            ``window_size`` up, ``round(scale_step_ratio * window_size)`` apart
            (224, 288, ..., 928 for a 224-pixel image, as in the paper).
        num_scales: how many scales when ``scales`` is None.
        scale_step_ratio: distance between scales, as a fraction of the window.
        window_size: side of the square window; None: the image's shorter side
            (so the first scale is the image itself).
        step_size: stride of the window; None: ``window_size`` (windows touching
            the right/bottom border are moved back inside, so they may overlap).
        pre_filter_ratio: fraction of the lowest-scoring patches not explained, in [0, 1).
        theta: patch values at or below it do not take part in the mean fusion.
        pool: ``"mean"`` (spatial weighted average) or ``"max"``.
        smooth: blur the fused map.
        use_softmax_scores: score patches on the softmax of the model's output,
            as the paper does (the scores of a dict, ``ModelOutput`` or tuple
            output are found as the targets find them, or with
            ``output_adapter=``); False uses the target on the raw output (for
            models whose output is not class logits).
        batch_size: patches per forward pass.
        progress: show progress bars (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).
        **kwargs: passed to ``base_method`` when it is built (``batch_size`` and
            ``progress`` are SESS's own and are not passed on).

    Example:
        >>> import torch, torchvision
        >>> from camlib import GradCAM
        >>> from camlib.sess import SESS
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with SESS(model, [model.layer4[-1]], base_method=GradCAM, num_scales=2, progress=False) as cam:
        ...     maps = cam(torch.randn(2, 3, 32, 32))
        >>> maps.shape, maps.dtype
        ((2, 32, 32), dtype('float32'))
    """

    capabilities = GradCAM.capabilities.but(
        wraps_method=True, volumetric=False, per_layer=False, differentiable=False, extra_forwards=True,
        detectors=False,
    )

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        base_method: Callable[..., Any] = GradCAM,
        scales: Optional[List[int]] = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: Optional[int] = None,
        step_size: Optional[int] = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        batch_size: int = 32,
        *,
        progress: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' (spatial weighted average) or 'max', got {pool!r}")
        _check_number("pre_filter_ratio", pre_filter_ratio)
        if not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(
                f"pre_filter_ratio must be in [0, 1) (the fraction of patches left out; 0 keeps all), "
                f"got {pre_filter_ratio}"
            )
        num_scales = _check_positive_int("num_scales", num_scales)
        _check_number("scale_step_ratio", scale_step_ratio)
        if not scale_step_ratio >= 0.0:
            raise ValueError(f"scale_step_ratio must be >= 0, got {scale_step_ratio}")
        _check_number("theta", theta)
        if scales is not None:
            if isinstance(scales, (int, np.integer)) or not isinstance(scales, Sequence) or not scales:
                raise TypeError(
                    f"scales must be a non-empty list of sizes of the shorter side (e.g. [224, 288]), or None; "
                    f"got {scales!r}"
                )
            scales = [_check_positive_int("every scale", scale) for scale in scales]
        if window_size is not None:
            window_size = _check_positive_int("window_size", window_size)
        if step_size is not None:
            step_size = _check_positive_int("step_size", step_size)
        batch_size = _check_positive_int("batch_size", batch_size)
        super().__init__(build_base_cam("SESS", base_method, model, target_layers, reshape_transform, **kwargs))
        self.device = model_device(model)
        self.scales = scales
        self.num_scales = num_scales
        self.scale_step_ratio = float(scale_step_ratio)
        self.window_size = window_size
        self.step_size = step_size
        self.pre_filter_ratio = float(pre_filter_ratio)
        self.theta = float(theta)
        self.pool = pool
        self.smooth = bool(smooth)
        self.use_softmax_scores = bool(use_softmax_scores)
        self.batch_size = batch_size
        self.progress = progress

    # -- configuration -------------------------------------------------------------------------
    def get_scales(self, window_size: int) -> List[int]:
        """The sizes the shorter side is resized to, for a given window size."""
        if self.scales is not None:
            return list(self.scales)
        step = round(window_size * self.scale_step_ratio)
        return [window_size + step * i for i in range(self.num_scales)]

    # -- stages ------------------------------------------------------------------------------------
    def _resolve_targets(self, x: torch.Tensor, targets: Any) -> list:
        """One callable per image; None (for all, or for one image) means its top class."""
        batch = x.shape[0]
        if targets is None:
            targets = [None] * batch
        elif callable(targets) and not isinstance(targets, (list, tuple)):
            raise TypeError(
                "targets must be a list with one target per image, got a single target; wrap it: [target]"
            )
        elif not isinstance(targets, (list, tuple)):
            raise TypeError(
                f"targets must be a list of callables (one per image) or None, got {type(targets).__name__}"
            )
        if len(targets) != batch:
            raise ValueError(
                f"got {len(targets)} targets for a batch of {batch} images; pass exactly one target per image "
                "or targets=None for each image's top class"
            )
        for target in targets:
            if target is not None and not callable(target):
                raise TypeError(
                    f"each target must be callable (e.g. ClassifierOutputTarget(281)) or None, got {type(target).__name__}"
                )
        if all(target is not None for target in targets):
            return list(targets)
        with torch.no_grad():
            # the scores in a dict / ModelOutput / tuple output, or what output_adapter selects
            outputs = self.base_cam.model_scores(self.model(x))
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            shape = list(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise ValueError(
                f"a target of None means the image's top class, which needs a [B, num_classes] output; the model "
                f"returned {shape}. Pass a target for every image"
            )
        top = outputs.argmax(dim=-1).tolist()
        return [
            ClassifierOutputTarget(top[i]) if target is None else target for i, target in enumerate(targets)
        ]

    def _score_model(self, batch: torch.Tensor) -> Any:
        outputs = self.model(batch)
        if not self.use_softmax_scores:
            return outputs
        # the softmax of the scores found in the output (see BaseCAM's output_adapter)
        return torch.softmax(self.base_cam.model_scores(outputs), dim=-1)

    def _patch_scores(self, grid: _PatchGrid, targets: list, batch: int) -> torch.Tensor:
        """``[B, P]`` target scores of every patch, clipped at 0. Input ``j`` is patch
        ``j // B`` of image ``j % B`` (scale by scale, so each scale is resized once)."""

        def make_inputs(start: int, stop: int) -> torch.Tensor:
            flat = torch.arange(start, stop)
            return grid.cut(flat // batch, flat % batch)

        if not self.use_softmax_scores:  # the targets see the model's output: adapt it as the CAM does
            targets = self.base_cam.resolve_targets(None, list(targets))

        def targets_for(start: int, stop: int) -> list:
            return [targets[j % batch] for j in range(start, stop)]

        scores = batched_target_scores(
            self._score_model,
            len(grid) * batch,
            make_inputs,
            targets_for,
            self.batch_size,
            progress=self.progress,
            desc="SESS scores",
        )
        return scores.reshape(len(grid), batch).t().clamp_min(0.0)

    def _select(self, scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-filter and channel-wise weights: ``(patches, images, weights)`` of the
        explained patches, sorted by patch (so by scale)."""
        batch, num_patches = scores.shape
        order = torch.argsort(scores, dim=1, stable=True)[:, int(num_patches * self.pre_filter_ratio) :]
        kept = scores.gather(1, order)
        best = scores.amax(dim=1, keepdim=True)
        weights = torch.where(
            best > 0, kept / torch.where(best > 0, best, torch.ones_like(best)), torch.ones_like(kept)
        )
        patches = order.flatten().cpu()
        images = torch.arange(batch).repeat_interleave(order.shape[1])
        by_patch = torch.argsort(patches * batch + images)
        return patches[by_patch], images[by_patch], weights.flatten()[by_patch.to(weights.device)]

    def _base_maps(
        self, patches: torch.Tensor, targets: list, eigen_smooth: bool, aug_smooth: bool
    ) -> torch.Tensor:
        """The base method's maps of a batch of patches: ``[n, w, w]`` float32 on the device."""
        result = self.base_cam.compute(patches, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        result = torch.as_tensor(result).to(device=self.device, dtype=torch.float32)
        if tuple(result.shape) != (patches.shape[0], *patches.shape[-2:]):
            raise ValueError(
                f"the base method {type(self.base_cam).__name__} returned maps of shape {list(result.shape)} for "
                f"{patches.shape[0]} patches of {patches.shape[-2]}x{patches.shape[-1]}; SESS needs one 2-D map per patch"
            )
        return result

    def _fuse(
        self,
        grid: _PatchGrid,
        selection: tuple,
        targets: list,
        batch: int,
        eigen_smooth: bool,
        aug_smooth: bool,
    ) -> torch.Tensor:
        """Explain the selected patches chunk by chunk and fuse them: ``[B, H, W]``."""
        patches, images, weights = selection
        total = torch.zeros(batch, grid.height, grid.width, device=self.device)
        counts = torch.zeros_like(total)
        chunks = range(0, len(patches), self.batch_size)
        for start in progress_bar(chunks, progress=self.progress, desc="SESS maps", leave=False):
            stop = min(start + self.batch_size, len(patches))
            chunk_patches, chunk_images = patches[start:stop], images[start:stop]
            inputs = grid.cut(chunk_patches, chunk_images)
            maps = self._base_maps(
                inputs, [targets[i] for i in chunk_images.tolist()], eigen_smooth, aug_smooth
            )
            placed = grid.paste(maps * weights[start:stop, None, None], chunk_patches)
            rows = chunk_images.to(self.device)
            if self.pool == "max":
                total.scatter_reduce_(
                    0, rows[:, None, None].expand_as(placed), placed, "amax", include_self=True
                )
            else:
                counted = placed > self.theta
                total.index_add_(0, rows, torch.where(counted, placed, torch.zeros_like(placed)))
                counts.index_add_(0, rows, counted.float())
        if self.pool == "max":
            return total
        return total / counts.clamp_min(1.0)

    # -- the whole pipeline ---------------------------------------------------------------------------
    def wrapped_maps(
        self, input_tensor: torch.Tensor, targets: Optional[list], aug_smooth: bool, eigen_smooth: bool, per_layer: bool
    ) -> torch.Tensor:
        """SESS's maps for :meth:`~camlib.cam_wrapper.CAMWrapper.compute`: ``[B, H, W]`` float32
        in [0, 1] on the model's device, for 4-D image batches.

        A ``targets`` entry may be None (the image's top class); ``aug_smooth``
        and ``eigen_smooth`` are passed to the base method for every patch
        (test-time augmentation of each patch); ``per_layer`` is not supported
        (the patches' maps are fused into one).
        """
        if per_layer:
            raise ValueError("SESS fuses its patches' maps into one map per image; call it without per_layer")
        with torch.inference_mode(False):
            x = check_input_tensor(
                input_tensor, self.device, model_float_dtype(self.model), (4,), "SESS (it resizes and slides over H and W)"
            )
            batch, _, height, width = x.shape
            window = self.window_size if self.window_size is not None else min(height, width)
            step = self.step_size if self.step_size is not None else window
            scales = self.get_scales(window)
            for scale in scales:
                if scale < window:
                    raise ValueError(
                        f"every scale must be at least the window size {window} (a patch is cut from the resized "
                        f"image), got scale {scale}; raise the scales or lower window_size"
                    )
            grid = _PatchGrid(x, scales, window, step)
            with eval_mode(self.model):
                targets = self._resolve_targets(x, targets)
                scores = self._patch_scores(grid, targets, batch)
                fused = self._fuse(grid, self._select(scores), targets, batch, eigen_smooth, aug_smooth)
            if self.smooth:
                fused = gaussian_blur(fused, SMOOTH_SIGMA, SMOOTH_KERNEL_SIZE, dims=(1, 2), border="reflect")
            return scale_cam_image(fused)

    def __repr__(self) -> str:
        return (
            f"SESS(base_method={type(self.base_cam).__name__}, pool={self.pool!r}, "
            f"scales={self.scales if self.scales is not None else f'{self.num_scales} from the window size'})"
        )


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
