"""The ``camlib`` command line (also ``python -m camlib``).

Subcommands:

* ``camlib explain``: class activation maps for a whole data set, in batches,
  resumable, sharded across processes and machines with ``torchrun``
  (:mod:`camlib.cli.explain`; ``docs/explain.md``); ``--report`` adds an HTML page;
* ``camlib report``: that page for one or several runs (:mod:`camlib.report`).

Example:
    >>> main(["explain", "--help"])  # doctest: +ELLIPSIS
    usage: camlib explain [-h] --out DIR ...
    ...
    0
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from camlib.cli.explain import add_explain_arguments, run_explain, run_from_args
from camlib.report.command import (
    add_report_arguments,
    add_report_options,
    check_report_options,
    report_from_args,
)
from camlib.report.runs import ReportError

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
    add_report_options(explain, report_flag=True)
    report = commands.add_parser(
        "report",
        help="an HTML page to review one or several camlib explain runs",
        description="Write OUT_DIR/report/index.html: a static page (no server, no network) with the run's "
        "summary, classes, a grid of images and overlays to sort and filter, and a detail view, built from "
        "manifest.jsonl and the saved heatmaps. Several run folders are shown side by side. Exit status: 0 "
        "written, 1 written but files or masks are missing, 2 bad arguments.",
        epilog="Example: camlib report cams/ --masks masks/ --labels val_labels.csv. See docs/explain.md.",
    )
    add_report_arguments(report)
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
    prog = f"{parser.prog} {args.command}"
    if args.command == "report":
        return report_from_args(args, prog=prog)
    if args.report:  # check the report's options now rather than after a long run
        try:
            check_report_options(args)
        except ReportError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
    status = run_from_args(args, prog=prog)
    if args.report and status in (0, 1) and int(os.environ.get("RANK", "0") or 0) == 0:
        status = max(status, report_from_args(args, runs=[args.out], prog=prog))
    return status
