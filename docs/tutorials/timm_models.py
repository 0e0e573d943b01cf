"""Tutorial: timm models (ViT, DeiT with a distillation token, registers, Swin, ConvNeXt).

timm's transformers put 1 to 5 extra tokens in front of the patch tokens: a class
token (ViT), a class and a distillation token (distilled DeiT), a class token and
register tokens (``*_reg4_*`` models). camlib reads the count from the model
(timm's ``num_prefix_tokens``), drops those tokens and lays the rest out on the
patch grid, also for non-square inputs and ``dynamic_img_size=True`` models, so no
``reshape_transform`` is needed. ``camlib.models.default_target_layers(model,
"timm:<name>")`` knows a good layer for each family.

Run it (offline, random weights)::

    python docs/tutorials/timm_models.py --out timm_maps

With real weights: ``timm.create_model(name, pretrained=True)`` or
``camlib.models.build_model("timm:" + name, weights="DEFAULT")``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import timm
import torch

from camlib import AblationCAM, EigenCAM, GradCAM, ScoreCAM
from camlib.demo import load_sample_image
from camlib.models import default_target_layer_paths, default_target_layers, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.reshape_transforms import num_prefix_tokens


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def image(height: int, width: int):
    """The sample image at a size, and its normalised batch (timm's ImageNet models use 0.5/0.5 or
    ImageNet statistics; see timm.data.resolve_data_config(model=model) for yours)."""
    rgb = resize_image(load_sample_image(), (height, width))
    return rgb, preprocess_image(rgb, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_timm_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # -- 1. One recipe for every family: create, take the default layer, call the CAM.
    #       (depth= and small image sizes only keep this offline tutorial fast.)
    models = {
        "vit_tiny_patch16_224": {"img_size": 96, "depth": 6},  # 1 class token
        "deit_tiny_distilled_patch16_224": {"img_size": 96, "depth": 6},  # class + distillation token
        "vit_small_patch14_reg4_dinov2": {"img_size": 98, "depth": 4, "num_classes": 10},  # class + 4 registers
        "swin_tiny_patch4_window7_224": {"img_size": 96, "window_size": 3, "depths": (1, 1, 2, 1)},
        "convnext_atto": {},  # a CNN: [B, C, h, w] maps, nothing to lay out
    }
    for name, kwargs in models.items():
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        size = kwargs.get("img_size", 96)
        rgb, x = image(size, size)
        layers = default_target_layers(model, f"timm:{name}")
        prefix = num_prefix_tokens(model)  # None for models without tokens in front of the grid
        print(f"{name}: layer {default_target_layer_paths('timm:' + name)[0]}, prefix tokens: {prefix}")
        with GradCAM(model, layers) as cam:
            save(out / f"{name}_gradcam.png", rgb, cam(x)[0])

    # -- 2. Non-square inputs. A model built for one size: img_size=(height, width) ...
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=(64, 128), depth=4).eval()
    rgb, x = image(64, 128)
    save(out / "deit_64x128_gradcam.png", rgb, GradCAM(model, default_target_layers(model, "timm:deit"))(x)[0])

    # ... or dynamic_img_size=True, which takes any size at call time (position embeddings are
    # interpolated): the grid is found from each input's size.
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, depth=4).eval()
    layers = default_target_layers(model, "timm:vit_tiny_patch16_224")
    for height, width in ((96, 64), (48, 112)):
        rgb, x = image(height, width)
        grayscale = EigenCAM(model, layers)(x)
        print(f"dynamic size {height}x{width}: map {grayscale.shape}")
        save(out / f"vit_dynamic_{height}x{width}_eigencam.png", rgb, grayscale[0])

    # -- 3. Methods that run extra forward passes work too; AblationCAM ablates the channels of
    #       the token tensor (AblationLayerVit is chosen by itself). One pass per channel: 192 here.
    rgb, x = image(48, 112)
    save(out / "vit_dynamic_scorecam.png", rgb, ScoreCAM(model, layers, batch_size=64)(x)[0])
    save(out / "vit_dynamic_ablationcam.png", rgb, AblationCAM(model, layers, batch_size=64)(x)[0])
    return out


if __name__ == "__main__":
    main()
