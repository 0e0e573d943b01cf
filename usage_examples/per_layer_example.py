"""Choose a target layer: one map per layer (and per method), side by side.

Which layer to explain is the first decision with any CAM method: deep layers
give class-specific but coarse maps, shallower ones finer but less specific
maps. Pass several target layers and call the CAM with ``per_layer=True``: it
returns one map per layer, ``[B, L, H, W]``, from a single forward and backward
pass, instead of their average.

    python usage_examples/per_layer_example.py                          # demo model, offline
    python usage_examples/per_layer_example.py --methods gradcam layercam eigencam
    python usage_examples/per_layer_example.py --model resnet50 --image-path cat.jpg \\
        --target-layer 'layer2[-1]' 'layer3[-1]' 'layer4[-1]'

Writes ``per_layer.jpg`` into --output-dir: one row per method, one column per layer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import cv2

from camlib.demo import load_sample_image
from camlib.models import (
    CAM_METHODS,
    build_model,
    candidate_target_layer_paths,
    default_preprocessing,
    image_grid,
    load_image,
    make_cam,
    resize_image,
    resolve_device,
    resolve_target_layers,
)
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="per_layer_example.py",
        description="One CAM per target layer and per method, side by side, to choose a target layer.",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--image-path", default=None, help="input image (default: camlib's bundled sample image)"
    )
    parser.add_argument(
        "--output-dir", default="output", help="where per_layer.jpg is written (default: output)"
    )
    parser.add_argument(
        "--model", default="demo", help="'demo' (default) or a torchvision classification model"
    )
    parser.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT (the default), none, or a checkpoint path"
    )
    parser.add_argument("--image-size", type=int, default=None, help="side of the square input")
    parser.add_argument(
        "--target-layer",
        nargs="+",
        default=None,
        metavar="PATH",
        help="layers to compare (default: the ends of the architecture's last stages)",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["gradcam", "layercam"], choices=[m for m in CAM_METHODS if m != "fullgrad"],
        metavar="METHOD", help="methods to compare, one row each (default: gradcam layercam)",
    )  # fmt: skip
    parser.add_argument(
        "--target-category", type=int, default=None, help="class index (default: the top class)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def run(args: argparse.Namespace) -> str:
    """Compute and write the method x layer grid; return its path."""
    device = resolve_device(args.device)
    model = build_model(args.model, args.weights, device=device, image_size=args.image_size)
    paths = args.target_layer or candidate_target_layer_paths(args.model)
    target_layers = resolve_target_layers(model, paths)
    preprocessing = default_preprocessing(args.model, model)
    size = (args.image_size, args.image_size) if args.image_size else preprocessing.image_size
    rgb_img = (
        load_image(args.image_path, size) if args.image_path else resize_image(load_sample_image(), size)
    )
    input_tensor = preprocess_image(rgb_img, mean=preprocessing.mean, std=preprocessing.std).to(device)

    targets = None if args.target_category is None else [ClassifierOutputTarget(args.target_category)]
    rows = []
    for method in args.methods:
        with make_cam(method, model, target_layers) as cam:
            maps = cam(input_tensor, targets, per_layer=True)[0]  # [L, H, W]: one map per target layer
        rows.append([show_cam_on_image(rgb_img, layer_map, use_rgb=True) for layer_map in maps])
    grid = image_grid(rows, row_labels=list(args.methods), column_labels=list(paths))

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "per_layer.jpg")
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")
    print(f"{len(args.methods)} method(s) x {len(paths)} layer(s) ({', '.join(paths)}); wrote {path}")
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
