"""Explain an image classifier's decision with a class activation map.

Writes three images into --output-dir: ``{method}_cam.jpg`` (the map over the
image), ``{method}_gb.jpg`` (guided backpropagation) and ``{method}_cam_gb.jpg``
(guided Grad-CAM: the two multiplied).

With no arguments it runs offline on camlib's bundled demo model and sample
image (a star and a ring)::

    python usage_examples/cam.py

Other runs::

    python usage_examples/cam.py --model resnet50 --image-path dog.jpg --method gradcam++
    python usage_examples/cam.py --model resnet50 --weights none            # offline, random weights
    python usage_examples/cam.py --model densenet121 --weights chexnet.pth --num-classes 14 \\
        --target-layer features.denseblock4 --image-path xray.png
    python usage_examples/cam.py --per-layer --target-layer 'features[3]' 'features[5]' 'features[-1]'

The flags of pytorch-grad-cam's cam.py (--device, --image-path, --aug-smooth,
--eigen-smooth, --method, --output-dir) work as there. The work is done by
:mod:`camlib.models`; this script only parses the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_example_model, load_input, run_main

from camlib.models import explain
from camlib.registry import method_names


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="cam.py",
        description="Explain an image classifier with a class activation map. With no arguments: the bundled "
        "demo model on the bundled sample image, offline. Writes {method}_cam.jpg, {method}_gb.jpg and "
        "{method}_cam_gb.jpg into --output-dir.",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--image-path",
        default=None,
        help="input image (default: camlib's bundled sample image, a star and a ring)",
    )
    parser.add_argument(
        "--aug-smooth", action="store_true", help="average over test-time augmentations (flip x brightness)"
    )
    parser.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="keep the first principal component of the weighted activations (less noise)",
    )
    parser.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                        help=f"one of: {', '.join(method_names())} (default: gradcam)")  # fmt: skip
    parser.add_argument(
        "--output-dir",
        default="output",
        help="where the images are written (created if needed) (default: output)",
    )
    parser.add_argument(
        "--model",
        default="demo",
        help="'demo' (the default: the bundled demo model), a torchvision classification model "
        "(resnet50, densenet121, vit_b_16, swin_t, ...) or timm:<name> with timm installed",
    )
    parser.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT: pretrained weights (for demo: bundled, offline; for torchvision: downloaded once, needs "
        "internet); none: random weights; or the path of a checkpoint (a state_dict, or a training checkpoint "
        "dict holding one; loaded with weights_only=True). Default: DEFAULT",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="number of outputs of a retrained head (e.g. 14)"
    )
    parser.add_argument(
        "--target-layer",
        action="extend",
        nargs="+",
        default=None,
        metavar="PATH",
        help="target layer path(s), e.g. 'layer4[-1]' or features.denseblock4 (quote brackets in a shell); "
        "default: a sensible layer for the architecture",
    )
    parser.add_argument(
        "--target-category",
        type=int,
        nargs="+",
        default=None,
        metavar="INDEX",
        help="class index(es) to explain, one row of images each (default: the top-scoring class)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="resize the image to N x N, or to H W (default: 128 for demo, 224 for torchvision models)",
    )
    parser.add_argument(
        "--mean", type=float, nargs=3, default=None, metavar="M", help="per-channel normalisation mean (RGB)"
    )
    parser.add_argument(
        "--std", type=float, nargs=3, default=None, metavar="S", help="per-channel normalisation std (RGB)"
    )
    parser.add_argument(
        "--per-layer",
        action="store_true",
        help="one map per target layer, side by side, to choose a layer (without --target-layer: a few layers "
        "of the architecture, shallow to deep)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="batch size of the masked passes of scorecam and ablationcam (default: 32)",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def _write(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")


def run(args: argparse.Namespace) -> List[str]:
    """Build the model, explain the image and write the three images; return their paths."""
    start = time.perf_counter()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    loaded = load_example_model(args, target_layers=args.target_layer, per_layer=args.per_layer)
    rgb, input_tensor, image_name = load_input(args, loaded)
    size, paths, names = loaded.image_size, loaded.layer_paths, loaded.class_names
    result = explain(
        loaded.net,
        input_tensor,
        rgb,
        args.method,
        loaded.target_layers,
        categories=args.target_category,
        aug_smooth=args.aug_smooth,
        eigen_smooth=args.eigen_smooth,
        per_layer=args.per_layer,
        layer_names=paths,
        class_names=names,
        batch_size=args.batch_size,
    )

    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    for suffix, image in (("cam", result.cam), ("gb", result.gb), ("cam_gb", result.cam_gb)):
        path = os.path.join(args.output_dir, f"{args.method}_{suffix}.jpg")
        _write(path, image)
        written.append(path)

    def label(index: int) -> str:
        return f"{index} {names[index]}" if names is not None else f"class {index}"

    top = np.argsort(-result.scores)[:5]
    weights = "bundled" if args.model == "demo" and args.weights.lower() == "default" else args.weights
    print(f"model: {args.model} (weights: {weights}) on {loaded.device}; image: {image_name}, {size[0]}x{size[1]}")
    print(f"method: {args.method}; target layer(s): {', '.join(paths)}")
    print("top scores: " + ", ".join(f"{label(i)} ({result.scores[i]:.2f})" for i in top))
    print("explained: " + ", ".join(result.class_labels))
    print(f"wrote {', '.join(written)} in {time.perf_counter() - start:.1f} s")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error, like argparse)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
