"""Cut a model at a layer with torch.fx: the part of the network after it, as a module.

Methods that re-run only the tail of a network for many perturbed copies of a
layer's output (AblationCAM, ReciproCAM) use :func:`split_after_layer`: the
model is traced with ``torch.fx`` keeping the layer as one call, and the nodes
that compute the output from the layer's output are copied into a small graph
module. When that part also needs values computed before the layer without
going through it (the input of the residual block a ``norm1`` or ``bn2`` sits
in), a second module computes those from the model's input. Nothing in the
user's model is changed, and a caller checks :func:`outputs_match` on a real
input before trusting a split (tracing cannot see data-dependent Python branches).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.fx
from torch.utils._pytree import tree_flatten

__all__ = ["LayerSplit", "outputs_match", "split_after_layer"]

logger = logging.getLogger(__name__)


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
    (data-dependent branches) is not checked here: :func:`outputs_match` tells whether the split reproduces the model's output; callers
    compare the split's output with the model's before using it.
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


def outputs_match(a: Any, b: Any) -> bool:
    """Whether two outputs have the same structure and values (floats within 1e-4, relative)."""
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
