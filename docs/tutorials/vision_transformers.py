"""Tutorial: class activation maps for vision transformers (torchvision's ViT and Swin).

A vision transformer's layers output tokens, ``[B, 1 + h*w, C]`` for a ViT (a
class token, then one token per patch) or ``[B, h, w, C]`` for torchvision's
Swin, not the ``[B, C, h, w]`` maps a CAM is computed on. pytorch-grad-cam asks
you for a ``reshape_transform``; camlib lays the tokens out itself: it drops the
class token (the model says how many tokens precede the patches) and finds the
``h x w`` grid from the input's size.

The one thing to choose well is the layer: in a ViT the last block's patch
tokens never reach the class token that the head reads, so their gradient is
zero. camlib's default layer is the block before (``encoder.layers[-2].ln_1``)
and it warns when a gradient-based map would be blank.

Run it (offline, random weights, a few seconds)::

    python docs/tutorials/vision_transformers.py --out vit_maps

With real weights, use ``build_model("vit_b_16", weights="DEFAULT")`` (downloads
them once) and 224x224 inputs; nothing else changes.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from camlib import EigenCAM, GradCAM, LayerCAM
from camlib.demo import load_sample_image
from camlib.models import IMAGENET_MEAN, IMAGENET_STD, build_model, default_target_layers, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    """Write the map blended over the image."""
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_vit_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # -- 1. A ViT-B/16. Random weights keep the tutorial offline; image_size=96 makes a 6x6 patch
    #       grid (pretrained weights expect 224, a 14x14 grid). build_model also gives the random
    #       head non-zero weights (torchvision initialises it to zeros: no gradient at all).
    vit = build_model("vit_b_16", weights="none", image_size=96)
    rgb = resize_image(load_sample_image(), 96)  # float32 [96, 96, 3] in [0, 1]
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD)  # [1, 3, 96, 96]

    # -- 2. The default target layer: the LayerNorm before the attention of the second-to-last block.
    layers = default_target_layers(vit, "vit_b_16")  # [vit.encoder.layers[-2].ln_1]
    print("ViT target layer:", layers[0])

    # -- 3. No reshape_transform: the [1, 1 + 36, 768] tokens become a [1, 768, 6, 6] map.
    with GradCAM(vit, layers) as cam:
        grayscale = cam(x, targets=None)  # None: each image's top class
        print("GradCAM map:", grayscale.shape, grayscale.dtype)  # (1, 96, 96) float32
    save(out / "vit_gradcam.png", rgb, grayscale[0])

    # A class of your choice instead of the top class:
    with LayerCAM(vit, layers) as cam:
        save(out / "vit_layercam_class_3.png", rgb, cam(x, [ClassifierOutputTarget(3)])[0])

    # -- 4. The last block: its patch tokens get no gradient. camlib warns instead of returning a
    #       silently blank map, and says what to use instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blank = GradCAM(vit, [vit.encoder.layers[-1]])(x)
    print("last block, GradCAM max:", float(blank.max()))  # 0.0
    message = next(str(w.message) for w in caught if "zero everywhere" in str(w.message))
    print("warning:", message[:120], "...")
    # Gradient-free methods do work on the last block (the map of its principal component):
    save(out / "vit_last_block_eigencam.png", rgb, EigenCAM(vit, [vit.encoder.layers[-1]])(x)[0])

    # -- 5. Swin-T: its blocks keep channels-last maps [B, h, w, C]; camlib permutes them, for
    #       square and non-square inputs alike.
    swin = build_model("swin_t", weights="none")
    layers = default_target_layers(swin, "swin_t")  # [swin.features[-1][-1].norm1]
    wide = resize_image(load_sample_image(), (96, 160))  # height 96, width 160
    x_wide = preprocess_image(wide, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with GradCAM(swin, layers) as cam:
        grayscale = cam(x_wide)
    print("Swin map on a 96x160 input:", grayscale.shape)  # (1, 96, 160)
    save(out / "swin_gradcam_96x160.png", wide, grayscale[0])
    return out


if __name__ == "__main__":
    main()
