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
from camlib.models import Preprocessing, default_preprocessing, load_image, resize_image
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


def load_input(
    args: argparse.Namespace, model: torch.nn.Module, device: torch.device
) -> tuple[np.ndarray, torch.Tensor, Preprocessing]:
    """The RGB image in [0, 1] at the model's input size, its normalised batch of one
    on ``device``, and the preprocessing used."""
    preprocessing = default_preprocessing(args.model, model)
    size = (args.image_size, args.image_size) if args.image_size else preprocessing.image_size
    rgb_img = load_image(args.image_path, size) if args.image_path else resize_image(load_sample_image(), size)
    input_tensor = preprocess_image(rgb_img, mean=preprocessing.mean, std=preprocessing.std).to(device)
    return rgb_img, input_tensor, preprocessing


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
