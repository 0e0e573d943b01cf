"""What the image-grid examples (guided Grad-CAM, per-layer) share: their common
command-line options, loading the input, writing the grid and the exit status."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from camlib.demo import load_sample_image
from camlib.models import LoadedModel, load_image, load_model, resize_image
from camlib.models.loading import size_pair
from camlib.utils.image import preprocess_image


def example_parser(prog: str, description: str, output_name: str) -> argparse.ArgumentParser:
    """A parser with the options every grid example takes; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--image-path", default=None, help="input image (default: camlib's bundled sample image)"
    )
    parser.add_argument(
        "--output-dir", default="output", help=f"where {output_name} is written (default: output)"
    )
    parser.add_argument(
        "--model", default="demo", help="'demo' (default) or a torchvision classification model"
    )
    parser.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT (the default), none, or a checkpoint path"
    )
    parser.add_argument("--image-size", type=int, default=None, help="side of the square input")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def load_example_model(
    args: argparse.Namespace, *, target_layers: Optional[Sequence[str]] = None, per_layer: bool = False
) -> LoadedModel:
    """The model the options name, with its input settings and target layers
    (:func:`camlib.models.load_model`, the loader every front end uses)."""
    try:
        size_pair(args.image_size)
    except (TypeError, ValueError) as err:
        shown = " ".join(map(str, args.image_size)) if isinstance(args.image_size, list) else args.image_size
        raise ValueError(f"--image-size takes one or two positive ints (N, or H W), got {shown}") from err
    return load_model(
        args.model,
        weights=args.weights,
        num_classes=getattr(args, "num_classes", None),
        device=args.device,
        image_size=args.image_size,
        mean=getattr(args, "mean", None),
        std=getattr(args, "std", None),
        target_layers=target_layers,
        per_layer=per_layer,
    )


def load_input(args: argparse.Namespace, loaded: LoadedModel) -> tuple[np.ndarray, torch.Tensor, str]:
    """The RGB image in [0, 1] at the model's input size, its normalised batch of one
    on the model's device, and a description of the image."""
    size = loaded.image_size
    if args.image_path:
        rgb_img, name = load_image(args.image_path, size), args.image_path
    else:
        rgb_img, name = resize_image(load_sample_image(), size), "camlib's bundled sample image"
    input_tensor = preprocess_image(rgb_img, mean=loaded.mean, std=loaded.std).to(loaded.device)
    return rgb_img, input_tensor, name


def write_image(rgb: np.ndarray, output_dir: str, name: str) -> str:
    """Write an RGB ``uint8`` image as ``output_dir/name``; return the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")
    return path


def run_main(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object], argv: Optional[Sequence[str]]
) -> int:
    """Parse, run, and turn a user error into a one-line message and exit status 2
    (like argparse); ``--traceback`` shows the whole traceback instead."""
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as err:
        if args.traceback:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
