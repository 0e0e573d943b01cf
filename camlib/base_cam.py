"""BaseCAM: the pipeline every CAM method shares, as stages that pass values.

A call goes through these stages; each takes values and returns values, and
nothing travels through the CAM object's attributes:

1. **prepare** (:meth:`BaseCAM.prepare_input`, :func:`camlib.utils.validation.check_targets`):
   check the input and move it to the model's device.
2. **capture** (:meth:`BaseCAM.capture`): one forward pass with hooks on the
   target layers, the targets resolved (top class when None) and, for gradient
   methods, the gradients of the summed target scores. Returns an immutable
   :class:`~camlib.capture.Capture` record.
3. **raw maps** (:meth:`BaseCAM.layer_maps`): the method's map of each layer,
   ``[B, *spatial]`` at the layer's resolution. By default
   :meth:`~BaseCAM.get_cam_image`, itself ``sum_c w_c A_c`` with
   :meth:`~BaseCAM.get_cam_weights`.
4. **post-processing** (:meth:`BaseCAM.postprocess`): ReLU, min-max scaling to
   [0, 1] and resizing to the input: ``[B, L, *S]``.
5. **aggregation** (:meth:`BaseCAM.aggregate`): the mean over layers, scaled
   again: ``[B, *S]``.
6. numpy, once, at the very end (``__call__``); :meth:`BaseCAM.compute`
   returns the tensor.

A method is a tensor function plus its :class:`~camlib.capabilities.Capabilities`
record. It implements one of these, from the most common to the rarest:

* :meth:`~BaseCAM.get_cam_weights` (channel weights ``[B, C]``) or
  :meth:`~BaseCAM.get_cam_image` (a map ``[B, *S]``), pytorch-grad-cam's two
  extension points, as tensor functions;
* :meth:`~BaseCAM.layer_map`, the same with the whole capture record
  (the raw layer output, the model's outputs) for methods that need more;
* :meth:`~BaseCAM.layer_maps`, for a method whose map combines all its
  layers at once (FullGrad);
* :meth:`~BaseCAM.compute_gradients`, for a method with its own gradient
  (ShapleyCAM's second-order term).

Everything from the hooks to the resized maps is a torch tensor on the model's
device. The user's model is put in eval mode for the call only: every
module's ``training`` flag is restored in ``finally``, hooks are removed,
gradients never land in parameters' ``.grad``.

Model outputs that are not tensors (a segmentation model's ``{"out": ...}``, a
Hugging Face ``ModelOutput``, a tuple) are read with
:func:`camlib.utils.model_outputs.logits_of`, or with the ``output_adapter``
given to the CAM; a detector's list of dicts goes to the targets unchanged.

Precision: the model runs in the precision it is in (``float16`` and
``bfloat16`` models, or under ``torch.autocast``): the input is cast to the
model's floating-point dtype, and everything camlib computes from the captured
activations and gradients is float32 (float64 for a float64 model).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, List, Optional, Sequence

import numpy as np
import torch
import ttach as tta

from camlib.activations_and_gradients import ActivationsAndGradients
from camlib.capabilities import Capabilities
from camlib.capture import (
    Capture,
    autograd_gradients,
    capture,
    capture_with_graph,
    check_finite_maps,
    describe_module,
)
from camlib.utils import legacy
from camlib.utils.image import at_least_float32, scale_cam_image
from camlib.utils.messages import warn_user
from camlib.utils.model_outputs import OutputAdaptedTarget, logits_of
from camlib.utils.model_state import exclusive_eval, exclusive_use
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_enabled
from camlib.utils.reshape_transforms import num_prefix_tokens
from camlib.utils.svd_on_activations import get_2d_projection
from camlib.utils.validation import (
    all_finite,
    check_input_tensor,
    check_target_layers,
    check_targets,
    model_device,
    model_float_dtype,
)

__all__ = ["BaseCAM", "progress_enabled", "to_numpy", "weighted_sum_map"]

#: Class attributes of older subclasses that the capability record replaces.
_LEGACY_FLAGS = {"uses_gradients": "gradients", "compute_input_gradient": "input_gradient",
                 "default_batch_size": "default_batch_size"}  # fmt: skip


def weighted_sum_map(weights: torch.Tensor, activations: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """``sum_c w_c A_c`` (or, with ``eigen_smooth``, the first principal component of
    ``w_c A_c``): ``[B, C]`` weights and ``[B, C, *S]`` activations -> ``[B, *S]``."""
    weights = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
    weighted = weights.reshape(*weights.shape[:2], *([1] * (activations.ndim - 2))) * activations
    result = get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)
    if not all_finite(result) and all_finite(activations, weights):
        # Finite values whose sum overflows: the map is only defined up to a positive factor per image
        # (post-processing scales it), so compute it from activations divided by their largest magnitude.
        peak = activations.abs().reshape(activations.shape[0], -1).amax(dim=1).clamp_min(1e-30)
        scaled = activations / peak.reshape(-1, *([1] * (activations.ndim - 1)))
        weighted = weights.reshape(*weights.shape[:2], *([1] * (activations.ndim - 2))) * scaled
        result = get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)
    return result


def to_numpy(maps: torch.Tensor) -> np.ndarray:
    """Maps as a float32 numpy array (the API boundary)."""
    return maps.detach().float().cpu().numpy().astype(np.float32, copy=False)


class BaseCAM:
    """Base class of the CAM methods; see the module docstring for the pipeline.

    Args:
        model: the network; it is not modified (eval mode during calls only).
        target_layers: list of submodules whose outputs are explained.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``;
            when None, transformer tokens and channels-last maps are inferred.
        compute_input_gradient: also take the gradient w.r.t. the input; None
            keeps the method's default (its capability record).
        uses_gradients: whether to back-propagate; None keeps the method's default.
        tta_transforms: ttach transforms for ``aug_smooth``; default horizontal
            flip x multiply by (0.9, 1, 1.1).
        detach: accepted for compatibility with pytorch-grad-cam.
        batch_size: inputs per extra forward pass for methods that run them
            (ScoreCAM, AblationCAM); None keeps the method's default.
        progress: show progress bars for long methods (None: on unless the
            ``CAMLIB_DISABLE_PROGRESS`` or ``TQDM_DISABLE`` environment variable is set).
        output_adapter: a function selecting, from the model's output, the
            tensor the targets score, e.g. ``lambda out: out["logits"]``. It
            is applied to the output for one image before every target call,
            and to the batch's output to pick the top class when
            ``targets=None``, so it should only select (index a key, an
            attribute, a tuple position). None: targets get the output as
            the model returned it (split per image), the built-in targets
            find the scores themselves (:func:`camlib.utils.model_outputs.logits_of`),
            and ``targets=None`` uses ``logits_of`` too.

    Calling it returns ``np.float32`` maps ``[B, H, W]`` (``[B, D, H, W]`` for
    5-D input), each in [0, 1].

    Attributes:
        outputs: the model's (detached) output of the last call, set when the
            call succeeds (None after a failed call).
    """

    #: What the method needs and supports (see :class:`~camlib.capabilities.Capabilities`).
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        flags = {field: cls.__dict__[name] for name, field in _LEGACY_FLAGS.items() if name in cls.__dict__}
        if flags and "capabilities" not in cls.__dict__:
            # A subclass written with class attributes (``uses_gradients = False``) gets its record from them.
            cls.capabilities = cls.capabilities.but(**flags)
        legacy.wrap_class(cls)  # older spellings and numpy overrides (camlib.utils.legacy)

    @legacy.legacy_init
    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        compute_input_gradient: Optional[bool] = None,
        uses_gradients: Optional[bool] = None,
        tta_transforms: Optional[tta.Compose] = None,
        detach: bool = True,
        *,
        batch_size: Optional[int] = None,
        progress: Optional[bool] = None,
        output_adapter: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        caps = type(self).capabilities
        self.model = model
        self.target_layers = check_target_layers(model, target_layers, caps.own_layers)
        self.device = model_device(model)
        self.reshape_transform = reshape_transform
        self.compute_input_gradient = caps.input_gradient if compute_input_gradient is None else bool(compute_input_gradient)
        self.uses_gradients = caps.gradients if uses_gradients is None else bool(uses_gradients)
        if tta_transforms is None:
            tta_transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        self.tta_transforms = tta_transforms
        self.detach = detach
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size if batch_size is not None else caps.default_batch_size
        self.progress = progress
        if output_adapter is not None and not callable(output_adapter):
            raise TypeError(
                f"output_adapter must be a function of the model's output, got {type(output_adapter).__name__}; "
                "e.g. output_adapter=lambda out: out['logits']"
            )
        self.output_adapter = output_adapter
        self.outputs: Any = None
        #: Tokens before the patch grid, as the model declares them (None: inferred per layer).
        self.prefix_tokens = num_prefix_tokens(model) if reshape_transform is None else None
        #: pytorch-grad-cam's capture object, for code that uses it directly.
        self.activations_and_grads = ActivationsAndGradients(model, self.target_layers, reshape_transform, detach)

    # -- extension points ------------------------------------------------------
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: torch.nn.Module,
        targets: List[Callable],
        activations: torch.Tensor,
        grads: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Channel weights ``[B, C]`` for one layer. Implemented by most methods."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_cam_weights or get_cam_image")

    @legacy.array_boundary
    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: torch.nn.Module,
        targets: List[Callable],
        activations: torch.Tensor,
        grads: Optional[torch.Tensor],
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        """The map ``[B, *spatial]`` of one layer: ``sum_c w_c A_c``, or with
        ``eigen_smooth`` the first principal component of ``w_c A_c``."""
        weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        return weighted_sum_map(weights, activations, eigen_smooth)

    def layer_map(self, capture: Capture, index: int, eigen_smooth: bool) -> torch.Tensor:
        """The raw map ``[B, *s]`` of layer ``index`` of a capture (before ReLU and scaling).
        By default :meth:`get_cam_image` of its activations and gradients."""
        grads = None if capture.gradients is None else capture.gradients[index]
        return self.get_cam_image(
            legacy.input_with_grad(capture), capture.layers[index], list(capture.targets), capture.activations[index], grads, eigen_smooth
        )

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The raw map of every captured layer (:meth:`layer_map`)."""
        return [self.layer_map(capture, i, eigen_smooth) for i in range(len(capture.layers))]

    def compute_gradients(self, loss: torch.Tensor, leaves: Sequence[torch.Tensor]) -> Sequence[Optional[torch.Tensor]]:
        """Gradients of ``loss`` w.r.t. the captured tensors (None where unused)."""
        return autograd_gradients(loss, leaves)

    # -- stage 1: prepare ------------------------------------------------------------
    def prepare_input(self, input_tensor: Any) -> torch.Tensor:
        """The checked input, detached, on the model's device and in its floating-point dtype."""
        ndims = (4, 5) if type(self).capabilities.volumetric else (4,)
        input_tensor = legacy.uint8_input(input_tensor)
        return check_input_tensor(input_tensor, self.device, model_float_dtype(self.model), ndims, type(self).__name__)

    # -- stage 2: capture ------------------------------------------------------------
    def model_scores(self, outputs: Any) -> torch.Tensor:
        """The scores in the model's (batch) output: ``output_adapter(outputs)``, or
        :func:`~camlib.utils.model_outputs.logits_of` without an adapter."""
        if self.output_adapter is None:
            return logits_of(outputs)
        scores = self.output_adapter(outputs)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(
                f"output_adapter returned a {type(scores).__name__} for the model's {type(outputs).__name__} "
                "output; it must return the tensor of scores (e.g. lambda out: out['logits'])"
            )
        return scores

    def class_target(self, category: int) -> Callable:
        """The target that explains class ``category`` with this method (front ends use it
        to ask every method for a class the same way)."""
        return ClassifierOutputTarget(int(category))

    def top_class_targets(self, scores: torch.Tensor) -> list:
        """One target per image for ``targets=None``: each image's top class."""
        if scores.ndim != 2:
            hint = ""
            if scores.ndim >= 4:
                hint = (
                    " (a dense [B, classes, H, W] output, like a segmentation model's: explain a class in a "
                    "region with SemanticSegmentationTarget(category, mask), e.g. the mask "
                    "output.argmax(1)[i] == category)"
                )
            raise ValueError(
                f"targets=None picks the top class of a [B, num_classes] output, but the model returned "
                f"shape {list(scores.shape)}{hint}; pass targets explicitly"
            )
        return [self.class_target(c) for c in scores.argmax(dim=-1).tolist()]

    def resolve_targets(
        self, outputs: Any, targets: Optional[list], default_targets: Optional[Callable[[torch.Tensor], list]] = None
    ) -> list:
        """The targets of a call: as given, or from the scores (``default_targets(scores)``,
        each image's top class by default), each applied to ``output_adapter(output)``."""
        if targets is None:
            batch = _batch_of(outputs)
            choose = default_targets if default_targets is not None else self.top_class_targets
            try:
                targets = list(choose(self.model_scores(outputs)))
            except (TypeError, ValueError) as error:
                if type(self).capabilities.class_specific or default_targets is not None:
                    raise
                # a class-agnostic method works with any output; the targets raise only if used
                targets = [_NoDefaultTarget(error)] * batch
        if self.output_adapter is None:
            return list(targets)
        return [
            t if isinstance(t, OutputAdaptedTarget) and t.adapter is self.output_adapter
            else OutputAdaptedTarget(t, self.output_adapter)
            for t in targets
        ]

    def capture(
        self,
        x: torch.Tensor,
        targets: Optional[list] = None,
        *,
        default_targets: Optional[Callable[[torch.Tensor], list]] = None,
        gradients: Optional[bool] = None,
    ) -> Capture:
        """Stage 2: one capturing pass over a prepared input (see :func:`camlib.capture.capture`).

        ``gradients``: back-propagate to the target layers (None: when the method uses
        gradients, :attr:`uses_gradients`); False records the activations only.
        """
        caps = type(self).capabilities
        record = capture(
            self.model,
            self.target_layers,
            x,
            lambda outputs: self.resolve_targets(outputs, targets, default_targets),
            gradients=self.uses_gradients if gradients is None else gradients,
            input_gradient=self.compute_input_gradient,
            second_order=caps.second_order,
            allow_missing_layers=caps.own_layers,
            reshape_transform=self.reshape_transform,
            prefix_tokens=self.prefix_tokens,
            compute_gradients=None if type(self).compute_gradients is BaseCAM.compute_gradients else self.compute_gradients,
        )
        if record.gradients is not None and not caps.own_layers:
            _warn_zero_gradients(record)
        return record

    # -- stages 4 and 5 ------------------------------------------------------------------
    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple:
        """The size maps are resized to, in OpenCV order: (W, H) or (W, H, D)."""
        if input_tensor.ndim == 4:
            return input_tensor.size(-1), input_tensor.size(-2)
        if input_tensor.ndim == 5:
            return input_tensor.size(-1), input_tensor.size(-2), input_tensor.size(-3)
        raise ValueError(f"input_tensor must be 4-D or 5-D, got shape {list(input_tensor.shape)}")

    def postprocess(self, raw_maps: Sequence[torch.Tensor], input_tensor: torch.Tensor) -> torch.Tensor:
        """Stage 4: each raw map ReLU'd, scaled to [0, 1] and resized to the input: ``[B, L, *S]``."""
        size = self.get_target_width_height(input_tensor)
        scaled = [scale_cam_image(torch.relu(at_least_float32(torch.as_tensor(m, device=self.device))), size) for m in raw_maps]
        return torch.stack(scaled, dim=1)

    def aggregate(self, maps: torch.Tensor) -> torch.Tensor:
        """Stage 5: ``[B, L, *S]`` per-layer maps -> their mean, scaled to [0, 1]: ``[B, *S]``."""
        return scale_cam_image(torch.relu(maps).mean(dim=1))

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: List[Callable], eigen_smooth: bool) -> list:
        """pytorch-grad-cam's per-layer maps from ``activations_and_grads``: ``np.float32 [B, 1, *S]``
        each (see :func:`camlib.utils.legacy.compute_cam_per_layer`)."""
        return legacy.compute_cam_per_layer(self, input_tensor, targets, eigen_smooth)

    def aggregate_multi_layers(self, cam_per_target_layer: Sequence[Any]) -> np.ndarray:
        """pytorch-grad-cam's aggregation of ``[B, 1, *S]`` maps (numpy or torch): ``[B, *S]``."""
        stacked = torch.cat([torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m) for m in cam_per_target_layer], dim=1)
        result = self.aggregate(at_least_float32(stacked))
        return result if any(isinstance(m, torch.Tensor) for m in cam_per_target_layer) else to_numpy(result)

    # -- the whole pipeline --------------------------------------------------------
    def _check_call(self, eigen_smooth: bool, aug_smooth: bool, per_layer: bool) -> None:
        caps = type(self).capabilities
        for wanted, supported, what in (
            (per_layer, caps.per_layer, "per_layer=True"),
            (aug_smooth, caps.aug_smooth, "aug_smooth=True"),
            (eigen_smooth, caps.eigen_smooth, "eigen_smooth=True"),
        ):
            if wanted and not supported:
                raise ValueError(
                    f"{type(self).__name__} does not support {what} (see {type(self).__name__}.capabilities); "
                    f"call it without {what.split('=')[0]}"
                )

    def _maps_once(
        self,
        x: torch.Tensor,
        targets: Optional[list],
        eigen_smooth: bool,
        per_layer: bool,
        default_targets: Optional[Callable],
        aggregate: Optional[Callable[[torch.Tensor], torch.Tensor]],
    ) -> tuple[torch.Tensor, Capture]:
        with exclusive_eval(self.model, type(self).__name__):  # one call at a time per model (README: Threads)
            record = self.capture(x, targets, default_targets=default_targets)
            with torch.no_grad():
                raw = self.layer_maps(record, eigen_smooth)
        check_finite_maps(record, raw, type(self).__name__)
        with torch.no_grad():
            maps = self.postprocess(raw, record.input)
            if not per_layer:
                maps = (aggregate or self.aggregate)(maps)
        return maps, record

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        per_layer: bool = False,
        default_targets: Optional[Callable[[torch.Tensor], list]] = None,
        aggregate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The maps as a tensor on the model's device (what ``__call__`` returns as numpy).

        Args:
            input_tensor: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` float tensor.
            targets: one callable per image, or None (see ``default_targets``).
            aug_smooth: average over test-time augmentations (``tta_transforms``).
            eigen_smooth: the first principal component instead of the channel sum.
            per_layer: one map per target layer, ``[B, L, *S]``.
            default_targets: with ``targets=None``, ``scores -> targets`` (default:
                each image's top class); resolved from each pass's own scores.
            aggregate: ``[B, L, *S] -> [B, *S]`` combination of the per-layer maps
                (default :meth:`aggregate`), for methods built on this one.

        Returns:
            float32 maps in [0, 1]: ``[B, *S]``, or ``[B, L, *S]`` with ``per_layer``.
        """
        self.outputs = None
        legacy.training_mode_note(self)
        self._check_call(eigen_smooth, aug_smooth, per_layer)
        x = self.prepare_input(input_tensor)
        targets = check_targets(targets, x.shape[0])
        if not aug_smooth:
            maps, record = self._maps_once(x, targets, eigen_smooth, per_layer, default_targets, aggregate)
        else:
            if x.ndim != 4:
                raise ValueError(
                    f"aug_smooth works on 4-D image batches (ttach flips the width of [B, C, H, W]); got "
                    f"shape {list(x.shape)}"
                )
            results = []
            for transform in self.tta_transforms:
                maps, record = self._maps_once(
                    transform.augment_image(x), targets, eigen_smooth, per_layer, default_targets, aggregate
                )
                results.append(transform.deaugment_mask(maps if per_layer else maps[:, None]))
            maps = torch.stack(results).mean(dim=0)
            maps = maps if per_layer else maps[:, 0]
        self._publish(record)
        return maps

    def _publish(self, record: Capture) -> None:
        """The last call's results on the public attributes users read (never read back by camlib):
        ``outputs``, and ``activations_and_grads.activations``/``.gradients`` as pytorch-grad-cam fills them."""
        self.outputs = record.outputs
        self.activations_and_grads.activations = list(record.activations)
        self.activations_and_grads.gradients = [] if record.gradients is None else list(record.gradients)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        **legacy_kwargs: Any,
    ) -> np.ndarray:
        """Maps for one batch, without augmentation: ``np.float32 [B, *spatial]``."""
        targets = legacy.call_targets(self, input_tensor, targets, legacy_kwargs)
        if legacy.runs_1_5_7_pipeline(self):
            return legacy.forward_1_5_7(self, input_tensor, targets, eigen_smooth)
        return to_numpy(self.compute(input_tensor, targets, eigen_smooth=eigen_smooth))

    def forward_augmentation_smoothing(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        per_layer: bool = False,
    ) -> np.ndarray:
        """Mean of the maps over test-time augmentations (``tta_transforms``)."""
        return to_numpy(
            self.compute(input_tensor, targets, aug_smooth=True, eigen_smooth=eigen_smooth, per_layer=per_layer)
        )

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        *,
        per_layer: bool = False,
        **legacy_kwargs: Any,
    ) -> np.ndarray:
        """Compute the maps.

        Args:
            input_tensor: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` float tensor.
            targets: one callable per image (e.g. ``ClassifierOutputTarget``),
                or None for each image's top-scoring class.
            aug_smooth: average over test-time augmentations.
            eigen_smooth: use the first principal component of the weighted
                activations instead of their sum.
            per_layer: return one map per target layer, ``[B, L, *spatial]``,
                instead of their mean.

        Returns:
            ``np.float32`` maps in [0, 1]: ``[B, *spatial]``, or
            ``[B, L, *spatial]`` with ``per_layer``.
        """
        targets = legacy.call_targets(self, input_tensor, targets, legacy_kwargs)
        if not per_layer and (legacy.overrides(self, "forward") or legacy.runs_1_5_7_pipeline(self)):
            return legacy.call_overridden_forward(self, input_tensor, targets, aug_smooth, eigen_smooth)
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth, per_layer=per_layer)
        if per_layer:
            return to_numpy(self.compute(input_tensor, targets, eigen_smooth=eigen_smooth, per_layer=True))
        return self.forward(input_tensor, targets, eigen_smooth)

    # -- differentiable maps ---------------------------------------------------------------
    def differentiable_maps(self, input_tensor: torch.Tensor, targets: Sequence[Any]) -> torch.Tensor:
        """Maps that carry the autograd graph back to the model's parameters.

        For training with CAMs (e.g. :class:`camlib.training.GAIN`, or a
        "right for the right reasons" loss): the gradients w.r.t. the
        activations are taken with ``create_graph=True``, and the ReLU,
        min-max scaling and (bi/tri)linear resizing are differentiable. The
        model runs in the mode it is in (training mode stays training mode, and
        batch-norm statistics update as in the user's own forward pass, once);
        no hook is left and nothing is written into ``.grad`` until the caller
        runs ``backward()``. In eval mode the values equal :meth:`compute`'s.

        Args:
            input_tensor: ``[B, C, H, W]`` (or 5-D) float tensor.
            targets: one target callable per image -> ``[B, *S]``; or, for
                several classes per image (multi-label), one list of ``K``
                targets per image (the same ``K`` for every image) -> ``[B, K, *S]``.

        Returns:
            float32 maps in [0, 1] with a ``grad_fn``.

        Raises:
            TypeError: if the method's map is not differentiable.
        """
        caps = type(self).capabilities
        if not caps.differentiable:
            from camlib.registry import methods

            able = ", ".join(sorted({m.cls.__name__ for m in methods() if m.capabilities.differentiable}))
            raise TypeError(
                f"{type(self).__name__} cannot return differentiable maps (its capabilities.differentiable is "
                f"False); use one of: {able}"
            )
        x = self.prepare_input(input_tensor)
        slots = [self.resolve_targets(None, slot) for slot in _target_slots(targets, x.shape[0])]
        with exclusive_use(self.model, type(self).__name__):
            records = capture_with_graph(
                self.model,
                self.target_layers,
                x,
                slots,
                reshape_transform=self.reshape_transform,
                prefix_tokens=self.prefix_tokens,
            )
        maps = [self.aggregate(self.postprocess(self.layer_maps(record, False), record.input)) for record in records]
        return maps[0] if not isinstance(targets[0], (list, tuple)) else torch.stack(maps, dim=1)

    # -- lifetime ----------------------------------------------------------------------
    def release(self) -> None:
        """Remove any hook still attached (hooks only live during a call anyway)."""
        self.activations_and_grads.release()

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, target_layers={len(self.target_layers)} layer(s))"


def _batch_of(outputs: Any) -> int:
    if isinstance(outputs, torch.Tensor):
        return int(outputs.shape[0])
    if isinstance(outputs, (list, tuple)) and outputs and not isinstance(outputs[0], torch.Tensor):
        return len(outputs)  # a detector's list of per-image dicts
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.ndim > 0]
    return int(leaves[0].shape[0]) if leaves else 1


def _target_slots(targets: Any, batch: int) -> List[list]:
    """``targets`` of :meth:`BaseCAM.differentiable_maps` as K lists of one target per image."""
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        got = f"{len(targets)} entries" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(
            f"targets must hold one entry per image ({batch}), got {got}: a target callable per image, or "
            "a list of K targets per image for K maps each"
        )
    if all(isinstance(t, (list, tuple)) for t in targets):
        sizes = {len(t) for t in targets}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"every image needs the same number of targets (got {sorted(len(t) for t in targets)}); "
                "repeat a class (and mask it out of your loss) to pad the shorter lists"
            )
        slots = [[row[k] for row in targets] for k in range(sizes.pop())]
    elif any(isinstance(t, (list, tuple)) for t in targets):
        raise TypeError("targets mixes lists and single targets; give every image a list, or every image one target")
    else:
        slots = [list(targets)]
    for slot in slots:
        check_targets(slot, batch, allow_none=False)
    return slots


def _warn_zero_gradients(record: Capture) -> None:
    for layer, grads in zip(record.layers, record.gradients):
        if grads is not None and not bool(grads.any()):
            warn_user(
                f"the gradient of the target score w.r.t. target layer {describe_module(layer)} "
                "is zero everywhere, so its gradient-based map is blank. In a vision transformer the "
                "last block's patch tokens do not reach the class token: use an earlier block (e.g. "
                "model.encoder.layers[-2].ln_1 or model.blocks[-2].norm1) or a gradient-free method "
                "such as EigenCAM. Otherwise the likely cause is an untrained or zero-initialised "
                "classification head (torchvision zero-initialises its ViT heads with weights=None): "
                "check model(x) - every class gets the same logit - and load trained weights.",
            )


class _NoDefaultTarget:
    """The target of ``targets=None`` for an output without a top class: raises why, if used."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, model_output: Any) -> torch.Tensor:
        raise self.error.with_traceback(None)

    def __getattr__(self, name: str) -> Any:
        if name == "error" or name.startswith("__"):
            raise AttributeError(name)
        raise self.error.with_traceback(None)  # e.g. CAM reading .category

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r:.80})"
