"""Class activation maps for a Swin Transformer: torchvision's swin_t, or a timm Swin.

Swin layers output channels-last maps, ``[B, h, w, C]`` (torchvision) or
windows of tokens (some timm versions), not ``[B, C, h, w]``. camlib lays them
out as ``[B, C, h, w]`` automatically; pass ``reshape_transform=`` to a CAM
class to do it yourself (``camlib.utils.reshape_transforms.swinT_reshape_transform``
is the reference's). The default target layer is the first LayerNorm of the
last block, ``features[-1][-1].norm1``.

    python usage_examples/swinT_example.py --image-path cat.jpg                  # pretrained, downloads once
    python usage_examples/swinT_example.py --weights none --image-size 64        # offline, random weights
    python usage_examples/swinT_example.py --model timm:swin_tiny_patch4_window7_224

Writes ``{method}_cam.jpg`` into --output-dir.
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


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="swinT_example.py",
        description="Class activation map of a Swin Transformer; writes {method}_cam.jpg.",
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
    parser.add_argument(
        "--model",
        default="swin_t",
        help="a torchvision Swin (swin_t, the default; swin_s, swin_b, swin_v2_t, ...) or timm:<name>",
    )
    parser.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (pretrained, the default; needs internet once), none, or a checkpoint path",
    )
    parser.add_argument("--image-size", type=int, default=None, help="side of the square input (default 224)")
    parser.add_argument(
        "--target-layer", default=None, help="target layer path (default: features[-1][-1].norm1)"
    )
    parser.add_argument(
        "--target-category", type=int, default=None, help="class index (default: the top class)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def run(args: argparse.Namespace) -> str:
    """Explain the image with a Swin Transformer and write ``{method}_cam.jpg``; return its path."""
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
    # No reshape_transform: camlib turns the channels-last [1, h, w, C] activations into [1, C, h, w].
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
    path = os.path.join(args.output_dir, f"{args.method}_cam.jpg")
    if not cv2.imwrite(path, cv2.cvtColor(cam_image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")
    explained = args.target_category if args.target_category is not None else top_class
    print(f"{args.model}: {args.method} of class {explained} at {layer_path}; wrote {path}")
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
