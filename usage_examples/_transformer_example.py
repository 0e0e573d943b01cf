"""Shared body of vit_example.py and swinT_example.py: parse, explain one image, write it."""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from _common import load_example_model, load_input, run_main, write_image

from camlib.registry import make_cam, method_names
from camlib.utils.image import show_cam_on_image


def build_parser(prog: str, kind: str, default_model: str, model_help: str, layer_help: str,
                 size_help: str) -> argparse.ArgumentParser:
    """The command-line interface of a transformer example (``kind`` names the architecture)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"Class activation map of a {kind}; writes {{method}}_cam.jpg.",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--image-path", default=None, help="input image (default: camlib's bundled sample image)"
    )
    parser.add_argument("--aug-smooth", action="store_true", help="average over test-time augmentations")
    parser.add_argument("--eigen-smooth", action="store_true", help="first principal component of the map")
    parser.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                        help=f"one of: {', '.join(method_names())} (default: gradcam)")  # fmt: skip
    parser.add_argument("--output-dir", default="output", help="where the image is written (default: output)")
    parser.add_argument("--model", default=default_model, help=model_help)
    parser.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (pretrained, the default; needs internet once), none, or a checkpoint path",
    )
    parser.add_argument("--image-size", type=int, default=None, help=size_help)
    parser.add_argument("--target-layer", default=None, help=layer_help)
    parser.add_argument(
        "--target-category", type=int, default=None, help="class index (default: the top class)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def run(args: argparse.Namespace) -> str:
    """Explain the image with a transformer and write ``{method}_cam.jpg``; return its path."""
    loaded = load_example_model(args, target_layers=[args.target_layer] if args.target_layer else None)
    layer_path = loaded.layer_paths[0]
    rgb_img, input_tensor, _ = load_input(args, loaded)

    # No reshape_transform: camlib lays out ViT tokens [1, 1 + h*w, C] and Swin's channels-last
    # [1, h, w, C] activations as a [1, C, h, w] map itself.
    with make_cam(args.method, loaded.net, loaded.target_layers) as cam:
        targets = None if args.target_category is None else [cam.class_target(args.target_category)]
        grayscale_cam = cam(
            input_tensor=input_tensor,
            targets=targets,
            aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth,
        )[0]
        top_class = int(cam.outputs[0].argmax())
    cam_image = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)

    os.makedirs(args.output_dir, exist_ok=True)
    path = write_image(cam_image, args.output_dir, f"{args.method}_cam.jpg")
    explained = args.target_category if args.target_category is not None else top_class
    print(f"{args.model}: {args.method} of class {explained} at {layer_path}; wrote {path}")
    return path


def main(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    return run_main(parser, run, argv)
