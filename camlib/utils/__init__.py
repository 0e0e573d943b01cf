"""Utilities: image helpers, targets, reshape transforms, layer lookup, projections."""

from camlib.utils import model_outputs, model_targets, reshape_transforms
from camlib.utils.image import deprocess_image, preprocess_image, scale_cam_image, show_cam_on_image
from camlib.utils.svd_on_activations import get_2d_projection

__all__ = [
    "deprocess_image",
    "get_2d_projection",
    "model_outputs",
    "model_targets",
    "preprocess_image",
    "reshape_transforms",
    "scale_cam_image",
    "show_cam_on_image",
]
