"""Guided Grad-CAM, step by step: Grad-CAM x guided backpropagation, for several classes.

Grad-CAM says *where* the evidence for a class is, at the coarse resolution of
the target layer; guided backpropagation shows fine *pixel-level* detail but
hardly depends on the class. Their product, guided Grad-CAM (Selvaraju et al.,
https://arxiv.org/abs/1610.02391), is both sharp and class-specific.

On the bundled demo (a star and a ring, offline) it explains the two
top-scoring classes, one row each: the image, Grad-CAM, guided backpropagation
and guided Grad-CAM, side by side::

    python usage_examples/guided_gradcam_example.py
    python usage_examples/guided_gradcam_example.py --model resnet50 --image-path both.png --target-category 243 281

Writes ``guided_gradcam.jpg`` into --output-dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from camlib import GradCAM, GuidedBackpropReLUModel, guided_grad_cam
from camlib.demo import load_sample_image
from camlib.models import (
    build_model,
    class_names,
    default_preprocessing,
    default_target_layers,
    image_grid,
    load_image,
    resize_image,
    resolve_device,
)
from camlib.utils.image import deprocess_image, preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="guided_gradcam_example.py",
        description="Grad-CAM, guided backpropagation and guided Grad-CAM side by side, one row per class.",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--image-path", default=None, help="input image (default: camlib's bundled sample image)"
    )
    parser.add_argument(
        "--output-dir", default="output", help="where guided_gradcam.jpg is written (default: output)"
    )
    parser.add_argument(
        "--model", default="demo", help="'demo' (default) or a torchvision classification model"
    )
    parser.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT (the default), none, or a checkpoint path"
    )
    parser.add_argument("--image-size", type=int, default=None, help="side of the square input")
    parser.add_argument(
        "--target-category",
        type=int,
        nargs="+",
        default=None,
        help="class indices (default: the two top classes)",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def run(args: argparse.Namespace) -> str:
    """Compute and write the comparison grid; return its path."""
    device = resolve_device(args.device)
    model = build_model(args.model, args.weights, device=device, image_size=args.image_size)
    target_layers = default_target_layers(model, args.model)
    preprocessing = default_preprocessing(args.model, model)
    size = (args.image_size, args.image_size) if args.image_size else preprocessing.image_size
    rgb_img = (
        load_image(args.image_path, size) if args.image_path else resize_image(load_sample_image(), size)
    )
    input_tensor = preprocess_image(rgb_img, mean=preprocessing.mean, std=preprocessing.std).to(device)

    with torch.no_grad():
        scores = model(input_tensor)[0]
    categories = args.target_category or scores.argsort(descending=True)[:2].tolist()
    if not all(0 <= c < scores.numel() for c in categories):
        raise ValueError(
            f"--target-category {categories} is out of range: the model has {scores.numel()} outputs"
        )
    names = class_names(args.model, scores.numel())

    # One batch, one image copy per class: GradCAM and guided backprop take a target per image.
    batch = input_tensor.repeat(len(categories), 1, 1, 1)
    with GradCAM(model=model, target_layers=target_layers) as cam:
        grayscale_cams = cam(batch, targets=[ClassifierOutputTarget(c) for c in categories])  # [N, H, W]
    guided = GuidedBackpropReLUModel(model=model)(
        batch, target_category=categories
    )  # [N, H, W, 3] (or [H, W, 3])
    guided = guided.reshape(len(categories), *rgb_img.shape)

    image = np.uint8(255 * rgb_img)
    rows = []
    for grayscale_cam, gb in zip(grayscale_cams, guided):
        rows.append(
            [
                image,
                show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True),
                deprocess_image(gb),
                deprocess_image(guided_grad_cam(grayscale_cam, gb)),
            ]
        )
    labels = [f"{c} {names[c]}" if names else f"class {c}" for c in categories]
    grid = image_grid(
        rows, row_labels=labels, column_labels=["image", "Grad-CAM", "guided backprop", "guided Grad-CAM"]
    )

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "guided_gradcam.jpg")
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")
    print(f"explained {', '.join(labels)}; wrote {path}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as err:
        if args.traceback:
            raise
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
