"""Build the documentation gallery from the bundled demo model and sample image.

    python docs/make_gallery.py              # (re)writes docs/images/gallery/
    python docs/make_gallery.py --out DIR    # writes somewhere else

Every picture in ``docs/images/gallery`` is made by this script, offline and
deterministically, from :func:`camlib.demo.load_demo_model` and
:func:`camlib.demo.load_sample_image` (a star and a ring on a cluttered
background). Never edit the images by hand: change this script and run it;
``tests/test_gallery.py`` fails when the committed images and the script's
output differ.

What it writes (JPEG, tiles of 128 x 128 pixels):

* ``<method>.jpg`` for every method of :mod:`camlib.registry` (so a newly
  registered method gets its picture with no change here): the map for the
  ring, for the star, and (where the method supports them) for the ring with
  ``eigen_smooth=True`` and with ``aug_smooth=True``. Methods that explain a
  transformer's attention (capability ``needs_attention``) are drawn on the
  bundled demo ViT (:func:`camlib.demo.vit.load_demo_vit`, trained on the same
  data) instead of the CNN;
* ``guided-backprop.jpg`` and ``deep-feature-factorization.jpg`` for the
  pixel-level methods and the concept factorisation;
* ``methods.jpg``: every method's map for the ring, side by side;
* ``smoothing.jpg``: Grad-CAM at the last block and at a 16 x 16 block, and
  LayerCAM at the 16 x 16 block, without and with ``eigen_smooth`` and
  ``aug_smooth``;
* ``per_layer.jpg``: Grad-CAM and LayerCAM at every conv block of the demo
  model, from shallow to deep (``per_layer=True``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

import camlib
from camlib import (
    DeconvnetReLUModel,
    GradCAM,
    GuidedBackpropReLUModel,
    LayerCAM,
    guided_grad_cam,
    run_dff_on_image,
)
from camlib.demo import CLASS_NAMES, demo_preprocess, load_demo_model, load_demo_vit, load_sample_image
from camlib.models import image_grid
from camlib.registry import MethodInfo, make_cam, method_names, methods
from camlib.utils.image import deprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["DEFAULT_OUT", "JPEG_QUALITY", "PICTURE_SETTINGS", "GalleryEntry", "gallery", "make_gallery", "slug"]

#: Where the documentation expects the pictures.
DEFAULT_OUT = Path(__file__).resolve().parent / "images" / "gallery"
#: JPEG quality of every picture (keeps the whole gallery well under 2 MB).
JPEG_QUALITY = 88
#: The two classes drawn in the sample image; the ring is the top class.
RING = CLASS_NAMES.index("ring")
STAR = CLASS_NAMES.index("star")
#: The conv blocks of the demo model, shallow to deep, for the per-layer strip, and their grid
#: sizes for a 128 x 128 input.
LAYER_PATHS = ("features[0]", "features[2]", "features[4]", "features[6]", "features[7]")
LAYER_GRIDS = (64, 32, 16, 8, 8)
#: Batch size of the extra forward passes (every method gets it; those without extra passes ignore it).
BATCH_SIZE = 128
#: Presentation only: the demo model's blocks and constructor options of a few pictures (a multi-layer
#: method shown on several blocks, a costly one made cheaper). Every other registered method is drawn
#: at the last block with its defaults, so a new method needs no entry here.
PICTURE_SETTINGS: Dict[str, Dict[str, Any]] = {
    "ablationcam-multilayer": {"layers": (6, 7)},
    "refinecam": {"layers": (4, 6, 7)},
    "sess": {"options": {"num_scales": 3, "batch_size": 16}},
    "sscam": {"options": {"num_samples": 4}},
    "iscam": {"options": {"num_samples": 4}},
}
#: File names of the pictures (and documentation pages) of methods whose page names predate the
#: registry's names; every other method's picture is named by :func:`slug`.
PAGE_NAMES: Dict[str, str] = {
    "gradcam++": "gradcam-plusplus",
    "gradcamelementwise": "gradcam-elementwise",
    "kpcacam": "kpca-cam",
    "smoothgradcam++": "smoothgradcam-plusplus",
    "attentionrollout": "attention-rollout",
    "transformerattribution": "transformer-attribution",
}


def slug(name: str) -> str:
    """The picture's file name (without ``.jpg``) of a registered method, e.g. ``"ablationcam-multilayer"``."""
    if name in PAGE_NAMES:
        return PAGE_NAMES[name]
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower().replace("+", "plus")).strip("-")


@dataclass(frozen=True)
class GalleryEntry:
    """One CAM method of the gallery.

    Attributes:
        slug: File name without extension; also the name of the method's page.
        title: Caption.
        method: The registered method.
    """

    slug: str
    title: str
    method: MethodInfo

    @property
    def on_vit(self) -> bool:
        """Whether the picture explains the demo ViT (a method that needs attention) rather than the CNN."""
        return self.method.capabilities.needs_attention

    def build(self, model: torch.nn.Module, vit: Optional[torch.nn.Module] = None):
        """The CAM object for the demo CNN ``model``, or for the demo ViT (``vit``, loaded if None) if :attr:`on_vit`."""
        if self.on_vit:
            vit = load_demo_vit() if vit is None else vit
            return make_cam(self.method.name, vit, [], batch_size=BATCH_SIZE, progress=False)
        settings = PICTURE_SETTINGS.get(self.method.name, {})
        layers = _layers(model, *settings.get("layers", (-1,)))
        options = {"batch_size": BATCH_SIZE, "progress": False, **settings.get("options", {})}
        if self.method.name in method_names():
            return make_cam(self.method.name, model, layers, **options)
        return self.method.cls(model, layers, **options)


def _unregistered() -> List[MethodInfo]:
    """Method classes with a documentation page that are not (yet) in the registry (none today)."""
    return []


def gallery() -> List[GalleryEntry]:
    """Every registered method that applies to the demo CNN, in registration order; then the unregistered
    classes with a page; then the methods that explain a transformer's attention (drawn on the demo ViT)."""
    registered = [info for info in methods() if not info.capabilities.needs_attention]
    names = {info.name for info in methods()}
    extra = [info for info in _unregistered() if info.name not in names]
    attention = [info for info in methods() if info.capabilities.needs_attention]
    return [GalleryEntry(slug(info.name), info.title, info) for info in [*registered, *extra, *attention]]


def _layers(model: torch.nn.Module, *indices: int) -> List[torch.nn.Module]:
    return [model.features[i] for i in indices]


def _call(cam, x: torch.Tensor, category: int, *, aug_smooth: bool, eigen_smooth: bool) -> np.ndarray:
    torch.manual_seed(0)  # stochastic methods draw from torch's generator,
    np.random.seed(0)  # noqa: NPY002 - or, as RandomCAM (like pytorch-grad-cam's), from numpy's global one
    return cam(x, [cam.class_target(category)], aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _overlay(rgb: np.ndarray, grayscale: np.ndarray) -> np.ndarray:
    return show_cam_on_image(rgb, grayscale, use_rgb=True)


def _captioned(tile: np.ndarray, caption: str) -> np.ndarray:
    return image_grid([[tile]], column_labels=[caption])


def _write(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _maps(
    entry: GalleryEntry, model: torch.nn.Module, x: torch.Tensor, vit: Optional[torch.nn.Module] = None
) -> Dict[str, np.ndarray]:
    """The four maps of a method's strip, each ``[H, W]``."""
    capabilities = entry.method.capabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. HiResCAM's eigen_smooth caveat
        with entry.build(model, vit) as cam:
            maps = {
                "ring": _call(cam, x, RING, aug_smooth=False, eigen_smooth=False)[0],
                "star": _call(cam, x, STAR, aug_smooth=False, eigen_smooth=False)[0],
            }
            if capabilities.eigen_smooth:
                maps["ring, eigen_smooth"] = _call(cam, x, RING, aug_smooth=False, eigen_smooth=True)[0]
            if capabilities.aug_smooth:
                maps["ring, aug_smooth"] = _call(cam, x, RING, aug_smooth=True, eigen_smooth=False)[0]
            return maps


def _guided(model: torch.nn.Module, x: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    with GradCAM(model, _layers(model, -1)) as cam:
        grayscale = cam(x, [ClassifierOutputTarget(RING)])[0]
    guided = GuidedBackpropReLUModel(model)(x, target_category=RING)
    deconv = DeconvnetReLUModel(model)(x, target_category=RING)
    tiles = [
        _overlay(rgb, grayscale),
        deprocess_image(guided),
        deprocess_image(deconv),
        deprocess_image(guided_grad_cam(grayscale, guided)),
    ]
    return image_grid([tiles], column_labels=["GradCAM", "guided backprop", "deconvnet", "guided GradCAM"])


def _dff(model: torch.nn.Module, x: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    uint8 = np.uint8(np.round(rgb * 255))
    return run_dff_on_image(
        model, model.features[-1], model.fc, uint8, x[0], n_components=4, top_k=2, labels=list(CLASS_NAMES)
    )


def _smoothing(model: torch.nn.Module, x: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    """Rows: a method at a layer; columns: no smoothing, eigen_smooth, aug_smooth, both."""
    rows, labels = [], []
    target = [ClassifierOutputTarget(RING)]
    for method, index in ((GradCAM, 7), (GradCAM, 4), (LayerCAM, 4)):
        with method(model, _layers(model, index)) as cam:
            maps = [
                cam(x, target, aug_smooth=aug, eigen_smooth=eigen)[0]
                for aug, eigen in ((False, False), (False, True), (True, False), (True, True))
            ]
        rows.append([_overlay(rgb, m) for m in maps])
        labels.append(f"{method.__name__} at features[{index}], ring")
    return image_grid(rows, row_labels=labels, column_labels=["plain", "eigen_smooth", "aug_smooth", "both"])


def _per_layer(model: torch.nn.Module, x: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    from camlib.utils.find_layers import get_layer_by_path

    layers = [get_layer_by_path(model, path) for path in LAYER_PATHS]
    rows, labels = [], []
    for method in (GradCAM, LayerCAM):
        with method(model, layers) as cam:
            maps = cam(x, [ClassifierOutputTarget(RING)], per_layer=True)[0]  # [L, H, W]
        rows.append([_overlay(rgb, m) for m in maps])
        labels.append(f"{method.__name__}, ring")
    sizes = [f"{path} {grid}x{grid}" for path, grid in zip(LAYER_PATHS, LAYER_GRIDS)]
    return image_grid(rows, row_labels=labels, column_labels=sizes)


def make_gallery(out: Path = DEFAULT_OUT, only: Optional[Sequence[str]] = None) -> List[Path]:
    """Compute every picture and write it into ``out``.

    Args:
        out: The directory; created if needed. Stale ``.jpg`` files in it are
            removed when the whole gallery is written.
        only: Slugs to write (for a quick look); None writes everything.

    Returns:
        The files written, sorted.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order on every machine; the demo model is tiny anyway
    try:
        return _make_gallery(out, only)
    finally:
        torch.set_num_threads(threads)


def _make_gallery(out: Path, only: Optional[Sequence[str]]) -> List[Path]:
    torch.manual_seed(0)
    model = load_demo_model()
    vit = load_demo_vit()
    rgb = load_sample_image()
    x = demo_preprocess(rgb)
    written: List[Path] = []

    def emit(slug: str, picture: np.ndarray) -> None:
        if only is None or slug in only:
            path = out / f"{slug}.jpg"
            _write(path, picture)
            written.append(path)

    input_tile = np.uint8(np.round(rgb * 255))
    overview = [_captioned(input_tile, "input (star, ring)")]
    for entry in gallery():
        if only is not None and entry.slug not in only and "methods" not in only:
            continue
        maps = _maps(entry, model, x, vit)
        emit(entry.slug, image_grid([[_overlay(rgb, m) for m in maps.values()]], column_labels=list(maps)))
        overview.append(_captioned(_overlay(rgb, maps["ring"]), f"{entry.title} (ViT)" if entry.on_vit else entry.title))

    if only is None or "methods" in only:
        per_row = 6
        blank = np.full_like(overview[0], 255)
        overview += [blank] * (-len(overview) % per_row)
        emit("methods", image_grid([overview[i : i + per_row] for i in range(0, len(overview), per_row)]))
    if only is None or "smoothing" in only:
        emit("smoothing", _smoothing(model, x, rgb))
    if only is None or "guided-backprop" in only:
        emit("guided-backprop", _guided(model, x, rgb))
    if only is None or "deep-feature-factorization" in only:
        emit("deep-feature-factorization", _dff(model, x, rgb))
    if only is None or "per_layer" in only:
        emit("per_layer", _per_layer(model, x, rgb))

    if only is None:
        keep = set(written)
        for stale in out.glob("*.jpg"):
            if stale not in keep:
                stale.unlink()
    return sorted(written)


def all_slugs() -> List[str]:
    """Every file name (without ``.jpg``) :func:`make_gallery` writes."""
    extra = ["methods", "smoothing", "guided-backprop", "deep-feature-factorization", "per_layer"]
    return [entry.slug for entry in gallery()] + extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="+", choices=all_slugs(), help="write only these pictures")
    args = parser.parse_args(argv)
    os.environ.setdefault("CAMLIB_DISABLE_PROGRESS", "1")
    written = make_gallery(args.out, args.only)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} pictures ({total / 1024:.0f} KiB) into {args.out} with camlib {camlib.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
