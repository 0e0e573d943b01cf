"""Temporary changes to the user's model, always undone, and safe across threads.

Guarantees (see the README section "Threads, compiled models"):

* :func:`eval_mode` is a per-model, reference-counted switch: the first
  thread (or nested block) to enter saves every submodule's ``training`` flag
  and puts the model in eval mode; the last one to leave restores the flags.
  Overlapping blocks in several threads therefore never leave a model that was
  in ``train()`` in eval mode.
* :func:`exclusive_use` serialises the CAM calls on one model: what a call
  attaches to the model (hooks, a swapped layer) is never seen by another
  call. A call from inside another call on the same model in the same thread
  (from a target, an ``output_adapter`` or the model's ``forward``) would wait
  for itself, so it is refused with a ``RuntimeError``.
* :func:`eager_module` is the module a compiled model (``torch.compile``)
  wraps: camlib runs that one, because dynamo may skip forward hooks.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator, List, Optional, Tuple

import torch

__all__ = ["eager_module", "eval_mode", "exclusive_eval", "exclusive_use", "user_training_flag"]


def eager_module(model: Any) -> Any:
    """The module a ``torch.compile``'d model wraps (``OptimizedModule._orig_mod``), else ``model``.

    Its submodules are the compiled model's, so target layers taken from either
    are the same objects; running it directly is plain eager PyTorch, where
    every forward hook runs (a compiled graph may skip them).
    """
    seen = 0
    while isinstance(model, torch.nn.Module) and _is_compiled_wrapper(model) and seen < 8:
        model = model._orig_mod
        seen += 1
    return model


def _is_compiled_wrapper(model: torch.nn.Module) -> bool:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(model, OptimizedModule) and isinstance(getattr(model, "_orig_mod", None), torch.nn.Module)


class _ModelState:
    """Per-model bookkeeping: the eval-mode reference count and the call lock."""

    def __init__(self) -> None:
        self.switch = threading.Lock()
        self.eval_count = 0
        self.flags: Optional[List[Tuple[torch.nn.Module, bool]]] = None
        self.calls = threading.Lock()
        self.owner: Optional[int] = None
        self.owner_name = ""


_STATES: weakref.WeakKeyDictionary[torch.nn.Module, _ModelState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state_of(model: torch.nn.Module) -> _ModelState:
    with _STATES_LOCK:
        state = _STATES.get(model)
        if state is None:
            state = _STATES[model] = _ModelState()
        return state


def _any_training(model: torch.nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is in training mode (a walk without generators)."""
    stack, seen = [model], {id(model)}
    while stack:
        module = stack.pop()
        if module.training:
            return True
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return False


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for the block only.

    Every submodule's ``training`` flag is restored when the last overlapping
    block on this model exits (in any thread), even after an exception.
    Anything that is not an ``nn.Module`` is left alone.
    """
    model = eager_module(model)
    if not isinstance(model, torch.nn.Module):
        yield
        return
    state = _state_of(model)
    with state.switch:
        if state.eval_count == 0 and _any_training(model):
            # save and switch only when something trains: a model already in eval mode (the usual
            # case) costs one walk over its modules and no writes
            state.flags = [(module, module.training) for module in model.modules()]
            model.eval()
        state.eval_count += 1
    try:
        yield
    finally:
        with state.switch:
            state.eval_count -= 1
            if state.eval_count == 0:
                for module, training in state.flags or ():
                    if module.training != training:
                        module.training = training
                state.flags = None


def user_training_flag(model: torch.nn.Module) -> bool:
    """``model.training`` as the user left it: while a camlib call (in any thread) holds the model in
    :func:`eval_mode`, the flag saved on entry, else the current one.

    Example:
        >>> net = torch.nn.Linear(2, 2).train()
        >>> with eval_mode(net):
        ...     net.training, user_training_flag(net)
        (False, True)
    """
    state = _state_of(eager_module(model))
    with state.switch:
        if state.eval_count and state.flags:
            return bool(state.flags[0][1])
        return bool(model.training)


@contextlib.contextmanager
def exclusive_use(model: Any, user: str = "a CAM") -> Iterator[None]:
    """Hold ``model`` for one call: other threads' calls wait; a nested call in this thread raises.

    Args:
        model: the user's model (a compiled model shares the lock of the module it wraps).
        user: who holds it, for the message (e.g. the CAM class's name).

    Raises:
        RuntimeError: if this thread already holds the model (a CAM called from
            inside a target, an ``output_adapter`` or ``forward`` of another
            call on the same model).
    """
    model = eager_module(model)
    if not isinstance(model, torch.nn.Module):
        yield
        return
    state = _state_of(model)
    me = threading.get_ident()
    if state.owner == me:
        raise RuntimeError(
            f"{user} was called on {type(model).__name__} while {state.owner_name} is still running on the same "
            "model in this thread (from inside a target, an output_adapter or the model's forward). Calls on one "
            "model cannot be nested: compute the inner maps before or after the outer call, or use a copy of "
            "the model (copy.deepcopy(model)) for the inner one."
        )
    state.calls.acquire()
    state.owner, state.owner_name = me, user
    try:
        yield
    finally:
        state.owner, state.owner_name = None, ""
        state.calls.release()


@contextlib.contextmanager
def exclusive_eval(model: Any, user: str = "a CAM") -> Iterator[None]:
    """:func:`exclusive_use` and :func:`eval_mode` together: a CAM call's hold on the model."""
    with exclusive_use(model, user), eval_mode(model):
        yield
