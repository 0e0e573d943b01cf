r"""GAIN: training a classifier with its own Grad-CAM maps as a signal.

Li, Wu, Peng, Ernst and Fu, "Tell Me Where to Look: Guided Attention Inference
Network", CVPR 2018. https://arxiv.org/abs/1802.10171

One shared network runs two streams per step.

* **S_cl** classifies the image :math:`I` (loss :math:`L_{cl}`: cross-entropy
  for class indices, binary cross-entropy with logits for multi-hot labels) and
  gives the Grad-CAM map :math:`A^c` of each ground-truth class :math:`c`, as a
  differentiable tensor in [0, 1] at the input's size.
* **S_am** (attention mining) erases what the map points at,

  .. math::
      T(A^c) = \frac{1}{1 + \exp\big(-\omega (A^c - \sigma)\big)}, \qquad
      I^{*c} = I - T(A^c) \odot I,

  and classifies :math:`I^{*c}` again. Its loss is the mean score of the
  ground-truth classes on the erased images,
  :math:`L_{am} = \frac{1}{n} \sum_c s^c(I^{*c})`: minimising it pushes the map
  to cover *all* of the evidence for the class, so that nothing recognisable
  is left once it is erased.
* **GAIN_ext** (optional pixel masks :math:`H^c`): where a sample has a mask,
  :math:`L_e = \frac{1}{n} \sum_c \mathrm{mean}_{pixels} (A^c - H^c)^2`.

The total loss is :math:`L = L_{cl} + \alpha L_{am} + w_e L_e`, with the paper's
:math:`\sigma = 0.5`, :math:`\omega = 10`, :math:`\alpha = 1` and :math:`w_e = 10`
as defaults.

The score :math:`s^c`: the paper writes "the prediction score" of the class.
camlib uses the class's probability by default (sigmoid of its logit for
multi-hot labels, softmax over the classes for class indices), which is
bounded in [0, 1]; ``am_score="logit"`` uses the raw logit instead (unbounded
below, so :math:`L_{am}` can then decrease without limit).

Erasing is done on the tensor the model receives: with mean/std
normalisation, erased pixels take the value 0, i.e. the data set's mean colour.
"""

from __future__ import annotations

import numbers
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from camlib.grad_cam import GradCAM
from camlib.registry import methods
from camlib.utils.model_state import eval_mode

__all__ = ["GAIN", "GAINOutput", "erase", "soft_mask"]

MasksLike = Union[None, torch.Tensor, Sequence[Optional[torch.Tensor]]]

class GAINOutput(NamedTuple):
    """What one :class:`GAIN` step returns; every loss is a scalar tensor.

    Attributes:
        loss: ``loss_cl + alpha * loss_am + ext_weight * loss_e``; call ``backward()`` on it.
        logits: The model's output on the images, ``[B, K]``.
        maps: The differentiable Grad-CAM maps in [0, 1] at the input size: ``[B, H, W]``
            (the labelled class) for class-index labels, ``[B, K, H, W]`` for multi-hot labels
            (zeros for the classes an image does not hold). ``None`` during warm-up.
        loss_cl: Classification loss on the images.
        loss_am: Attention-mining loss (0 during warm-up).
        loss_e: Mask loss of GAIN_ext (0 when no sample of the batch has a mask, and during warm-up).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    maps: Optional[torch.Tensor]
    loss_cl: torch.Tensor
    loss_am: torch.Tensor
    loss_e: torch.Tensor


def soft_mask(maps: torch.Tensor, sigma: float = 0.5, omega: float = 10.0) -> torch.Tensor:
    r"""GAIN's soft threshold of a map: :math:`T(A) = \mathrm{sigmoid}(\omega (A - \sigma))`.

    Args:
        maps: Maps in [0, 1], any shape.
        sigma: Threshold.
        omega: Steepness (a large value approaches a hard threshold at ``sigma``).

    Returns:
        A tensor of the maps' shape, in (0, 1).

    Example:
        >>> import torch
        >>> soft_mask(torch.tensor([0.0, 0.5, 1.0])).round(decimals=3)
        tensor([0.0070, 0.5000, 0.9930])
    """
    return torch.sigmoid(omega * (maps - sigma))


def erase(images: torch.Tensor, maps: torch.Tensor, sigma: float = 0.5, omega: float = 10.0) -> torch.Tensor:
    r"""GAIN's masked image :math:`I^* = I - T(A) \odot I`: the input with what the map points at erased.

    Args:
        images: Images ``[B, C, H, W]`` (as the model receives them).
        maps: Maps in [0, 1], ``[B, H, W]``.
        sigma: Threshold of :func:`soft_mask`.
        omega: Steepness of :func:`soft_mask`.

    Returns:
        ``[B, C, H, W]``; differentiable with respect to both arguments.

    Example:
        >>> import torch
        >>> images = torch.ones(1, 3, 2, 2)
        >>> maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> erase(images, maps, omega=100.0)[0, 0]
        tensor([[0., 1.],
                [1., 1.]])
    """
    return images - soft_mask(maps, sigma, omega)[:, None] * images


class _ClassScore:
    """Target: the logit of ``category``; it also keeps the image's output it was given,
    so that one forward pass serves both the maps and the classification loss."""

    def __init__(self, category: int, seen: List[Optional[torch.Tensor]], index: int) -> None:
        self.category = int(category)
        self.seen = seen
        self.index = index

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if not isinstance(model_output, torch.Tensor) or model_output.ndim != 1:
            got = list(model_output.shape) if isinstance(model_output, torch.Tensor) else type(model_output).__name__
            raise ValueError(f"GAIN needs a classifier returning logits [B, K]; one image's output was {got}")
        if self.category >= model_output.shape[0]:
            raise ValueError(
                f"a label names class {self.category} but the model returns {model_output.shape[0]} logits; "
                f"labels must be class indices in [0, {model_output.shape[0]}) or multi-hot [B, {model_output.shape[0]}]"
            )
        self.seen[self.index] = model_output
        return model_output[self.category]

    def __repr__(self) -> str:
        return f"GAIN target: logit of class {self.category}"


def _check_number(name: str, value: Any, low: float, allow_equal: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = value >= low if allow_equal else value > low
    if not ok or value != value:
        raise ValueError(f"{name} must be {'>=' if allow_equal else '>'} {low}, got {value!r}")
    return float(value)


class GAIN(nn.Module):
    """Guided Attention Inference Network: a classifier trained on its own Grad-CAM maps.

    Wraps the user's model; ``gain(images, labels, masks=None)`` runs both streams
    of one training step and returns a :class:`GAINOutput`. The wrapped model is
    ``gain.model`` (a submodule, so ``gain.parameters()`` and ``gain.state_dict()``
    include its weights).

    Each call runs in the model's current mode: in training mode batch-norm
    statistics are updated by both streams (the erased images are a second
    forward pass of the same network, as in the paper). Nothing on the model is
    changed: no flag is set, no hook is left, nothing is written into ``.grad``
    before you call ``loss.backward()``.

    Args:
        model: A classifier returning logits ``[B, K]``.
        target_layers: Layer(s) of ``model`` whose Grad-CAM map is used (the last
            convolutional block, as for :class:`camlib.GradCAM`).
        method: A CAM class with differentiable maps (default :class:`camlib.GradCAM`).
        sigma: Threshold of the soft mask (paper: 0.5).
        omega: Steepness of the soft mask (paper: 10).
        alpha: Weight of the attention-mining loss (paper: 1).
        ext_weight: Weight of the mask loss of GAIN_ext (paper: 10).
        warmup_steps: Number of training-mode calls that use the classification
            loss only (the paper first trains the classifier, then adds the
            attention terms). Counted in the buffer ``gain.steps``, saved with
            the state dict.
        am_score: ``"probability"`` (default) or ``"logit"``: the score of a class
            on an erased image in :math:`L_{am}` (see the module docstring).

    Labels: class indices (integer ``[B]``, cross-entropy) or multi-hot labels
    (float, bool or 0/1 integer ``[B, K]``, binary cross-entropy with logits;
    a class is a ground-truth class of an image where its label is >= 0.5).

    Masks (GAIN_ext, optional): pixel masks at the input's size, values in [0, 1]:

    * a tensor ``[B, H, W]`` (or ``[B, 1, H, W]``): one mask per image, used for
      each of its ground-truth classes; or ``[B, K, H, W]``: one per class;
    * samples without a mask: fill their mask with NaN, or pass
      ``mask_valid`` (bool ``[B]``), or pass a list of B entries, each a mask or
      ``None``.

    Samples without a mask contribute nothing to ``loss_e``; ``loss_e`` is the
    mean over the (image, ground-truth class) pairs that have one.

    Example:
        >>> import torch
        >>> from camlib.demo import DemoNet
        >>> from camlib.training import GAIN
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = DemoNet(num_classes=3, widths=(4, 4, 8, 8, 8))
        >>> gain = GAIN(model, target_layers=[model.features[-1]])
        >>> images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
        >>> out = gain(images, labels)
        >>> out.loss.backward()
        >>> tuple(out.maps.shape), bool(torch.isfinite(out.loss))
        ((2, 32, 32), True)
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        *,
        method: type = GradCAM,
        sigma: float = 0.5,
        omega: float = 10.0,
        alpha: float = 1.0,
        ext_weight: float = 10.0,
        warmup_steps: int = 0,
        am_score: str = "probability",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(target_layers, nn.Module):
            target_layers = [target_layers]
        target_layers = list(target_layers)
        if not target_layers or not all(isinstance(layer, nn.Module) for layer in target_layers):
            raise TypeError(
                f"target_layers must be a non-empty list of modules of the model, got {target_layers!r}; "
                "e.g. target_layers=[model.layer4[-1]]"
            )
        own = {id(m) for m in model.modules()}
        for layer in target_layers:
            if id(layer) not in own:
                raise ValueError(
                    f"target layer {_short(layer)} is not a submodule of the model; pass a module from "
                    "model.named_modules()"
                )
        if not isinstance(method, type):
            raise TypeError(
                f"method must be a CAM class (e.g. camlib.GradCAM), got {type(method).__name__}; "
                f"methods with differentiable maps: {_differentiable_names()}"
            )
        capabilities = getattr(method, "capabilities", None)
        if not getattr(capabilities, "differentiable", False):
            raise TypeError(
                f"{method.__name__} has no differentiable maps, so GAIN cannot train on them; "
                f"use one of {_differentiable_names()}"
            )
        if am_score not in ("probability", "logit"):
            raise ValueError(f"am_score must be 'probability' or 'logit', got {am_score!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.model = model
        self.method = method
        self.sigma = _check_number("sigma", sigma, 0.0)
        self.omega = _check_number("omega", omega, 0.0, allow_equal=False)
        self.alpha = _check_number("alpha", alpha, 0.0)
        self.ext_weight = _check_number("ext_weight", ext_weight, 0.0)
        self.warmup_steps = int(warmup_steps)
        self.am_score = am_score
        # A plain attribute, not a submodule: the CAM object holds no parameters and
        # registers its hooks only for the duration of a call.
        self._target_layers = target_layers
        self._cam = method(model, target_layers)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    # -- public -------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: MasksLike = None,
        mask_valid: Optional[torch.Tensor] = None,
    ) -> GAINOutput:
        """Run one GAIN step (both streams) on a batch.

        Args:
            images: The model's input ``[B, C, H, W]`` (normalised as the model expects).
            labels: Class indices ``[B]`` or multi-hot labels ``[B, K]``.
            masks: Optional pixel masks for GAIN_ext (see the class docstring).
            mask_valid: Optional bool ``[B]``: which samples' masks to use.

        Returns:
            A :class:`GAINOutput`.

        Raises:
            TypeError: For inputs of the wrong type.
            ValueError: For labels that do not match the model's output, masks of the
                wrong shape, or target layers that do not affect the output.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise TypeError(
                f"images must be a tensor [B, C, H, W], got "
                f"{type(images).__name__}{list(images.shape) if isinstance(images, torch.Tensor) else ''}"
            )
        if not isinstance(labels, torch.Tensor):
            raise TypeError(
                f"labels must be a tensor (class indices [B] or multi-hot [B, K]), got {type(labels).__name__}; "
                "convert with torch.as_tensor(labels)"
            )
        counting = self.model.training and torch.is_grad_enabled()
        if counting and int(self.steps) < self.warmup_steps:
            out = self._warmup_step(images, labels, masks, mask_valid)
        else:
            with torch.enable_grad():
                out = self._full_step(images, labels, masks, mask_valid)
            if not torch.is_grad_enabled():
                out = GAINOutput(*(None if t is None else t.detach() for t in out))
        if counting:
            self.steps += 1
        return out

    def extra_repr(self) -> str:
        return (
            f"method={self.method.__name__}, sigma={self.sigma:g}, omega={self.omega:g}, alpha={self.alpha:g}, "
            f"ext_weight={self.ext_weight:g}, warmup_steps={self.warmup_steps}, am_score={self.am_score!r}"
        )

    # -- the two streams ------------------------------------------------------------
    def _warmup_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: MasksLike,
        mask_valid: Optional[torch.Tensor],
    ) -> GAINOutput:
        """Classification only; the masks are checked all the same, so a mistake shows at the first step."""
        logits = self.model(images)
        targets, multi_label = self._check_labels(labels, logits, images.shape[0])
        classes, pair_valid, _ = _ground_truth(labels, images.shape[0], logits.shape[1])
        b_cpu, k_cpu = torch.nonzero(pair_valid, as_tuple=True)
        _masks_for_pairs(masks, mask_valid, images, logits.shape[1], b_cpu, classes[b_cpu, k_cpu])
        loss_cl = self._classification_loss(logits, targets, multi_label)
        zero = loss_cl.new_zeros(())
        return GAINOutput(loss_cl, logits, None, loss_cl, zero, zero)

    def _full_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: MasksLike,
        mask_valid: Optional[torch.Tensor],
    ) -> GAINOutput:
        batch = images.shape[0]
        num_classes = self._num_classes_hint(labels)
        classes, pair_valid, multi_label = _ground_truth(labels, batch, num_classes)
        seen: List[Optional[torch.Tensor]] = [None] * batch
        targets = [[_ClassScore(int(c), seen, b) for c in classes[b].tolist()] for b in range(batch)]
        maps = self._cam.differentiable_maps(images, targets if multi_label else [t[0] for t in targets])
        if maps.ndim == 3:
            maps = maps[:, None]
        if not maps.requires_grad or not bool(maps.detach().amax() > 0):
            # All maps blank: tell a layer the output does not read (an error) from a blank batch.
            unread = [
                layer for layer, ok in zip(self._target_layers, _layers_reach_output(self.model, self._target_layers, images))
                if not ok
            ]
            if unread or not maps.requires_grad:
                raise ValueError(
                    f"target layer(s) {[_short(layer) for layer in unread or self._target_layers]} do not affect "
                    "the model's output (no gradient path from the logits), so their maps cannot train it; "
                    "pick a layer the classifier reads, e.g. the last convolutional block"
                )
        if all(s is not None for s in seen):
            logits = torch.stack(seen)
        else:  # the CAM scored the batch without calling our targets per image
            logits = self.model(images)
        if logits.ndim != 2:
            raise ValueError(
                f"GAIN needs a classifier returning logits [B, K]; the model returned shape {list(logits.shape)}"
            )
        targets_cl, _ = self._check_labels(labels, logits, batch)
        loss_cl = self._classification_loss(logits, targets_cl, multi_label)

        # S_am: erase what each ground-truth map points at, classify again.
        b_cpu, k_cpu = torch.nonzero(pair_valid, as_tuple=True)
        b_idx, k_idx = b_cpu.to(maps.device), k_cpu.to(maps.device)
        pair_maps = maps[b_idx, k_idx]  # [P, H, W]
        pair_classes = classes[b_cpu, k_cpu].to(maps.device)
        if len(b_idx):
            erased = erase(images[b_idx], pair_maps, self.sigma, self.omega)
            logits_am = self.model(erased)
            if self.am_score == "logit":
                scores = logits_am
            elif multi_label:
                scores = torch.sigmoid(logits_am)
            else:
                scores = torch.softmax(logits_am, dim=1)
            loss_am = scores.gather(1, pair_classes[:, None])[:, 0].mean()
        else:
            loss_am = loss_cl.new_zeros(())

        # GAIN_ext: maps against the given masks.
        loss_e = loss_cl.new_zeros(())
        target_masks, mask_ok = _masks_for_pairs(masks, mask_valid, images, logits.shape[1], b_cpu, pair_classes)
        if target_masks is not None and bool(mask_ok.any()):
            diff = (pair_maps[mask_ok] - target_masks[mask_ok].to(pair_maps.dtype)) ** 2
            loss_e = diff.flatten(1).mean(dim=1).mean()

        loss = loss_cl + self.alpha * loss_am + self.ext_weight * loss_e
        if multi_label:
            out_maps = maps.new_zeros((batch, logits.shape[1], *maps.shape[2:]))
            out_maps = out_maps.index_put((b_idx, pair_classes), pair_maps)
        else:
            out_maps = maps[:, 0]
        return GAINOutput(loss, logits, out_maps, loss_cl, loss_am, loss_e)

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def _num_classes_hint(labels: torch.Tensor) -> Optional[int]:
        return int(labels.shape[1]) if labels.ndim == 2 else None

    @staticmethod
    def _classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
        if multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets)

    @staticmethod
    def _check_labels(labels: torch.Tensor, logits: Any, batch: int) -> Tuple[torch.Tensor, bool]:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"GAIN needs a classifier returning logits [B, K]; the model returned {shape}")
        num_classes = logits.shape[1]
        _, _, multi_label = _ground_truth(labels, batch, num_classes)
        labels = labels.to(logits.device)
        if multi_label:
            if tuple(labels.shape) != tuple(logits.shape):
                raise ValueError(
                    f"multi-hot labels must have the logits' shape {list(logits.shape)}, got {list(labels.shape)}; "
                    f"give one column per class (K={num_classes}) or class indices [B]"
                )
            return labels.float(), True
        return labels.long(), False


def _ground_truth(labels: torch.Tensor, batch: int, num_classes: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """``(classes [B, S], valid [B, S], multi_label)``: each image's ground-truth classes,
    padded to the largest count S by repeating its first class (``valid`` marks the real ones)."""
    expected = f"class indices (integer [B={batch}]) or multi-hot labels ([B={batch}, K])"
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(
                f"labels of shape [{batch}] must hold integer class indices, got dtype {labels.dtype}; "
                f"expected {expected}. Use labels.long() for indices"
            )
        if labels.shape[0] != batch:
            raise ValueError(f"labels hold {labels.shape[0]} entries for {batch} images; expected {expected}")
        if num_classes is not None and labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise ValueError(
                f"class indices must lie in [0, {num_classes}), got min {int(labels.min())}, max {int(labels.max())}"
            )
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"class indices must be >= 0, got {int(labels.min())}")
        classes = labels.detach().long().cpu()[:, None]
        return classes, torch.ones_like(classes, dtype=torch.bool), False
    if labels.ndim == 2:
        if labels.shape[0] != batch:
            raise ValueError(f"labels hold {labels.shape[0]} rows for {batch} images; expected {expected}")
        values = labels.detach().cpu()
        if not values.is_floating_point() and values.dtype != torch.bool:
            if values.numel() and not bool(((values == 0) | (values == 1)).all()):
                raise ValueError(
                    f"integer labels of shape {list(labels.shape)} must be multi-hot (0/1); "
                    f"for class indices pass a 1-D tensor [B={batch}]"
                )
        present = values.float() >= 0.5
        counts = present.sum(dim=1)
        slots = max(int(counts.max()) if counts.numel() else 0, 1)
        order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :slots]  # present classes first
        valid = torch.arange(slots)[None, :] < counts[:, None]
        first = order[:, :1].expand(-1, slots)
        classes = torch.where(valid, order, first)
        return classes, valid, True
    raise ValueError(f"labels must be {expected}, got shape {list(labels.shape)}")


def _masks_for_pairs(
    masks: MasksLike,
    mask_valid: Optional[torch.Tensor],
    images: torch.Tensor,
    num_classes: int,
    b_idx: torch.Tensor,
    pair_classes: torch.Tensor,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The mask of each (image, ground-truth class) pair ``[P, H, W]`` and whether it is usable ``[P]``."""
    if masks is None:
        if mask_valid is not None:
            raise ValueError("mask_valid was given without masks; pass masks=... as well")
        return None, None
    batch, (height, width) = images.shape[0], images.shape[-2:]
    expected = (
        f"[B={batch}, H={height}, W={width}], [B, 1, H, W] or [B, K={num_classes}, H, W] at the input's size, "
        "or a list of B masks ([H, W] or [K, H, W]) or None"
    )
    if isinstance(masks, (list, tuple)):
        if len(masks) != batch:
            raise ValueError(f"masks is a list of {len(masks)} entries for {batch} images; expected {expected}")
        per_class = any(m is not None and m.ndim == 3 and m.shape[0] == num_classes != 1 for m in masks)
        depth = num_classes if per_class else 1
        full = torch.full((batch, depth, height, width), float("nan"), device=images.device)
        for i, m in enumerate(masks):
            if m is None:
                continue
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"masks[{i}] must be a tensor or None, got {type(m).__name__}")
            m = m.reshape(1, height, width) if m.ndim == 2 and tuple(m.shape) == (height, width) else m
            if m.ndim != 3 or (tuple(m.shape) != (depth, height, width) and tuple(m.shape) != (1, height, width)):
                raise ValueError(f"masks[{i}] has shape {list(m.shape)}; expected {expected}")
            full[i] = m.to(device=images.device, dtype=full.dtype).expand(depth, height, width)
        masks = full
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a tensor, a list of tensors/None, or None; got {type(masks).__name__}")
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[0] != batch or tuple(masks.shape[-2:]) != (height, width) or masks.shape[1] not in (
        1,
        num_classes,
    ):
        raise ValueError(f"masks has shape {list(masks.shape)}; expected {expected}")
    masks = masks.to(images.device)
    masks = masks.float() if not masks.is_floating_point() else masks
    b_idx = b_idx.to(masks.device)
    if masks.shape[1] == 1:
        pair_masks = masks[b_idx, 0]
    else:
        pair_masks = masks[b_idx, pair_classes.to(masks.device)]
    ok = ~torch.isnan(pair_masks).flatten(1).any(dim=1)
    if mask_valid is not None:
        if not isinstance(mask_valid, torch.Tensor) or tuple(mask_valid.shape) != (batch,):
            got = list(mask_valid.shape) if isinstance(mask_valid, torch.Tensor) else type(mask_valid).__name__
            raise ValueError(f"mask_valid must be a bool tensor [B={batch}], got {got}")
        ok = ok & mask_valid.to(device=ok.device, dtype=torch.bool)[b_idx]
    return torch.nan_to_num(pair_masks, nan=0.0), ok


def _differentiable_names() -> str:
    return ", ".join(sorted(m.cls.__name__ for m in methods() if m.capabilities.differentiable))


def _layers_reach_output(model: nn.Module, layers: List[nn.Module], images: torch.Tensor) -> List[bool]:
    """Whether each layer's output has a gradient path to the model's output (a diagnostic forward
    pass on one image, in eval mode, hooks removed in ``finally``)."""
    outputs: dict = {}

    def keep(module, args, output):
        if isinstance(output, torch.Tensor):
            outputs[module] = output

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        with torch.enable_grad(), eval_mode(model):  # eval: no batch-norm statistics updated by the check
            logits = model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    reach = []
    for layer in layers:
        act = outputs.get(layer)
        if act is None or not act.requires_grad or not logits.requires_grad:
            reach.append(act is not None and not act.requires_grad)  # a tensor without a graph: cannot tell
            continue
        (grad,) = torch.autograd.grad(logits.sum(), [act], allow_unused=True, retain_graph=True)
        reach.append(grad is not None)
    return reach


def _short(layer: nn.Module) -> str:
    text = repr(layer).split("\n")[0]
    return text if len(text) <= 60 else text[:57] + "..."
