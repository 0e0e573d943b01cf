"""Older pytorch-grad-cam spellings and its 1.5.7 extension contract, translated at the boundary.

camlib's own API is the one of pytorch-grad-cam 1.5.7. Code written for older
releases, or extending 1.5.7 the way its source invites, runs unchanged; this
module is the only place that knows about it. Each older spelling is turned
into the modern call with one :class:`LegacyAPIWarning` that shows the modern
spelling (Python shows it once per line of your code):

============================================  =========  ============================================
older spelling                                until      camlib runs
============================================  =========  ============================================
``GradCAM(model, target_layer=layer)``        1.2        ``GradCAM(model, target_layers=[layer])``
``GradCAM(model, layers, use_cuda=True)``     1.4        ``GradCAM(model, layers)`` on the model's device
``GradCAM(model, layers, True)`` (positional) 1.4        the same
``cam(x, target_category=281)``, ``cam(x,     1.3.5      ``cam(x, targets=[ClassifierOutputTarget(c)
[1, 2])``, ``cam(x, target_category=None)``              for c in ...])`` (``None``: top class)
``GuidedBackpropReLUModel(model, use_cuda)``  1.4        ``GuidedBackpropReLUModel(model)``
============================================  =========  ============================================

The extension contract of 1.5.7 (see ``docs/extending.md``):

* ``get_cam_weights``/``get_cam_image`` overrides written for numpy get numpy
  arrays (:func:`array_boundary`); camlib's own ones accept numpy arrays when
  called directly and then return numpy.
* a subclass overriding 1.5.7's pipeline steps (``compute_cam_per_layer``,
  ``aggregate_multi_layers``, ``get_target_width_height``) runs through 1.5.7's
  pipeline (:func:`forward_1_5_7`), with camlib's guarantees on the model;
  one overriding ``forward`` has it called as 1.5.7 calls it.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from camlib.utils.messages import warn_user
from camlib.utils.model_state import user_training_flag

__all__ = [
    "LegacyAPIWarning",
    "array_boundary",
    "call_targets",
    "compute_cam_per_layer",
    "forward_1_5_7",
    "guided_backprop_device",
    "input_with_grad",
    "legacy_init",
    "overrides",
    "runs_1_5_7_pipeline",
    "training_mode_note",
    "uint8_input",
    "wrap_class",
]

_CAMLIB = "camlib."
#: 1.5.7's pipeline steps: a subclass overriding one of them runs 1.5.7's pipeline.
PIPELINE_STEPS = ("compute_cam_per_layer", "aggregate_multi_layers", "get_target_width_height")


class LegacyAPIWarning(FutureWarning):
    """An older pytorch-grad-cam spelling was translated to the modern call (shown by default)."""


def _device_note(use_cuda: Any, model: Any) -> str:
    from camlib.utils.validation import model_device

    device = model_device(model, default=torch.device("cpu"))
    on_cuda = device.type == "cuda"
    if bool(use_cuda) == on_cuda:
        return f"use_cuda is not needed: camlib computes on the model's device ({device})"
    if use_cuda:
        return (
            f"use_cuda=True, but the model is on {device}: camlib computes on the model's device, so this runs "
            f"on {device}, and it never moves your model (pytorch-grad-cam before 1.5 called model.cuda()); "
            "to run on the GPU, call model.cuda() (and build the CAM) yourself"
        )
    return (
        f"use_cuda=False, but the model is on {device}: camlib computes on the model's device, so this runs on "
        f"{device}, and it never moves your model; to run on the CPU, call model.cpu() yourself"
    )


def _translate_init(func: Callable, self: Any, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    params = _parameters(func)
    notes: List[str] = []
    # positional layout before 1.5: (model, target_layers, use_cuda, reshape_transform, ...)
    if len(args) >= 3 and isinstance(args[2], bool) and "use_cuda" not in params:
        model = args[0]
        notes.append(f"the third positional argument {args[2]} is use_cuda (removed in 1.5): {_device_note(args[2], model)}")
        args = args[:2] + args[3:]
    if "use_cuda" in kwargs and "use_cuda" not in params:
        use_cuda = kwargs.pop("use_cuda")
        model = kwargs.get("model", args[0] if args else None)
        notes.append(f"use_cuda= (removed in 1.5): {_device_note(use_cuda, model)}")
    if "target_layer" in kwargs and "target_layer" not in params:
        layer = kwargs.pop("target_layer")
        if "target_layers" in kwargs or len(args) >= 2:
            raise TypeError("pass target_layers=[...] or the older target_layer=..., not both")
        kwargs["target_layers"] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        notes.append("target_layer=layer (before 1.3) is target_layers=[layer]")
    if notes:
        warn_user(f"{type(self).__name__}(...): " + "; ".join(notes) + ".", LegacyAPIWarning)
    return args, kwargs


@functools.cache
def _parameters(func: Callable) -> frozenset:
    try:
        return frozenset(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return frozenset()


def legacy_init(init: Callable) -> Callable:
    """Wrap a CAM class's ``__init__`` so that the older spellings (``target_layer=``,
    ``use_cuda=``, a positional ``use_cuda``) are translated, with one warning."""
    if getattr(init, "__camlib_legacy__", False):
        return init

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        args, kwargs = _translate_init(init, self, args, kwargs)
        init(self, *args, **kwargs)
        model = self.__dict__.get("model")
        if isinstance(model, torch.nn.Module):
            # 1.5.7 put the model in eval mode here, for good (see training_mode_note)
            self.__dict__.setdefault("_legacy_built_in_eval", not user_training_flag(model))

    wrapper.__camlib_legacy__ = True  # type: ignore[attr-defined]
    return wrapper


def wrap_class(cls: type) -> None:
    """Called from ``__init_subclass__``: the class's own ``__init__`` takes the older
    spellings, and its own ``get_cam_weights``/``get_cam_image`` the numpy contract."""
    if "__init__" in cls.__dict__:
        cls.__init__ = legacy_init(cls.__dict__["__init__"])
    for name in ("get_cam_weights", "get_cam_image"):
        if name in cls.__dict__ and callable(cls.__dict__[name]):
            setattr(cls, name, array_boundary(cls.__dict__[name]))


# -- targets ----------------------------------------------------------------------------
def _is_category(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _categories(value: Any) -> Optional[List[int]]:
    """The class indices in an older ``target_category``, or None if it is not one."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dtype == torch.bool:
            return None
        value = value.tolist()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            return None
        value = value.tolist()
    if _is_category(value):
        return [int(value)]
    if isinstance(value, (list, tuple)) and value and all(_is_category(v) for v in value):
        return [int(v) for v in value]
    return None


def call_targets(cam: Any, input_tensor: Any, targets: Any, legacy_kwargs: Dict[str, Any]) -> Any:
    """The ``targets`` of a call, with the older ``target_category`` (keyword, or ints
    where the targets go) turned into one ``cam.class_target(c)`` per image."""
    spelled = "targets"
    if legacy_kwargs:
        unknown = sorted(set(legacy_kwargs) - {"target_category"})
        if unknown:
            raise TypeError(f"{type(cam).__name__}.__call__() got an unexpected keyword argument {unknown[0]!r}")
        if targets is not None:
            raise TypeError("pass targets=[...] or the older target_category=..., not both")
        targets, spelled = legacy_kwargs["target_category"], "target_category"
        if targets is None:
            warn_user(
                f"{type(cam).__name__}: target_category=None (before 1.3.6) is targets=None "
                "(each image's top class).",
                LegacyAPIWarning,
            )
            return None
    categories = _categories(targets)
    if categories is None:
        if spelled == "target_category":
            raise TypeError(
                f"target_category must be an int, a list of ints (one per image) or None, got {targets!r}; "
                "or pass targets=[ClassifierOutputTarget(c) for c in categories]"
            )
        return targets
    batch = int(input_tensor.shape[0]) if isinstance(input_tensor, torch.Tensor) and input_tensor.ndim else 1
    if _is_category(targets) or (isinstance(targets, (np.ndarray, torch.Tensor)) and targets.ndim == 0):
        categories = categories * batch  # one class for the whole batch
    shown = f"{spelled}={targets!r}" if spelled == "target_category" else f"the class indices {targets!r} as targets"
    warn_user(
        f"{type(cam).__name__}: {shown} (before 1.3.6) is targets=[ClassifierOutputTarget(c) for c in "
        f"{categories}] (from camlib.utils.model_targets import ClassifierOutputTarget).",
        LegacyAPIWarning,
    )
    return [cam.class_target(c) for c in categories]


# -- numpy overrides ---------------------------------------------------------------------
def _uses_numpy(func: Callable) -> bool:
    """Whether the function's code names the numpy module (or a numpy function) from its globals."""
    code = getattr(func, "__code__", None)
    if code is None:
        return False
    names = set(code.co_names)
    for const in code.co_consts:  # nested functions and comprehensions
        if isinstance(const, types.CodeType):
            names.update(const.co_names)
    scope = getattr(func, "__globals__", {})
    for name in names:
        value = scope.get(name)
        if value is np or getattr(value, "__module__", "") == "numpy" or isinstance(value, np.ufunc):
            return True
    return False


def _array_style(func: Callable, owner: Any) -> str:
    declared = getattr(owner, "array_api", None)
    if declared in ("numpy", "torch"):
        return declared
    return "numpy" if _uses_numpy(func) else "torch"


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _to_torch(value: Any, like: Any) -> Any:
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        device = like.device if isinstance(like, torch.Tensor) else "cpu"
        return torch.as_tensor(np.asarray(value), device=device).float()
    return value


def array_boundary(func: Callable) -> Callable:
    """``get_cam_weights``/``get_cam_image`` with numpy on either side.

    * camlib's own function (module ``camlib.*``) called with numpy arrays: the
      arrays become tensors, the result numpy again.
    * a subclass's override written for numpy (its code uses numpy, or the class
      declares ``array_api = "numpy"``) called by the pipeline with tensors: it
      gets numpy arrays, as in 1.5.7, and its result becomes a tensor on the
      activations' device. Other overrides get tensors; a numpy result is converted.
    """
    if getattr(func, "__camlib_arrays__", False):
        return func
    own = getattr(func, "__module__", "").startswith(_CAMLIB) or getattr(func, "__module__", "") == "camlib"

    @functools.wraps(func)
    def wrapper(self: Any, input_tensor: Any, target_layer: Any, targets: Any, activations: Any, grads: Any, *args: Any, **kwargs: Any) -> Any:
        given_numpy = isinstance(activations, np.ndarray) or isinstance(grads, np.ndarray)
        if own:
            if not given_numpy:
                return func(self, input_tensor, target_layer, targets, activations, grads, *args, **kwargs)
            like = input_tensor if isinstance(input_tensor, torch.Tensor) else None
            result = func(self, input_tensor, target_layer, targets, _to_torch(activations, like), _to_torch(grads, like), *args, **kwargs)
            return _to_numpy(result)
        style = _array_style(func, self)
        if style == "numpy" and not given_numpy:
            result = func(self, input_tensor, target_layer, targets, _to_numpy(activations), _to_numpy(grads), *args, **kwargs)
        else:
            result = func(self, input_tensor, target_layer, targets, activations, grads, *args, **kwargs)
        return _to_numpy(result) if given_numpy else _to_torch(result, activations)

    wrapper.__camlib_arrays__ = True  # type: ignore[attr-defined]
    return wrapper


# -- 1.5.7's pipeline ----------------------------------------------------------------------
def overrides(cam: Any, name: str) -> bool:
    """Whether a subclass of ``type(cam)`` below camlib's classes defines ``name``."""
    for klass in type(cam).__mro__:
        if klass.__module__.startswith(_CAMLIB):
            return False
        if name in klass.__dict__:
            return True
    return False


def runs_1_5_7_pipeline(cam: Any) -> bool:
    """Whether a subclass overrides one of 1.5.7's pipeline steps (:data:`PIPELINE_STEPS`)."""
    return any(overrides(cam, name) for name in PIPELINE_STEPS)


def input_with_grad(capture: Any) -> torch.Tensor:
    """The captured input, with ``.grad`` holding its gradient when one was taken
    (1.5.7 overrides read ``input_tensor.grad``)."""
    if capture.input_gradient is None:
        return capture.input
    x = capture.input.detach().requires_grad_(True)
    x.grad = capture.input_gradient.detach()
    return x


def compute_cam_per_layer(cam: Any, input_tensor: torch.Tensor, targets: Sequence[Callable], eigen_smooth: bool) -> List[np.ndarray]:
    """1.5.7's ``compute_cam_per_layer``: from ``cam.activations_and_grads``, per target
    layer the ReLU'd map, scaled to [0, 1] and resized to ``get_target_width_height``:
    a list of ``np.float32 [B, 1, *S]``."""
    from camlib.utils.image import scale_cam_image

    activations = list(cam.activations_and_grads.activations)
    gradients = list(cam.activations_and_grads.gradients)
    size = cam.get_target_width_height(input_tensor)
    maps = []
    for i, layer in enumerate(cam.target_layers):
        layer_activations = activations[i] if i < len(activations) else None
        layer_grads = gradients[i] if i < len(gradients) else None
        raw = cam.get_cam_image(input_tensor, layer, targets, layer_activations, layer_grads, eigen_smooth)
        raw = torch.relu(torch.as_tensor(raw).float())
        maps.append(_to_numpy(scale_cam_image(raw, size))[:, None])
    return maps


def forward_1_5_7(cam: Any, input_tensor: torch.Tensor, targets: Optional[list], eigen_smooth: bool) -> np.ndarray:
    """1.5.7's ``forward``, for subclasses that override its pipeline steps: the model
    runs through ``cam.activations_and_grads`` (hooks for the call only), gradients are
    taken with ``torch.autograd.grad`` (parameters' ``.grad`` untouched), then
    ``cam.compute_cam_per_layer`` and ``cam.aggregate_multi_layers``. No batch or
    layout checks: the override decides what the maps are."""
    from camlib.utils.batched import score_outputs
    from camlib.utils.model_state import eval_mode

    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
    training_mode_note(cam)
    x = input_tensor.detach().to(cam.device)
    recorder = cam.activations_and_grads
    with eval_mode(cam.model), torch.inference_mode(False), torch.enable_grad():
        if cam.compute_input_gradient:
            x.requires_grad_(True)
        outputs = recorder(x)
        if targets is None:
            targets = cam.top_class_targets(cam.model_scores(outputs))
        if cam.uses_gradients:
            leaves = [t for t in recorder.leaves if t.requires_grad]
            wanted = leaves + ([x] if cam.compute_input_gradient else [])
            loss = score_outputs(outputs, list(targets)).sum()
            grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted and loss.requires_grad else []
            if cam.compute_input_gradient and grads:
                x.grad = torch.zeros_like(x) if grads[-1] is None else grads[-1].detach()
    cam.outputs = _detached(outputs)
    with torch.no_grad():
        per_layer = cam.compute_cam_per_layer(x, targets, eigen_smooth)
        result = cam.aggregate_multi_layers(per_layer)
    return _to_numpy(result).astype(np.float32, copy=False)


def _detached(outputs: Any) -> Any:
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, outputs)


def call_overridden_forward(cam: Any, input_tensor: Any, targets: Any, aug_smooth: bool, eigen_smooth: bool) -> np.ndarray:
    """``cam(...)`` for a subclass overriding ``forward`` (as 1.5.7's ``__call__``): the
    override is called with ``(input_tensor, targets, eigen_smooth)``, per
    augmentation with ``aug_smooth``; the model is in eval mode for the call."""
    from camlib.utils.model_state import eval_mode

    if overrides(cam, "forward"):
        training_mode_note(cam)
    with eval_mode(cam.model):
        if not aug_smooth:
            return cam.forward(input_tensor, targets, eigen_smooth)
        maps = []
        for transform in cam.tta_transforms:
            result = torch.as_tensor(np.asarray(cam.forward(transform.augment_image(input_tensor), targets, eigen_smooth)))
            maps.append(transform.deaugment_mask(result[:, None])[:, 0].numpy())
        return np.mean(np.float32(maps), axis=0)


# -- the model's mode and the input ---------------------------------------------------------
def training_mode_note(cam: Any) -> None:
    """Warn when the model was switched to training mode after the CAM was built:
    pytorch-grad-cam 1.5.7 would compute in training mode, camlib computes in eval mode."""
    model = cam.model
    if cam.__dict__.get("_legacy_built_in_eval") and isinstance(model, torch.nn.Module) and model.training:
        warn_user(
            f"the model was put in training mode after {type(cam).__name__} was built: camlib computes the maps "
            "in eval mode (dropout off, batch-norm running statistics, which it does not update) and restores "
            "training mode afterwards; pytorch-grad-cam 1.5.7 computed them in training mode. For maps of the "
            "model as it runs in training mode, use cam.differentiable_maps(x, targets).",
            UserWarning,
        )


def uint8_input(input_tensor: Any) -> Any:
    """An integer image tensor, cast to float32 with a warning (1.5.7 passed it to the model as is)."""
    if isinstance(input_tensor, torch.Tensor) and input_tensor.dtype == torch.uint8:
        warn_user(
            "input_tensor is uint8: camlib casts it to float32 with its 0..255 values (pytorch-grad-cam 1.5.7 "
            "passed it on unchanged). A model that reads its input expects floats normalised as in training: "
            "pass camlib.utils.image.preprocess_image(image) or x.float() / 255 normalised.",
            UserWarning,
        )
        return input_tensor.float()
    return input_tensor


# -- guided backpropagation ------------------------------------------------------------------
def guided_backprop_device(owner: Any, model: Any, device: Any, legacy_kwargs: Dict[str, Any]) -> Any:
    """``GuidedBackpropReLUModel(model, use_cuda)``: the older ``use_cuda`` (keyword, or a bool
    where the device goes) becomes None (the model's device), with one warning."""
    unknown = sorted(set(legacy_kwargs) - {"use_cuda"})
    if unknown:
        raise TypeError(f"{type(owner).__name__}() got an unexpected keyword argument {unknown[0]!r}")
    if "use_cuda" in legacy_kwargs:
        use_cuda = legacy_kwargs["use_cuda"]
    elif isinstance(device, bool):
        use_cuda = device
    else:
        return device
    warn_user(
        f"{type(owner).__name__}(model, use_cuda) (removed in 1.5) is {type(owner).__name__}(model): "
        f"{_device_note(use_cuda, model)}.",
        LegacyAPIWarning,
    )
    return None
