"""ShapleyCAM: gradient corrected by half the Hessian-vector product, spatially averaged."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.grad_cam import grad_cam_weights
from camlib.registry import register_method

__all__ = ["ShapleyCAM"]


@register_method("shapleycam", title="ShapleyCAM")
class ShapleyCAM(BaseCAM):
    r"""ShapleyCAM.

    Cai, "CAMs as Shapley Value-based Explainers", 2025. https://arxiv.org/abs/2501.06261

    A second-order approximation of each channel's Shapley value:

    .. math::
        w^c_k = \frac{1}{Z}\sum_{ij}\Big(\nabla_A y^c - \tfrac12\, \nabla^2_A y^c\, A\Big)^k_{ij},
        \qquad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    The Hessian-vector product is taken with double back-propagation w.r.t. the
    target layer only. When everything after the layer is piecewise linear
    (ReLU, pooling, linear head on raw logits) the Hessian term vanishes and this
    equals Grad-CAM; use ``ClassifierOutputReST`` or softmax targets for a
    difference. Cost: one forward, two backward passes. Output:
    ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import ShapleyCAM
        >>> from camlib.utils.model_targets import ClassifierOutputReST
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with ShapleyCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64), [ClassifierOutputReST(3)]).shape
        (1, 64, 64)
    """

    # second derivatives: the capture keeps the gradients' graph and runs attention with the math kernel
    capabilities = Capabilities(second_order=True)

    def compute_gradients(self, loss: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        leaves = list(leaves)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=True)
        pairs = [(g, leaf) for g, leaf in zip(grads, leaves) if g is not None and g.requires_grad]
        try:
            hvps = iter(
                torch.autograd.grad(
                    [g for g, _ in pairs], [leaf for _, leaf in pairs],
                    grad_outputs=[leaf.detach() for _, leaf in pairs], allow_unused=True,
                )
                if pairs
                else []
            )
        except RuntimeError as err:
            if "not supported" not in str(err) and "not implemented" not in str(err):
                raise
            raise RuntimeError(
                f"ShapleyCAM needs second derivatives (a Hessian-vector product), and an operation "
                f"between the target layer and the output has none ({err}); this is the case for "
                "torchvision's detectors (roi_align). Use a first-order method such as GradCAM"
            ) from err
        result = []
        for g in grads:
            if g is None:
                result.append(None)
            elif g.requires_grad:
                hvp = next(hvps)
                result.append(g.detach() if hvp is None else g.detach() - 0.5 * hvp)
            else:
                result.append(g.detach())
        return result

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return grad_cam_weights(grads)
