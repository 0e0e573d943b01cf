"""pytorch-grad-cam's capture object, for code that drives it by hand.

camlib's own pipeline captures with :func:`camlib.capture.capture`, which
returns an immutable record. This class keeps the older, stateful way for
client code written against pytorch-grad-cam::

    grads = ActivationsAndGradients(model, [model.layer4[-1]], None)
    out = grads(x)              # forward pass; fills grads.activations
    out[0, c].backward()        # fills grads.gradients
    grads.activations, grads.gradients  # lists of tensors, one per target layer

As in pytorch-grad-cam 1.5.7, ``reshape_transform`` is applied (and the
tensors detached) only with ``detach=True``; with ``detach=False`` the raw
outputs and gradients are kept, graph included. Unlike 1.5.7 the forward
hooks are attached for the forward pass of ``grads(x)`` only (removed in
``finally``), so the model runs unobserved otherwise, and the tensors stay on
the model's device. Gradients arrive through hooks on the captured output
tensors, which live with the autograd graph, not on the model.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    >>> grads = ActivationsAndGradients(net, [net[0]], None)
    >>> out = grads(torch.randn(1, 3, 8, 8))
    >>> out[0, 1].backward()
    >>> grads.activations[0].shape, grads.gradients[0].shape
    (torch.Size([1, 4, 6, 6]), torch.Size([1, 4, 6, 6]))
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
        reshape_transform: applied to each recorded output and gradient (with ``detach=True``).
        detach: store detached, reshaped activations and gradients (1.5.7's default).

    Attributes:
        activations: one tensor per target layer, in forward order, after a call.
        gradients: one tensor per target layer, in the order of ``target_layers``'
            forward pass, after the caller's ``backward()``.
        leaves: the recorded output tensors themselves, with their graph (for
            ``torch.autograd.grad(loss, grads.leaves)``), until the next call or :meth:`clear`.
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
        self.activations: List[Any] = []
        self.gradients: List[Any] = []
        self.leaves: List[torch.Tensor] = []
        self.handles: list = []

    def _reshape(self, value: Any) -> Any:
        return value if self.reshape_transform is None else self.reshape_transform(value)

    def save_activation(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Forward hook: record ``output`` (reshaped and detached with ``detach=True``)."""
        if self.detach:
            activation = self._reshape(output)
            self.activations.append(activation.detach() if isinstance(activation, torch.Tensor) else activation)
        else:
            self.activations.append(output)

    def save_gradient(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Forward hook: a tensor hook on ``output`` that records its gradient when it is computed."""
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        self.leaves.append(output)

        def store(grad: torch.Tensor) -> None:
            # gradients arrive in reverse order of the forward pass
            grad = self._reshape(grad).detach() if self.detach else grad
            self.gradients = [grad, *self.gradients]

        output.register_hook(store)

    def __call__(self, x: torch.Tensor) -> Any:
        """Run the model on ``x`` with the hooks attached, and remove them afterwards."""
        self.activations, self.gradients, self.leaves = [], [], []
        for layer in self.target_layers:
            self.handles.append(layer.register_forward_hook(self.save_activation))
            self.handles.append(layer.register_forward_hook(self.save_gradient))
        try:
            return self.model(x)
        finally:
            self.release()

    def clear(self) -> None:
        """Forget the recorded tensors."""
        self.activations, self.gradients, self.leaves = [], [], []

    def release(self) -> None:
        """Remove the forward hooks; calling it twice is harmless."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
