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
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import example_parser, load_example_model, load_input, run_main, write_image

from camlib import GradCAM, GuidedBackpropReLUModel, guided_grad_cam
from camlib.models import image_grid
from camlib.utils.image import deprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = example_parser(
        "guided_gradcam_example.py",
        "Grad-CAM, guided backpropagation and guided Grad-CAM side by side, one row per class.",
        "guided_gradcam.jpg",
    )
    parser.add_argument(
        "--target-category",
        type=int,
        nargs="+",
        default=None,
        help="class indices (default: the two top classes)",
    )
    return parser


def run(args: argparse.Namespace) -> str:
    """Compute and write the comparison grid; return its path."""
    loaded = load_example_model(args)
    model, target_layers = loaded.net, loaded.target_layers
    rgb_img, input_tensor, _ = load_input(args, loaded)

    with torch.no_grad():
        scores = model(input_tensor)[0]
    categories = args.target_category or scores.argsort(descending=True)[:2].tolist()
    if not all(0 <= c < scores.numel() for c in categories):
        raise ValueError(
            f"--target-category {categories} is out of range: the model has {scores.numel()} outputs"
        )
    names = loaded.class_names

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

    path = write_image(grid, args.output_dir, "guided_gradcam.jpg")
    print(f"explained {', '.join(labels)}; wrote {path}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
