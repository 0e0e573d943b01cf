"""Deep Feature Factorization: concepts found by non-negative matrix factorisation of activations.

Collins, Achanta and Süsstrunk, "Deep Feature Factorization For Concept
Discovery", ECCV 2018, https://arxiv.org/abs/1806.10206.

The activations :math:`A \\in \\mathbb{R}^{C \\times (B H W)}` of a layer (one
row per channel, one column per image position) are shifted per channel to be
non-negative and factorised as :math:`A - a_{\\min} \\approx W H` with
:math:`W \\in \\mathbb{R}_{\\ge 0}^{C \\times K}` and
:math:`H \\in \\mathbb{R}_{\\ge 0}^{K \\times (B H W)}`. Column :math:`k` of
:math:`W` (plus the shift) is the embedding of concept :math:`k`; row :math:`k`
of :math:`H`, reshaped to ``[B, H, W]``, is where that concept appears.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from sklearn.decomposition import NMF

from camlib.utils._display import create_labels_legend, show_factorization_on_image
from camlib.utils.image import scale_cam_image
from camlib.utils.model_state import eval_mode
from camlib.utils.validation import model_device, model_float_dtype

__all__ = ["DeepFeatureFactorization", "dff", "run_dff_on_image"]


def _check_n_components(n_components: Any) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    return int(n_components)


def dff(activations: Union[np.ndarray, torch.Tensor], n_components: int = 5) -> Tuple[np.ndarray, np.ndarray]:
    """Factorise a batch of activations into ``n_components`` concepts.

    NaNs are treated as 0. Each channel is shifted by its minimum so that the
    matrix is non-negative, factorised with scikit-learn's ``NMF``
    (``init="random", random_state=0``, so results are reproducible), and the
    shift is added back to the concept embeddings. ``activations`` is not modified.

    Args:
        activations: array or tensor of shape ``[B, C, H, W]``.
        n_components: number of concepts :math:`K`.

    Returns:
        ``(concepts, explanations)``: concepts of shape ``[C, K]`` and the
        unnormalised concept heatmaps of shape ``[B, K, H, W]``.

    Example:
        >>> import numpy as np
        >>> concepts, maps = dff(np.random.default_rng(0).random((2, 6, 3, 3)), n_components=2)
        >>> concepts.shape, maps.shape
        ((6, 2), (2, 2, 3, 3))
    """
    if isinstance(activations, torch.Tensor):
        activations = activations.detach().cpu().numpy()
    if not isinstance(activations, np.ndarray):
        raise TypeError(
            f"activations must be a numpy array or a torch tensor, got {type(activations).__name__}"
        )
    if activations.ndim != 4:
        raise ValueError(f"activations must have shape [B, C, H, W], got {activations.shape}")
    n_components = _check_n_components(n_components)
    batch_size, channels, height, width = activations.shape
    per_channel = activations.transpose(1, 0, 2, 3).reshape(channels, -1)
    per_channel = np.where(np.isnan(per_channel), 0, per_channel)
    offset = per_channel.min(axis=-1)
    shifted = per_channel - offset[:, None]

    nmf = NMF(n_components=n_components, init="random", random_state=0)
    embeddings = nmf.fit_transform(shifted)
    concepts = embeddings + offset[:, None]
    explanations = nmf.components_.reshape(n_components, batch_size, height, width).transpose(1, 0, 2, 3)
    return concepts, explanations


class DeepFeatureFactorization:
    """Deep Feature Factorization: "Deep Feature Factorization For Concept Discovery".

    Collins, Achanta and Süsstrunk, ECCV 2018, https://arxiv.org/abs/1806.10206.

    Runs the model, captures the output :math:`A` of ``target_layer`` and
    factorises it with :func:`dff`:
    :math:`A - a_{\\min} \\approx W H`, concepts :math:`W + a_{\\min}`
    (``[C, K]``), heatmaps :math:`H` reshaped to ``[B, K, h, w]``, then each
    heatmap min-max scaled to [0, 1] and resized to the input's ``H x W``.

    Optionally ``computation_on_concepts`` (e.g. the model's classification
    head) is applied to the ``[K, C]`` concept embeddings, to say which classes
    each concept votes for.

    The forward hook lives for one call only, and the model (and
    ``computation_on_concepts`` if it is a module) is run in eval mode, with
    the training flags restored afterwards, even on error.

    Args:
        model: the network.
        target_layer: a submodule of ``model`` whose output is factorised.
        reshape_transform: maps the layer's raw output to ``[B, C, h, w]``
            (e.g. for transformer tokens); None if it already has that shape.
        computation_on_concepts: callable applied to the ``[K, C]`` concept
            tensor (float32, or the module's dtype for a float16/bfloat16
            module; on its device); must return a tensor.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
        >>> with DeepFeatureFactorization(net, target_layer=net[1], computation_on_concepts=net[4]) as method:
        ...     concepts, maps, scores = method(torch.randn(2, 3, 8, 8), n_components=3)
        >>> concepts.shape, len(maps), maps[0].shape, scores.shape
        ((8, 3), 2, (3, 8, 8), (3, 4))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layer: torch.nn.Module,
        reshape_transform: Optional[Callable] = None,
        computation_on_concepts: Optional[Callable] = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(target_layer, torch.nn.Module):
            raise TypeError(
                f"target_layer must be a torch.nn.Module, got {type(target_layer).__name__}; "
                "pass a module from model.named_modules()"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(
                f"reshape_transform must be callable or None, got {type(reshape_transform).__name__}"
            )
        if computation_on_concepts is not None and not callable(computation_on_concepts):
            raise TypeError(
                f"computation_on_concepts must be callable or None, got {type(computation_on_concepts).__name__}"
            )
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts

    def _capture_activations(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model once and return a detached copy of ``target_layer``'s (reshaped) output."""
        captured: List[torch.Tensor] = []

        def keep_output(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if captured:  # a layer called several times: keep its first call
                return
            value = self.reshape_transform(output) if self.reshape_transform is not None else output
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"target_layer produced {type(value).__name__}, not a tensor; pass a reshape_transform "
                    "that turns its output into a [B, C, h, w] tensor"
                )
            captured.append(value.detach().clone())

        handle = self.target_layer.register_forward_hook(keep_output)
        try:
            with eval_mode(self.model), torch.no_grad():
                self.model(input_tensor)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(
                "target_layer was not called during the forward pass; pass a module from "
                "model.named_modules() that the model's forward uses"
            )
        return captured[0]

    def __call__(
        self, input_tensor: torch.Tensor, n_components: int = 16
    ) -> Union[Tuple[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray], np.ndarray]]:
        """Factorise the target layer's activations for a batch.

        Args:
            input_tensor: batch of shape ``[B, C, H, W]``.
            n_components: number of concepts :math:`K`.

        Returns:
            ``(concepts, explanations)``, or ``(concepts, explanations,
            concept_outputs)`` when ``computation_on_concepts`` is set:
            concepts ``[C_layer, K]``; explanations a list with one float32
            ``[K, H, W]`` array per image, each map scaled to [0, 1];
            concept_outputs the numpy result of ``computation_on_concepts``.
        """
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
        if input_tensor.ndim != 4:
            raise ValueError(
                f"input_tensor must have shape [B, C, H, W], got {tuple(input_tensor.shape)}; "
                "add a batch dimension with input_tensor.unsqueeze(0)"
            )
        n_components = _check_n_components(n_components)
        height, width = input_tensor.shape[-2:]
        device = model_device(self.model, default=input_tensor.device)
        dtype = (model_float_dtype(self.model) or input_tensor.dtype) if input_tensor.is_floating_point() else None
        activations = self._capture_activations(input_tensor.to(device=device, dtype=dtype))
        if activations.ndim != 4:
            raise ValueError(
                f"the target layer's activations have shape {tuple(activations.shape)}, expected "
                "[B, C, h, w]; pass a reshape_transform that lays them out that way"
            )

        concepts, explanations = dff(activations.float().cpu().numpy(), n_components=n_components)
        batch_size = explanations.shape[0]
        flat = np.ascontiguousarray(explanations).reshape(batch_size * n_components, *explanations.shape[2:])
        scaled = scale_cam_image(flat, (width, height)).reshape(batch_size, n_components, height, width)
        processed = list(scaled)

        if self.computation_on_concepts is None:
            return concepts, processed
        target = model_device(self.computation_on_concepts, default=device)
        concept_tensor = torch.from_numpy(np.float32(concepts).T.copy()).to(
            target, model_float_dtype(self.computation_on_concepts) or torch.float32
        )
        with eval_mode(self.computation_on_concepts), torch.no_grad():
            concept_outputs = self.computation_on_concepts(concept_tensor)
        if not isinstance(concept_outputs, torch.Tensor):
            raise TypeError(
                f"computation_on_concepts returned {type(concept_outputs).__name__}, expected a tensor"
            )
        return concepts, processed, concept_outputs.detach().float().cpu().numpy()

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        # Hooks only live during a call, so there is nothing to release; exceptions propagate.
        return None


def run_dff_on_image(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    classifier: Callable,
    img_pil: Any,
    img_tensor: torch.Tensor,
    reshape_transform: Optional[Callable] = None,
    n_components: int = 5,
    top_k: int = 2,
    *,
    labels: Optional[Union[Mapping[int, str], Sequence[str]]] = None,
) -> np.ndarray:
    """Deep Feature Factorization of one image, drawn next to the image with a legend.

    Args:
        model: the network. Unless ``labels`` is given it must have
            ``model.config.id2label`` (as Hugging Face models do).
        target_layer: the layer to factorise.
        classifier: head applied to the concept embeddings to name them
            (``computation_on_concepts`` of :class:`DeepFeatureFactorization`).
        img_pil: the RGB image, a PIL image or a uint8 ``[H, W, 3]`` array.
        img_tensor: the preprocessed image, ``[C, H, W]`` (or ``[1, C, H, W]``),
            with the same height and width as ``img_pil``.
        reshape_transform: see :class:`DeepFeatureFactorization`.
        n_components: number of concepts.
        top_k: categories named per concept in the legend.
        labels: category names indexed by class id; defaults to ``model.config.id2label``.

    Returns:
        A uint8 RGB image ``[H, 3 W, 3]``: the image, the coloured concepts, the legend.
    """
    if labels is None:
        labels = getattr(getattr(model, "config", None), "id2label", None)
        if labels is None:
            raise ValueError(
                f"{type(model).__name__} has no config.id2label to name the categories; "
                "pass labels=... (a dict or list of class names)"
            )
    if not isinstance(img_tensor, torch.Tensor):
        raise TypeError(f"img_tensor must be a torch.Tensor, got {type(img_tensor).__name__}")
    if img_tensor.ndim == 3:
        img_tensor = img_tensor[None]
    if img_tensor.ndim != 4 or img_tensor.shape[0] != 1:
        raise ValueError(f"img_tensor must have shape [C, H, W] (one image), got {tuple(img_tensor.shape)}")
    rgb = np.asarray(img_pil)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"img_pil must be an RGB image of shape [H, W, 3], got shape {rgb.shape}")
    if rgb.shape[:2] != tuple(img_tensor.shape[-2:]):
        raise ValueError(
            f"img_pil is {rgb.shape[0]}x{rgb.shape[1]} but img_tensor is "
            f"{img_tensor.shape[-2]}x{img_tensor.shape[-1]} (height x width); they must show the same pixels"
        )

    method = DeepFeatureFactorization(
        model=model,
        target_layer=target_layer,
        reshape_transform=reshape_transform,
        computation_on_concepts=classifier,
    )
    _, explanations, concept_outputs = method(img_tensor, n_components)
    concept_scores = torch.softmax(torch.from_numpy(concept_outputs), dim=-1).numpy()
    concept_labels = create_labels_legend(concept_scores, labels=labels, top_k=top_k)
    visualization = show_factorization_on_image(
        rgb / 255, explanations[0], image_weight=0.3, concept_labels=concept_labels
    )
    return np.hstack((rgb, visualization))
