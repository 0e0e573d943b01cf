"""Shared body of vit_example.py and swinT_example.py: parse, explain one image, write it."""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from _common import run_main, write_image

from camlib.demo import load_sample_image
from camlib.models import (
    CAM_METHODS,
    build_model,
    default_preprocessing,
    default_target_layer_paths,
    load_image,
    make_cam,
    resize_image,
    resolve_device,
    resolve_target_layers,
)
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


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
    parser.add_argument("--method", default="gradcam", choices=list(CAM_METHODS), metavar="METHOD",
                        help=f"one of: {', '.join(CAM_METHODS)} (default: gradcam)")  # fmt: skip
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
    device = resolve_device(args.device)
    model = build_model(args.model, args.weights, device=device, image_size=args.image_size)
    layer_path = args.target_layer or default_target_layer_paths(args.model)[0]
    target_layers = resolve_target_layers(model, [layer_path])

    preprocessing = default_preprocessing(args.model, model)
    size = (args.image_size, args.image_size) if args.image_size else preprocessing.image_size
    if args.image_path:
        rgb_img = load_image(args.image_path, size)
    else:
        rgb_img = resize_image(load_sample_image(), size)
    input_tensor = preprocess_image(rgb_img, mean=preprocessing.mean, std=preprocessing.std).to(device)

    targets = None if args.target_category is None else [ClassifierOutputTarget(args.target_category)]
    # No reshape_transform: camlib lays out ViT tokens [1, 1 + h*w, C] and Swin's channels-last
    # [1, h, w, C] activations as a [1, C, h, w] map itself.
    with make_cam(args.method, model, target_layers) as cam:
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
