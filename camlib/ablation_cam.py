"""Ablation-CAM: a channel's weight is the drop of the target score when it is switched off.

Each channel of the target layer is ablated in turn (one copy of the layer's
output per channel) and the target score recomputed. Only the part of the model
after the target layer depends on the ablation, so whenever possible only that
part is run (:func:`split_after_layer`): the model is traced with ``torch.fx``
(the target layer kept as one call), and the nodes that compute the output from
the target layer's output are copied into a small graph module. For ResNet-50's
``layer4[-1]`` that is the pooling and the classifier, instead of the whole
network per channel. When that part also needs values computed before the
target layer without going through it (the input of the residual block a
``norm1`` or ``bn2`` sits in), those are computed once per image and chunk size
and passed along.

When the model cannot be traced (data-dependent Python branches, detectors), the
whole model is run on copies of the input and a forward hook replaces the target
layer's output with the ablated copies. Either way the copies are built chunk
by chunk, the scores stay on the device, and the user's model is never modified
(nothing is swapped into it; the hook is removed in ``finally``). A split is
only used after checking that it reproduces the model's output on the input.

Differences from pytorch-grad-cam 1.5.7, on purpose:

* Every ablated copy gets the same ablation value (0, or the image's minimum
  minus 1e7). pytorch-grad-cam recomputes the minimum after each copy it has
  already ablated, so the k-th copy of a batch gets ``min - k * 1e7``: its
  maps depend on ``batch_size`` for layers whose minimum is not 0.
* ``ratio_channels_to_ablate > 0.5``: a channel chosen twice (as high- and
  low-scoring) is ablated once; pytorch-grad-cam's bookkeeping then gives the
  wrong score to every later channel. Channels with equal scores are ranked by
  index (NumPy's unstable sort decides there), so with ties the chosen
  channels can differ.
* An image whose target score is exactly 0 makes ``(y - y_k) / y`` undefined
  (pytorch-grad-cam returns NaN maps): its map uses ``y - y_k``, with a warning.
* :class:`~camlib.ablation_layer.AblationLayerFasterRCNN` reads the levels
  and channel counts from the FPN's dict instead of assuming five levels of
  256 channels, so FPNs with fewer levels work.
* With ``ablation_layer=None``, token (``[B, N, C]``) and channels-last
  outputs get :class:`~camlib.ablation_layer.AblationLayerVit` automatically,
  and a dict of feature maps (a detector's FPN)
  :class:`~camlib.ablation_layer.AblationLayerFasterRCNN`.
* On the split path the ablated copies only run through the part of the model
  after the target layer: forward hooks the user put on modules before it
  (or on containers around it) do not fire for them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Iterator, List, NamedTuple, Optional, Sequence

import torch
import torch.fx
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from camlib.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from camlib.activations_and_gradients import ActivationsAndGradients
from camlib.base_cam import BaseCAM
from camlib.utils.batched import batched_target_scores, score_outputs

__all__ = ["AblationCAM", "LayerSplit", "split_after_layer"]

logger = logging.getLogger(__name__)


class _RawOutputCapture(ActivationsAndGradients):
    """Also keeps each target layer's output as the layer returned it (a clone,
    detached), which is what ablated copies are made of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list = []

    def finalize(self, input_spatial: Sequence[int], leaf_gradients: Optional[Sequence] = None) -> None:
        if all(capture is not None for capture in self._captures):
            self.raw = self.raw_outputs()
        super().finalize(input_spatial, leaf_gradients)  # raises if a target layer did not run


# -- the part of the model after the target layer ------------------------------------------------
class _KeepLayerWhole(torch.fx.Tracer):
    """The default tracer, except that ``layer`` is one call node."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return m is self.layer or super().is_leaf_module(m, module_qualified_name)


def _constant_defaults(model: torch.nn.Module) -> dict:
    """Forward arguments after the first that have plain defaults: traced with those
    values, so ``if mask is None`` takes the branch a call ``model(x)`` takes."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    plain = (type(None), bool, int, float, str)
    return {
        p.name: p.default
        for p in parameters[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and isinstance(p.default, plain)
    }


@contextlib.contextmanager
def _attributes_restored(model: torch.nn.Module) -> Iterator[None]:
    """Undo attribute assignments a forward() makes while traced (``self.seen += n``
    would otherwise leave an fx Proxy on the user's module)."""
    saved = [
        (
            module,
            dict(module.__dict__),
            dict(module._parameters),
            dict(module._buffers),
            dict(module._modules),
        )
        for module in model.modules()
    ]
    try:
        yield
    finally:
        for module, attributes, parameters, buffers, modules in saved:
            for current, before in (
                (module.__dict__, attributes),
                (module._parameters, parameters),
                (module._buffers, buffers),
                (module._modules, modules),
            ):
                if current.keys() != before.keys() or any(current[k] is not v for k, v in before.items()):
                    current.clear()
                    current.update(before)


class LayerSplit(NamedTuple):
    """A model cut at a target layer (see :func:`split_after_layer`).

    Attributes:
        rest: ``rest(activation, *side_values)`` computes the model's output from
            the target layer's output (and the side values).
        prefix: ``prefix(*model_inputs)`` returns the tuple of side values: what
            ``rest`` needs from before the target layer other than its output
            (a residual branch around it, say). None when ``rest`` needs nothing else.
    """

    rest: torch.fx.GraphModule
    prefix: Optional[torch.fx.GraphModule]


def split_after_layer(model: torch.nn.Module, layer: torch.nn.Module) -> Optional[LayerSplit]:
    """Cut ``model`` at ``layer``: the part after it, as a module of the layer's output.

    The model is traced with ``torch.fx`` keeping ``layer`` as one call. The
    nodes the output needs after that call are copied into ``rest``, whose
    inputs are the layer's output and the *side values*: the values computed
    from the model's input without going through ``layer`` that ``rest`` uses
    (the input of a residual block whose inner layer is cut, for instance).
    ``prefix`` computes those from the model's input, without running ``layer``.
    Returns None when the model cannot be traced, when ``layer`` is called other
    than exactly once, or when the output does not depend on it.

    Both modules share the model's submodules and parameters (nothing is
    copied, nothing in ``model`` is changed: attributes its ``forward`` sets
    while traced are put back). Python-level behaviour that tracing cannot see
    (data-dependent branches) is not checked here: :class:`AblationCAM`
    compares the split's output with the model's before using it.
    """
    if layer is model:
        return None
    tracer = _KeepLayerWhole(layer)
    try:
        with _attributes_restored(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tracer.trace(model, concrete_args=_constant_defaults(model) or None)
    except Exception as error:  # tracing fails for many legitimate models; they take the full-model path
        logger.debug(
            "cannot trace %s with torch.fx (%s: %s)", type(model).__name__, type(error).__name__, error
        )
        return None
    nodes = list(graph.nodes)
    cuts = [n for n in nodes if n.op == "call_module" and _submodule(model, n.target) is layer]
    if len(cuts) != 1:
        logger.debug("the target layer is called %d times in the traced graph", len(cuts))
        return None
    cut = cuts[0]
    after_cut: set = set()  # nodes that depend on the layer's output
    from_input: set = set()  # nodes that depend on the model's inputs
    for node in nodes:
        inputs = node.all_input_nodes
        if node is cut or any(i in after_cut for i in inputs):
            after_cut.add(node)
        if node.op == "placeholder" or any(i in from_input for i in inputs):
            from_input.add(node)
    output = next(n for n in reversed(nodes) if n.op == "output")
    if output not in after_cut:
        logger.debug("the model's output does not depend on the target layer")
        return None
    # What the output needs after the cut; values from before it that do not
    # depend on it become side inputs.
    needed: set = set()
    side: set = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in needed or node in side or node is cut:
            continue
        if node in from_input and node not in after_cut:
            side.add(node)
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    side_nodes = [n for n in nodes if n in side]

    rest_graph = torch.fx.Graph()
    env = {cut: rest_graph.placeholder("activation")}
    for index, node in enumerate(side_nodes):
        env[node] = rest_graph.placeholder(f"side_{index}")
    for node in nodes:
        if node in needed and node is not output:
            env[node] = rest_graph.node_copy(node, lambda n: env[n])
    rest_graph.output(torch.fx.map_arg(output.args[0], lambda n: env[n]))
    # Tensors the forward creates (torch.tensor(...) in timm's Swin) become constants that the
    # tracer set on the model, and that _attributes_restored took off again: keep them here.
    constants = {name: value for value, name in tracer.tensor_attrs.items() if name.startswith("_tensor_constant")}
    rest = _graph_module(model, rest_graph, constants, "AfterTargetLayer")
    if not side_nodes:
        return LayerSplit(rest, None)

    wanted: set = set()
    stack = list(side_nodes)
    while stack:
        node = stack.pop()
        if node not in wanted:
            wanted.add(node)
            stack.extend(node.all_input_nodes)
    prefix_graph = torch.fx.Graph()
    prefix_env: dict = {}
    for node in nodes:
        if node.op == "placeholder" or node in wanted:  # every input, so calls bind as the model's do
            prefix_env[node] = prefix_graph.node_copy(node, lambda n: prefix_env[n])
    prefix_graph.output(tuple(prefix_env[n] for n in side_nodes))
    prefix = _graph_module(model, prefix_graph, constants, "SideValues")
    return LayerSplit(rest, prefix)


def _graph_module(model: torch.nn.Module, graph: torch.fx.Graph, constants: dict, name: str) -> torch.fx.GraphModule:
    """A GraphModule running ``graph`` with the model's own submodules and parameters (shared, not
    copied), plus the traced tensor ``constants``."""
    root: dict = {}
    for node in graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        target = str(node.target)
        if target in constants:
            root[target] = constants[target]
            continue
        value: Any = model
        for part in target.split("."):
            value = getattr(value, part)
        root[target] = value
    return torch.fx.GraphModule(root, graph, class_name=name)


def _submodule(model: torch.nn.Module, target: Any) -> Optional[torch.nn.Module]:
    try:
        return model.get_submodule(str(target))
    except AttributeError:
        return None


def _outputs_match(a: Any, b: Any) -> bool:
    leaves_a, spec_a = tree_flatten(a)
    leaves_b, spec_b = tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            if not _same_value(x, y):
                return False
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.numel() and x.is_floating_point():
            scale = 1.0 + float(y.abs().max())
            if float((x - y).abs().max()) > 1e-4 * scale:
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _same_value(x: Any, y: Any) -> bool:
    if x is y:
        return True
    try:
        return bool(x == y)
    except (TypeError, ValueError, RuntimeError):  # e.g. arrays, whose == is element-wise
        return False


def _ablated_batch(layer: Any, raw: Any, index: int, channels: torch.Tensor) -> Any:
    """Copies of image ``index``'s output, copy i with channel ``channels[i]`` ablated."""
    if hasattr(layer, "ablated_batch"):
        return layer.ablated_batch(raw, index, channels)
    # An ablation layer written for pytorch-grad-cam's protocol.
    layer.indices = channels
    layer.set_next_batch(input_batch_index=index, activations=raw, num_channels_to_ablate=len(channels))
    return layer(None)


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _concat(parts: List[Any]) -> Any:
    """Concatenate a list of outputs of the same structure along dim 0."""
    if len(parts) == 1:
        return parts[0]
    flat = [tree_flatten(part) for part in parts]
    spec = flat[0][1]
    leaves = [
        torch.cat(group) if isinstance(group[0], torch.Tensor) else group[0]
        for group in zip(*(leaves for leaves, _ in flat))
    ]
    return tree_unflatten(leaves, spec)


class _Plan:
    """The ablated copies of a call, image by image: slot i is image ``image[i]``
    with channel ``channel[i]`` ablated; image b's slots are ``spans[b]``."""

    def __init__(self, channels: List[torch.Tensor]) -> None:
        self.image: List[int] = [b for b, chosen in enumerate(channels) for _ in range(int(chosen.numel()))]
        self.channel = torch.cat(channels)
        self.size = len(self.image)
        self.spans: dict = {}
        position = 0
        for b, chosen in enumerate(channels):
            if chosen.numel():
                self.spans[b] = (position, position + int(chosen.numel()))
                position += int(chosen.numel())

    def segments(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(image, lo, hi)`` runs of one image within slots ``start..stop-1``."""
        position = start
        while position < stop:
            b = self.image[position]
            end = min(stop, self.spans[b][1])
            yield b, position, end
            position = end


def _activation_count(activation: Any) -> int:
    """The number of copies in a batch of ablated outputs (its first tensor's length)."""
    leaves, _ = tree_flatten(activation)
    return next(len(leaf) for leaf in leaves if isinstance(leaf, torch.Tensor))


# -- the method ------------------------------------------------------------------------------------
class AblationCAM(BaseCAM):
    r"""Ablation-CAM.

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020.
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    .. math::
        w^c_k = \frac{y^c - y^c_k}{y^c}, \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    where :math:`y^c_k` is the target score with channel :math:`k` of the target
    layer ablated (see :class:`camlib.ablation_layer.AblationLayer`).

    Cost: one forward pass, then one pass per channel (per image) of only the
    part of the model after the target layer, ``batch_size`` channels at a time;
    models that cannot be split there (see :func:`split_after_layer`) run whole
    per channel, as in pytorch-grad-cam. ``ratio_channels_to_ablate < 1`` ablates fewer
    channels (the others get weight 0).
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels are ablated.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        ablation_layer: how to ablate a channel of the layer's output; None
            picks :class:`~camlib.ablation_layer.AblationLayer` (channels on dim
            1) or, for token / channels-last outputs, :class:`~camlib.ablation_layer.AblationLayerVit`,
            or, for a dict of feature maps (a detector's FPN),
            :class:`~camlib.ablation_layer.AblationLayerFasterRCNN`.
        batch_size: ablated copies per forward pass.
        ratio_channels_to_ablate: in (0, 1]; see
            :meth:`~camlib.ablation_layer.AblationLayer.activations_to_be_ablated`.
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (e.g. ``progress=False``).

    Attributes:
        split_model: run only the part after the target layer when it can be
            split off (default True); False always runs the whole model.
        last_paths: for the last call, per target layer, how the ablated copies
            were scored: ``"split"``, ``"full"`` (whole model), or ``"none"`` (no
            channel to ablate).

    Example:
        >>> import torch, torchvision
        >>> from camlib import AblationCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with AblationCAM(model, target_layers=[model.layer4[-1]], progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape, cam.last_paths
        ((1, 64, 64), ['split'])
    """

    uses_gradients: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 32
    split_model: ClassVar[bool] = True

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        ablation_layer: Optional[torch.nn.Module] = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, batch_size=batch_size, **kwargs)
        if ablation_layer is not None and not (
            callable(ablation_layer)
            and hasattr(ablation_layer, "set_next_batch")
            and hasattr(ablation_layer, "activations_to_be_ablated")
        ):
            raise TypeError(
                f"ablation_layer must be an AblationLayer (or implement set_next_batch, "
                f"activations_to_be_ablated and __call__), got {type(ablation_layer).__name__}"
            )
        if isinstance(ratio_channels_to_ablate, bool) or not isinstance(
            ratio_channels_to_ablate, (int, float)
        ):
            raise TypeError(
                f"ratio_channels_to_ablate must be a number in (0, 1], got {ratio_channels_to_ablate!r}"
            )
        if not 0.0 < ratio_channels_to_ablate <= 1.0:
            raise ValueError(
                f"ratio_channels_to_ablate must be in (0, 1] (1 ablates every channel), got {ratio_channels_to_ablate}"
            )
        self._default_layer = AblationLayer()
        self._vit_layer = AblationLayerVit()
        self._fpn_layer = AblationLayerFasterRCNN()
        self.ablation_layer = self._default_layer if ablation_layer is None else ablation_layer
        self.ratio_channels_to_ablate = float(ratio_channels_to_ablate)
        self.last_paths: list[str] = []
        self.activations_and_grads = _RawOutputCapture(
            model, self.target_layers, reshape_transform, self.detach
        )

    # -- stage 3 ------------------------------------------------------------------------------
    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
        self.last_paths = []
        try:
            return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)
        finally:
            self.activations_and_grads.raw = []

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        raw = self._raw_output(target_layer)
        batch, num_channels = activations.shape[:2]
        layer = self._layer_for(raw, num_channels)
        device = activations.device
        original = score_outputs(self.outputs, targets).to(device)
        ablated_scores = original[:, None].repeat(1, num_channels)
        channels = [self._channels_to_ablate(layer, activations[b], num_channels) for b in range(batch)]
        if not any(c.numel() for c in channels):
            self.last_paths.append("none")
            return self._normalised_drop(original, ablated_scores)

        split = self._checked_split(input_tensor, target_layer, raw) if self.split_model else None
        plan = _Plan(channels)

        def ablated(start: int, stop: int) -> Any:
            parts = []
            for b, lo, hi in plan.segments(start, stop):
                parts.append(_ablated_batch(layer, raw, b, plan.channel[lo:hi]))
            return _concat(parts)

        def targets_for(start: int, stop: int) -> list:
            return [targets[plan.image[i]] for i in range(start, stop)]

        common = dict(batch_size=self.batch_size, progress=self.progress, desc="AblationCAM")
        if split is None:
            self.last_paths.append("full")
            scores = self._score_full_model(input_tensor, target_layer, plan, ablated, targets_for, common)
        else:
            self.last_paths.append("split")
            scores = self._score_split(input_tensor, split, plan, ablated, targets_for, common)
        rows = torch.tensor(plan.image, device=device)
        ablated_scores[rows, plan.channel] = scores.to(device)
        return self._normalised_drop(original, ablated_scores)

    def _checked_split(
        self, x: torch.Tensor, target_layer: torch.nn.Module, raw: Any
    ) -> Optional[LayerSplit]:
        """The split at ``target_layer``, if it reproduces the model's output on ``x``."""
        split = split_after_layer(self.model, target_layer)
        if split is None:
            return None
        with torch.no_grad():
            side = () if split.prefix is None else split.prefix(x.clone())
            reproduced = split.rest(_clone(raw), *side)
        if not _outputs_match(reproduced, self.outputs):
            logger.debug("the split model does not reproduce the model's output; running the whole model")
            return None
        return split

    def _score_split(self, x, split: LayerSplit, plan: _Plan, ablated, targets_for, common) -> torch.Tensor:
        if split.prefix is None:
            return batched_target_scores(split.rest, plan.size, ablated, targets_for, **common)
        # The side values depend on the input only: computed once per image and
        # chunk size (n copies of the image), they are what the whole model
        # would compute for every chunk of that image.
        results = []
        for image, (first, last) in plan.spans.items():
            side_of: dict = {}

            def run(activation: Any, image: int = image, side_of: dict = side_of) -> Any:
                count = _activation_count(activation)
                if count not in side_of:
                    copies = x[image : image + 1].expand(count, *x.shape[1:]).clone()
                    side_of[count] = split.prefix(copies)
                return split.rest(activation, *_clone(side_of[count]))

            def inputs_of(start: int, stop: int, first: int = first) -> Any:
                return ablated(first + start, first + stop)

            def targets_of(start: int, stop: int, first: int = first) -> list:
                return targets_for(first + start, first + stop)

            results.append(batched_target_scores(run, last - first, inputs_of, targets_of, **common))
        return torch.cat(results)

    def _score_full_model(self, x, target_layer, plan: _Plan, ablated, targets_for, common) -> torch.Tensor:
        rows = torch.tensor(plan.image, device=x.device)
        replacement: dict = {}

        def replace_output(module: torch.nn.Module, args: Any, output: Any) -> Any:
            return replacement["output"]

        def run(chunk: tuple) -> Any:
            inputs, replacement["output"] = chunk
            return self.model(inputs)

        def make_inputs(start: int, stop: int) -> tuple:
            return x[rows[start:stop]], ablated(start, stop)

        handle = target_layer.register_forward_hook(replace_output)
        try:
            return batched_target_scores(run, plan.size, make_inputs, targets_for, **common)
        finally:
            handle.remove()
            replacement.clear()

    # -- helpers ---------------------------------------------------------------------------------
    def _raw_output(self, target_layer: torch.nn.Module) -> Any:
        for layer, raw in zip(self.target_layers, self.activations_and_grads.raw):
            if layer is target_layer:
                return raw
        raise RuntimeError("AblationCAM found no captured output for the target layer")

    def _layer_for(self, raw: Any, num_channels: int) -> Any:
        """The ablation layer for this output; checks it ablates the CAM's channels."""
        layer = self.ablation_layer
        if layer is self._default_layer and isinstance(raw, torch.Tensor) and raw.ndim >= 3:
            if raw.shape[1] != num_channels and raw.shape[-1] == num_channels:
                layer = self._vit_layer  # tokens [B, N, C] or channels-last maps
        elif layer is self._default_layer and isinstance(raw, Mapping):
            layer = self._fpn_layer  # a dict of feature maps (a detector's FPN)
        if isinstance(layer, AblationLayer):
            found = layer.num_channels(raw)
            if found != num_channels:
                shape = list(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                raise ValueError(
                    f"{type(layer).__name__} sees {found} channels in the target layer's output ({shape}), "
                    f"but the activations have {num_channels} after reshape_transform; pass an ablation "
                    "layer matching the output's layout (AblationLayer: channels on dim 1, "
                    "AblationLayerVit: channels last, AblationLayerFasterRCNN: a dict of feature maps)"
                )
        return layer

    def _channels_to_ablate(self, layer: Any, activations: torch.Tensor, num_channels: int) -> torch.Tensor:
        chosen = layer.activations_to_be_ablated(activations, self.ratio_channels_to_ablate)
        if isinstance(chosen, torch.Tensor):
            chosen = chosen.to(device=activations.device, dtype=torch.long)
        else:
            chosen = torch.as_tensor([int(c) for c in chosen], dtype=torch.long, device=activations.device)
        chosen = chosen.reshape(-1)
        if self.ratio_channels_to_ablate < 1.0 or type(layer).activations_to_be_ablated is not (
            AblationLayer.activations_to_be_ablated
        ):
            chosen = torch.unique(chosen)
            if chosen.numel() and (int(chosen[0]) < 0 or int(chosen[-1]) >= num_channels):
                raise ValueError(
                    f"activations_to_be_ablated returned channel indices outside [0, {num_channels})"
                )
        return chosen

    @staticmethod
    def _normalised_drop(original: torch.Tensor, ablated_scores: torch.Tensor) -> torch.Tensor:
        """``(y - y_k) / y`` per image; an image whose score is exactly 0 gets the plain drop."""
        zero = original == 0
        if bool(zero.any()):
            warnings.warn(
                "the target score of an image is exactly 0, so Ablation-CAM's relative drop "
                "(y - y_k) / y is undefined; its map uses the plain drop y - y_k instead",
                stacklevel=5,
            )
        denominator = torch.where(zero, torch.ones_like(original), original)[:, None]
        return (original[:, None] - ablated_scores) / denominator
