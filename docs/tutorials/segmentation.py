"""Tutorial: semantic segmentation (torchvision DeepLabV3 and FCN) - why a region is given a class.

torchvision's segmentation models return a dict, ``{"out": [B, K, H, W], "aux": ...}``.
pytorch-grad-cam's tutorial wraps the model to return ``["out"]``; camlib's targets
read the ``"out"`` entry themselves, so the model is passed as it is.

The target is ``SemanticSegmentationTarget(category, mask)``: the sum of the
class's scores over the pixels of ``mask``. The mask is usually the region the
model assigns to the class (``output.argmax(0) == category``), or any region you
want explained (a box drawn by hand, a ground-truth mask).

Run it (offline, random weights)::

    python docs/tutorials/segmentation.py --out segmentation_maps

With real weights: ``deeplabv3_resnet50(weights="DEFAULT")`` (21 Pascal VOC
classes) and an image normalised with ImageNet statistics.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from camlib import EigenCAM, GradCAM, HiResCAM
from camlib.demo import load_sample_image
from camlib.models import IMAGENET_MEAN, IMAGENET_STD, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import SemanticSegmentationTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_segmentation_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    segmentation = torchvision.models.segmentation
    model = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    rgb = resize_image(load_sample_image(), 96)
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    # -- 1. What does the model predict, and where? (a plain forward pass, no gradients)
    with torch.no_grad():
        output = model(x)  # {"out": [1, 4, 96, 96], "aux": [1, 4, 96, 96]}
    labels = output["out"].argmax(dim=1)[0].numpy()  # [96, 96]
    classes, counts = np.unique(labels, return_counts=True)
    category = int(classes[np.argmax(counts)])
    print(f"predicted classes {classes.tolist()}, explaining class {category} ({counts.max()} pixels)")

    # -- 2. Explain the class where it is predicted. The layer: the backbone's last stage.
    region = (labels == category).astype(np.float32)
    target_layers = [model.backbone.layer4]
    with GradCAM(model, target_layers) as cam:
        grayscale = cam(x, targets=[SemanticSegmentationTarget(category, region)])
    save(out / "deeplabv3_gradcam_predicted_region.png", rgb, grayscale[0])

    # -- 3. ... or in a region of your choice: the left half of the image.
    left = np.zeros((96, 96), np.float32)
    left[:, :48] = 1
    with HiResCAM(model, target_layers) as cam:
        save(out / "deeplabv3_hirescam_left_half.png", rgb, cam(x, [SemanticSegmentationTarget(category, left)])[0])

    # targets=None has no "top class" to take for a dense output: camlib says what to pass instead.
    try:
        GradCAM(model, target_layers)(x)
    except ValueError as err:
        print("targets=None:", str(err)[:110], "...")

    # -- 4. FCN works the same way; EigenCAM needs no target at all (the main component of the layer).
    fcn = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=4).eval()
    with torch.no_grad():
        labels = fcn(x)["out"].argmax(dim=1)[0].numpy()
    category = int(np.bincount(labels.ravel()).argmax())
    target = SemanticSegmentationTarget(category, labels == category)
    with GradCAM(fcn, [fcn.backbone.layer4]) as cam:
        save(out / "fcn_gradcam.png", rgb, cam(x, [target])[0])
    save(out / "fcn_eigencam.png", rgb, EigenCAM(fcn, [fcn.backbone.layer4])(x)[0])
    return out


if __name__ == "__main__":
    main()
