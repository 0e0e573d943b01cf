"""BaseCAM: the pipeline every CAM method shares.

A call goes through these stages, top to bottom:

1. ``_prepare_input``: check the input and move it to the model's device.
2. ``_capture``: one forward pass with hooks on the target layers, the targets
   resolved (top class when None), and, for gradient methods, the gradients of
   the summed target scores with respect to the captured activations.
3. ``compute_cam_per_layer``: the method's map for each layer
   (``get_cam_image``, by default ``sum_c w_c A_c`` with ``get_cam_weights``),
   then ReLU, min-max scaling and resizing to the input's size.
4. ``aggregate_multi_layers``: the mean over layers, scaled again.
5. numpy, once, at the very end.

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
activations and gradients is float32.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ClassVar, List, Optional, Sequence

import numpy as np
import torch
import ttach as tta
from torch.utils._pytree import tree_map

from camlib.activations_and_gradients import ActivationsAndGradients
from camlib.utils.batched import score_outputs
from camlib.utils.image import scale_cam_image
from camlib.utils.model_outputs import OutputAdaptedTarget, logits_of
from camlib.utils.model_state import eval_mode
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_enabled
from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["BaseCAM", "progress_enabled"]

def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    raise ValueError(
        f"the model ({type(model).__name__}) has no parameters or buffers, so its device cannot be "
        "determined and there is nothing to explain; pass the trained nn.Module itself"
    )


def _model_float_dtype(model: torch.nn.Module) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter (or buffer), None if it has none."""
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def _check_target_layers(model: torch.nn.Module, target_layers: Any, allow_empty: bool = False) -> list:
    if isinstance(target_layers, torch.nn.Module):
        raise TypeError(
            f"target_layers must be a list of modules, got a single {type(target_layers).__name__}; "
            "wrap it in a list: target_layers=[layer]"
        )
    if not isinstance(target_layers, (list, tuple)):
        raise TypeError(f"target_layers must be a list of modules of the model, got {type(target_layers).__name__}")
    if not target_layers and not allow_empty:
        raise ValueError("target_layers is empty; pass at least one layer, e.g. [model.layer4[-1]] for a ResNet")
    own = {id(m) for m in model.modules()}
    for layer in target_layers:
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(
                f"every target layer must be a torch.nn.Module, got {type(layer).__name__} ({layer!r:.60}); "
                "pass modules such as model.layer4[-1], not names or tensors"
            )
        if id(layer) not in own:
            raise ValueError(
                f"target layer {repr(layer).splitlines()[0]} is not a submodule of the model; pass a module "
                "from model.named_modules() (a copy of the model has different modules)"
            )
    return list(target_layers)


class BaseCAM:
    """Base class of the CAM methods; see the module docstring for the pipeline.

    Subclasses implement :meth:`get_cam_weights` (channel weights ``[B, C]``)
    or :meth:`get_cam_image` (a map ``[B, *spatial]``), as tensor functions of
    ``activations`` and ``grads``, both ``[B, C, *spatial]`` float32 tensors on
    the model's device.

    Args:
        model: the network; it is not modified (eval mode during calls only).
        target_layers: list of submodules whose outputs are explained.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``;
            when None, transformer tokens and channels-last maps are inferred.
        compute_input_gradient: also take the gradient w.r.t. the input
            (set on the input copy's ``.grad``); None keeps the method's default.
        uses_gradients: whether to back-propagate; None keeps the method's default.
        tta_transforms: ttach transforms for ``aug_smooth``; default horizontal
            flip x multiply by (0.9, 1, 1.1).
        detach: accepted for compatibility with pytorch-grad-cam.
        batch_size: images per forward pass for methods that run extra forward
            passes (ScoreCAM, AblationCAM); None keeps the method's default.
        progress: show progress bars for long methods (None: on unless the
            ``CAMLIB_DISABLE_PROGRESS`` environment variable is set).
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
    """

    #: The method back-propagates the target score to the target layers.
    uses_gradients: ClassVar[bool] = True
    #: The method also needs the gradient with respect to the input.
    compute_input_gradient: ClassVar[bool] = False
    #: Default images per extra forward pass (perturbation methods).
    default_batch_size: ClassVar[int] = 32
    #: The method can ignore target_layers (FullGrad chooses its own).
    allows_empty_target_layers: ClassVar[bool] = False

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
        self.model = model
        self.target_layers = _check_target_layers(model, target_layers, self.allows_empty_target_layers)
        self.device = _model_device(model)
        self.reshape_transform = reshape_transform
        if compute_input_gradient is not None:
            self.compute_input_gradient = bool(compute_input_gradient)
        if uses_gradients is not None:
            self.uses_gradients = bool(uses_gradients)
        if tta_transforms is None:
            tta_transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        self.tta_transforms = tta_transforms
        self.detach = detach
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size if batch_size is not None else self.default_batch_size
        self.progress = progress
        if output_adapter is not None and not callable(output_adapter):
            raise TypeError(
                f"output_adapter must be a function of the model's output, got {type(output_adapter).__name__}; "
                "e.g. output_adapter=lambda out: out['logits']"
            )
        self.output_adapter = output_adapter
        self.outputs: Any = None
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
        weights = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
        weighted = weights.reshape(*weights.shape[:2], *([1] * (activations.ndim - 2))) * activations
        if eigen_smooth:
            return get_2d_projection(weighted)
        return weighted.sum(dim=1)

    def forward_context(self) -> contextlib.AbstractContextManager:
        """A context the capturing forward and backward passes run in (none by default)."""
        return contextlib.nullcontext()

    def compute_gradients(self, loss: torch.Tensor, leaves: Sequence[torch.Tensor]) -> Sequence[Optional[torch.Tensor]]:
        """Gradients of ``loss`` w.r.t. the captured tensors (None where unused)."""
        return torch.autograd.grad(loss, list(leaves), allow_unused=True)

    # -- stage 1 -----------------------------------------------------------------
    def _prepare_input(self, input_tensor: Any) -> torch.Tensor:
        if not isinstance(input_tensor, torch.Tensor):
            hint = " (convert with torch.from_numpy or camlib.utils.image.preprocess_image)" if isinstance(
                input_tensor, np.ndarray
            ) else ""
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}{hint}")
        if input_tensor.ndim not in (4, 5):
            hint = "; add the batch dimension with input_tensor.unsqueeze(0)" if input_tensor.ndim == 3 else ""
            raise ValueError(
                f"input_tensor must be 4-D [B, C, H, W] or 5-D [B, C, D, H, W], got shape "
                f"{list(input_tensor.shape)}{hint}"
            )
        if not input_tensor.is_floating_point():
            raise TypeError(
                f"input_tensor must be a floating-point tensor, got {input_tensor.dtype}; convert it "
                "(e.g. x.float() / 255, then normalise as the model expects)"
            )
        if input_tensor.shape[0] == 0:
            raise ValueError("input_tensor has an empty batch (shape[0] == 0)")
        x = input_tensor.detach().to(self.device)
        if x.is_inference():
            x = x.clone()
        # One reduction in the usual case: a finite sum means no NaN or Inf; only a
        # non-finite sum (NaN/Inf, or overflow) needs the element-wise check.
        if not bool(torch.isfinite(x.sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
            raise ValueError("input_tensor contains NaN or Inf values; check the preprocessing")
        dtype = _model_float_dtype(self.model)
        if dtype is not None and x.dtype != dtype:
            # A float16/bfloat16 model gets its own dtype (a float32 batch would fail in its first layer).
            x = x.to(dtype)
        return x

    @staticmethod
    def _check_targets(targets: Any, batch: int) -> Optional[list]:
        if targets is None:
            return None
        if callable(targets) and not isinstance(targets, (list, tuple)):
            raise TypeError("targets must be a list with one target per image, got a single target; wrap it: [target]")
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be a list of callables (one per image) or None, got {type(targets).__name__}")
        if len(targets) != batch:
            raise ValueError(
                f"got {len(targets)} targets for a batch of {batch} images; pass exactly one target per "
                "image (e.g. [ClassifierOutputTarget(c) for c in classes]) or targets=None for each image's top class"
            )
        for t in targets:
            if not callable(t):
                raise TypeError(f"each target must be callable (e.g. ClassifierOutputTarget(281)), got {type(t).__name__}")
        return list(targets)

    # -- stage 2 -----------------------------------------------------------------
    def _model_scores(self, outputs: Any) -> torch.Tensor:
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

    def _default_targets(self, outputs: torch.Tensor) -> list:
        """One target per image for ``targets=None``, from the model's scores
        (``outputs`` after :meth:`_model_scores`): each image's top class."""
        if outputs.ndim != 2:
            hint = ""
            if outputs.ndim >= 4:
                hint = (
                    " (a dense [B, classes, H, W] output, like a segmentation model's: explain a class in a "
                    "region with SemanticSegmentationTarget(category, mask), e.g. the mask "
                    "output.argmax(1)[i] == category)"
                )
            raise ValueError(
                f"targets=None picks the top class of a [B, num_classes] output, but the model returned "
                f"shape {list(outputs.shape)}{hint}; pass targets explicitly"
            )
        return [ClassifierOutputTarget(int(c)) for c in outputs.argmax(dim=-1).tolist()]

    def _resolve_default_targets(self, outputs: Any, batch: int) -> list:
        """:meth:`_default_targets` of the model's scores; when the output has no top class (a
        detector's boxes, a segmentation map), targets that raise that error if they are used,
        so that class-agnostic methods (EigenCAM, KPCA-CAM, FEM) still work with targets=None."""
        try:
            return self._default_targets(self._model_scores(outputs))
        except (TypeError, ValueError) as error:
            return [_NoDefaultTarget(error)] * batch

    def _adapt_targets(self, targets: list) -> list:
        """The targets, each applied to ``output_adapter(output)`` when an adapter is set."""
        if self.output_adapter is None:
            return targets
        return [
            t if isinstance(t, OutputAdaptedTarget) and t.adapter is self.output_adapter
            else OutputAdaptedTarget(t, self.output_adapter)
            for t in targets
        ]

    def _target_score(self, targets: list, outputs: Any) -> torch.Tensor:
        return score_outputs(outputs, targets).sum()

    def _capture(self, x: torch.Tensor, targets: Optional[list]) -> tuple[torch.Tensor, list]:
        """Forward (+ gradients); fills ``self.activations_and_grads`` and ``self.outputs``."""
        grads_needed = self.uses_gradients
        capture = self.activations_and_grads
        if grads_needed and self.compute_input_gradient:
            x = x.requires_grad_()
        # Gradient methods record a graph only from the first target layer on,
        # unless the input gradient is needed too.
        capture.enable_grad_at_targets = grads_needed and not self.compute_input_gradient
        with (
            torch.inference_mode(False),
            torch.set_grad_enabled(grads_needed and self.compute_input_gradient),
            self.forward_context(),
        ):
            outputs = capture(x)
            capture.check_all_ran()
            if targets is None:
                targets = self._resolve_default_targets(outputs, x.shape[0])
            targets = self._adapt_targets(targets)
            leaf_grads = None
            if grads_needed:
                torch.set_grad_enabled(True)
                leaves = capture.differentiable_leaves()
                if self.compute_input_gradient:
                    leaves = [*leaves, x]
                loss = self._target_score(targets, outputs)
                if loss.requires_grad:
                    leaf_grads = list(self.compute_gradients(loss, leaves))
                else:
                    warnings.warn(
                        "the target score does not depend on the target layers (no gradient path); "
                        "the gradients are zero and so are gradient-based maps. Check the targets and layers.",
                        stacklevel=4,
                    )
                    leaf_grads = [None] * len(leaves)
                if self.compute_input_gradient:
                    input_grad = leaf_grads.pop()
                    x.grad = torch.zeros_like(x) if input_grad is None else input_grad.detach()
                del loss
        capture.finalize(x.shape[2:], leaf_grads)
        if leaf_grads is not None and any(g is not None for g in leaf_grads):
            self._warn_zero_gradients()
        self.outputs = _detach(outputs)
        return x, targets

    def _warn_zero_gradients(self) -> None:
        for layer, grads in zip(self.target_layers, self.activations_and_grads.gradients):
            if not bool(grads.any()):
                warnings.warn(
                    f"the gradient of the target score w.r.t. target layer {repr(layer).splitlines()[0]} "
                    "is zero everywhere, so its gradient-based map is blank. In a vision transformer the "
                    "last block's patch tokens do not reach the class token: use an earlier block (e.g. "
                    "model.encoder.layers[-2].ln_1 or model.blocks[-2].norm1) or a gradient-free method "
                    "such as EigenCAM.",
                    stacklevel=5,
                )

    # -- stage 3 -----------------------------------------------------------------
    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple:
        """The size maps are resized to, in OpenCV order: (W, H) or (W, H, D)."""
        if input_tensor.ndim == 4:
            return input_tensor.size(-1), input_tensor.size(-2)
        if input_tensor.ndim == 5:
            return input_tensor.size(-1), input_tensor.size(-2), input_tensor.size(-3)
        raise ValueError(f"input_tensor must be 4-D or 5-D, got shape {list(input_tensor.shape)}")

    def compute_cam_per_layer(
        self, input_tensor: torch.Tensor, targets: List[Callable], eigen_smooth: bool
    ) -> List[torch.Tensor]:
        """One ``[B, 1, *spatial]`` map per target layer, ReLU'd, scaled to [0, 1], resized."""
        activations = self.activations_and_grads.activations
        gradients = self.activations_and_grads.gradients
        target_size = self.get_target_width_height(input_tensor)
        maps = []
        for i, layer in enumerate(self.target_layers):
            grads = gradients[i] if i < len(gradients) else None
            cam = self.get_cam_image(input_tensor, layer, targets, activations[i], grads, eigen_smooth)
            cam = torch.as_tensor(cam, device=activations[i].device).float()
            maps.append(scale_cam_image(torch.relu(cam), target_size)[:, None])
        return maps

    # -- stage 4 -----------------------------------------------------------------
    def aggregate_multi_layers(self, cam_per_target_layer: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of the per-layer maps, scaled to [0, 1]: ``[B, *spatial]``."""
        stacked = torch.relu(torch.cat(list(cam_per_target_layer), dim=1))
        return scale_cam_image(stacked.mean(dim=1))

    # -- the whole pipeline --------------------------------------------------------
    def _per_layer_maps(self, input_tensor: Any, targets: Any, eigen_smooth: bool) -> torch.Tensor:
        """Stages 1-3: ``[B, L, *spatial]`` tensor of per-layer maps."""
        x = self._prepare_input(input_tensor)
        targets = self._check_targets(targets, x.shape[0])
        with eval_mode(self.model):
            try:
                x, targets = self._capture(x, targets)
                maps = self.compute_cam_per_layer(x, targets, eigen_smooth)
            finally:
                self.activations_and_grads.release()
        return torch.cat(list(maps), dim=1)

    def forward(
        self, input_tensor: torch.Tensor, targets: Optional[List[Callable]] = None, eigen_smooth: bool = False
    ) -> np.ndarray:
        """Maps for one batch, without augmentation: ``np.float32 [B, *spatial]``."""
        maps = self._per_layer_maps(input_tensor, targets, eigen_smooth)
        return _to_numpy(self.aggregate_multi_layers(self._split_layers(maps)))

    @staticmethod
    def _split_layers(maps: torch.Tensor) -> list[torch.Tensor]:
        return list(maps.split(1, dim=1))

    def forward_augmentation_smoothing(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        per_layer: bool = False,
    ) -> np.ndarray:
        """Mean of the maps over test-time augmentations (``tta_transforms``)."""
        x = self._prepare_input(input_tensor)
        if x.ndim != 4:
            raise ValueError(
                f"aug_smooth works on 4-D image batches (ttach flips the width of [B, C, H, W]); got "
                f"shape {list(x.shape)}"
            )
        results = []
        for transform in self.tta_transforms:
            augmented = transform.augment_image(x)
            maps = self._per_layer_maps(augmented, targets, eigen_smooth)
            if not per_layer:
                maps = self.aggregate_multi_layers(self._split_layers(maps))[:, None]
            results.append(transform.deaugment_mask(maps))
        mean = torch.stack(results).mean(dim=0)
        return _to_numpy(mean if per_layer else mean[:, 0])

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        *,
        per_layer: bool = False,
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
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth, per_layer=per_layer)
        if per_layer:
            return _to_numpy(self._per_layer_maps(input_tensor, targets, eigen_smooth))
        return self.forward(input_tensor, targets, eigen_smooth)

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


def _detach(outputs: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, outputs)


def _to_numpy(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().float().cpu().numpy().astype(np.float32, copy=False)
