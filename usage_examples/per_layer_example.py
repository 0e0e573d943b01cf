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
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import example_parser, load_example_model, load_input, run_main, write_image

from camlib.models import image_grid, make_cam
from camlib.registry import methods
from camlib.utils.image import show_cam_on_image


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = example_parser(
        "per_layer_example.py",
        "One CAM per target layer and per method, side by side, to choose a target layer.",
        "per_layer.jpg",
    )
    parser.add_argument(
        "--target-layer",
        nargs="+",
        default=None,
        metavar="PATH",
        help="layers to compare (default: the ends of the architecture's last stages)",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["gradcam", "layercam"], choices=[m.name for m in methods() if m.capabilities.per_layer],
        metavar="METHOD", help="methods to compare, one row each (default: gradcam layercam)",
    )  # fmt: skip
    parser.add_argument(
        "--target-category", type=int, default=None, help="class index (default: the top class)"
    )
    return parser


def run(args: argparse.Namespace) -> str:
    """Compute and write the method x layer grid; return its path."""
    loaded = load_example_model(args, target_layers=args.target_layer, per_layer=True)
    paths = loaded.layer_paths
    rgb_img, input_tensor, _ = load_input(args, loaded)

    rows = []
    for method in args.methods:
        with make_cam(method, loaded.net, loaded.target_layers) as cam:
            targets = None if args.target_category is None else [cam.class_target(args.target_category)]
            maps = cam(input_tensor, targets, per_layer=True)[0]  # [L, H, W]: one map per target layer
        rows.append([show_cam_on_image(rgb_img, layer_map, use_rgb=True) for layer_map in maps])
    grid = image_grid(rows, row_labels=list(args.methods), column_labels=list(paths))

    path = write_image(grid, args.output_dir, "per_layer.jpg")
    print(f"{len(args.methods)} method(s) x {len(paths)} layer(s) ({', '.join(paths)}); wrote {path}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
