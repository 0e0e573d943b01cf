"""Capture target layers' outputs during one forward pass, and their gradients.

Hooks live only for the duration of one forward pass: they are registered when
the object is called and removed in ``finally``, so nothing stays attached to
the user's model between calls or after an exception.

What is captured cannot be changed by the model afterwards: each target
layer's output is replaced, for the rest of the forward pass, by a clone, so an
in-place operation downstream (``ReLU(inplace=True)``, ``out += identity``)
modifies the clone, never the captured tensor. Gradients are taken with
``torch.autograd.grad`` with respect to the captured tensors themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from camlib.utils.reshape_transforms import (
    _is_feature_pyramid,
    feature_pyramid_to_map,
    infer_reshape_transform,
    num_prefix_tokens,
)

__all__ = ["ActivationsAndGradients"]


@dataclass
class _Capture:
    """One layer's output, flattened: tensors captured (others kept as-is)."""

    leaves: list
    spec: Any
    calls: int = 1

    def structure(self, leaves: Optional[list] = None) -> Any:
        return tree_unflatten(self.leaves if leaves is None else leaves, self.spec)


def _describe(layer: torch.nn.Module) -> str:
    text = repr(layer).split("\n")[0]
    return text if len(text) <= 80 else text[:77] + "..."


class ActivationsAndGradients:
    """Runs the model while recording the outputs of ``target_layers``.

    After :meth:`finalize`, :attr:`activations` and :attr:`gradients` hold one
    ``[B, C, *spatial]`` float32 tensor per target layer, in the order of
    ``target_layers``, detached from the autograd graph.

    Args:
        model: the model to run.
        target_layers: modules of ``model`` whose outputs are captured.
        reshape_transform: maps a layer's raw output (tensor, tuple, dict...)
            to ``[B, C, *spatial]``; applied to the gradients in the same way.
            When None, token sequences and channels-last maps are laid out
            automatically (see :func:`camlib.utils.reshape_transforms.infer_reshape_transform`;
            the model's class / distillation / register tokens are counted with
            :func:`~camlib.utils.reshape_transforms.num_prefix_tokens`), and a
            dict of feature maps (an FPN) is resized to its coarsest map and
            concatenated (:func:`~camlib.utils.reshape_transforms.feature_pyramid_to_map`).
        detach: kept for compatibility with pytorch-grad-cam; captured values
            are always detached once gradients have been taken.
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
        #: Tokens before the patch grid, as the model declares them (None: inferred per layer).
        self.prefix_tokens = num_prefix_tokens(model) if reshape_transform is None else None
        self.activations: list[torch.Tensor] = []
        self.gradients: list[torch.Tensor] = []
        self.handles: list = []
        #: Switch autograd on when the first target layer runs (the part of the
        #: forward pass before it then records no graph).
        self.enable_grad_at_targets = False
        self._captures: list[Optional[_Capture]] = []
        self._checked = False

    # -- capture -----------------------------------------------------------------
    def _make_hook(self, index: int) -> Callable:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if self.enable_grad_at_targets and not torch.is_grad_enabled():
                torch.set_grad_enabled(True)
            grad_mode = torch.is_grad_enabled()
            leaves, spec = tree_flatten(output)
            kept, passed_on = [], []
            for leaf in leaves:
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    if grad_mode:
                        src = leaf if leaf.requires_grad else leaf.detach().requires_grad_()
                        kept.append(src)
                        passed_on.append(src.clone())
                    else:
                        kept.append(leaf.clone())
                        passed_on.append(leaf)
                else:
                    kept.append(leaf)
                    passed_on.append(leaf)
            previous = self._captures[index]
            calls = 1 if previous is None else previous.calls + 1
            self._captures[index] = _Capture(kept, spec, calls)
            return tree_unflatten(passed_on, spec) if grad_mode else None

        return hook

    def register(self) -> None:
        """Attach one forward hook per target layer (idempotent)."""
        if self.handles:
            return
        for index, layer in enumerate(self.target_layers):
            self.handles.append(layer.register_forward_hook(self._make_hook(index)))

    def release(self) -> None:
        """Remove the hooks; calling it twice is harmless."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def clear(self) -> None:
        """Forget everything captured."""
        self._captures = [None] * len(self.target_layers)
        self._checked = False
        self.activations = []
        self.gradients = []

    def __call__(self, x: torch.Tensor) -> Any:
        """Run the model on ``x`` with the hooks attached, and remove them afterwards."""
        self.clear()
        self.register()
        try:
            return self.model(x)
        finally:
            self.release()

    # -- after the forward pass -------------------------------------------------
    def check_all_ran(self) -> None:
        """Raise if a target layer did not run; warn (once per call) if one ran more than once."""
        if self._checked:
            return
        for layer, capture in zip(self.target_layers, self._captures):
            if capture is None:
                raise ValueError(
                    f"target layer {_describe(layer)} did not run during the forward pass, so there is "
                    "nothing to explain. Pick a layer that the model's forward() actually calls "
                    "(a module defined in __init__ but unused, or a layer skipped for this input, "
                    "never produces activations)."
                )
            if capture.calls > 1:
                warnings.warn(
                    f"target layer {_describe(layer)} ran {capture.calls} times in one forward pass "
                    "(a module reused in several places); its last output is used. Choose a module "
                    "that runs once for an unambiguous map.",
                    stacklevel=4,
                )
        self._checked = True

    def differentiable_leaves(self) -> list[torch.Tensor]:
        """The captured tensors gradients can be taken with respect to, layer by layer."""
        return [
            leaf
            for capture in self._captures
            if capture is not None
            for leaf in capture.leaves
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad
        ]

    def raw_outputs(self) -> list[Any]:
        """Each target layer's output as the layer returned it (detached)."""
        return [
            c.structure([leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in c.leaves])
            for c in self._captures
        ]

    def _to_map(self, layer: torch.nn.Module, structure: Any, spatial: Sequence[int]) -> torch.Tensor:
        if self.reshape_transform is not None:
            result = self.reshape_transform(structure)
            if not isinstance(result, torch.Tensor):
                raise TypeError(
                    f"reshape_transform returned {type(result).__name__} for target layer "
                    f"{_describe(layer)}; it must return a tensor of shape [B, C, *spatial]"
                )
        elif isinstance(structure, torch.Tensor):
            transform = infer_reshape_transform(structure.shape, spatial, self.prefix_tokens)
            result = structure if transform is None else transform(structure)
        elif _is_feature_pyramid(structure, len(spatial)):
            result = feature_pyramid_to_map(structure)
        else:
            raise TypeError(
                f"target layer {_describe(layer)} returned a {type(structure).__name__}, not a tensor. "
                "Pass reshape_transform=... that turns this output into a [B, C, H, W] tensor "
                "(for example lambda out: out[0] to take the first element of a tuple)."
            )
        if result.ndim != len(spatial) + 2:
            raise ValueError(
                f"the activation of target layer {_describe(layer)} has shape {list(result.shape)} "
                f"after reshaping, but a {len(spatial) + 2}-D input needs [B, C, "
                f"{', '.join('HWD'[: len(spatial)])}] maps; fix reshape_transform or choose another layer"
            )
        return result

    def finalize(self, input_spatial: Sequence[int], leaf_gradients: Optional[Sequence] = None) -> None:
        """Build :attr:`activations` (and :attr:`gradients` from ``leaf_gradients``,
        one per tensor of :meth:`differentiable_leaves`, None meaning zero)."""
        self.check_all_ran()
        grads_iter = iter(leaf_gradients) if leaf_gradients is not None else None
        self.activations, self.gradients = [], []
        for layer, capture in zip(self.target_layers, self._captures):
            values = [leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in capture.leaves]
            self.activations.append(self._to_map(layer, capture.structure(values), input_spatial).float())
            if grads_iter is None:
                continue
            grads = []
            for leaf in capture.leaves:
                if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                    grad = next(grads_iter)
                    grads.append(torch.zeros_like(leaf) if grad is None else grad.detach())
                elif isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    grads.append(torch.zeros_like(leaf))
                else:
                    grads.append(leaf)
            self.gradients.append(self._to_map(layer, capture.structure(grads), input_spatial).float())
        self._captures = [None] * len(self.target_layers)
