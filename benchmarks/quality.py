"""How good is each method's map? A ground-truth quality table on the bundled demo.

Usage::

    python benchmarks/quality.py                         # writes docs/quality.md and docs/images/quality/
    python benchmarks/quality.py --images 16 --threads 4
    python benchmarks/quality.py --quick                 # smoke run (seconds), into out/quality-quick/

Every method of ``camlib.registry`` (a newly registered one included, with no
change here) explains a demo model on held-out images of the demo's test
split, whose objects have pixel-exact masks: the CNN methods explain the demo
CNN (``camlib.demo.load_demo_model``); the attention methods (capability
``needs_attention``), and a few CNN-style methods for comparison, explain the
demo ViT (``camlib.demo.vit.load_demo_vit``, a ViT head over the demo CNN's
features, trained on the same data). Each (image, present class) pair is one
sample; the map explains that class. For each method the script measures:

* localisation against the mask: the pointing game (tolerance 15 px at 224,
  scaled to the image size) and the energy-based pointing game (share of the
  map inside the mask, and inside the mask's bounding box);
* faithfulness to the model: deletion and insertion AUC (RISE), ROAD combined,
  Average Drop and Increase in Confidence (Grad-CAM++), all on the class's
  sigmoid probability (the demo model is multi-label);
* the model-parameter randomisation test (Adebayo et al.): Spearman's rho
  between the map of the trained model and the map after randomising the
  classifier head, then every layer (cascading).

Three baselines are scored the same way: the ground-truth mask itself, a
random map (8 x 8 uniform noise upsampled, like a CAM of a random model) and
the Sobel edge map of the image. The script writes a Markdown report (table,
command, machine, time, load average), a JSON file with every per-sample
number, and figures: the same images under every method, the mean deletion
and insertion curves, and a cascading-randomisation strip.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import camlib
import camlib.metrics as cm
from camlib import GradCAM
from camlib.demo import (
    CLASS_NAMES,
    demo_preprocess,
    demo_target_layers,
    load_demo_model,
    load_model_card,
    make_batch,
)
from camlib.demo.model import DEMO_MEAN, DEMO_STD
from camlib.demo.vit import demo_vit_target_layers, load_demo_vit, load_vit_model_card
from camlib.registry import get_method, make_cam
from camlib.registry import methods as registered_methods
from camlib.sobel_cam import sobel_cam
from camlib.utils.image import show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["MODELS", "DemoModel", "Method", "SigmoidTarget", "main", "methods", "run"]

ROOT = Path(__file__).resolve().parents[1]

#: Display names of some registered methods, as earlier reports named them (others: the registry's title).
DISPLAY = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAM++",
    "scorecam": "ScoreCAM",
    "xgradcam": "XGradCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "layercam": "LayerCAM",
    "fullgrad": "FullGrad",
    "gradcamelementwise": "GradCAMElementWise",
    "kpcacam": "KPCA_CAM",
    "fem": "FEM",
    "shapleycam": "ShapleyCAM",
    "finercam": "FinerCAM (GradCAM)",
    "segeigencam": "SegEigenCAM",
    "cam": "CAM (Zhou et al.)",
    "refinecam": "RefineCAM (GradCAM++)",
    "sess": "SESS (GradCAM)",
    "randomcam": "RandomCAM",
}
#: Presentation only: the demo model's blocks, constructor options and table note of a few methods (a
#: multi-layer method on several blocks, a costly one made cheaper); every other registered method runs
#: at the demo's default target layer with its defaults, so a new method needs no entry here.
SETTINGS: Dict[str, Dict] = {
    "refinecam": {"layers": (4, 6, 7), "note": "features[4], [6], [7]"},
    "ablationcam-multilayer": {"layers": (6, 7), "note": "features[6], [7]"},
    "sess": {"options": {"num_scales": 3}, "note": "3 scales"},
    "sscam": {"options": {"num_samples": 8}, "note": "8 noise samples"},
}
#: Presentation only: the CNN-style methods also run on the demo ViT (at ``encoder.layers[-1].ln_1``,
#: tokens laid out on the 8 x 8 grid), next to every method that needs attention (those run only there).
VIT_CNN_STYLE = ("gradcam", "gradcam++", "layercam", "scorecam", "eigencam", "ablationcam")
GROUND_TRUTH, RANDOM_MAP, SOBEL = "ground-truth mask", "random map", "Sobel edges"
#: The random map's resolution before upsampling, that of the demo's feature map.
RANDOM_GRID = 8
#: Methods whose mean curves are drawn (when they were run).
CURVE_METHODS = ("GradCAM", "GradCAM++", "ScoreCAM", "EigenCAM", "LayerCAM", "FullGrad", GROUND_TRUTH, RANDOM_MAP)

#: Where the figures and the raw numbers go, relative to the docs folder.
FIGURES = {
    "grid": "images/quality/methods.jpg",
    "overview": "images/quality/overview.jpg",
    "curves": "images/quality/curves.png",
    "randomisation": "images/quality/randomisation.jpg",
    "grid_vit": "images/quality/methods_vit.jpg",
    "curves_vit": "images/quality/curves_vit.png",
    "json": "images/quality/results.json",
}

#: (key, header, direction, format) of the table's columns.
COLUMNS = (
    ("pointing_game", "Pointing game %", "higher", "{:.1f}"),
    ("energy_mask", "Energy in mask %", "higher", "{:.1f}"),
    ("energy_box", "Energy in box %", "higher", "{:.1f}"),
    ("deletion", "Deletion AUC", "lower", "{:.3f}"),
    ("insertion", "Insertion AUC", "higher", "{:.3f}"),
    ("road", "ROAD combined", "higher", "{:.3f}"),
    ("average_drop", "Average Drop %", "lower", "{:.1f}"),
    ("confidence_increase", "Increase in Conf. %", "higher", "{:.1f}"),
    ("rho_head", "Rand. rho (head)", "zero", "{:.2f}"),
    ("rho_all", "Rand. rho (all)", "zero", "{:.2f}"),
)


class SigmoidTarget:
    """The sigmoid probability of one class (the demo model is multi-label): for ROAD."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model_output[..., self.category])

    def __repr__(self) -> str:
        return f"SigmoidTarget({self.category})"


@dataclasses.dataclass
class Samples:
    """The (image, class) pairs: model inputs, RGB images, masks and targets."""

    x: torch.Tensor  # [M, 3, H, W] normalised
    rgb: np.ndarray  # [M, H, W, 3] float32 in [0, 1]
    masks: np.ndarray  # [M, H, W] bool, the explained class's object
    boxes: np.ndarray  # [M, H, W] bool, its bounding box
    classes: List[int]
    image_index: List[int]  # position in the test split

    def __len__(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """A model the methods explain: how to load it, its target layers and its randomisation steps.

    ``randomise`` names the modules re-initialised by the randomisation test,
    one per step from the top (cascading): the classifier head, then the rest
    (``""``: the whole model).
    """

    key: str
    title: str
    load: Callable
    target_layers: Callable
    randomise: tuple
    row_prefix: str  # before the method's name in the results' keys ("" for the CNN: the keys of earlier runs)


MODELS: Dict[str, DemoModel] = {
    "cnn": DemoModel("cnn", "demo CNN", load_demo_model, demo_target_layers, ("fc", "features"), ""),
    "vit": DemoModel(
        "vit", "demo ViT", load_demo_vit, demo_vit_target_layers, ("heads", ""), "ViT: "
    ),
}


@dataclasses.dataclass
class Method:
    """One row of the table.

    ``build(model, target_layers, sample_indices)`` returns an explainer called
    as ``explainer(input_tensor=..., targets=...)`` on those samples; ``key`` is
    the registered name (or the baseline's name), ``model`` the key of the
    :data:`MODELS` entry it explains.
    """

    name: str
    build: Callable
    baseline: bool = False
    note: str = ""
    key: str = ""
    model: str = "cnn"

    @property
    def row(self) -> str:
        """The row's key in the results: the name, after the model's prefix."""
        return MODELS[self.model].row_prefix + self.name


def load_samples(num_images: int, size: int = 128) -> Samples:
    images, labels, masks = make_batch("test", range(num_images), size)
    pairs = [(i, int(c)) for i in range(num_images) for c in np.flatnonzero(labels[i])]
    index = [i for i, _ in pairs]
    classes = [c for _, c in pairs]
    object_masks = np.stack([masks[i, c] for i, c in pairs])
    boxes = []
    for mask in object_masks:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return Samples(
        x=demo_preprocess(images[index]),
        rgb=images[index].astype(np.float32) / 255.0,
        masks=object_masks,
        boxes=cm.boxes_to_masks(boxes, (size, size)).numpy(),
        classes=classes,
        image_index=index,
    )


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(DEMO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_STD).view(1, 3, 1, 1)
    rgb = (x.detach().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _unit(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - low) / np.maximum(high - low, 1e-7)).reshape(maps.shape)


def ground_truth_maps(masks: np.ndarray, epsilon: float = 1e-3) -> np.ndarray:
    """The masks as maps, their ties broken by the distance to the object's edge.

    A binary mask ties on every pixel of the object and of the background, and
    the tie decides the order of deletion, insertion and ROAD (which, as
    pytorch-grad-cam defines it, removes *every* pixel tied at its threshold, so
    most percentiles remove the whole image). Here the object's pixels lie in
    ``[1 - epsilon, 1]``, deeper ones higher, and the background's in
    ``(0, epsilon]``, nearer ones higher: thresholding at 0.5 gives the mask back.
    """
    maps = np.empty(masks.shape, np.float32)
    for i, mask in enumerate(masks.astype(np.uint8)):
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
        maps[i] = np.where(
            mask > 0,
            1 - epsilon + epsilon * inside / max(float(inside.max()), 1e-6),
            epsilon * (1 - outside / (float(outside.max()) + 1)),
        )
    return maps


def methods(samples: Samples, names: Optional[Sequence[str]] = None, seed: int = 0, batch_size: int = 64) -> List[Method]:
    """Every method of the table (or those in ``names``), baselines last."""

    def cam_method(name: str, title: str, model_key: str) -> Method:
        settings = SETTINGS.get(name, {})

        def build(model, layers, _indices):
            if "layers" in settings and model_key == "cnn":
                layers = [model.features[i] for i in settings["layers"]]
            options = {"batch_size": batch_size, "progress": False, **settings.get("options", {})}
            return make_cam(name, model, layers, **options)

        note = settings.get("note", "") if model_key == "cnn" or "layers" not in settings else ""
        return Method(DISPLAY.get(name, title), build, note=note, key=name, model=model_key)

    ranked_masks = ground_truth_maps(samples.masks)

    def ground_truth(_model, _layers, indices):
        return lambda input_tensor, targets: ranked_masks[indices]

    noise = torch.Generator().manual_seed(seed + 1)

    def random_map(_model, _layers, indices):
        def draw(input_tensor, targets):
            grid = torch.rand(len(indices), 1, RANDOM_GRID, RANDOM_GRID, generator=noise)
            return F.interpolate(grid, size=tuple(input_tensor.shape[2:]), mode="bilinear")[:, 0].numpy()

        return draw

    def sobel(_model, _layers, _indices):
        return lambda input_tensor, targets: _unit(np.stack([sobel_cam(img) for img in _unnormalise(input_tensor)]))

    def baselines(model_key: str) -> List[Method]:
        return [
            Method(GROUND_TRUTH, ground_truth, True, "ties broken by distance to the edge", GROUND_TRUTH, model_key),
            Method(RANDOM_MAP, random_map, True, "", RANDOM_MAP, model_key),
            Method(SOBEL, sobel, True, "", SOBEL, model_key),
        ]

    registry = list(registered_methods())
    rows = [cam_method(info.name, info.title, "cnn") for info in registry if not info.capabilities.needs_attention]
    rows += baselines("cnn")
    rows += [
        cam_method(info.name, info.title, "vit")
        for info in registry
        if info.capabilities.needs_attention or info.name in VIT_CNN_STYLE
    ]
    rows += baselines("vit")
    if names:
        wanted = {name.lower() for name in names}
        known = {row.name.lower() for row in rows} | {row.row.lower() for row in rows} | {row.key for row in rows}
        unknown = wanted - known
        if unknown:
            raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {[row.row for row in rows]}")
        rows = [row for row in rows if wanted & {row.name.lower(), row.row.lower(), row.key}]
    return rows


def _targets(explainer, classes: Sequence[int]) -> list:
    """The targets explaining ``classes``: the method's own (``class_target``), or the class's logit."""
    make = getattr(explainer, "class_target", ClassifierOutputTarget)
    return [make(c) for c in classes]


def compute_maps(method: Method, model, layers, samples: Samples, batch_size: int) -> tuple[np.ndarray, float]:
    """The method's maps for every sample, and the seconds it took."""
    pieces = []
    start = time.perf_counter()
    for first in range(0, len(samples), batch_size):
        indices = np.arange(first, min(first + batch_size, len(samples)))
        x = samples.x[indices]
        explainer = method.build(model, layers, indices)
        targets = _targets(explainer, [samples.classes[i] for i in indices])
        pieces.append(np.asarray(explainer(input_tensor=x, targets=targets), dtype=np.float32))
    return np.concatenate(pieces), time.perf_counter() - start


def break_ties(maps: np.ndarray, seed: int, scale: float = 1e-6) -> np.ndarray:
    """The maps plus uniform noise below ``scale``: tied pixels get a random order, others keep theirs.

    For the order-based metrics (deletion, insertion, ROAD). A CAM is often 0
    on most of the image; deletion and insertion would take those pixels in
    raster order, and ROAD as pytorch-grad-cam defines it removes *every* pixel
    tied at its percentile, i.e. the whole image for most percentiles of a
    sparse map, which flatters sparse maps. Random tie-breaking removes exactly
    each percentile's share, in a neutral order.
    """
    noise = np.random.default_rng(seed).random(maps.shape, dtype=np.float32)
    return (maps.astype(np.float32) + scale * noise).astype(np.float32)


def score_maps(maps: np.ndarray, model, samples: Samples, config: argparse.Namespace) -> Dict:
    """Every metric that depends on the maps only: per-sample values and the mean curves."""
    x, classes = samples.x, samples.classes
    logit_targets = [ClassifierOutputTarget(c) for c in classes]
    options = dict(score_fn="sigmoid", batch_size=config.batch_size, progress=False)
    tolerance = config.tolerance * samples.x.shape[-1] / 224
    ordered = break_ties(maps, config.seed)
    deletion = cm.Deletion(config.steps, **options)(x, ordered, logit_targets, model, return_curves=True)
    insertion = cm.Insertion(config.steps, **options)(x, ordered, logit_targets, model, return_curves=True)
    imputer = cm.NoisyLinearImputer(generator=torch.Generator().manual_seed(config.seed))
    road = cm.ROADCombined(config.road_percentiles, imputer=imputer, batch_size=config.batch_size, progress=False)(
        x, ordered, [SigmoidTarget(c) for c in classes], model
    )
    return {
        "pointing_game": 100 * cm.PointingGame(tolerance)(maps, samples.masks),
        "energy_mask": 100 * cm.EnergyPointingGame()(maps, samples.masks),
        "energy_box": 100 * cm.EnergyPointingGame()(maps, samples.boxes),
        "deletion": deletion.auc,
        "insertion": insertion.auc,
        "road": road,
        "average_drop": cm.AverageDrop(**options)(x, maps, logit_targets, model),
        "confidence_increase": cm.ConfidenceIncrease(**options)(x, maps, logit_targets, model),
        "curves": {
            "fractions": deletion.fractions.tolist(),
            "deletion": deletion.scores.mean(axis=0).tolist(),
            "insertion": insertion.scores.mean(axis=0).tolist(),
        },
    }


def randomisation(method: Method, model, layers, samples: Samples, config: argparse.Namespace) -> Dict:
    """Spearman's rho after randomising the head, then every layer, on the first samples."""
    indices = np.arange(min(config.rand_samples, len(samples)))
    check = cm.ModelParameterRandomisation(
        lambda m, target_layers: method.build(m, target_layers, indices),
        model,
        layers,
        layers=list(MODELS[method.model].randomise),
        seed=config.seed,
        progress=False,
    )
    x = samples.x[indices]
    result = check(x, _targets(method.build(model, layers, indices), [samples.classes[i] for i in indices]))
    return {"rho_head": result.correlations[0], "rho_all": result.correlations[1]}


def summarise(per_sample: Dict[str, np.ndarray]) -> Dict:
    return {
        "per_sample": {key: np.asarray(value, dtype=np.float64).tolist() for key, value in per_sample.items()},
        "mean": {key: float(np.mean(value)) for key, value in per_sample.items()},
        "sem": {
            key: float(np.std(value, ddof=1) / np.sqrt(len(value))) if len(value) > 1 else 0.0
            for key, value in per_sample.items()
        },
    }


# -- figures -------------------------------------------------------------------------------------------

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Line colours (RGB) of the curves, distinguishable and colour-blind friendly (Okabe-Ito + grey).
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (0, 0, 0), (140, 140, 140)]


def _tile(rgb: np.ndarray, cam: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    tile = show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, (255, 255, 255), 1)
    y, x = cm.PointingGame.points(cam[None])[0]
    cv2.drawMarker(tile, (int(x), int(y)), (0, 0, 0), cv2.MARKER_TILTED_CROSS, 9, 3)
    cv2.drawMarker(tile, (int(x), int(y)), (255, 255, 255), cv2.MARKER_TILTED_CROSS, 9, 1)
    return cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)


def _label(text: str, width: int, height: int, scale: float = 0.45) -> np.ndarray:
    strip = np.full((height, width, 3), 255, np.uint8)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        y = height // 2 + int((i - (len(lines) - 1) / 2) * 18) + 5
        cv2.putText(strip, line, (6, y), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def grid_figure(
    names: List[str], all_maps: Dict[str, np.ndarray], samples: Samples, picks: List[int], size: int = 104
) -> np.ndarray:
    """One row per method, the same images in every row; the mask outlined, the maximum marked."""
    label_width = 190
    header = [_label("image / class", label_width, size)]
    for i in picks:
        tile = (samples.rgb[i] * 255).astype(np.uint8).copy()
        contours, _ = cv2.findContours(samples.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, (255, 255, 255), 1)
        tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, CLASS_NAMES[samples.classes[i]], (4, size - 6), FONT, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, CLASS_NAMES[samples.classes[i]], (4, size - 6), FONT, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        header.append(tile)
    rows = [np.concatenate(header, axis=1)]
    for name in names:
        tiles = [_label(name, label_width, size)]
        tiles += [_tile(samples.rgb[i], all_maps[name][i], samples.masks[i], size) for i in picks]
        rows.append(np.concatenate(tiles, axis=1))
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)


def curves_figure(results: Dict[str, Dict], names: Sequence[str]) -> np.ndarray:
    """Mean deletion and insertion curves of some methods, side by side, drawn with OpenCV."""
    panels = []
    for kind in ("deletion", "insertion"):
        width, height, left, right, top, bottom = 520, 380, 62, 16, 34, 52
        panel = np.full((height, width, 3), 255, np.uint8)
        x0, x1, y0, y1 = left, width - right, height - bottom, top

        def to_px(f: float, p: float) -> tuple:
            return round(x0 + f * (x1 - x0)), round(y0 + p * (y1 - y0))  # noqa: B023

        for tick in np.linspace(0, 1, 5):
            cv2.line(panel, to_px(tick, 0), to_px(tick, 1), (228, 228, 228), 1)
            cv2.line(panel, to_px(0, tick), to_px(1, tick), (228, 228, 228), 1)
            cv2.putText(panel, f"{tick:.2f}", (to_px(tick, 0)[0] - 16, y0 + 18), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
            cv2.putText(panel, f"{tick:.2f}", (6, to_px(0, tick)[1] + 4), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.rectangle(panel, (x0, y1), (x1, y0), (0, 0, 0), 1)
        verb = "deleted" if kind == "deletion" else "inserted"
        cv2.putText(panel, f"fraction of pixels {verb} (map order)", (x0 + 90, height - 12), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(panel, f"{kind}: mean class probability", (x0, 22), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for colour, name in zip(PALETTE, names):
            curve = results[name]["curves"]
            points = np.array([to_px(f, p) for f, p in zip(curve["fractions"], curve[kind])], np.int32)
            cv2.polylines(panel, [points], False, colour, 2, cv2.LINE_AA)
        panels.append(panel)
    figure = np.concatenate(panels, axis=1)
    legend = np.full((30 * ((len(names) + 3) // 4) + 8, figure.shape[1], 3), 255, np.uint8)
    for i, (colour, name) in enumerate(zip(PALETTE, names)):
        x, y = 20 + (i % 4) * 260, 22 + (i // 4) * 30
        cv2.line(legend, (x, y - 5), (x + 30, y - 5), colour, 3, cv2.LINE_AA)
        auc = results[name]["mean"]
        text = f"{name} ({auc['deletion']:.3f} / {auc['insertion']:.3f})"
        cv2.putText(legend, text, (x + 38, y), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([figure, legend], axis=0)


def randomisation_figure(
    model, spec: DemoModel, samples: Samples, index: int, seed: int, size: int = 96
) -> tuple[np.ndarray, list]:
    """Grad-CAM of one sample as the layers are randomised from the top (cascading)."""
    layers = spec.target_layers(model)
    check = cm.ModelParameterRandomisation(GradCAM, model, layers, seed=seed, return_maps=True, progress=False)
    result = check(samples.x[index : index + 1], [ClassifierOutputTarget(samples.classes[index])])
    maps = [result.original[0], *(m[0] for m in result.randomised)]
    captions = ["trained", *(f"-{name}" for name in result.layers)]
    rhos = [1.0, *result.correlations[:, 0].tolist()]
    tiles = []
    for cam, caption, rho in zip(maps, captions, rhos):
        tile = _tile(samples.rgb[index], _unit(cam[None])[0], samples.masks[index], size)
        strip = np.full((34, size, 3), 255, np.uint8)
        cv2.putText(strip, caption[-14:], (3, 13), FONT, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(strip, f"rho {rho:.2f}", (3, 29), FONT, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([strip, tile], axis=0))
    return np.concatenate(tiles, axis=1), list(zip(captions, rhos))


def _write(path: Path, rgb: np.ndarray) -> None:
    """Save an RGB figure: JPEG (quality 90) for pictures, PNG for line art."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


def _pick_samples(samples: Samples, count: int) -> List[int]:
    """Up to ``count`` samples of distinct images, one class each first."""
    picks, seen_images, seen_classes = [], set(), set()
    for i, (image, c) in enumerate(zip(samples.image_index, samples.classes)):
        if image not in seen_images and c not in seen_classes:
            picks.append(i)
            seen_images.add(image)
            seen_classes.add(c)
    for i, image in enumerate(samples.image_index):
        if len(picks) >= count:
            break
        if image not in seen_images:
            picks.append(i)
            seen_images.add(image)
    return picks[:count]


# -- report ----------------------------------------------------------------------------------------------


def _model_info(key: str, model, samples: Samples) -> Dict:
    """What the report says about a model: its held-out accuracy (from its card) and on these samples."""
    card = load_model_card() if key == "cnn" else load_vit_model_card()
    heldout = card["heldout"]
    images = np.unique(samples.image_index)
    with torch.no_grad():
        logits = model(samples.x[np.searchsorted(samples.image_index, images)]).numpy()
    present = np.zeros_like(logits, dtype=bool)
    for i, c in zip(samples.image_index, samples.classes):
        present[np.searchsorted(images, i), c] = True
    return {
        "title": MODELS[key].title,
        "heldout_images": heldout["n_images"],
        "heldout_mAP": heldout["mAP"],
        "heldout_exact_match": heldout["exact_match_accuracy"],
        "heldout_per_label_accuracy": heldout["per_label_accuracy"],
        "samples_exact_match": float(((logits > 0) == present).all(axis=1).mean()),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs visible, torch threads {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, camlib {camlib.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def _best(rows: List[str], results: Dict, key: str, direction: str, fmt: str) -> set:
    """The methods (not baselines) with the best mean in a column, ties at the shown precision included."""
    candidates = [name for name in rows if not results[name]["baseline"]]
    if not candidates:
        return set()

    def goodness(name: str) -> float:
        value = results[name]["mean"][key]
        return {"higher": value, "lower": -value, "zero": -abs(value)}[direction]

    top = max(candidates, key=goodness)

    def shown(name: str) -> str:
        value = results[name]["mean"][key]
        return fmt.format(abs(value) if direction == "zero" else value)

    return {name for name in candidates if shown(name) == shown(top)}


def _table(results: Dict, rows: List[str]) -> List[str]:
    """The Markdown table of some rows (methods first, then baselines), best methods in bold."""
    methods_rows = [n for n in rows if not results[n]["baseline"]]
    baseline_rows = [n for n in rows if results[n]["baseline"]]
    arrows = {"higher": "↑", "lower": "↓", "zero": "→0"}
    header = "| Method | " + " | ".join(f"{title} {arrows[d]}" for _, title, d, _ in COLUMNS) + " | Map time ms/img |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    best = {key: _best(methods_rows, results, key, d, fmt) for key, _, d, fmt in COLUMNS}

    def row(name: str) -> str:
        cells = []
        for key, _, _, fmt in COLUMNS:
            text = fmt.format(results[name]["mean"][key])
            cells.append(f"**{text}**" if name in best[key] else text)
        shown = results[name].get("name", name)
        label = shown if not results[name]["note"] else f"{shown} <sub>{results[name]['note']}</sub>"
        label = f"*{label}*" if results[name]["baseline"] else label
        return f"| {label} | " + " | ".join(cells) + f" | {results[name]['ms_per_image']:.1f} |"

    return [header, rule, *[row(n) for n in methods_rows], *[row(n) for n in baseline_rows]]


def _typical_sem(results: Dict, rows: List[str]) -> Dict[str, float]:
    return {key: float(np.median([results[n]["sem"][key] for n in rows])) for key, _, _, _ in COLUMNS}


def _reading(results: Dict, rows: List[str]) -> List[str]:
    """Bullets read off a table: the leaders of each kind of metric, and the rows no better than noise."""
    methods_rows = [n for n in rows if not results[n]["baseline"] and not results[n]["same_maps_as"]]
    random_row = next((n for n in rows if results[n].get("name", n) == RANDOM_MAP), None)
    if not methods_rows:
        return []
    mean = {n: results[n]["mean"] for n in rows}
    sem = {n: results[n]["sem"] for n in rows}
    shown = {n: results[n].get("name", n) for n in rows}

    def leaders(key: str, sign: float, count: int = 3) -> str:
        ranked = sorted(methods_rows, key=lambda n: -sign * mean[n][key])
        top = ranked[0]
        # every method within twice the leader's standard error, at most `count` of them (then "...")
        close = [n for n in ranked if sign * (mean[top][key] - mean[n][key]) <= 2 * max(sem[top][key], 1e-9)]
        names = ", ".join(f"{shown[n]} ({mean[n][key]:.3g})" for n in close[:count])
        return names + (f" and {len(close) - count} more within noise" if len(close) > count else "")

    lines = [
        f"- Localisation (share of the map inside the mask): {leaders('energy_mask', 1)}; "
        f"pointing game: {leaders('pointing_game', 1)}.",
        f"- Faithfulness: lowest deletion AUC {leaders('deletion', -1)}; highest insertion AUC "
        f"{leaders('insertion', 1)}; highest ROAD {leaders('road', 1)}.",
    ]
    if random_row is not None:
        noise = [
            n
            for n in methods_rows
            if mean[n]["energy_mask"] - mean[random_row]["energy_mask"]
            <= 2 * np.hypot(sem[n]["energy_mask"], sem[random_row]["energy_mask"])
        ]
        if noise:
            lines.append(
                "- No better than the random map at putting energy on the object (within two standard errors): "
                + ", ".join(shown[n] for n in noise)
                + "."
            )
    attention = [n for n in methods_rows if _needs_attention(results[n].get("method", ""))]
    if attention and len(attention) < len(methods_rows):
        ranked = sorted(attention, key=lambda n: -mean[n]["energy_mask"])
        lines.append(
            "- Of the attention methods, by energy in the mask: "
            + ", ".join(f"{shown[n]} ({mean[n]['energy_mask']:.1f} %, pointing game {mean[n]['pointing_game']:.0f} %)" for n in ranked)
            + "."
        )
    agnostic = [n for n in methods_rows if mean[n]["rho_head"] > 0.9]
    if agnostic:
        lines.append(
            "- Unchanged when the classifier head is randomised (rho above 0.9): their map does not depend on the "
            "explained class, so with two objects in an image it cannot tell which is asked for: "
            + ", ".join(f"{shown[n]} ({mean[n]['rho_head']:.2f})" for n in agnostic)
            + "."
        )
    fixed = [n for n in methods_rows if mean[n]["rho_all"] > 0.5]
    if fixed:
        lines.append(
            "- Fail the randomisation test (rho above 0.5 with every layer randomised: the map stays the same "
            "on a random network, so it shows the image more than the model): "
            + ", ".join(f"{shown[n]} ({mean[n]['rho_all']:.2f})" for n in fixed)
            + "."
        )
    return lines


def _needs_attention(name: str) -> bool:
    try:
        return get_method(name).capabilities.needs_attention
    except (KeyError, ValueError):  # a baseline, or a method no longer registered
        return False


def write_report(path: Path, results: Dict, info: Dict, figures: Dict[str, str]) -> None:
    names = list(results)
    for name in names:  # results of runs before the ViT table: every row explains the CNN
        results[name].setdefault("model", "cnn")
    cnn_rows = [n for n in names if results[n]["model"] == "cnn"]
    vit_rows = [n for n in names if results[n]["model"] == "vit"]
    models = info.get("models", {})

    def typical(rows: List[str]) -> str:
        sems = _typical_sem(results, rows)
        return ", ".join(f"{title} ±{fmt.format(sems[key])}" for key, title, _, fmt in COLUMNS)

    def accuracy(key: str) -> str:
        if key not in models:
            return ""
        m = models[key]
        return (
            f" Held-out accuracy (its model card, {m['heldout_images']} test images): mAP {m['heldout_mAP']:.3f}, "
            f"exact-match accuracy {100 * m['heldout_exact_match']:.1f} %, per-label accuracy "
            f"{100 * m['heldout_per_label_accuracy']:.1f} %; on the images of this table it gets "
            f"{100 * m['samples_exact_match']:.0f} % of the label vectors exactly right."
        )

    rand_note = "; ".join(f"{caption} {rho:.2f}" for caption, rho in info["randomisation_strip"])
    strip_model = models.get(info.get("randomisation_strip_model", "cnn"), {}).get("title", "demo CNN")
    lines = [
        "# Quality of the maps on ground truth",
        "",
        "Every registered method explains a bundled demo model on held-out images of the demo's procedural "
        "test split, whose objects come with pixel-exact masks: the CNN methods explain the demo CNN "
        "(`camlib.demo.load_demo_model`), the transformer methods (attention rollout, transformer attribution, "
        "LeGrad) and a few CNN-style methods for comparison explain the demo ViT (`camlib.demo.vit.load_demo_vit`). "
        "Each (image, present class) pair is one sample: "
        f"**{info['samples']} samples from {info['images']} images** (test split indices 0..{info['images'] - 1}), "
        "128 x 128 pixels. The map explains that class; the metrics score the class's sigmoid probability "
        "(both models are multi-label).",
        "",
        "Generated by `benchmarks/quality.py`; do not edit by hand.",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        f"- Machine: {info['machine']}",
        f"- Wall time{' (the runs together)' if info.get('runs', 1) > 1 else ''}: {info['seconds']:.0f} s in all ({info['map_seconds']:.0f} s computing maps, the rest "
        f"scoring them), {info['cpu_seconds']:.0f} s of CPU time; load average {info['load_before']} before "
        f"and {info['load_after']} after (1, 5, 15 min; the machine is shared, so the wall time depends on "
        "what else runs)",
        "",
        "Means over the samples; the best methods in each column in bold, ties at the shown precision included "
        "(baselines, in italics, are not ranked). "
        "Methods whose maps are identical to an earlier row's of the same model (to 1e-5) share its scores, "
        "except the randomisation test, which is run for each. Every per-sample number is in "
        f"[`{figures['json']}`]({figures['json']}).",
        "",
    ]
    if cnn_rows:
        lines += [
            "## Demo CNN",
            "",
            "`camlib.demo.DemoNet`: five Conv-BN-ReLU blocks, global average pooling and one linear layer (`fc`); "
            "target layer `features[-1]` (8 x 8)." + accuracy("cnn") + " With a global-average-pooling + linear "
            "head, Grad-CAM, HiResCAM, XGradCAM, ShapleyCAM and the original CAM coincide exactly.",
            "",
            *_table(results, cnn_rows),
            "",
            f"Typical standard error of a mean (median over the rows): {typical(cnn_rows)}. Differences smaller "
            "than about twice these are noise at this sample size.",
            "",
        ]
    if vit_rows:
        lines += [
            "## Demo ViT",
            "",
            "`camlib.demo.vit.DemoViT`: torchvision's `VisionTransformer` (3 blocks, 4 heads, width 64, a class "
            "token) whose patch embedding is the demo CNN's `features` (frozen) and a 1 x 1 convolution: a ViT "
            "head over the demo features, 64 patch tokens on an 8 x 8 grid, trained on the demo data by "
            "`python -m camlib.demo.train_vit`." + accuracy("vit") + " The attention methods read every "
            "block's attention (LeGrad: the last two blocks, its default); the CNN-style methods explain "
            "`encoder.layers[-1].ln_1`, the class token dropped and the patch tokens laid on the grid.",
            "",
            *_table(results, vit_rows),
            "",
            f"Typical standard error of a mean (median over the rows): {typical(vit_rows)}.",
            "",
        ]
    lines += ["## Reading", ""]
    for key, rows in (("cnn", cnn_rows), ("vit", vit_rows)):
        bullets = _reading(results, rows)
        if bullets:
            lines += [f"On the {MODELS[key].title} (read off the table by the script):", "", *bullets, ""]
    lines += [
        "Caveats: the demo's objects are large, high-contrast shapes, so the ground-truth mask is close to the "
        "ideal map and every map's faithfulness scores sit in a narrow band; ranks that differ by less than "
        "two standard errors are ties. A method that wins the localisation columns is not thereby the most "
        "faithful: the ground-truth mask itself is not the best row for deletion or insertion. The ViT's "
        "tokens come from a CNN stem with a large receptive field, so its attention maps are coarse (8 x 8) "
        "like the CNN's, and they explain that hybrid model, not a ViT trained from raw patches.",
        "",
        "## Columns",
        "",
        f"- **Pointing game**: a hit when the map's maximum lies within {info['tolerance_px']:.1f} px of the "
        f"object's mask ({info['tolerance']:g} px at 224, Zhang et al. 2016, scaled to 128); "
        "`camlib.metrics.PointingGame`.",
        "- **Energy in mask / box**: the share of the map's sum inside the object's mask, and inside its "
        "bounding box as in the Score-CAM paper; `camlib.metrics.EnergyPointingGame`.",
        f"- **Deletion / insertion AUC** (RISE, Petsiuk et al. 2018): the class probability as the map's top "
        f"pixels are replaced by zeros (the mean colour after normalisation) or put back on a blurred copy, in "
        f"{info['steps']} steps; area by the trapezoidal rule over the fraction of pixels; "
        "`camlib.metrics.Deletion`, `Insertion`.",
        f"- **ROAD combined** (Rong et al. 2022): (LeRF - MoRF) / 2 on the class probability, averaged over "
        f"the percentiles {list(info['road_percentiles'])}, noisy linear imputation with a fixed seed; "
        "`camlib.metrics.ROADCombined`.",
        "- For these three order-based metrics, ties in a map are broken at random (uniform noise below 1e-6): "
        "a CAM is often exactly 0 on most of the image, and ROAD as pytorch-grad-cam defines it removes every "
        "pixel tied at its percentile, i.e. the whole image at most percentiles for such a sparse map, which "
        "flatters it. The ground-truth row ranks its pixels by the distance to the object's edge (deepest first "
        "inside, nearest first outside), so it is a mask with a sensible order rather than a tie.",
        "- **Average Drop / Increase in Confidence** (Chattopadhyay et al., Grad-CAM++): the image is multiplied "
        "by its map; mean of 100 max(0, Y - O) / Y, and percentage of samples whose probability rose; "
        "`camlib.metrics.AverageDrop`, `ConfidenceIncrease`.",
        f"- **Randomisation** (Adebayo et al. 2018): Spearman's rho between the map of the trained model and "
        f"the map once the classifier head (the CNN's `fc`, the ViT's `heads`) is re-initialised, then once "
        f"every layer is (cascading), on the first {info['rand_samples']} samples; "
        "`camlib.metrics.ModelParameterRandomisation`. A map that "
        "does not change with the weights explains the image, not the model: closer to 0 is better (a "
        "negative rho is no better than 0). The "
        "ground-truth mask and the Sobel edges do not depend on the model, so they fail this test by design.",
        "- **Map time**: milliseconds to compute the maps, per sample, in batches of "
        f"{info['batch_size']}, on this machine and under its load (for the baselines: reading or drawing them).",
        "",
        "Not applicable and left out: `DeepFeatureFactorization` (it factorises features into concepts, it does "
        "not explain a class) and `GuidedBackpropReLUModel` / `DeconvnetReLUModel` (pixel-space gradients, not "
        "class activation maps). Methods with a documentation page that are not registered are not measured.",
        "",
        "## Figures",
        "",
    ]
    if cnn_rows:
        lines += [
            f"![The same test images under every method of the demo CNN]({figures['grid']})",
            "",
            "The same samples under every method of the demo CNN (first row: the image, the object's outline "
            "and the explained class). The outline is the ground-truth mask; the cross marks the map's maximum "
            "(the pointing game's point).",
            "",
            f"![Mean deletion and insertion curves]({figures['curves']})",
            "",
            "Mean deletion (left, lower is better) and insertion (right, higher is better) curves on the demo "
            "CNN; the legend gives the deletion / insertion AUCs.",
            "",
        ]
    if vit_rows:
        lines += [
            f"![The same test images under every method of the demo ViT]({figures['grid_vit']})",
            "",
            "The same samples under every method of the demo ViT.",
            "",
            f"![Mean deletion and insertion curves on the demo ViT]({figures['curves_vit']})",
            "",
            "Mean deletion and insertion curves on the demo ViT.",
            "",
        ]
    merged = [n for n in info.get("merged_rows", []) if n in results]
    if merged:
        lines += [
            "Added to the table by a later run with the same settings (`--merge`, see the commands above) and "
            "not drawn in these figures: " + ", ".join(merged) + ".",
            "",
        ]
    lines += [
        f"![Grad-CAM under cascading randomisation]({figures['randomisation']})",
        "",
        f"Grad-CAM of one sample on the {strip_model} as the layers are re-initialised from the top "
        f"(cascading); rho: {rand_note}.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# -- driver ----------------------------------------------------------------------------------------------


def run(config: argparse.Namespace) -> Dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: argparse.Namespace) -> Dict:
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    start, cpu_start = time.perf_counter(), time.process_time()
    docs = Path(config.docs)
    image_dir = docs / "images" / "quality"
    image_dir.mkdir(parents=True, exist_ok=True)
    samples = load_samples(config.images)
    rows = methods(samples, config.methods, seed=config.seed, batch_size=config.batch_size)
    previous = _previous_run(config) if config.merge else None
    if previous:  # every earlier row, and those selected (in the table's order)
        selected = {row.row for row in rows}
        rows = methods(samples, None, seed=config.seed, batch_size=config.batch_size)
        rows = [row for row in rows if row.row in selected or row.row in previous["results"]]
    models = {key: spec.load() for key, spec in MODELS.items() if any(row.model == key for row in rows)}
    model_info = {key: _model_info(key, models[key], samples) for key in models}
    results: Dict[str, Dict] = {}
    all_maps: Dict[str, np.ndarray] = {}
    map_seconds = 0.0
    scored: List[tuple] = []  # (model, name, maps, scores) of the distinct maps seen so far
    for number, method in enumerate(rows, 1):
        torch.manual_seed(config.seed)  # RandomCAM and any other random draw
        method_start = time.perf_counter()
        model = models[method.model]
        layers = MODELS[method.model].target_layers(model)
        kept = previous["results"].get(method.row) if previous else None
        if kept is not None:  # --merge: the earlier run's scores
            results[method.row] = kept
            if config.redraw:  # the maps only, for the figures
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    all_maps[method.row], seconds = compute_maps(method, model, layers, samples, config.batch_size)
                map_seconds += seconds
            print(f"[{number:2d}/{len(rows)}] {method.row:24s} kept from an earlier run", flush=True)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            maps, seconds = compute_maps(method, model, layers, samples, config.batch_size)
            same = next(
                (
                    name
                    for key, name, seen, _ in scored
                    if key == method.model and seen.shape == maps.shape and np.allclose(seen, maps, atol=1e-5)
                ),
                None,
            )
            if same is None:
                map_scores = score_maps(maps, model, samples, config)
                scored.append((method.model, method.name, maps, map_scores))
            else:
                map_scores = next(result for key, name, _, result in scored if key == method.model and name == same)
            rand_scores = randomisation(method, model, layers, samples, config)
        map_seconds += seconds
        all_maps[method.row] = maps
        curves = map_scores["curves"]
        per_sample = {key: value for key, value in map_scores.items() if key != "curves"}
        results[method.row] = {
            "name": method.name,
            "model": method.model,
            "method": method.key,
            "baseline": method.baseline,
            "note": method.note if same is None else "; ".join(filter(None, [method.note, f"same maps as {same}"])),
            "same_maps_as": same,
            "ms_per_image": 1000 * seconds / len(samples),
            "curves": curves,
            **summarise({**per_sample, **rand_scores}),
        }
        mean = results[method.row]["mean"]
        print(
            f"[{number:2d}/{len(rows)}] {method.row:24s} PG {mean['pointing_game']:5.1f}  del {mean['deletion']:.3f}  "
            f"ins {mean['insertion']:.3f}  ROAD {mean['road']:+.3f}  rho {mean['rho_all']:+.2f}  "
            f"({time.perf_counter() - method_start:.1f} s{', same maps as ' + same if same else ''})",
            flush=True,
        )
    picks = _pick_samples(samples, config.grid_images)
    figures = FIGURES
    cnn_rows = [n for n in results if results[n]["model"] == "cnn" and n in all_maps]
    vit_rows = [n for n in results if results[n]["model"] == "vit" and n in all_maps]
    if previous and not config.redraw:  # the figures of the earlier run stay; the rows added here are not drawn
        cnn_rows = vit_rows = []
    if cnn_rows:
        curve_names = [n for n in CURVE_METHODS if n in cnn_rows] or cnn_rows[:8]
        _write(docs / figures["grid"], grid_figure(cnn_rows, all_maps, samples, picks))
        _write(docs / figures["overview"], grid_figure(curve_names, all_maps, samples, picks[:4], size=96))
        _write(docs / figures["curves"], curves_figure(results, curve_names))
    if vit_rows:
        curve_names = [n for n in vit_rows if not results[n]["baseline"]][:6]
        curve_names += [n for n in vit_rows if results[n]["name"] in (GROUND_TRUTH, RANDOM_MAP)]
        _write(docs / figures["grid_vit"], grid_figure(vit_rows, all_maps, samples, picks))
        _write(docs / figures["curves_vit"], curves_figure(results, curve_names[:8]))
    strip_model = "cnn" if "cnn" in models else "vit"
    if previous and not config.redraw:
        strip_info = previous["info"]["randomisation_strip"]
        strip_model = previous["info"].get("randomisation_strip_model", "cnn")
    else:
        strip, strip_info = randomisation_figure(
            models[strip_model], MODELS[strip_model], samples, picks[0], config.seed
        )
        _write(docs / figures["randomisation"], strip)
    seconds = time.perf_counter() - start
    info = {
        "command": shlex.join(["python", "benchmarks/quality.py", *config.argv]),
        "runs": 1,
        "machine": _machine(),
        "images": config.images,
        "samples": len(samples),
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "map_seconds": map_seconds,
        "load_before": load_before,
        "load_after": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "tolerance": config.tolerance,
        "tolerance_px": config.tolerance * samples.x.shape[-1] / 224,
        "steps": config.steps,
        "road_percentiles": config.road_percentiles,
        "rand_samples": min(config.rand_samples, len(samples)),
        "batch_size": config.batch_size,
        "randomisation_strip": strip_info,
        "randomisation_strip_model": strip_model,
        "models": model_info,
    }
    if previous:
        earlier = previous["info"]
        info["command"] = f"{earlier['command']}\n{info['command']}"
        info["runs"] = earlier.get("runs", 1) + 1
        for key in ("seconds", "cpu_seconds", "map_seconds"):
            info[key] += earlier[key]
        info["load_before"] = earlier["load_before"]
        added = [row for row in results if row not in previous["kept_here"]]
        info["merged_rows"] = [] if config.redraw else [*earlier.get("merged_rows", []), *added]
    (docs / figures["json"]).write_text(json.dumps({"info": info, "results": results}, indent=1), encoding="utf-8")
    write_report(docs / "quality.md", results, info, figures)
    print(f"wrote {docs / 'quality.md'} and {image_dir}/ in {seconds:.0f} s (load {info['load_after']})")
    return {"info": info, "results": results}


def _previous_run(config: argparse.Namespace) -> Dict:
    """The results of the earlier run in ``--docs``, for ``--merge``; its settings must be these."""
    path = Path(config.docs) / FIGURES["json"]
    if not path.is_file():
        raise SystemExit(f"--merge: no earlier results in {path}; run without --merge first")
    data = json.loads(path.read_text(encoding="utf-8"))
    info = data["info"]
    settings = {
        "images": config.images,
        "steps": config.steps,
        "road_percentiles": list(config.road_percentiles),
        "rand_samples": min(config.rand_samples, info.get("samples", 0)),
        "batch_size": config.batch_size,
        "tolerance": config.tolerance,
    }
    differ = {key: (info.get(key), value) for key, value in settings.items() if info.get(key) != value}
    if differ:
        raise SystemExit(f"--merge: the earlier run used other settings (earlier, now): {differ}; rerun in full")
    wanted = {name.lower() for name in config.merge_methods or ()}

    def keep(found: Dict) -> Dict:
        return {
            row: result
            for row, result in found.items()
            if not wanted & {row.lower(), result.get("name", row).lower(), result.get("method", "")}
        }

    results = keep(data["results"])
    kept_here = set(results)
    commands, seconds = [], {"seconds": 0.0, "cpu_seconds": 0.0, "map_seconds": 0.0}
    for other in config.merge_from or ():
        found = json.loads(Path(other).read_text(encoding="utf-8"))
        other_settings = {key: found["info"].get(key) for key in settings}
        if other_settings != {key: info.get(key) for key in settings}:
            raise SystemExit(f"--merge-from {other}: other settings than {path}: {other_settings}")
        results.update({row: result for row, result in keep(found["results"]).items() if row not in results})
        commands.append(found["info"]["command"])
        for key in seconds:
            seconds[key] += found["info"][key]
    info = {**info, "command": "\n".join([info["command"], *commands])}
    info.update({key: info[key] + value for key, value in seconds.items()})
    return {"info": info, "results": results, "kept_here": kept_here}


def _stored_scores(result: Dict) -> Dict:
    """A stored row's map scores, as :func:`score_maps` returns them (the randomisation rhos left out)."""
    scores = {key: np.asarray(value) for key, value in result["per_sample"].items() if not key.startswith("rho_")}
    return {**scores, "curves": result["curves"]}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="test images (default 24; --quick: 1)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these rows (names as in the table or cam.py)")
    parser.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (default 20; --quick: 4)")
    parser.add_argument("--road-percentiles", type=float, nargs="+", default=None, help="default 20 40 60 80")
    parser.add_argument("--rand-samples", type=int, default=None, help="samples for the randomisation test (default 16)")
    parser.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in px at 224 (scaled)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine two OpenMP threads mostly wait for each other, "
        "and the sparse solves are single-threaded anyway)",
    )
    parser.add_argument("--grid-images", type=int, default=6, help="images per row of the method figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", default=None, help="output folder (default docs; --quick: out/quality-quick)")
    parser.add_argument(
        "--merge",
        nargs="*",
        default=None,
        metavar="METHOD",
        help="keep the scores of the rows an earlier run with the same settings left in --docs (except the "
        "METHODs named) and score only the others (methods registered since); the earlier run's figures stay",
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="with --merge: recompute every row's maps (not its scores) and draw the figures with every row",
    )
    parser.add_argument(
        "--merge-from",
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="with --merge: also keep the rows of these results.json files (runs with the same settings, e.g. "
        "of new methods into another --docs folder)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 image; 2 CNN methods, attention rollout and 2 baselines per model")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite quality.md from the results.json of an earlier run in --docs (after editing this script's text)",
    )
    config = parser.parse_args(argv)
    config.argv = list(sys.argv[1:] if argv is None else argv)
    config.merge_methods, config.merge = config.merge, config.merge is not None
    quick = config.quick
    config.images = config.images or (1 if quick else 24)
    config.steps = config.steps or (4 if quick else 20)
    config.road_percentiles = config.road_percentiles or ([50] if quick else [20, 40, 60, 80])
    config.rand_samples = config.rand_samples or (1 if quick else 16)
    config.docs = config.docs or str(ROOT / ("out/quality-quick" if quick else "docs"))
    if quick and config.methods is None:
        config.methods = ["gradcam", "cam", "attentionrollout", GROUND_TRUTH, RANDOM_MAP]
    for name in ("images", "steps", "rand_samples", "batch_size", "threads", "grid_images"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return config


def rewrite_report(docs: Path) -> None:
    """Rewrite ``quality.md`` from the ``results.json`` an earlier run left in ``docs``."""
    data = json.loads((docs / FIGURES["json"]).read_text(encoding="utf-8"))
    write_report(docs / "quality.md", data["results"], data["info"], FIGURES)
    print(f"rewrote {docs / 'quality.md'} from {docs / FIGURES['json']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parse_args(argv)
    if config.report_only:
        rewrite_report(Path(config.docs))
    else:
        run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
