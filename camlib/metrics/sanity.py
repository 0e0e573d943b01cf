r"""Sanity check: the model-parameter randomisation test.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks for
Saliency Maps", NeurIPS 2018. https://arxiv.org/abs/1810.03292

An explanation of a model's decision must depend on the model. The test
re-initialises the model's weights, layer by layer from the top (the logits)
down, recomputes the maps, and measures how similar they stay to the maps of
the trained model with Spearman's rank correlation

.. math::
    \rho(a, b) = \frac{\operatorname{cov}(R(a), R(b))}{\sigma_{R(a)}\,\sigma_{R(b)}},

where :math:`R` ranks the pixels of a map (ties get their average rank). A map
that stays highly correlated after the weights are gone explains the input,
not the model (an edge detector passes for an explanation that way): lower is
better, and the correlation should fall as more layers are randomised.

* ``mode="cascading"``: step :math:`i` randomises layers 1..i (from the top),
  so with the default layers the last step has no trained weight left.
* ``mode="independent"``: step :math:`i` randomises layer :math:`i` only.

The user's model is never modified: the test runs on a deep copy.
"""

from __future__ import annotations

import copy
import numbers
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from camlib.metrics.perturbation_confidence import as_cam_tensor, to_numpy
from camlib.utils.model_state import eval_mode
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_bar
from camlib.utils.validation import model_device

__all__ = ["ModelParameterRandomisation", "RandomisationResult", "randomisation_order", "spearman_correlation"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]
MODES = ("cascading", "independent")
INITS = ("reset", "shuffle")


# -- rank correlation -------------------------------------------------------------------------


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Per-row ranks of ``[N, M]`` values (0-based), ties sharing their average rank, in float64."""
    ordered = values.sort(dim=1).values.contiguous()
    values = values.contiguous()
    below = torch.searchsorted(ordered, values, right=False)
    at_or_below = torch.searchsorted(ordered, values, right=True)
    return (below + at_or_below - 1).double() / 2


def spearman_correlation(a: ArrayOrTensor, b: ArrayOrTensor) -> ArrayOrTensor:
    """Spearman's rank correlation between ``a[i]`` and ``b[i]`` for each item of a batch.

    Ties get their average rank. A constant map has no order, so its
    correlation with anything is defined as 0.

    Args:
        a: ``[N, ...]`` maps (numpy or torch).
        b: ``[N, ...]`` maps with as many values per item.

    Returns:
        ``[N]`` correlations in [-1, 1]: ``np.float32`` when both inputs are
        numpy, else a float32 tensor on ``a``'s device.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
        >>> b = torch.tensor([[1.0, 4.0, 9.0, 16.0], [0.0, 0.0, 1.0, 0.0]])
        >>> spearman_correlation(a, b)
        tensor([1.0000, 0.2582])
    """
    left, right = as_cam_tensor(a, "a"), as_cam_tensor(b, "b")
    if left.shape[0] != right.shape[0] or left[0].numel() != right[0].numel():
        raise ValueError(
            f"a and b must hold the same number of maps of the same size, got {list(left.shape)} and {list(right.shape)}"
        )
    if left[0].numel() < 2:
        raise ValueError(f"a rank correlation needs at least 2 values per map, got {left[0].numel()}")
    right = right.to(left.device)
    ranks_a = _average_ranks(left.reshape(left.shape[0], -1))
    ranks_b = _average_ranks(right.reshape(right.shape[0], -1))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    covariance = (ranks_a * ranks_b).sum(dim=1)
    scale = ((ranks_a**2).sum(dim=1) * (ranks_b**2).sum(dim=1)).sqrt()
    rho = torch.where(scale > 0, covariance / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale))
    rho = rho.clamp(-1.0, 1.0).float()
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return to_numpy(rho)
    return rho


# -- which layers, in which order -------------------------------------------------------------


def _own_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


@torch.no_grad()
def randomisation_order(model: torch.nn.Module, input_tensor: torch.Tensor) -> List[str]:
    """Names of the modules that own parameters, from the output back to the input.

    The order is the reverse of the order in which one forward pass (on the
    first image of ``input_tensor``) first calls them, so "the top" is where
    the data leave the network. Modules that the forward pass does not call
    are left out. The model is run in eval mode; its flags are restored.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(18, 3))
        >>> randomisation_order(model, torch.zeros(1, 1, 5, 5))
        ['3', '0']
    """
    owners = {module: name for name, module in model.named_modules() if _own_parameters(module)}
    called: List[str] = []

    def record(module: torch.nn.Module, _inputs: Any) -> None:
        name = owners[module]
        if name not in called:
            called.append(name)

    handles = [module.register_forward_pre_hook(record) for module in owners]
    try:
        with eval_mode(model):
            model(input_tensor[:1])
    finally:
        for handle in handles:
            handle.remove()
    return called[::-1]


# -- the test -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomisationResult:
    """The outcome of :class:`ModelParameterRandomisation`.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: the module randomised at each step (from the top); in
            cascading mode step ``i`` also keeps the steps before it randomised.
        correlations: ``np.float32 [L, B]``, Spearman's rho between each
            image's original map and its map at each step.
        original: ``np.float32 [B, *S]``, the maps of the unmodified model.
        randomised: ``np.float32 [L, B, *S]`` maps at each step, or None
            (ask for them with ``return_maps=True``).
    """

    mode: str
    layers: Tuple[str, ...]
    correlations: np.ndarray
    original: np.ndarray
    randomised: Optional[np.ndarray] = None

    @property
    def mean_correlation(self) -> np.ndarray:
        """``np.float32 [L]``: the mean over the images at each step."""
        return self.correlations.mean(axis=1).astype(np.float32)


def _module_by_name(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    return dict(model.named_modules())


def _names_of(model: torch.nn.Module, modules: Sequence[Any], what: str) -> List[str]:
    by_id = {id(module): name for name, module in model.named_modules()}
    known = _module_by_name(model)
    names = []
    for item in modules:
        if isinstance(item, str):
            if item not in known:
                raise ValueError(f"{what}: the model has no module named {item!r}; use a name from model.named_modules()")
            names.append(item)
        elif isinstance(item, torch.nn.Module):
            if id(item) not in by_id:
                raise ValueError(
                    f"{what}: {type(item).__name__} is not a submodule of the model; pass modules from "
                    "model.named_modules() (or their names)"
                )
            names.append(by_id[id(item)])
        else:
            raise TypeError(f"{what} must hold modules of the model or their names, got {type(item).__name__}")
    return names


class ModelParameterRandomisation:
    """The model-parameter randomisation test of Adebayo et al. (see :mod:`camlib.metrics.sanity`).

    Args:
        method: builds the explainer for a model: a CAM class such as
            :class:`~camlib.grad_cam.GradCAM`, or any callable
            ``(model, target_layers, **method_kwargs) -> cam`` where ``cam(input_tensor=...,
            targets=...)`` returns ``[B, *S]`` maps.
        model: the trained model; it is deep-copied and never modified.
        target_layers: the explainer's target layers (modules of ``model``);
            the copies' own layers are used.
        mode: ``"cascading"`` (default) or ``"independent"``.
        layers: the modules to randomise, one per step, from the top (names or
            modules of ``model``; each randomises its whole subtree). Default:
            every module that owns parameters, from the output back to the
            input (:func:`randomisation_order`).
        init: how weights are randomised: ``"reset"`` (default) re-initialises
            each module that has ``reset_parameters`` with it (e.g. Kaiming
            uniform for convolutions; BatchNorm also forgets its running
            statistics) and shuffles the other parameters; ``"shuffle"``
            randomly permutes every parameter's values (keeping their
            distribution).
        seed: seeds the randomisation; a module's new weights depend only on
            the seed and the module's name, so they are the same in both modes
            and in any subset of ``layers``. torch's global generators are
            saved and restored: the caller's random state is untouched.
        method_kwargs: more keyword arguments for ``method``.
        return_maps: keep every step's maps in the result.
        progress: show a progress bar over the steps (None: on unless
            ``CAMLIB_DISABLE_PROGRESS`` is set).

    Called as ``check(input_tensor, targets=None)``; ``targets=None`` explains
    every image's top class *of the trained model* at every step (so the
    randomised model explains the same class). Returns a
    :class:`RandomisationResult`.

    Example:
        >>> import torch
        >>> from camlib import GradCAM
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> check = ModelParameterRandomisation(GradCAM, model, [model[1]], progress=False)
        >>> result = check(torch.randn(2, 3, 8, 8))
        >>> result.layers, result.correlations.shape
        (('4', '0'), (2, 2))
    """

    def __init__(
        self,
        method: Callable[..., Any],
        model: torch.nn.Module,
        target_layers: Sequence[torch.nn.Module],
        *,
        mode: str = "cascading",
        layers: Optional[Sequence[Union[str, torch.nn.Module]]] = None,
        init: str = "reset",
        seed: int = 0,
        method_kwargs: Optional[Mapping[str, Any]] = None,
        return_maps: bool = False,
        progress: Optional[bool] = None,
    ) -> None:
        if not callable(method):
            raise TypeError(f"method must be a CAM class or a factory (model, target_layers) -> cam, got {method!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        if isinstance(target_layers, torch.nn.Module) or not isinstance(target_layers, Sequence):
            raise TypeError("target_layers must be a list of modules of the model, e.g. [model.layer4[-1]]")
        self.method = method
        self.model = model
        self.target_layer_names = _names_of(model, target_layers, "target_layers")
        if layers is not None:
            if isinstance(layers, (str, torch.nn.Module)) or not isinstance(layers, Sequence) or len(layers) == 0:
                raise TypeError("layers must be a non-empty list of module names (or modules) of the model")
            layers = _names_of(model, layers, "layers")
        self.layers = None if layers is None else list(layers)
        self.mode = mode
        self.init = init
        self.seed = int(seed)
        self.method_kwargs = dict(method_kwargs or {})
        self.return_maps = bool(return_maps)
        self.progress = progress

    # -- helpers --------------------------------------------------------------------------

    def _maps(self, model: torch.nn.Module, input_tensor: torch.Tensor, targets: List[Callable]) -> torch.Tensor:
        modules = _module_by_name(model)
        cam = self.method(model, [modules[name] for name in self.target_layer_names], **self.method_kwargs)
        try:
            maps = cam(input_tensor=input_tensor, targets=targets)
        finally:
            release = getattr(cam, "release", None)
            if callable(release):
                release()
        maps = as_cam_tensor(maps, "the explainer's output")
        if maps.shape[0] != input_tensor.shape[0]:
            raise ValueError(
                f"the explainer returned {maps.shape[0]} maps for {input_tensor.shape[0]} images; it must return "
                "[B, *S] maps"
            )
        return maps.cpu()

    def _randomise(self, module: torch.nn.Module, name: str) -> None:
        """Randomise every parameter under ``module``, in place, seeded by ``seed`` and the module's name."""
        module_seed = (self.seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % 2**63
        generator = torch.Generator().manual_seed(module_seed)
        covered = set()
        if self.init == "reset":
            devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(module_seed)
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset) and _own_parameters(sub):
                        reset()
                        covered.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for parameter in module.parameters():
                if id(parameter) in covered or parameter.numel() == 0:
                    continue
                order = torch.randperm(parameter.numel(), generator=generator).to(parameter.device)
                parameter.copy_(parameter.flatten()[order].view_as(parameter))

    # -- the test -------------------------------------------------------------------------

    def __call__(self, input_tensor: torch.Tensor, targets: Optional[List[Callable]] = None) -> RandomisationResult:
        """Run the test on a batch.

        Args:
            input_tensor: ``[B, C, *S]`` batch, as given to the model.
            targets: one callable per image, or None for the trained model's top class.

        Returns:
            A :class:`RandomisationResult`.
        """
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor [B, C, H, W], got {type(input_tensor).__name__}")
        if input_tensor.ndim < 3 or input_tensor.shape[0] == 0:
            raise ValueError(f"input_tensor must be a non-empty batch [B, C, *S], got shape {list(input_tensor.shape)}")
        if targets is not None and (not isinstance(targets, (list, tuple)) or len(targets) != input_tensor.shape[0]):
            raise ValueError(
                f"targets must be None or a list with one callable per image ({input_tensor.shape[0]}), got {targets!r:.80}"
            )
        try:
            working = copy.deepcopy(self.model)
        except Exception as error:
            raise TypeError(
                f"the randomisation test works on a deep copy of the model, and copy.deepcopy failed: {error}"
            ) from error
        working.eval()
        x = input_tensor.detach().to(model_device(working, default="cpu"))
        steps = self.layers if self.layers is not None else randomisation_order(working, x)
        if not steps:
            raise ValueError("the model has no parameters to randomise")
        if targets is None:
            with torch.no_grad():
                outputs = working(x)
            if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
                raise ValueError(
                    "targets=None explains each image's top class, which needs a [B, K] output; pass targets"
                )
            targets = [ClassifierOutputTarget(int(c)) for c in outputs.argmax(dim=1).tolist()]
        targets = list(targets)
        original = self._maps(working, x, targets)
        modules = _module_by_name(working)
        correlations, kept = [], []
        bar = progress_bar(steps, progress=self.progress, desc=type(self).__name__, leave=False)
        for name in bar:
            module = modules[name]
            saved = None
            if self.mode == "independent":
                saved = {key: value.clone() for key, value in module.state_dict(keep_vars=False).items()}
            self._randomise(module, name)
            maps = self._maps(working, x, targets)
            if maps.shape != original.shape:
                raise ValueError(f"the explainer's maps changed shape: {list(original.shape)} -> {list(maps.shape)}")
            correlations.append(spearman_correlation(original, maps))
            if self.return_maps:
                kept.append(maps)
            if saved is not None:
                module.load_state_dict(saved)
        return RandomisationResult(
            mode=self.mode,
            layers=tuple(steps),
            correlations=to_numpy(torch.stack(correlations)),
            original=to_numpy(original),
            randomised=to_numpy(torch.stack(kept)) if self.return_maps else None,
        )

    def __repr__(self) -> str:
        name = getattr(self.method, "__name__", type(self.method).__name__)
        return f"{type(self).__name__}(method={name}, mode={self.mode!r}, init={self.init!r}, seed={self.seed})"
