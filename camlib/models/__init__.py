"""Models, checkpoints, images and the single-image explain pipeline behind the front ends.

The command-line examples (``usage_examples/cam.py``) and ``camlib explain``
are thin front ends over this package, so that any other front end (a
notebook, a service) gets the same behaviour. One module per job:

* :mod:`camlib.models.builders`: :func:`build_model` builds a torchvision
  classification architecture by name (``"resnet50"``, ``"vit_b_16"``, ...), a
  timm model (``"timm:deit_tiny_patch16_224"``) or the bundled demo model
  (``"demo"``), with pretrained, random or checkpoint weights and an optional
  retrained head; :func:`resolve_device`, :func:`model_names`, :func:`class_names`;
* :mod:`camlib.models.checkpoints`: :func:`load_checkpoint` (``weights_only=True``,
  DataParallel/DDP/compile prefixes stripped, exact key diagnostics);
* :mod:`camlib.models.layers`: default target layers per architecture and
  :func:`resolve_target_layers` for paths such as ``"layer4[-1]"``, without ``eval``;
* :mod:`camlib.models.methods`: :data:`CAM_METHODS` and :func:`make_cam`;
* :mod:`camlib.models.images`: :func:`load_image`, :func:`resize_image`,
  :func:`default_preprocessing`, :func:`image_grid`;
* :mod:`camlib.models.loading`: :func:`load_model`, the one model loader of
  the front ends (model by name or object, weights, device, preprocessing,
  target layers);
* :mod:`camlib.models.explain`: :func:`explain` runs a CAM, guided
  backpropagation and guided Grad-CAM for one image.

Example:
    >>> from camlib.models import build_model, default_target_layers, make_cam
    >>> model = build_model("resnet18", weights="none", num_classes=4)
    >>> [type(layer).__name__ for layer in default_target_layers(model, "resnet18")]
    ['BasicBlock']
    >>> make_cam("gradcam++", model, default_target_layers(model, "resnet18")).__class__.__name__
    'GradCAMPlusPlus'
"""

from camlib.models.builders import build_model, class_names, model_names, resolve_device
from camlib.models.checkpoints import CHECKPOINT_KEYS, load_checkpoint
from camlib.models.explain import Explanation, explain
from camlib.models.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    default_preprocessing,
    image_grid,
    load_image,
    resize_image,
)
from camlib.models.layers import (
    candidate_target_layer_paths,
    default_target_layer_paths,
    default_target_layers,
    resolve_target_layers,
)
from camlib.models.loading import LoadedModel, load_model
from camlib.models.methods import CAM_METHODS, make_cam

__all__ = [
    "CAM_METHODS",
    "CHECKPOINT_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Explanation",
    "LoadedModel",
    "Preprocessing",
    "build_model",
    "candidate_target_layer_paths",
    "class_names",
    "default_preprocessing",
    "default_target_layer_paths",
    "default_target_layers",
    "explain",
    "image_grid",
    "load_checkpoint",
    "load_image",
    "load_model",
    "make_cam",
    "model_names",
    "resize_image",
    "resolve_device",
    "resolve_target_layers",
]
