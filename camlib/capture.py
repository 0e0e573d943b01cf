"""The capture stage: one forward (and backward) pass in, one immutable record out.

:func:`capture` runs the model once with forward hooks on the chosen layers,
resolves the targets, back-propagates the summed target scores when asked,
and returns a :class:`Capture`: the input the model ran on, its outputs, the
resolved targets, and per layer the activations and gradients laid out as
``[B, C, *spatial]`` float32 tensors (plus the layer's raw output, for methods
that re-run the network from it). Nothing is left behind: the hooks live for
the forward pass only, the grad mode is restored by the stage that changed it,
and gradients are taken with :func:`torch.autograd.grad`, never written into
``.grad``.

What is captured cannot be changed by the model afterwards: each layer's output
is replaced, for the rest of the forward pass, by a clone, so an in-place
operation downstream (``ReLU(inplace=True)``, ``out += identity``) modifies the
clone. Hooks ignore forward passes run by other threads on the same model.
A compiled model (``torch.compile``) is run through the module it wraps
(:func:`~camlib.utils.model_state.eager_module`), where hooks always fire.
Non-finite target scores are refused before any gradient is taken
(:func:`~camlib.utils.batched.check_finite_scores`), and :func:`check_finite_maps`
refuses a non-finite map, naming where the NaN or Inf came from.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from camlib.utils.batched import check_finite_scores, score_outputs
from camlib.utils.image import at_least_float32
from camlib.utils.messages import warn_user
from camlib.utils.model_state import eager_module
from camlib.utils.reshape_transforms import (
    feature_pyramid_to_map,
    infer_reshape_transform,
    is_feature_pyramid,
)
from camlib.utils.validation import all_finite

__all__ = [
    "Capture",
    "LayerRecorder",
    "autograd_gradients",
    "capture",
    "capture_with_graph",
    "check_finite_maps",
    "describe_module",
    "detach_tree",
    "layer_output_to_map",
]


def describe_module(layer: torch.nn.Module) -> str:
    """The first line of a module's repr, at most 80 characters (for messages)."""
    text = repr(layer).split("\n")[0]
    return text if len(text) <= 80 else text[:77] + "..."


def detach_tree(tree: Any) -> Any:
    """Every tensor in a nested structure, detached."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


@dataclass(frozen=True)
class Capture:
    """What one capturing pass produced. Immutable; every tensor is on the model's device.

    Attributes:
        input: the input the model ran on, ``[B, C, *S]``.
        outputs: the model's output (detached unless the capture kept the graph).
        targets: the resolved targets, one per image.
        layers: the captured layers, in order.
        activations: per layer ``[B, C, *s]`` float32 (None for a layer that did not run,
            allowed only for methods that choose their own layers).
        gradients: per layer, the gradient of the summed target scores, same
            layout; None when the method takes no gradients.
        raw_activations: per layer, its output as the layer returned it (tensor,
            tuple, dict, ...), detached.
        input_gradient: the gradient w.r.t. the input, when asked for.
    """

    input: torch.Tensor
    outputs: Any
    targets: Tuple[Callable, ...]
    layers: Tuple[torch.nn.Module, ...]
    activations: Tuple[Optional[torch.Tensor], ...]
    gradients: Optional[Tuple[Optional[torch.Tensor], ...]]
    raw_activations: Tuple[Any, ...]
    input_gradient: Optional[torch.Tensor] = None

    @property
    def batch(self) -> int:
        """Images in the batch."""
        return int(self.input.shape[0])

    @property
    def spatial_size(self) -> Tuple[int, ...]:
        """The input's spatial size in torch order: ``(H, W)`` or ``(D, H, W)``."""
        return tuple(int(s) for s in self.input.shape[2:])


@dataclass
class _Slot:
    leaves: list
    spec: Any
    calls: int


class LayerRecorder:
    """Forward hooks that record the outputs of some layers during one forward pass.

    Args:
        layers: the modules to record.
        grad_from_first: switch autograd on when the first recorded layer runs,
            so that only the part of the forward pass after it records a graph
            (the caller restores the grad mode afterwards).

    ``slots[i]`` is None until layer ``i`` runs; then it holds the flattened
    output (tensors kept apart from what the model goes on with) and how many
    times the layer ran.
    """

    def __init__(self, layers: Sequence[torch.nn.Module], grad_from_first: bool = False) -> None:
        self.layers = list(layers)
        self.grad_from_first = grad_from_first
        self.slots: List[Optional[_Slot]] = [None] * len(self.layers)
        self._thread = threading.get_ident()

    def _hook(self, index: int) -> Callable:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None  # another thread's forward pass on the same model
            if self.grad_from_first and not torch.is_grad_enabled():
                torch.set_grad_enabled(True)
            grad_mode = torch.is_grad_enabled()
            leaves, spec = tree_flatten(output)
            kept, passed_on = [], []
            for leaf in leaves:
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    if grad_mode:
                        source = leaf if leaf.requires_grad else leaf.detach().requires_grad_()
                        kept.append(source)
                        passed_on.append(source.clone())
                    else:
                        kept.append(leaf.clone())
                        passed_on.append(leaf)
                else:
                    kept.append(leaf)
                    passed_on.append(leaf)
            previous = self.slots[index]
            self.slots[index] = _Slot(kept, spec, 1 if previous is None else previous.calls + 1)
            return tree_unflatten(passed_on, spec) if grad_mode else None

        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator[LayerRecorder]:
        """Hooks attached for the block only (removed in ``finally``)."""
        handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def check_ran(self, allow_missing: bool = False) -> None:
        """Raise if a layer did not run (unless allowed); warn if one ran more than once."""
        for layer, slot in zip(self.layers, self.slots):
            if slot is None:
                if allow_missing:
                    continue
                raise ValueError(
                    f"target layer {describe_module(layer)} did not run during the forward pass, so there is "
                    "nothing to explain. Pick a layer that the model's forward() actually calls "
                    "(a module defined in __init__ but unused, or a layer skipped for this input, "
                    "never produces activations)."
                )
            if slot.calls > 1:
                warn_user(
                    f"target layer {describe_module(layer)} ran {slot.calls} times in one forward pass "
                    "(a module reused in several places); its last output is used. Choose a module "
                    "that runs once for an unambiguous map.",
                )

    def differentiable_leaves(self) -> List[torch.Tensor]:
        """The recorded tensors gradients can be taken with respect to, layer by layer."""
        return [
            leaf
            for slot in self.slots
            if slot is not None
            for leaf in slot.leaves
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad
        ]


def layer_output_to_map(
    layer: torch.nn.Module,
    structure: Any,
    spatial: Sequence[int],
    batch: int,
    reshape_transform: Optional[Callable] = None,
    prefix_tokens: Optional[int] = None,
) -> torch.Tensor:
    """A layer's output (or its gradient, same structure) as a ``[B, C, *spatial]`` map.

    Uses ``reshape_transform`` when given; otherwise lays out token sequences
    and channels-last maps (:func:`~camlib.utils.reshape_transforms.infer_reshape_transform`)
    and concatenates a dict of feature maps at its coarsest size. Checks the
    batch size and the number of dimensions of the result.
    """
    if reshape_transform is not None:
        result = reshape_transform(structure)
        if not isinstance(result, torch.Tensor):
            raise TypeError(
                f"reshape_transform returned {type(result).__name__} for target layer "
                f"{describe_module(layer)}; it must return a tensor of shape [B, C, *spatial]"
            )
    elif isinstance(structure, torch.Tensor):
        transform = infer_reshape_transform(structure.shape, spatial, prefix_tokens)
        result = structure if transform is None else transform(structure)
    elif is_feature_pyramid(structure, len(spatial)):
        result = feature_pyramid_to_map(structure)
    else:
        raise TypeError(
            f"target layer {describe_module(layer)} returned a {type(structure).__name__}, not a tensor. "
            "Pass reshape_transform=... that turns this output into a [B, C, H, W] tensor "
            "(for example lambda out: out[0] to take the first element of a tuple)."
        )
    if result.ndim != len(spatial) + 2:
        raise ValueError(
            f"the activation of target layer {describe_module(layer)} has shape {list(result.shape)} "
            f"after reshaping, but a {len(spatial) + 2}-D input needs [B, C, "
            f"{', '.join('HWD'[: len(spatial)])}] maps; fix reshape_transform or choose another layer"
        )
    if result.shape[0] != batch:
        source = "reshape_transform returned" if reshape_transform is not None else "the layer's output has"
        raise ValueError(
            f"{source} a batch of {result.shape[0]} for target layer {describe_module(layer)}, but the "
            f"input has {batch} images (shape {list(result.shape)}); the first dimension must be the "
            "batch: check reshape_transform (e.g. a transpose that moved the batch)"
        )
    return result


def autograd_gradients(
    loss: torch.Tensor, leaves: Sequence[torch.Tensor], create_graph: bool = False
) -> List[Optional[torch.Tensor]]:
    """``d loss / d leaf`` for each leaf (None where the loss does not depend on it)."""
    return list(torch.autograd.grad(loss, list(leaves), allow_unused=True, create_graph=create_graph))


def _maps_of(
    recorder: LayerRecorder,
    values: Callable[[_Slot], list],
    spatial: Sequence[int],
    batch: int,
    reshape_transform: Optional[Callable],
    prefix_tokens: Optional[int],
    keep_graph: bool,
) -> Tuple[Optional[torch.Tensor], ...]:
    maps = []
    for layer, slot in zip(recorder.layers, recorder.slots):
        if slot is None:
            maps.append(None)
            continue
        structure = tree_unflatten(values(slot), slot.spec)
        result = at_least_float32(layer_output_to_map(layer, structure, spatial, batch, reshape_transform, prefix_tokens))
        maps.append(result if keep_graph else result.detach())
    return tuple(maps)


def _gradient_values(grads_by_leaf: Sequence[Optional[torch.Tensor]]) -> Callable[[_Slot], list]:
    """``slot -> its leaves' gradients``, taking them in order from the gradients of
    :meth:`LayerRecorder.differentiable_leaves` (None and non-differentiable leaves give zeros)."""
    remaining = iter(grads_by_leaf)

    def gradients_of(slot: _Slot) -> list:
        result = []
        for leaf in slot.leaves:
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                grad = next(remaining)
                result.append(torch.zeros_like(leaf) if grad is None else grad)
            elif isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                result.append(torch.zeros_like(leaf))
            else:
                result.append(leaf)
        return result

    return gradients_of


def capture(
    model: Callable,
    layers: Sequence[torch.nn.Module],
    x: torch.Tensor,
    resolve_targets: Callable[[Any], Sequence[Callable]],
    *,
    gradients: bool = True,
    input_gradient: bool = False,
    second_order: bool = False,
    keep_graph: bool = False,
    allow_missing_layers: bool = False,
    reshape_transform: Optional[Callable] = None,
    prefix_tokens: Optional[int] = None,
    compute_gradients: Optional[Callable[[torch.Tensor, Sequence[torch.Tensor]], Sequence]] = None,
) -> Capture:
    """Run ``model`` on ``x`` once, recording ``layers``; back-propagate when asked.

    Args:
        model: the network (called as ``model(x)``).
        layers: modules of the model whose outputs are recorded.
        x: the prepared input.
        resolve_targets: ``outputs -> targets`` (one callable per image).
        gradients: back-propagate the summed target scores to the layers.
        input_gradient: also take the gradient w.r.t. ``x``.
        second_order: the gradients need a double backward (attention runs
            with the math kernel).
        keep_graph: record the whole forward pass and keep the graph of the
            activations and gradients (``create_graph=True``), so that maps
            built from them can be differentiated w.r.t. the model's parameters.
        allow_missing_layers: a layer that does not run gets None entries
            instead of raising.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        prefix_tokens: class/distillation/register tokens before the patch grid.
        compute_gradients: ``(loss, leaves) -> gradients``; default
            :func:`autograd_gradients` (with ``create_graph=keep_graph``).

    Returns:
        The :class:`Capture`.
    """
    batch, spatial = int(x.shape[0]), tuple(x.shape[2:])
    model = eager_module(model)
    wants_input_grad = gradients and input_gradient
    if wants_input_grad or keep_graph:
        x = x.detach().requires_grad_(wants_input_grad) if not x.requires_grad else x
    recorder = LayerRecorder(layers, grad_from_first=gradients and not (wants_input_grad or keep_graph))
    kernel = sdpa_kernel([SDPBackend.MATH]) if second_order else contextlib.nullcontext()
    with torch.inference_mode(False), torch.set_grad_enabled(wants_input_grad or keep_graph), kernel:
        with recorder.attached():
            outputs = model(x)
        recorder.check_ran(allow_missing_layers)
        targets = tuple(resolve_targets(outputs))
        grads_by_leaf: Optional[list] = None
        input_grad = None
        if gradients:
            torch.set_grad_enabled(True)
            leaves = recorder.differentiable_leaves()
            if wants_input_grad:
                leaves = [*leaves, x]
            scores = score_outputs(outputs, targets)
            check_finite_scores(scores, "the target score", "gradients of a non-finite score are undefined")
            loss = scores.sum()
            if loss.requires_grad:
                if compute_gradients is None:
                    grads_by_leaf = autograd_gradients(loss, leaves, create_graph=keep_graph)
                else:
                    grads_by_leaf = list(compute_gradients(loss, leaves))
            else:
                warn_user(
                    "the target score does not depend on the target layers (no gradient path); "
                    "the gradients are zero and so are gradient-based maps. Check the targets and layers.",
                )
                grads_by_leaf = [None] * len(leaves)
            if wants_input_grad:
                input_grad = grads_by_leaf.pop()
                input_grad = torch.zeros_like(x) if input_grad is None else input_grad
                if not keep_graph:
                    input_grad = input_grad.detach()
            del loss
    activations = _maps_of(
        recorder,
        lambda slot: [leaf if keep_graph or not isinstance(leaf, torch.Tensor) else leaf.detach() for leaf in slot.leaves],
        spatial, batch, reshape_transform, prefix_tokens, keep_graph,
    )
    layer_grads = None
    if grads_by_leaf is not None:
        gradients_of = _gradient_values(grads_by_leaf)
        layer_grads = _maps_of(recorder, gradients_of, spatial, batch, reshape_transform, prefix_tokens, keep_graph)
    raw = tuple(
        None if slot is None else detach_tree(tree_unflatten(slot.leaves, slot.spec)) for slot in recorder.slots
    )
    return Capture(
        input=x if keep_graph else x.detach(),
        outputs=outputs if keep_graph else detach_tree(outputs),
        targets=targets,
        layers=tuple(recorder.layers),
        activations=activations,
        gradients=layer_grads,
        raw_activations=raw,
        input_gradient=input_grad,
    )


def capture_with_graph(
    model: Callable,
    layers: Sequence[torch.nn.Module],
    x: torch.Tensor,
    target_slots: Sequence[Sequence[Callable]],
    *,
    reshape_transform: Optional[Callable] = None,
    prefix_tokens: Optional[int] = None,
) -> List[Capture]:
    """One forward pass, one gradient per slot of targets, the graph kept throughout.

    For differentiable maps: the whole forward pass records a graph (so maps
    can be differentiated w.r.t. every parameter), and the gradients of each
    slot's summed target scores w.r.t. the layers are taken with
    ``create_graph=True``. The model runs once, in the mode it is in.

    Args:
        model: the network.
        layers: the recorded modules.
        x: the prepared input.
        target_slots: ``K`` lists of one target per image; slot ``k`` gives the ``k``-th record.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        prefix_tokens: class/distillation/register tokens before the patch grid.

    Returns:
        One :class:`Capture` per slot, sharing the activations.
    """
    batch, spatial = int(x.shape[0]), tuple(x.shape[2:])
    model = eager_module(model)
    recorder = LayerRecorder(layers)
    with torch.inference_mode(False), torch.enable_grad():
        with recorder.attached():
            outputs = model(x)
        recorder.check_ran()
        leaves = recorder.differentiable_leaves()

        def as_is(slot: _Slot) -> list:
            return list(slot.leaves)

        activations = _maps_of(recorder, as_is, spatial, batch, reshape_transform, prefix_tokens, True)
        records = []
        for targets in target_slots:
            scores = score_outputs(outputs, list(targets))
            check_finite_scores(scores, "the target score", "gradients of a non-finite score are undefined")
            loss = scores.sum()
            if not loss.requires_grad:
                raise ValueError(
                    "the target scores do not depend on the model's parameters or the target layers; "
                    "check that the targets score the model's output and that the target layers feed it"
                )
            grads = torch.autograd.grad(
                loss, leaves, allow_unused=True, create_graph=True, retain_graph=True
            )
            gradients_of = _gradient_values(grads)
            layer_grads = _maps_of(recorder, gradients_of, spatial, batch, reshape_transform, prefix_tokens, True)
            records.append(
                Capture(
                    input=x,
                    outputs=outputs,
                    targets=tuple(targets),
                    layers=tuple(recorder.layers),
                    activations=activations,
                    gradients=layer_grads,
                    raw_activations=tuple(tree_unflatten(s.leaves, s.spec) for s in recorder.slots),
                )
            )
    return records


def _nonfinite_kind(tensor: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(tensor).any()) else "Inf"


def check_finite_maps(record: Capture, raw_maps: Sequence[Any], method: str) -> None:
    """Raise a ``ValueError`` naming the cause if a raw map holds NaN or Inf.

    A map is never returned with NaN values: the cause is, in this order of
    checking, non-finite activations of the target layer (the model itself
    computes NaN/Inf for this input), non-finite gradients, or an overflow in
    the method's own arithmetic on finite but very large values.
    """
    maps = [(i, torch.as_tensor(raw)) for i, raw in enumerate(raw_maps) if raw is not None]
    maps = [(i, raw) for i, raw in maps if raw.is_floating_point()]
    if not maps:
        return
    # one fused check (one host sync on a GPU) for all layers; the diagnosis runs only on failure
    if all_finite(*(raw for _, raw in maps)):
        return
    for index, raw in maps:
        if bool(torch.isfinite(raw).all()):
            continue
        layer = record.layers[index] if index < len(record.layers) else None
        where = f"target layer {describe_module(layer)}" if layer is not None else f"layer map {index}"
        activations = record.activations[index] if index < len(record.activations) else None
        grads = None if record.gradients is None or index >= len(record.gradients) else record.gradients[index]
        if activations is not None and not bool(torch.isfinite(activations).all()):
            cause = (
                f"the activations of {where} contain {_nonfinite_kind(activations)}: the model computes "
                "non-finite values for this input (check the input for NaN/Inf and the weights, e.g. "
                "torch.isfinite(p).all() for p in model.parameters())"
            )
        elif grads is not None and not bool(torch.isfinite(grads).all()):
            cause = (
                f"the gradients at {where} contain {_nonfinite_kind(grads)} (an overflow in the backward pass: "
                "the target scores or activations are too large for the model's dtype)"
            )
        else:
            peak = float(activations.abs().max()) if activations is not None and activations.numel() else float("nan")
            cause = (
                f"{method}'s computation overflowed on the activations of {where} (largest magnitude "
                f"{peak:.3g}); the values are too large for float32: choose a layer with smaller activations "
                "(e.g. after a normalisation layer) or rescale the model's input"
            )
        raise ValueError(f"{method} produced a map with {_nonfinite_kind(raw)} values: {cause}")
