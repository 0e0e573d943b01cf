"""The ``camlib`` command line (also ``python -m camlib``).

Subcommands:

* ``camlib explain``: class activation maps for a whole data set, in batches,
  resumable, sharded across processes and machines with ``torchrun``
  (:mod:`camlib.cli.explain`; ``docs/explain.md``).

Example:
    >>> main(["explain", "--help"])  # doctest: +ELLIPSIS
    usage: camlib explain [-h] --out DIR ...
    ...
    0
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from camlib.cli.explain import add_explain_arguments, run_explain, run_from_args

__all__ = ["build_parser", "main", "run_explain"]


def build_parser() -> argparse.ArgumentParser:
    """The ``camlib`` argument parser, with its subcommands."""
    from camlib import __version__

    parser = argparse.ArgumentParser(
        prog="camlib",
        description="Class activation maps for PyTorch classifiers, from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"camlib {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = commands.add_parser(
        "explain",
        help="CAMs for a whole data set: batched, resumable, sharded with torchrun",
        description="Explain every image of a data set with a class activation map: heatmaps (float16 .npy, "
        "or one .npz per shard), overlays and a JSON Lines manifest, mirroring the input folders under --out. "
        "Resumable (--resume) and sharded across processes under torchrun. Exit status: 0 all images "
        "explained, 1 some failed (see the manifest), 2 bad arguments.",
        epilog="Example: camlib explain data/val --model resnet50 --weights DEFAULT --method gradcam "
        "--out cams/ --batch-size 64. Several processes: torchrun --nproc_per_node 4 -m camlib explain ... "
        "See docs/explain.md.",
    )
    add_explain_arguments(explain)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 some images failed, 2 bad arguments).

    Args:
        argv: The arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's errors
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_from_args(args, prog=f"{parser.prog} {args.command}")
