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
import types
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


#: How deep the containers reachable from a module's attributes are saved before tracing.
_SNAPSHOT_DEPTH = 4


def _is_plain_object(value: Any) -> bool:
    """An instance of a user class holding state in its ``__dict__`` (a namespace, a small cache object)."""
    if isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType, torch.Tensor, torch.nn.Module)):
        return False
    return isinstance(getattr(value, "__dict__", None), dict)


def _snapshot_containers(model: torch.nn.Module) -> list:
    """``(container, shallow copy)`` of every dict, list, set and plain object's ``__dict__`` reachable
    from the modules' attributes (a few levels deep), so that writes a traced ``forward`` makes into
    them (``self.cache["feat"] = x``) can be undone in place."""
    saved: list = []
    seen: set = set()

    def visit(value: Any, depth: int) -> None:
        if depth > _SNAPSHOT_DEPTH or id(value) in seen:
            return
        if isinstance(value, dict):
            seen.add(id(value))
            saved.append((value, dict(value)))
            children = list(value.values())
        elif isinstance(value, list):
            seen.add(id(value))
            saved.append((value, list(value)))
            children = list(value)
        elif isinstance(value, set):
            seen.add(id(value))
            saved.append((value, set(value)))
            children = []
        elif isinstance(value, tuple):
            children = list(value)
        elif _is_plain_object(value):
            seen.add(id(value))
            children = [vars(value)]
        else:
            return
        for child in children:
            visit(child, depth + 1)

    for module in model.modules():
        for name, value in module.__dict__.items():
            if name not in ("_parameters", "_buffers", "_modules"):
                visit(value, 0)
    return saved


def _restore_containers(saved: list) -> bool:
    """Put every snapshotted container's contents back in place; True if any had changed."""
    changed = False
    for container, before in saved:
        if isinstance(container, dict):
            same = container.keys() == before.keys() and all(container[k] is v for k, v in before.items())
            if not same:
                container.clear()
                container.update(before)
        elif isinstance(container, list):
            same = len(container) == len(before) and all(a is b for a, b in zip(container, before))
            if not same:
                container[:] = before
        else:
            same = container == before
            if not same:
                container.clear()
                container.update(before)
        changed = changed or not same
    return changed


def _user_visible_change(current: dict, before: dict) -> bool:
    """Whether an attribute dict changed other than by the tracer's own ``_tensor_constant*`` attributes."""
    added = set(current) - set(before)
    return bool(
        set(before) - set(current)
        or any(not name.startswith("_tensor_constant") for name in added)
        or any(current[k] is not v for k, v in before.items() if k in current)
    )


@contextlib.contextmanager
def _attributes_restored(model: torch.nn.Module) -> Iterator[list]:
    """Undo what a forward() changes on the model while traced: attribute assignments
    (``self.seen += n``) and writes into containers (``self.cache["feat"] = x``), which would
    otherwise leave fx Proxies on the user's model. Yields a list that gets ``True`` appended
    when the forward changed anything (a forward with side effects)."""
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
    containers = _snapshot_containers(model)
    report: list = []
    try:
        yield report
    finally:
        changed = _restore_containers(containers)
        for module, attributes, parameters, buffers, modules in saved:
            for current, before in (
                (module.__dict__, attributes),
                (module._parameters, parameters),
                (module._buffers, buffers),
                (module._modules, modules),
            ):
                if current.keys() != before.keys() or any(current[k] is not v for k, v in before.items()):
                    changed = changed or _user_visible_change(current, before)
                    current.clear()
                    current.update(before)
        if changed:
            report.append(True)


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
    and containers it writes into while traced are put back; the split does
    not repeat such writes). Python-level behaviour that tracing cannot see
    (data-dependent branches) is not checked here: :func:`outputs_match` tells whether the split reproduces the model's output; callers
    compare the split's output with the model's before using it.
    """
    if layer is model:
        return None
    tracer = _KeepLayerWhole(layer)
    try:
        with _attributes_restored(model) as side_effects, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tracer.trace(model, concrete_args=_constant_defaults(model) or None)
    except Exception as error:  # tracing fails for many legitimate models; they take the full-model path
        logger.debug(
            "cannot trace %s with torch.fx (%s: %s)", type(model).__name__, type(error).__name__, error
        )
        return None
    if side_effects:
        # The forward writes into the model (a cache, a counter); what tracing wrote has been undone, and the
        # split does not repeat those writes for perturbed copies, so the model keeps what its real forward
        # pass on the user's input wrote.
        logger.debug("%s.forward changes the model's attributes; undone after tracing", type(model).__name__)
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
