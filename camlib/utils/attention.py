"""Attention probabilities of vision transformers, captured for one forward pass.

The transformer-native methods (:mod:`camlib.attention_rollout`,
:mod:`camlib.transformer_attribution`, :mod:`camlib.legrad`) read the
post-softmax attention probabilities ``A`` of every self-attention layer,
``[B, heads, N, N]`` (query rows, key columns, class/distillation/register
tokens included), and some need the gradient of a score with respect to
them. Most models never materialise ``A``: they call a fused kernel. This
module finds the attention modules and switches each to its explicit path for
the duration of a ``with`` block only:

* ``torch.nn.MultiheadAttention`` (torchvision's ViT calls it with
  ``need_weights=False``): a forward pre-hook asks for per-head weights
  (``need_weights=True, average_attn_weights=False``) and the forward hook
  hands the caller what it asked for. With ``differentiable=True`` the
  recorded ``A`` is a detached leaf copy of the weights, and the hook adds
  ``out_proj((A - A.detach()) V)`` to the output: exactly zero, so the output
  is bit-for-bit unchanged, but the score now depends on ``A`` with the true
  derivative (the module returns a view of its weights that the output does
  not depend on, so it cannot be differentiated directly).
* timm's ``Attention`` and its relatives (any module with a boolean
  ``fused_attn`` and an ``attn_drop`` child; ViT, DeiT with its distillation
  token, register-token ViTs): ``fused_attn`` is set to False and ``A`` is
  the output of ``attn_drop`` (the tensor multiplied by ``V``).
* Hugging Face attention modules (class name ending in ``Attention``, with a
  ``config`` carrying ``_attn_implementation``; ViT's ``ViTAttention``, or
  ``ViTSelfAttention`` in older releases): the config is switched to
  ``"eager"`` and ``A`` is the weights tensor the module returns.

Everything is undone in ``finally``: hooks removed, ``fused_attn`` and
``_attn_implementation`` set back, also when the forward pass raises. The
model's parameters, buffers and training flags are never touched.

The token layout is the one :mod:`camlib.utils.reshape_transforms` infers
(:func:`relevance_to_grid`): the prefix tokens the model declares are dropped
and the rest laid out on the patch grid of the input's aspect ratio.

Example:
    >>> import torch, torchvision
    >>> from camlib.utils.attention import capture_attention
    >>> vit = torchvision.models.VisionTransformer(
    ...     image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    >>> with torch.no_grad(), capture_attention(vit) as record:
    ...     logits = vit(torch.randn(1, 3, 32, 32))
    >>> [tuple(a.shape) for a in record.attentions]
    [(1, 2, 5, 5), (1, 2, 5, 5)]
    >>> vit.encoder.layers[0].self_attention._forward_pre_hooks  # nothing left behind
    OrderedDict()
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture, detach_tree
from camlib.utils.batched import score_outputs
from camlib.utils.messages import warn_user
from camlib.utils.reshape_transforms import infer_reshape_transform, num_prefix_tokens

__all__ = [
    "ATTENTION_CAPABILITIES",
    "AttentionCAM",
    "AttentionRecord",
    "attention_kind",
    "attention_pass",
    "capture_attention",
    "class_token_relevance",
    "find_attention_modules",
    "global_attention_modules",
    "has_class_token",
    "relevance_map",
    "relevance_to_grid",
    "stack_by_module",
    "transformer_blocks",
]

#: What the attention methods share: they pick the attention modules themselves, need a transformer,
#: and return one map per image on the patch grid (no per-layer maps, no principal component, 2-D).
ATTENTION_CAPABILITIES = Capabilities(
    own_layers=True, volumetric=False, eigen_smooth=False, per_layer=False, needs_attention=True
)

#: Names of a block's feed-forward child: the block is the attention module's
#: nearest ancestor that has one.
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "intermediate", "mlp_block")
_CLASS_TOKEN_NAMES = ("class_token", "cls_token", "class_embedding")


def attention_kind(module: nn.Module) -> Optional[str]:
    """Which capture applies to ``module``: ``"torch"``, ``"timm"``, ``"hf"``, or None.

    Example:
        >>> attention_kind(torch.nn.MultiheadAttention(8, 2)), attention_kind(torch.nn.Linear(2, 2))
        ('torch', None)
    """
    if isinstance(module, nn.MultiheadAttention):
        return "torch"
    if isinstance(getattr(module, "fused_attn", None), bool) and isinstance(
        getattr(module, "attn_drop", None), nn.Module
    ):
        return "timm"
    config = getattr(module, "config", None)
    if type(module).__name__.endswith("Attention") and hasattr(config, "_attn_implementation"):
        return "hf"
    return None


def _no_attention_error(model: nn.Module) -> ValueError:
    return ValueError(
        f"found no self-attention module in {type(model).__name__}; attention-based methods need a vision "
        "transformer whose blocks use torch.nn.MultiheadAttention (torchvision's VisionTransformer), timm's "
        "Attention (ViT, DeiT, ...; a module with `fused_attn` and `attn_drop`) or a Hugging Face ViT "
        "attention module. For a CNN use a CAM method such as GradCAM instead"
    )


def find_attention_modules(model: nn.Module) -> List[nn.Module]:
    """The self-attention modules of ``model`` in registration (usually forward) order.

    Only the innermost module of each kind is kept (a Hugging Face
    ``ViTAttention`` wrapping ``ViTSelfAttention`` yields the latter).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model has none (a CNN); the message names the supported kinds.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [m for m in model.modules() if attention_kind(m) is not None]
    inner = [m for m in found if not any(o is not m and o in found for o in m.modules())]
    if not inner:
        raise _no_attention_error(model)
    return inner


def global_attention_modules(model: nn.Module) -> List[nn.Module]:
    """:func:`find_attention_modules`, refusing windowed attention (a ``window_size``
    attribute, as in Swin): attention rollout and relevance need attention over all tokens.

    Raises:
        ValueError: no attention module, or windowed attention; the message says what is needed.
    """
    modules = find_attention_modules(model)
    windowed = [m for m in modules if getattr(m, "window_size", None) is not None]
    if windowed:
        raise ValueError(
            f"{type(model).__name__} uses windowed attention ({type(windowed[0]).__name__}, as in Swin); "
            "attention-based methods need global self-attention over all tokens, such as ViT's or DeiT's. "
            "Use a CAM method such as GradCAM for this model"
        )
    return modules


def transformer_blocks(model: nn.Module, attention_modules: Optional[Sequence[nn.Module]] = None) -> List[nn.Module]:
    """The transformer block of each attention module: its nearest ancestor that has a feed-forward child.

    The feed-forward child is recognised by name (``mlp``, ``ffn``,
    ``feed_forward``, ``intermediate``): torchvision's ``EncoderBlock``, timm's
    ``Block`` and Hugging Face's ``ViTLayer``. A block's output is the token
    sequence ``[B, N, C]`` after attention and MLP.

    Raises:
        ValueError: an attention module has no such ancestor; pass the blocks yourself.
    """
    attention_modules = list(find_attention_modules(model) if attention_modules is None else attention_modules)
    parents = {}
    for module in model.modules():
        for child in module.children():
            parents[id(child)] = module
    blocks = []
    for attention in attention_modules:
        node = attention
        while id(node) in parents:
            node = parents[id(node)]
            if any(child_name in _MLP_NAMES for child_name, _ in node.named_children()):
                blocks.append(node)
                break
        else:
            raise ValueError(
                f"cannot find the transformer block of {repr(attention).splitlines()[0]}: none of its "
                f"ancestors has a feed-forward child named one of {list(_MLP_NAMES)}; pass the blocks "
                "(modules returning [B, tokens, C]) as target_layers"
            )
    return blocks


def has_class_token(model: nn.Module) -> bool:
    """Whether ``model`` prepends a class token (timm's ``has_class_token``, or a class-token parameter).

    Example:
        >>> import torchvision
        >>> has_class_token(torchvision.models.vit_b_16(weights=None, image_size=32))
        True
    """
    for module in model.modules():
        flag = getattr(module, "has_class_token", None)
        if isinstance(flag, bool):
            return flag
    for module in model.modules():
        for name in _CLASS_TOKEN_NAMES:
            if isinstance(getattr(module, name, None), torch.Tensor):
                return True
    return False


def class_token_relevance(matrix: torch.Tensor, class_token: bool) -> torch.Tensor:
    """The row of a ``[B, N, N]`` token-relevance matrix that explains the prediction: ``[B, N]``.

    With a class token (always token 0 in torchvision, timm and Hugging Face)
    its row; without one (a mean-pooled ViT) the mean over all query rows,
    since the pooled representation is the mean of the tokens.
    """
    return matrix[:, 0] if class_token else matrix.mean(dim=1)


def relevance_to_grid(
    relevance: torch.Tensor, input_spatial: Sequence[int], prefix_tokens: Optional[int] = None
) -> torch.Tensor:
    """Per-token relevance ``[B, N]`` to a patch-grid map ``[B, h, w]``, prefix tokens dropped.

    The layout is :func:`camlib.utils.reshape_transforms.infer_reshape_transform`'s:
    ``prefix_tokens`` (from :func:`camlib.utils.reshape_transforms.num_prefix_tokens`)
    leading tokens are dropped when the rest forms a grid of the input's
    aspect ratio; otherwise the fewest leading tokens that leave such a grid.

    Example:
        >>> relevance_to_grid(torch.arange(5.0)[None], (32, 32), prefix_tokens=1)
        tensor([[[1., 2.],
                 [3., 4.]]])
    """
    if relevance.ndim != 2:
        raise ValueError(f"relevance must be [B, tokens], got shape {list(relevance.shape)}")
    transform = infer_reshape_transform((relevance.shape[0], relevance.shape[1], 1), input_spatial, prefix_tokens)
    if transform is None:  # pragma: no cover - a [B, N, 1] shape always gets a token transform
        raise ValueError(f"cannot lay out relevance of shape {list(relevance.shape)} on a grid")
    return transform(relevance[:, :, None])[:, 0]


@dataclass
class AttentionRecord:
    """What :func:`capture_attention` saw: one entry per attention call, in call order.

    Attributes:
        modules: the attention module of each call.
        attentions: its probabilities ``[B, heads, N, N]`` (query rows, key
            columns). Part of the autograd graph with ``differentiable=True``
            (take gradients with ``torch.autograd.grad``), detached clones otherwise.
        block_outputs: with ``blocks=`` given, each block's output tokens
            ``[B, N, C]`` in call order (in the graph when differentiable).
        block_modules: the block of each entry of ``block_outputs``.
        prefix_tokens: tokens before the patch grid, as the model declares
            (:func:`camlib.utils.reshape_transforms.num_prefix_tokens`), or None.
        class_token: whether the model has a class token (:func:`has_class_token`).
        thread: the thread whose forward passes are recorded (others' are ignored).
    """

    modules: List[nn.Module] = field(default_factory=list)
    attentions: List[torch.Tensor] = field(default_factory=list)
    block_outputs: List[torch.Tensor] = field(default_factory=list)
    block_modules: List[nn.Module] = field(default_factory=list)
    prefix_tokens: Optional[int] = None
    class_token: bool = True
    thread: int = field(default_factory=threading.get_ident)


# -- torch.nn.MultiheadAttention ----------------------------------------------------------
# Positions of need_weights and average_attn_weights in MultiheadAttention.forward.
_NEED_WEIGHTS_POS, _AVERAGE_POS = 4, 6


def _set_arg(args: list, kwargs: dict, position: int, name: str, value: Any, default: Any) -> Any:
    if len(args) > position:
        old, args[position] = args[position], value
    else:
        old = kwargs.get(name, default)
        kwargs[name] = value
    return old


def _mha_value_heads(module: nn.MultiheadAttention, value: torch.Tensor) -> torch.Tensor:
    """``V`` of each head, ``[B, heads, S, d]``, from the value input (batch-first ``[B, S, E]``)."""
    embed = module.embed_dim
    weight = module.in_proj_weight[2 * embed :] if module.in_proj_weight is not None else module.v_proj_weight
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * embed :]
    v = F.linear(value, weight, bias)
    batch, length = v.shape[:2]
    return v.reshape(batch, length, module.num_heads, embed // module.num_heads).transpose(1, 2)


def _hook_torch_mha(module: nn.MultiheadAttention, record: AttentionRecord, differentiable: bool) -> list:
    if differentiable and (module.bias_k is not None or module.add_zero_attn):
        raise ValueError(
            f"{repr(module).splitlines()[0]} adds key/value biases or a zero attention token; gradients of "
            "its attention probabilities are not supported (use AttentionRollout, which needs none)"
        )
    requested: list = []  # the caller's (need_weights, average_attn_weights) of each pending call

    def pre_hook(mod, args, kwargs):
        if threading.get_ident() != record.thread:
            return None  # another thread's forward pass on the same model
        args, kwargs = list(args), dict(kwargs)
        need = _set_arg(args, kwargs, _NEED_WEIGHTS_POS, "need_weights", True, True)
        average = _set_arg(args, kwargs, _AVERAGE_POS, "average_attn_weights", False, True)
        requested.append((bool(need), bool(average)))
        return tuple(args), kwargs

    def hook(mod, args, kwargs, output):
        if threading.get_ident() != record.thread:
            return None
        need, average = requested.pop()
        out, weights = output
        if differentiable:
            # A leaf copy of the weights enters the output through a term that is exactly zero:
            # d(out)/d(leaf) is the true d(out)/dA, and nothing flows back into the graph that
            # made A (the real path already carries that).
            leaf = weights.detach().requires_grad_()
            value = args[2] if len(args) > 2 else kwargs["value"]
            if not mod.batch_first:
                value = value.transpose(0, 1)
            heads = torch.matmul(leaf - leaf.detach(), _mha_value_heads(mod, value.detach()).detach())
            zero = F.linear(heads.transpose(1, 2).flatten(2), mod.out_proj.weight.detach())
            out = out + (zero if mod.batch_first else zero.transpose(0, 1))
            record.attentions.append(leaf)
        else:
            record.attentions.append(weights.detach().clone())
        record.modules.append(mod)
        if not need:
            return out, None
        return out, (weights.mean(dim=1) if average else weights)

    return [
        module.register_forward_pre_hook(pre_hook, with_kwargs=True),
        module.register_forward_hook(hook, with_kwargs=True),
    ]


def _hook_timm(module: nn.Module, record: AttentionRecord, differentiable: bool) -> list:
    def hook(dropout, args, output):
        if threading.get_ident() != record.thread:
            return
        record.attentions.append(output if differentiable else output.detach().clone())
        record.modules.append(module)

    return [module.attn_drop.register_forward_hook(hook)]


def _hook_hf(module: nn.Module, record: AttentionRecord, differentiable: bool) -> list:
    def hook(mod, args, output):
        if threading.get_ident() != record.thread:
            return
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor) or weights.ndim != 4:
            raise ValueError(
                f"{type(mod).__name__} returned no attention probabilities in eager mode; this transformers "
                "release is not supported by camlib's attention capture (tested with transformers 5)"
            )
        record.attentions.append(weights if differentiable else weights.detach().clone())
        record.modules.append(mod)

    return [module.register_forward_hook(hook)]


_HOOKS = {"torch": _hook_torch_mha, "timm": _hook_timm, "hf": _hook_hf}

# Temporary attribute switches shared by concurrent captures: (object id, attribute) ->
# [object, original value, number of captures holding the switch]. The original comes back
# when the last capture ends, whatever order threads finish in.
_SWITCHES: dict = {}
_SWITCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _switched(obj: Any, name: str, value: Any) -> Iterator[None]:
    key = (id(obj), name)
    with _SWITCH_LOCK:
        entry = _SWITCHES.get(key)
        if entry is None:
            _SWITCHES[key] = entry = [obj, getattr(obj, name), 0]
        entry[2] += 1
        setattr(obj, name, value)
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            entry[2] -= 1
            if entry[2] == 0:
                setattr(obj, name, entry[1])
                del _SWITCHES[key]


@contextlib.contextmanager
def capture_attention(
    model: nn.Module,
    modules: Optional[Sequence[nn.Module]] = None,
    *,
    differentiable: bool = False,
    blocks: Optional[Sequence[nn.Module]] = None,
) -> Iterator[AttentionRecord]:
    """Record the attention probabilities of ``modules`` (default: all) during the ``with`` block.

    Args:
        model: the transformer; only switched to explicit attention inside the block.
        modules: attention modules to record (default :func:`find_attention_modules`).
        differentiable: keep the recorded tensors in the autograd graph so a
            score can be differentiated with respect to them (run the forward
            pass with gradients enabled). Otherwise detached clones are kept.
        blocks: also record these modules' outputs (``[B, N, C]`` tokens),
            e.g. from :func:`transformer_blocks`, for per-block scores (LeGrad).

    Yields:
        An :class:`AttentionRecord` filled by the forward passes run inside.

    Raises:
        ValueError: no attention module (a CNN), or a module that is not one.
    """
    modules = find_attention_modules(model) if modules is None else list(modules)
    kinds = [attention_kind(m) for m in modules]
    for module, kind in zip(modules, kinds):
        if kind is None:
            raise ValueError(
                f"{repr(module).splitlines()[0]} is not a supported attention module; pass modules from "
                "camlib.utils.attention.find_attention_modules(model)"
            )
    record = AttentionRecord(prefix_tokens=num_prefix_tokens(model), class_token=has_class_token(model))
    handles: list = []
    with contextlib.ExitStack() as switches:
        configs: list = []
        for module, kind in zip(modules, kinds):
            if kind == "timm":
                switches.enter_context(_switched(module, "fused_attn", False))
            elif kind == "hf" and all(c is not module.config for c in configs):
                configs.append(module.config)
                switches.enter_context(_switched(module.config, "_attn_implementation", "eager"))
        try:
            for module, kind in zip(modules, kinds):
                handles.extend(_HOOKS[kind](module, record, differentiable))
            for block in blocks or ():
                handles.append(block.register_forward_hook(_block_hook(record, differentiable)))
            yield record
        finally:
            for handle in handles:
                handle.remove()


def _block_hook(record: AttentionRecord, differentiable: bool) -> Callable:
    def hook(mod, args, output):
        if threading.get_ident() != record.thread:
            return
        tokens = output[0] if isinstance(output, tuple) else output
        record.block_outputs.append(tokens if differentiable else tokens.detach().clone())
        record.block_modules.append(mod)

    return hook


def stack_by_module(record: AttentionRecord, modules: Sequence[nn.Module]) -> List[torch.Tensor]:
    """The last recorded attention of each of ``modules``, in the order given.

    Raises:
        RuntimeError: a module did not run during the forward pass.
    """
    last = {}
    for module, attention in zip(record.modules, record.attentions):
        last[id(module)] = attention
    missing = [m for m in modules if id(m) not in last]
    if missing:
        raise RuntimeError(
            f"{len(missing)} attention module(s) did not run in the forward pass (first: "
            f"{repr(missing[0]).splitlines()[0]}); the model's forward must call every attention module"
        )
    return [last[id(m)] for m in modules]


def relevance_map(
    relevance: torch.Tensor,
    input_spatial: Sequence[int],
    prefix_tokens: Optional[int] = None,
    reshape_transform: Optional[Callable] = None,
) -> torch.Tensor:
    """Per-token relevance ``[B, N]`` as a map ``[B, h, w]``: with ``reshape_transform``
    (called on ``[B, N, 1]`` tokens, returning ``[B, 1, h, w]``) or :func:`relevance_to_grid`."""
    if reshape_transform is None:
        return relevance_to_grid(relevance, input_spatial, prefix_tokens)
    result = reshape_transform(relevance[:, :, None])
    if not isinstance(result, torch.Tensor) or result.ndim != 4 or result.shape[1] != 1:
        raise ValueError(
            "reshape_transform must turn [B, tokens, C] into [B, C, h, w]; given per-token relevance of "
            f"shape {list(relevance[:, :, None].shape)} it returned "
            f"{list(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__}"
        )
    return result[:, 0]


def attention_pass(
    model: nn.Module,
    modules: Sequence[nn.Module],
    x: torch.Tensor,
    resolve_targets: Callable[[Any], Sequence[Callable]],
    *,
    gradients: bool,
    blocks: Optional[Sequence[nn.Module]] = None,
    block_scores: Optional[Callable[[torch.Tensor, Sequence[Callable]], torch.Tensor]] = None,
) -> Capture:
    """The capture stage of the attention methods: one forward pass, attention recorded.

    Args:
        model: the transformer (its mode is the caller's business).
        modules: its attention modules, in forward order.
        x: the prepared input.
        resolve_targets: ``outputs -> targets``, one per image.
        gradients: also take the gradient of the summed target scores with
            respect to each attention (Chefer et al.).
        blocks: with ``block_scores``, the block of each attention module:
            the gradient of each block's own score with respect to its own
            attention is taken instead (LeGrad).
        block_scores: ``(block tokens [B, N, C], targets) -> scores [B]``.

    Returns:
        A :class:`camlib.capture.Capture` whose ``layers`` are the attention
        modules, ``activations`` their probabilities ``[B, heads, N, N]``
        (float32, detached) and ``gradients`` the gradients (or None).
    """
    per_block = block_scores is not None
    differentiable = gradients or per_block
    with (
        torch.inference_mode(False),
        torch.set_grad_enabled(differentiable),
        capture_attention(model, modules, differentiable=differentiable, blocks=blocks if per_block else None) as rec,
    ):
        outputs = model(x)
        targets = tuple(resolve_targets(outputs))
        attentions = stack_by_module(rec, modules)
        _check_global_attention(attentions, modules, int(x.shape[0]))
        grads: Optional[List[torch.Tensor]] = None
        if per_block:
            tokens = _last_output_of(rec, blocks)
            grads = []
            for i, (z, attention) in enumerate(zip(tokens, attentions)):
                score = block_scores(z, targets).sum()
                grads.append(_gradient(score, attention, retain=i < len(attentions) - 1))
        elif gradients:
            score = score_outputs(outputs, list(targets)).sum()
            grads = [
                torch.zeros_like(a) if g is None else g
                for a, g in zip(attentions, _gradients(score, attentions))
            ]
    if grads is not None and not any(bool(g.any()) for g in grads):
        warn_user(
            "the gradient of the target score with respect to every attention map is zero, so the map is "
            "blank; check the targets (an untrained classifier head, such as torchvision's zero-initialised "
            "one, gives zero gradients)"
        )
    return Capture(
        input=x.detach(),
        outputs=detach_tree(outputs),
        targets=targets,
        layers=tuple(modules),
        activations=tuple(a.detach().float() for a in attentions),
        gradients=None if grads is None else tuple(g.detach().float() for g in grads),
        raw_activations=tuple(a.detach() for a in attentions),
    )


def _check_global_attention(attentions: Sequence[torch.Tensor], modules: Sequence[nn.Module], batch: int) -> None:
    """Every map is ``[B, heads, N, N]`` over one token sequence of the same length."""
    tokens = attentions[0].shape[-1]
    for attention, module in zip(attentions, modules):
        if attention.ndim != 4 or attention.shape[0] != batch or attention.shape[-2:] != (tokens, tokens):
            raise ValueError(
                f"the attention of {repr(module).splitlines()[0]} has shape {list(attention.shape)}, not "
                f"[{batch}, heads, {tokens}, {tokens}] over the whole token sequence of each image (windowed "
                "attention, as in Swin, or a token count that changes between blocks); attention-based "
                "methods need global self-attention such as ViT's or DeiT's. Use a CAM method such as "
                "GradCAM for this model"
            )


def _last_output_of(record: AttentionRecord, blocks: Sequence[nn.Module]) -> List[torch.Tensor]:
    last = {id(b): z for b, z in zip(record.block_modules, record.block_outputs)}
    missing = [b for b in blocks if id(b) not in last]
    if missing:
        raise RuntimeError(
            f"transformer block {repr(missing[0]).splitlines()[0]} did not run in the forward pass; pass "
            "blocks that the model's forward calls"
        )
    return [last[id(b)] for b in blocks]


def _gradients(score: torch.Tensor, tensors: Sequence[torch.Tensor]) -> Sequence[Optional[torch.Tensor]]:
    if not score.requires_grad:
        return [None] * len(tensors)
    return torch.autograd.grad(score, list(tensors), allow_unused=True)


def _gradient(score: torch.Tensor, tensor: torch.Tensor, retain: bool) -> torch.Tensor:
    if not score.requires_grad:
        return torch.zeros_like(tensor)
    (grad,) = torch.autograd.grad(score, [tensor], allow_unused=True, retain_graph=retain)
    return torch.zeros_like(tensor) if grad is None else grad


class AttentionCAM(BaseCAM):
    """Base of the transformer-native methods (attention rollout, transformer
    attribution, LeGrad): the constructor and the capture stage they share.

    The capture stage is :func:`attention_pass` over :attr:`attention_modules`
    (every global self-attention module of the model, in forward order, unless
    a subclass narrows them), with the gradients when the class's
    ``capabilities.gradients`` says so, and per block (:attr:`blocks`,
    :attr:`block_scores`) when a subclass sets them. A subclass implements
    :meth:`~camlib.base_cam.BaseCAM.layer_maps` from the captured attention
    (``capture.activations``, ``[B, heads, N, N]`` per module) and gradients.

    Args:
        model: a vision transformer.
        target_layers: the methods that read every attention module ignore
            them (None or empty is fine).
        reshape_transform: lays per-token values ``[B, N, 1]`` out as
            ``[B, 1, h, w]``; None infers the patch grid.
        *args: the other :class:`~camlib.base_cam.BaseCAM` arguments.
        **kwargs: the other :class:`~camlib.base_cam.BaseCAM` arguments.

    Raises:
        ValueError: the model has no attention module (a CNN).
    """

    capabilities = ATTENTION_CAPABILITIES

    #: With :attr:`block_scores`: the block of each attention module, whose own
    #: score is differentiated with respect to its attention (LeGrad).
    blocks: Optional[List[nn.Module]] = None

    #: ``(block tokens [B, N, C], targets) -> scores [B]`` for per-block
    #: gradients (see :attr:`blocks`); None: the model's own target scores.
    block_scores: Optional[Callable[[torch.Tensor, Sequence[Callable]], torch.Tensor]] = None

    def __init__(
        self,
        model: nn.Module,
        target_layers: Optional[List[nn.Module]] = None,
        reshape_transform: Optional[Callable] = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, [] if target_layers is None else target_layers, reshape_transform, *args, **kwargs)
        self.attention_modules = global_attention_modules(model)
        self.class_token = has_class_token(model)

    def capture(self, x: torch.Tensor, targets: Optional[list] = None, *, default_targets=None) -> Capture:
        """One forward pass recording the attention of :attr:`attention_modules`, and
        their gradients when the method needs them (see :func:`attention_pass`)."""
        return attention_pass(
            self.model,
            self.attention_modules,
            x,
            lambda outputs: self.resolve_targets(outputs, targets, default_targets),
            gradients=type(self).capabilities.gradients,
            blocks=self.blocks,
            block_scores=self.block_scores,
        )
