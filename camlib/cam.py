"""CAM: the original class activation map, from the weights of the final linear layer."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["CAM"]


def _last_linear(model: torch.nn.Module) -> Optional[torch.nn.Linear]:
    linear = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            linear = module
    return linear


@register_method("cam", title="CAM")
class CAM(BaseCAM):
    r"""CAM, the original class activation map (no gradients).

    Zhou et al., "Learning Deep Features for Discriminative Localization",
    CVPR 2016. https://arxiv.org/abs/1512.04150

    For a network that ends in global average pooling and a linear classifier
    with weights :math:`W`:

    .. math::
        L^c = \mathrm{ReLU}\Big(\sum_k W_{c,k} A^k\Big)

    For such networks it equals Grad-CAM and HiResCAM up to scale, without a
    backward pass. Targets must name a class (``ClassifierOutputTarget`` or any
    target with a ``category`` attribute); None means each image's top class.
    Cost: one forward pass. Output: ``np.float32 [B, H, W]`` in [0, 1].

    Args:
        fc_layer: the final ``nn.Linear`` whose rows weight the channels; by
            default the last ``nn.Linear`` of the model. Its ``in_features``
            must equal the target layer's channels.

    Example:
        >>> import torch, torchvision
        >>> from camlib import CAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with CAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, differentiable=True, classifier_weights=True)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        fc_layer: Optional[torch.nn.Linear] = None,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        fc_layer = _last_linear(model) if fc_layer is None else fc_layer
        if not isinstance(fc_layer, torch.nn.Linear):
            raise TypeError(
                "CAM needs the model's final nn.Linear classifier (the model has none, or fc_layer is "
                f"a {type(fc_layer).__name__}); pass fc_layer=model.fc or use GradCAM"
            )
        self.fc_layer = fc_layer

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        weight = self.fc_layer.weight
        if weight.shape[1] != activations.shape[1]:
            raise ValueError(
                f"the classifier has {weight.shape[1]} input features but the target layer has "
                f"{activations.shape[1]} channels; CAM needs the layer right before global pooling "
                "and the classifier (e.g. model.layer4[-1] for a ResNet)"
            )
        categories = []
        for target in targets:
            category = getattr(target, "category", None)
            if category is None:
                raise TypeError(
                    f"CAM weights channels by the classifier row of a class, so each target needs a "
                    f"'category' (e.g. ClassifierOutputTarget); got {type(target).__name__}"
                )
            categories.append(int(category))
        index = torch.tensor(categories, device=weight.device)
        return weight.index_select(0, index).to(activations.device, activations.dtype)
