"""Default target layers per architecture family, and layer paths resolved without ``eval``.

Example:
    >>> default_target_layer_paths("resnet50"), candidate_target_layer_paths("resnet50")
    (['layer4[-1]'], ['layer2[-1]', 'layer3[-1]', 'layer4[-1]'])
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from torch import nn

from camlib.models.builders import TIMM_PREFIX
from camlib.utils.find_layers import get_layer_by_path

__all__ = [
    "candidate_target_layer_paths",
    "default_target_layer_paths",
    "default_target_layers",
    "resolve_target_layers",
]

# (name pattern, default target layer paths, layer paths worth comparing with per_layer=True).
_TORCHVISION_LAYERS: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    (
        r"(resnet|resnext|wide_resnet)\d",
        ("layer4[-1]",),
        ("layer2[-1]", "layer3[-1]", "layer4[-1]"),
    ),
    (r"vgg\d", ("features[-1]",), ()),
    (r"alexnet$", ("features[-1]",), ()),
    (
        r"densenet\d",
        ("features[-1]",),
        ("features.denseblock2", "features.denseblock3", "features[-1]"),
    ),
    (r"mobilenet_v[23]", ("features[-1]",), ()),
    (r"efficientnet_", ("features[-1]",), ("features[4]", "features[6]", "features[-1]")),
    (r"convnext_", ("features[-1]",), ("features[3]", "features[5]", "features[-1]")),
    (r"mnasnet", ("layers[-1]",), ()),
    (r"regnet_", ("trunk_output[-1]",), ("trunk_output[-3]", "trunk_output[-2]", "trunk_output[-1]")),
    (r"shufflenet_v2", ("conv5",), ("stage3", "stage4", "conv5")),
    (r"squeezenet", ("features[-1]",), ()),
    (r"googlenet$", ("inception5b",), ("inception4e", "inception5a", "inception5b")),
    (r"inception_v3$", ("Mixed_7c",), ("Mixed_6e", "Mixed_7b", "Mixed_7c")),
    # The last block's patch tokens never reach the class token, so their gradient
    # is zero there: take the block before it.
    (
        r"vit_",
        ("encoder.layers[-2].ln_1",),
        ("encoder.layers[-8].ln_1", "encoder.layers[-5].ln_1", "encoder.layers[-2].ln_1"),
    ),
    (
        r"swin_",
        ("features[-1][-1].norm1",),
        ("features[3][-1].norm1", "features[5][-1].norm1", "features[-1][-1].norm1"),
    ),
    (r"maxvit_", ("blocks[-1]",), ("blocks[-3]", "blocks[-2]", "blocks[-1]")),
)

_TIMM_LAYERS: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    (
        r"(vit|deit|beit|eva|cait)",
        ("blocks[-2].norm1",),
        ("blocks[-8].norm1", "blocks[-5].norm1", "blocks[-2].norm1"),
    ),
    (
        r"swin",
        ("layers[-1].blocks[-1].norm1",),
        ("layers[-3].blocks[-1].norm1", "layers[-2].blocks[-1].norm1", "layers[-1].blocks[-1].norm1"),
    ),
    (r"(resnet|resnext|wide_resnet|seresnet)", ("layer4[-1]",), ("layer2[-1]", "layer3[-1]", "layer4[-1]")),
    (r"convnext", ("stages[-1]",), ("stages[-3]", "stages[-2]", "stages[-1]")),
    (r"(maxvit|maxxvit|coatnet)", ("stages[-1]",), ("stages[-3]", "stages[-2]", "stages[-1]")),
    (r"regnet[xy]_", ("s4",), ("s2", "s3", "s4")),
    (r"(efficientnet|mobilenet|mixnet|tf_efficientnet)", ("bn2",), ()),
    (r"densenet", ("features[-1]",), ()),
)

_DEMO_LAYERS: Tuple[Tuple[str, ...], Tuple[str, ...]] = (
    ("features[-1]",),
    ("features[3]", "features[5]", "features[-1]"),
)


def _layer_table(name: str) -> Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    if name == "demo":
        return _DEMO_LAYERS
    if name.startswith(TIMM_PREFIX):
        table, key = _TIMM_LAYERS, name[len(TIMM_PREFIX) :]
    else:
        table, key = _TORCHVISION_LAYERS, name
    for pattern, default, candidates in table:
        if re.match(pattern, key):
            return default, candidates or default
    return None


def default_target_layer_paths(name: str) -> List[str]:
    """Paths of the default target layers of an architecture, as strings.

    Args:
        name: A model name accepted by :func:`build_model`.

    Returns:
        The paths, e.g. ``["layer4[-1]"]`` for a ResNet, ``["encoder.layers[-2].ln_1"]``
        for a torchvision ViT (not the last block, whose patch tokens get no
        gradient), ``["features[-1][-1].norm1"]`` for a Swin.

    Raises:
        ValueError: If camlib knows no default for this architecture; the
            message asks for explicit target layers.

    Example:
        >>> default_target_layer_paths("densenet121"), default_target_layer_paths("swin_t")
        (['features[-1]'], ['features[-1][-1].norm1'])
    """
    table = _layer_table(name)
    if table is None:
        raise ValueError(
            f"no default target layer is known for {name!r}; pass one with --target-layer "
            "(a path such as 'layer4[-1]'; list them with [n for n, _ in model.named_modules()])"
        )
    return list(table[0])


def candidate_target_layer_paths(name: str) -> List[str]:
    """Layers worth comparing with ``per_layer=True``, from shallow to deep.

    For architectures with a clear stage structure these are the ends of the
    last few stages; otherwise just the default target layer.

    Args:
        name: A model name accepted by :func:`build_model`.

    Returns:
        Layer paths, the default target layer last.

    Raises:
        ValueError: If camlib knows no default for this architecture.

    Example:
        >>> candidate_target_layer_paths("resnet50")
        ['layer2[-1]', 'layer3[-1]', 'layer4[-1]']
    """
    table = _layer_table(name)
    if table is None:
        default_target_layer_paths(name)  # raises the explanatory ValueError
    return list(table[1])


def resolve_target_layers(model: nn.Module, paths: Sequence[str]) -> List[nn.Module]:
    """Resolve layer paths such as ``"layer4[-1]"`` or ``"features.denseblock4"``, without ``eval``.

    Args:
        model: The model holding the layers.
        paths: One or more paths (see :func:`camlib.utils.find_layers.get_layer_by_path`).

    Returns:
        The layers, in the order of ``paths``.

    Raises:
        TypeError: If ``paths`` is a single string or not a sequence.
        ValueError: If a path does not exist; the message lists close candidates.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None)
        >>> resolve_target_layers(model, ["layer4[-1]"])[0] is model.layer4[1]
        True
    """
    if isinstance(paths, str) or not isinstance(paths, Sequence):
        raise TypeError(f"paths must be a list of layer path strings, got {paths!r}")
    if not paths:
        raise ValueError("paths is empty; pass at least one layer path such as 'layer4[-1]'")
    layers = []
    for path in paths:
        try:
            layers.append(get_layer_by_path(model, path))
        except ValueError as err:
            if "Close matches" in str(err):
                raise
            top = [name for name, _ in model.named_children()]
            raise ValueError(f"{err} Top-level modules of {type(model).__name__}: {', '.join(top)}.") from err
    return layers


def default_target_layers(model: nn.Module, name: str) -> List[nn.Module]:
    """The default target layers of ``model``, built by :func:`build_model` from ``name``.

    Args:
        model: The model.
        name: Its architecture name (``"resnet50"``, ``"demo"``, ...).

    Returns:
        The layers (see :func:`default_target_layer_paths`); for ``"demo"``,
        :func:`camlib.demo.demo_target_layers`.

    Raises:
        ValueError: If no default is known, or the model does not have the
            layer (it is not the architecture ``name`` says).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.densenet121(weights=None)
        >>> default_target_layers(model, "densenet121")[0] is model.features.norm5
        True
    """
    if name == "demo":
        from camlib.demo import DemoNet, demo_target_layers

        if isinstance(model, DemoNet):
            return demo_target_layers(model)
    return resolve_target_layers(model, default_target_layer_paths(name))
