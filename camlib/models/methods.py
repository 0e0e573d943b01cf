"""Command-line method names -> CAM classes, and :func:`make_cam`."""

from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from torch import nn

from camlib.ablation_cam import AblationCAM
from camlib.base_cam import BaseCAM
from camlib.cam import CAM
from camlib.eigen_cam import EigenCAM
from camlib.eigen_grad_cam import EigenGradCAM
from camlib.fem import FEM
from camlib.finer_cam import FinerCAM
from camlib.fullgrad_cam import FullGrad
from camlib.grad_cam import GradCAM
from camlib.grad_cam_elementwise import GradCAMElementWise
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.hirescam import HiResCAM
from camlib.kpca_cam import KPCA_CAM
from camlib.layer_cam import LayerCAM
from camlib.score_cam import ScoreCAM
from camlib.seg_eigen_cam import SegEigenCAM
from camlib.shapley_cam import ShapleyCAM
from camlib.xgrad_cam import XGradCAM

__all__ = ["CAM_METHODS", "make_cam"]

#: Command-line method names (those of pytorch-grad-cam's ``cam.py``, plus ``"cam"``) -> CAM class.
#: ``"finercam"`` builds a :class:`~camlib.finer_cam.FinerCAM` over :class:`~camlib.grad_cam.GradCAM`.
CAM_METHODS: Mapping[str, type] = MappingProxyType(
    {
        "gradcam": GradCAM,
        "hirescam": HiResCAM,
        "gradcam++": GradCAMPlusPlus,
        "scorecam": ScoreCAM,
        "xgradcam": XGradCAM,
        "ablationcam": AblationCAM,
        "eigencam": EigenCAM,
        "eigengradcam": EigenGradCAM,
        "layercam": LayerCAM,
        "fullgrad": FullGrad,
        "gradcamelementwise": GradCAMElementWise,
        "kpcacam": KPCA_CAM,
        "fem": FEM,
        "shapleycam": ShapleyCAM,
        "finercam": FinerCAM,
        "segeigencam": SegEigenCAM,
        "cam": CAM,
    }
)


def make_cam(
    method: str,
    model: nn.Module,
    target_layers: List[nn.Module],
    *,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Union[BaseCAM, FinerCAM]:
    """Build the CAM object for a command-line method name.

    Args:
        method: A key of :data:`CAM_METHODS` (``"gradcam"``, ``"gradcam++"``,
            ``"scorecam"``, ..., ``"cam"``), case-insensitive.
        model: The model to explain.
        target_layers: Its target layers (``"fullgrad"`` ignores them and uses
            every layer with a bias).
        reshape_transform: Optional activation reshaping (tokens are laid out
            automatically when None).
        batch_size: Batch size of the masked forward passes of ScoreCAM and
            AblationCAM (None: each method's default).
        progress: Show progress bars (None: on unless ``CAMLIB_DISABLE_PROGRESS=1``).

    Returns:
        The CAM object; use it as a context manager or call it directly.

    Raises:
        ValueError: If ``method`` is not a known name; the message lists them.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None)
        >>> type(make_cam("finercam", model, [model.layer4[-1]])).__name__
        'FinerCAM'
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name string, got {type(method).__name__}")
    key = method.strip().lower()
    if key not in CAM_METHODS:
        close = difflib.get_close_matches(key, list(CAM_METHODS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {method!r}.{hint} Expected one of: {', '.join(CAM_METHODS)}")
    cls = CAM_METHODS[key]
    if cls is FinerCAM:
        return FinerCAM(model, target_layers, reshape_transform, base_method=GradCAM)
    if cls is FullGrad:
        return FullGrad(model, [], reshape_transform)
    kwargs: Dict[str, Any] = {}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if progress is not None:
        kwargs["progress"] = progress
    return cls(model, target_layers, reshape_transform, **kwargs)
