"""CAMWrapper: the one base of methods built on another method (FinerCAM, RefineCAM, SESS).

A wrapper builds its base method from the class it is given
(``base_method=GradCAM``) and runs it through its public stages only:
:meth:`camlib.base_cam.BaseCAM.compute` with ``default_targets=`` (targets
chosen from each pass's own scores) or ``aggregate=`` (another combination of
the per-layer maps). A wrapper overrides :meth:`CAMWrapper.aggregate` or
:meth:`CAMWrapper.wrapped_maps` (or :meth:`CAMWrapper.compute`, for arguments
of its own); calling it returns numpy, as every CAM does.

Example:
    >>> import torch, torchvision
    >>> from camlib import RefineCAM
    >>> model = torchvision.models.resnet18(weights=None)
    >>> cam = RefineCAM(model, [model.layer3[-1], model.layer4[-1]])
    >>> cam.base_cam.__class__.__name__, cam(torch.randn(1, 3, 64, 64)).shape
    ('GradCAMPlusPlus', (1, 64, 64))
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, List, Optional

import numpy as np
import torch

from camlib.base_cam import BaseCAM, to_numpy
from camlib.capabilities import Capabilities
from camlib.utils.legacy import call_targets

__all__ = ["CAMWrapper", "build_base_cam"]


def build_base_cam(
    wrapper: str,
    base_method: Any,
    model: torch.nn.Module,
    target_layers: List[torch.nn.Module],
    reshape_transform: Optional[Callable],
    **kwargs: Any,
) -> Any:
    """Build a wrapper's base method from its class, with a clear error for anything else."""
    if isinstance(base_method, (BaseCAM, CAMWrapper)):
        name = type(base_method).__name__
        raise TypeError(
            f"base_method must be a CAM class, got an instance of {name}; pass the class itself "
            f"({wrapper} builds it): base_method={name}"
        )
    if not (isinstance(base_method, type) and issubclass(base_method, (BaseCAM, CAMWrapper))):
        raise TypeError(f"base_method must be a camlib CAM class such as GradCAM, got {base_method!r}")
    return base_method(model, target_layers, reshape_transform, **kwargs)


class CAMWrapper:
    """Base of the methods that run another method (its ``base_cam``).

    Subclasses set ``capabilities`` (with ``wraps_method=True``) and override
    :meth:`aggregate` (another combination of the per-layer maps),
    :meth:`wrapped_maps` (another use of the base method) or, for arguments of
    their own, :meth:`compute`. The model, its target layers and the last
    call's outputs are the base method's.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(wraps_method=True)

    def __init__(self, base_cam: Any) -> None:
        self.base_cam = base_cam

    @property
    def model(self) -> torch.nn.Module:
        """The explained model."""
        return self.base_cam.model

    @property
    def target_layers(self) -> list:
        """The base method's target layers."""
        return self.base_cam.target_layers

    @property
    def outputs(self) -> Any:
        """The model's (detached) output of the last call of the base method."""
        return self.base_cam.outputs

    @property
    def uses_gradients(self) -> bool:
        """Whether the base method back-propagates."""
        return self.base_cam.uses_gradients

    @property
    def compute_input_gradient(self) -> bool:
        """Whether the base method takes the input gradient."""
        return self.base_cam.compute_input_gradient

    def class_target(self, category: int) -> Callable:
        """The target that explains class ``category`` (the base method's, by default)."""
        return self.base_cam.class_target(category)

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        per_layer: bool = False,
    ) -> torch.Tensor:
        """The maps as a tensor on the model's device (what calling the wrapper returns as numpy).

        The arguments and the result are those of
        :meth:`camlib.base_cam.BaseCAM.compute`; ``eigen_smooth`` is passed to
        the base method and ``per_layer`` works where the wrapper supports it
        (``capabilities.per_layer``). A wrapper changes what this computes by
        overriding :meth:`wrapped_maps` or :meth:`aggregate`.
        """
        return self.wrapped_maps(input_tensor, targets, aug_smooth, eigen_smooth, per_layer)

    def wrapped_maps(
        self, input_tensor: torch.Tensor, targets: Optional[list], aug_smooth: bool, eigen_smooth: bool, per_layer: bool
    ) -> torch.Tensor:
        """The override point of :meth:`compute` (same arguments, all given): by default
        the base method's :meth:`~camlib.base_cam.BaseCAM.compute`, its per-layer maps
        combined by :meth:`aggregate`."""
        return self.base_cam.compute(
            input_tensor,
            targets,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            per_layer=per_layer,
            aggregate=self.aggregate,
        )

    def aggregate(self, per_layer_maps: torch.Tensor) -> torch.Tensor:
        """``[B, L, *S] -> [B, *S]``: how :meth:`wrapped_maps` combines the base method's
        per-layer maps (by default the base method's own :meth:`~camlib.base_cam.BaseCAM.aggregate`)."""
        return self.base_cam.aggregate(per_layer_maps)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        *,
        aug_smooth: bool = False,
        per_layer: bool = False,
        **legacy_kwargs: Any,
    ) -> np.ndarray:
        """The maps as ``np.float32`` (see :meth:`compute`); class indices as targets are the older spelling."""
        self.base_cam.outputs = None  # a failed call leaves no previous call's output behind
        targets = call_targets(self, input_tensor, targets, legacy_kwargs)
        return to_numpy(
            self.compute(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, per_layer=per_layer)
        )

    __call__ = forward

    def release(self) -> None:
        """Remove any hook the base method still holds (hooks only live during a call anyway)."""
        self.base_cam.release()

    def __enter__(self) -> CAMWrapper:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_method={type(self.base_cam).__name__}, model={type(self.model).__name__}, "
            f"target_layers={len(self.target_layers)} layer(s))"
        )
