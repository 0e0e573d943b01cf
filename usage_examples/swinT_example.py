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

import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _transformer_example
from _transformer_example import run  # noqa: F401


def build_parser():
    """The command-line interface."""
    return _transformer_example.build_parser(
        prog="swinT_example.py",
        kind="Swin Transformer",
        default_model="swin_t",
        model_help="a torchvision Swin (swin_t, the default; swin_s, swin_b, swin_v2_t, ...) or timm:<name>",
        layer_help="target layer path (default: features[-1][-1].norm1)",
        size_help="side of the square input (default 224)",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (2 for a user error)."""
    return _transformer_example.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
