"""Class activation maps for a Vision Transformer: torchvision's vit_b_16, or a timm ViT.

A ViT's layers output tokens, ``[B, 1 + h * w, C]`` (a class token, then one
token per patch), not a feature map. camlib lays them out as ``[B, C, h, w]``
automatically, dropping the class token; pass ``reshape_transform=`` to a CAM
class to do it yourself. The default target layer is the first LayerNorm of the
*second-to-last* block (``encoder.layers[-2].ln_1``): after the last block only
the class token is used, so the last block's patch tokens get no gradient.

    python usage_examples/vit_example.py --image-path cat.jpg                  # pretrained, downloads once
    python usage_examples/vit_example.py --weights none --image-size 64        # offline, random weights
    python usage_examples/vit_example.py --model timm:deit_tiny_patch16_224    # a timm model, if installed
    python usage_examples/vit_example.py --method scorecam --target-layer 'encoder.layers[-4].ln_1'

Writes ``{method}_cam.jpg`` into --output-dir.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _transformer_example
from _transformer_example import run  # noqa: F401


def build_parser():
    """The command-line interface."""
    return _transformer_example.build_parser(
        prog="vit_example.py",
        kind="Vision Transformer",
        default_model="vit_b_16",
        model_help="a torchvision ViT (vit_b_16, the default; vit_b_32, vit_l_16, ...) or timm:<name> (e.g. timm:deit_tiny_patch16_224)",
        layer_help="target layer path (default: encoder.layers[-2].ln_1)",
        size_help="side of the square input (default 224; with --weights none the ViT is built for this size)",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    return _transformer_example.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
