"""The bundled demo model: a small multi-label CNN trained on :mod:`camlib.demo.data`.

The network is ``features`` (Conv-BN-ReLU blocks with max pooling between
them) -> global average pooling -> ``fc`` (a single ``Linear`` layer). That is
the architecture the original CAM of Zhou et al. ("Learning Deep Features for
Discriminative Localization", https://arxiv.org/abs/1512.04150) was defined
for: the class map is ``fc.weight[c]`` applied to the last block's channels.
``features[-1]`` (see :func:`demo_target_layers`) is the natural target layer
for Grad-CAM and friends; its output is ``[N, 128, H/16, W/16]`` (8x8 for the
default 128x128 images).

The model was trained multi-label (one sigmoid per class, ``BCEWithLogitsLoss``),
so its outputs are logits, one per entry of
:data:`camlib.demo.data.CLASS_NAMES`, and a class is present when its logit is
positive. Weights ship with the package; ``python -m camlib.demo.train --out
camlib/demo`` reproduces them, and the model card records how they were made.

Example:
    >>> import torch
    >>> from camlib.demo import load_demo_model, load_sample_image, demo_preprocess, CLASS_NAMES
    >>> model = load_demo_model()
    >>> with torch.no_grad():
    ...     logits = model(demo_preprocess(load_sample_image()))
    >>> sorted(CLASS_NAMES[i] for i in torch.nonzero(logits[0] > 0).flatten().tolist())
    ['ring', 'star']
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch
from torch import nn

from camlib.demo.data import NUM_CLASSES

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "DemoNet",
    "demo_preprocess",
    "demo_target_layers",
    "load_demo_model",
    "load_model_card",
]

#: Per-channel mean used to normalise inputs (RGB, images in [0, 1]).
DEMO_MEAN: tuple = (0.5, 0.5, 0.5)
#: Per-channel standard deviation used to normalise inputs (RGB).
DEMO_STD: tuple = (0.25, 0.25, 0.25)

WEIGHTS_FILE = "demo_weights.pt"
CARD_FILE = "demo_model_card.json"


def _conv_block(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DemoNet(nn.Module):
    """Small CNN: Conv-BN-ReLU blocks, global average pooling and a linear head.

    Layout of ``features`` for a 128x128 input (each conv block is
    ``Sequential(Conv2d, BatchNorm2d, ReLU)``)::

        0 conv block   3->16, 5x5, stride 2  -> 64x64
        1 max pool                           -> 32x32
        2 conv block  16->32                 -> 32x32
        3 max pool                           -> 16x16
        4 conv block  32->64                 -> 16x16
        5 max pool                           -> 8x8
        6 conv block  64->128                -> 8x8
        7 conv block 128->128                -> 8x8   (target layer: features[-1])

    then ``pool`` (``AdaptiveAvgPool2d(1)``), ``flatten`` and ``fc``
    (``Linear(128, num_classes)``). The feature map is the input size divided
    by 16; any input size divisible by 16 works, but the weights were trained
    on 128x128 images.

    Args:
        num_classes: Number of output logits.
        widths: Output channels of the five conv blocks.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, widths: Sequence[int] = (16, 32, 64, 128, 128)) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must hold 5 channel counts, got {tuple(widths)}")
        w = list(widths)
        self.features = nn.Sequential(
            _conv_block(3, w[0], kernel_size=5, stride=2),
            nn.MaxPool2d(2),
            _conv_block(w[0], w[1]),
            nn.MaxPool2d(2),
            _conv_block(w[1], w[2]),
            nn.MaxPool2d(2),
            _conv_block(w[2], w[3]),
            _conv_block(w[3], w[4]),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(w[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, num_classes]`` for normalised images ``[N, 3, H, W]``."""
        return self.fc(self.flatten(self.pool(self.features(x))))


def demo_target_layers(model: DemoNet) -> List[nn.Module]:
    """Return the recommended CAM target layers of the demo model: ``[model.features[-1]]``.

    Args:
        model: A :class:`DemoNet`, e.g. from :func:`load_demo_model`.

    Returns:
        A one-element list, ready to pass as ``target_layers`` to a CAM method.

    Raises:
        TypeError: If ``model`` is not a :class:`DemoNet`.
    """
    if not isinstance(model, DemoNet):
        raise TypeError(f"expected a DemoNet (from load_demo_model()), got {type(model).__name__}")
    return [model.features[-1]]


def demo_preprocess(img: Union[np.ndarray, torch.Tensor], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Turn RGB images into the normalised input tensor the demo model expects.

    Args:
        img: An RGB image ``[H, W, 3]`` or a batch ``[N, H, W, 3]``, as floats
            in [0, 1] (numpy or torch) or as uint8 in [0, 255].
        device: Device of the returned tensor.

    Returns:
        float32 tensor ``[N, 3, H, W]`` (``N = 1`` for a single image),
        normalised with :data:`DEMO_MEAN` and :data:`DEMO_STD`.

    Raises:
        TypeError: If ``img`` is neither a numpy array nor a tensor.
        ValueError: If ``img`` does not have 3 channels last.
    """
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
    elif isinstance(img, torch.Tensor):
        t = img
    else:
        raise TypeError(f"img must be a numpy array or a torch tensor, got {type(img).__name__}")
    if t.ndim not in (3, 4) or t.shape[-1] != 3:
        raise ValueError(
            f"img must be an RGB image [H, W, 3] or a batch [N, H, W, 3], got shape {tuple(t.shape)}"
        )
    t = t.to(device)
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.ndim == 3:
        t = t.unsqueeze(0)
    mean = torch.tensor(DEMO_MEAN, dtype=torch.float32, device=t.device)
    std = torch.tensor(DEMO_STD, dtype=torch.float32, device=t.device)
    return ((t - mean) / std).permute(0, 3, 1, 2).contiguous()


def load_demo_model(device: Union[str, torch.device] = "cpu") -> DemoNet:
    """Build the demo model and load the weights bundled with the package.

    Args:
        device: Device to put the model on.

    Returns:
        The :class:`DemoNet` in eval mode.
    """
    model = DemoNet()
    with resources.as_file(resources.files(__package__).joinpath(WEIGHTS_FILE)) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def load_model_card() -> Dict[str, Any]:
    """Read the model card recorded when the bundled weights were trained.

    Returns:
        The card as a dict: seed, epochs, data sizes, normalisation, class names,
        held-out metrics, the training command, library versions and wall time.
    """
    return json.loads(resources.files(__package__).joinpath(CARD_FILE).read_text(encoding="utf-8"))
