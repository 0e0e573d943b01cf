"""The bundled demo vision transformer: a small hybrid ViT trained on :mod:`camlib.demo.data`.

The attention methods (:class:`camlib.AttentionRollout`,
:class:`camlib.TransformerAttribution`, :class:`camlib.LeGrad`) need a
transformer, and their maps only mean something on a trained one. This is
torchvision's :class:`~torchvision.models.VisionTransformer` (3 blocks, 4 heads,
width 64, a class token) whose patch embedding ``conv_proj`` is the demo CNN's
feature extractor instead of a 16 x 16 patchify convolution: the conv blocks of
:class:`camlib.demo.DemoNet` (``features``, frozen, with the bundled CNN's
trained weights) and a 1 x 1 convolution to the token width. It is a ViT head
over the demo features (a "hybrid" ViT, Dosovitskiy et al. 2021): a 128 x 128
image becomes an 8 x 8 grid of 64 tokens plus the class token, the same grid as
the demo CNN's target layer, and the transformer learns in a few CPU-minutes
where a ViT from raw patches would need far more data and time. The CNN's
features carry the evidence; which tokens the class token gathers it from is
the transformer's attention, which is what the attention methods read.

The model is multi-label like the demo CNN (logits, one per entry of
:data:`camlib.demo.data.CLASS_NAMES`). Weights ship with the package (half
precision, about 0.25 MB: the transformer only, the stem is the bundled
CNN's; loaded as float32); ``python -m camlib.demo.train_vit
--out camlib/demo`` reproduces them, and the model card records how they were
made and the held-out accuracy.

CNN-style methods run on it with a target layer such as
``model.encoder.layers[-1].ln_1`` (see :func:`demo_vit_target_layers`); camlib
infers the token-to-grid reshape from the model.

Example:
    >>> import torch
    >>> from camlib.demo import CLASS_NAMES, demo_preprocess, load_sample_image
    >>> from camlib.demo.vit import load_demo_vit
    >>> vit = load_demo_vit()
    >>> with torch.no_grad():
    ...     logits = vit(demo_preprocess(load_sample_image()))
    >>> sorted(CLASS_NAMES[i] for i in torch.nonzero(logits[0] > 0).flatten().tolist())
    ['ring', 'star']
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Union

import torch
from torch import nn
from torchvision.models import VisionTransformer

from camlib.demo.data import NUM_CLASSES
from camlib.demo.model import DemoNet, load_demo_model

__all__ = [
    "VIT_CARD_FILE",
    "VIT_WEIGHTS_FILE",
    "DemoViT",
    "demo_vit_target_layers",
    "load_demo_vit",
    "load_vit_model_card",
]

VIT_WEIGHTS_FILE = "demo_vit_weights.pt"
VIT_CARD_FILE = "demo_vit_model_card.json"


class DemoViT(VisionTransformer):
    """torchvision's ViT with the demo CNN's first conv blocks as its patch embedding.

    ``conv_proj`` is ``Sequential(stem, proj)``: ``stem`` is
    ``DemoNet().features`` (``[N, 128, H/16, W/16]``) and ``proj`` a 1 x 1
    convolution to ``hidden_dim`` channels. The
    rest is torchvision's encoder (class token, learned position embeddings,
    pre-norm blocks of ``torch.nn.MultiheadAttention`` and an MLP) and
    ``heads.head``, a linear layer on the class token. Inputs must be
    ``image_size`` x ``image_size`` (128 for the bundled weights).

    Args:
        num_classes: Number of output logits.
        image_size: Input height and width.
        num_layers: Transformer blocks.
        num_heads: Attention heads per block.
        hidden_dim: Token width.
        mlp_dim: Hidden width of each block's MLP.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        image_size: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        hidden_dim: int = 64,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__(
            image_size=image_size,
            patch_size=16,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            num_classes=num_classes,
        )
        stem = DemoNet().features
        channels = stem[-1][0].out_channels  # the last conv block's Conv2d
        proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        nn.init.trunc_normal_(proj.weight, std=(1.0 / channels) ** 0.5)
        nn.init.zeros_(proj.bias)
        self.conv_proj = nn.Sequential()
        self.conv_proj.add_module("stem", stem)
        self.conv_proj.add_module("proj", proj)


def demo_vit_target_layers(model: DemoViT) -> List[nn.Module]:
    """The layer CNN-style methods explain on the demo ViT: ``[model.encoder.layers[-1].ln_1]``.

    The last block's first layer norm sees the tokens that block's attention
    mixes (the usual choice for ViTs, as in pytorch-grad-cam's tutorial);
    camlib drops the class token and lays the 64 patch tokens out on the 8 x 8
    grid.

    Raises:
        TypeError: If ``model`` is not a :class:`DemoViT`.
    """
    if not isinstance(model, DemoViT):
        raise TypeError(f"expected a DemoViT (from load_demo_vit()), got {type(model).__name__}")
    return [model.encoder.layers[-1].ln_1]


def load_demo_vit(device: Union[str, torch.device] = "cpu") -> DemoViT:
    """Build the demo ViT and load the weights bundled with the package.

    The stem's weights are the demo CNN's (:func:`camlib.demo.load_demo_model`);
    the transformer's are stored in half precision and loaded as float32.

    Args:
        device: Device to put the model on.

    Returns:
        The :class:`DemoViT` in eval mode, every parameter ``requires_grad=True``.
    """
    card = load_vit_model_card()
    model = DemoViT(**card["architecture"])
    with resources.as_file(resources.files(__package__).joinpath(VIT_WEIGHTS_FILE)) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    stem = {f"conv_proj.stem.{k}": v for k, v in load_demo_model().features.state_dict().items()}
    model.load_state_dict({**stem, **{k: v.float() if v.is_floating_point() else v for k, v in state.items()}})
    return model.to(device).eval()


def load_vit_model_card() -> Dict[str, Any]:
    """Read the model card recorded when the bundled demo ViT was trained."""
    return json.loads(resources.files(__package__).joinpath(VIT_CARD_FILE).read_text(encoding="utf-8"))
