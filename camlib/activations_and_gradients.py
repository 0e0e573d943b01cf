"""pytorch-grad-cam's capture object, for code that drives it by hand.

camlib's own pipeline captures with :func:`camlib.capture.capture`, which
returns an immutable record. This class keeps the older, stateful way for
client code written against pytorch-grad-cam::

    grads = ActivationsAndGradients(model, [model.layer4[-1]], None)
    out = grads(x)              # forward pass; fills grads.activations
    out[0, c].backward()        # fills grads.gradients
    grads.activations, grads.gradients  # lists of tensors, one per target layer

Forward hooks are attached for the forward pass only (removed in ``finally``);
gradients arrive through hooks on the captured output tensors, which live with
the autograd graph, not on the model.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

__all__ = ["ActivationsAndGradients"]


class ActivationsAndGradients:
    """Records the outputs of ``target_layers`` during a forward pass, and their gradients.

    Args:
        model: the model to run.
        target_layers: modules of ``model`` whose outputs are recorded.
        reshape_transform: applied to each recorded output and gradient.
        detach: store detached activations (gradients are always detached).

    Attributes:
        activations: one tensor per target layer, in forward order, after a call.
        gradients: one tensor per target layer, in the order of ``target_layers``'
            forward pass, after the caller's ``backward()``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: Sequence[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.detach = detach
        self.activations: List[torch.Tensor] = []
        self.gradients: List[torch.Tensor] = []
        self.handles: list = []

    def _reshape(self, value: Any) -> Any:
        return value if self.reshape_transform is None else self.reshape_transform(value)

    def _save_activation(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        activation = self._reshape(output)
        self.activations.append(activation.detach() if self.detach and isinstance(activation, torch.Tensor) else activation)
        if isinstance(output, torch.Tensor) and output.requires_grad:

            def store(grad: torch.Tensor) -> None:
                # gradients arrive in reverse order of the forward pass
                self.gradients = [self._reshape(grad).detach(), *self.gradients]

            output.register_hook(store)

    def __call__(self, x: torch.Tensor) -> Any:
        """Run the model on ``x`` with the hooks attached, and remove them afterwards."""
        self.activations, self.gradients = [], []
        self.handles = [layer.register_forward_hook(self._save_activation) for layer in self.target_layers]
        try:
            return self.model(x)
        finally:
            self.release()

    def release(self) -> None:
        """Remove the forward hooks; calling it twice is harmless."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
