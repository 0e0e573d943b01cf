"""The ``camlib report`` subcommand, and the ``--report`` options ``camlib explain`` shares.

Example:
    >>> import argparse
    >>> parser = add_report_arguments(argparse.ArgumentParser(prog="camlib report"))
    >>> args = parser.parse_args(["cams", "--masks", "masks/"])
    >>> args.runs, args.masks, args.allow_mixed
    (['cams'], 'masks/', False)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from camlib.report.runs import ReportError, read_label_file
from camlib.report.site import build_report

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_report_arguments",
    "add_report_options",
    "check_report_options",
    "report_from_args",
]

EXIT_OK = 0
#: The report was written, but files named by the manifest are missing, or masks could not be read.
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_report_options(parser: argparse.ArgumentParser, report_flag: bool = False) -> argparse.ArgumentParser:
    """The report's options (no positional arguments): shared by ``camlib report`` and ``camlib explain --report``.

    Args:
        parser: The parser to add them to.
        report_flag: Also add ``--report`` (for ``camlib explain``: build the report after the run).
    """
    group = parser.add_argument_group("report")
    if report_flag:
        group.add_argument("--report", action="store_true", help="write an HTML report of the run to OUT/report/ "
                           "at the end (see camlib report)")
    group.add_argument("--masks", metavar="PATH", help="object masks: a folder of mask images named like the images "
                       "(non-zero = object), or a JSON file of boxes {path: [[x0, y0, x1, y1], ...]}")
    group.add_argument("--labels", metavar="LABEL_FILE", help="true classes for correct/incorrect (default: a run "
                       "made with --targets LABEL_FILE uses its labels); formats as for --targets")
    group.add_argument("--allow-mixed", action="store_true", help="report a manifest mixing records of several runs")
    group.add_argument("--report-dir", metavar="DIR", help="where to write the report (default: OUT_DIR/report)")
    group.add_argument("--border", type=float, default=0.1, help="border band for the border share, as a fraction "
                       "of each side (default 0.1)")
    group.add_argument("--pointing-tolerance", type=int, default=0, metavar="PIXELS",
                       help="pointing game: a hit when the map's maximum lies within this many map pixels of "
                       "the object (default 0: on it)")
    group.add_argument("--shortcut-threshold", type=float, default=0.5, help="with masks, a shortcut candidate "
                       "has more than this share of its map's energy outside the object (default 0.5)")
    return parser


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``camlib report``: run folders, then :func:`add_report_options`."""
    parser.add_argument("runs", nargs="+", metavar="OUT_DIR", help="the --out folder of a camlib explain run; "
                        "several are shown side by side")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return add_report_options(parser)


def check_report_options(args: argparse.Namespace) -> None:
    """Check the report's options before a long run, so that a typo does not wait for its end.

    Raises:
        ReportError: If ``--masks`` does not exist, ``--labels`` cannot be read, or a number is out of range.
    """
    if args.masks is not None and not os.path.exists(args.masks):
        raise ReportError(f"--masks {args.masks!r} does not exist; pass a folder of mask images or a JSON file of boxes")
    if args.labels is not None:
        read_label_file(args.labels)
    if not 0 <= args.border < 0.5:
        raise ReportError(f"--border must be in [0, 0.5), got {args.border}")
    if args.pointing_tolerance < 0:
        raise ReportError(f"--pointing-tolerance must be >= 0, got {args.pointing_tolerance}")


def report_from_args(args: argparse.Namespace, runs: Optional[Sequence[str]] = None, prog: str = "camlib report") -> int:
    """Build the report for parsed arguments; return the exit status.

    Args:
        args: Parsed :func:`add_report_options` arguments (with ``runs``
            unless ``runs`` is given).
        runs: The run folders (``camlib explain --report`` passes its ``--out``;
            then the report's line is printed even with ``-q``, with the run's summary).
        prog: The program name for messages.

    Returns:
        0 (written), 1 (written, but with missing files or unreadable masks), 2 (bad arguments or run folders: nothing written).
    """
    try:
        check_report_options(args)
        result = build_report(
            list(runs if runs is not None else args.runs),
            dest=args.report_dir,
            masks=args.masks,
            labels=args.labels,
            allow_mixed=args.allow_mixed,
            border=args.border,
            tolerance=args.pointing_tolerance,
            shortcut_threshold=args.shortcut_threshold,
        )
    except (ReportError, OSError) as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    if not getattr(args, "quiet", False) or runs is not None:  # after explain: part of its final summary
        extra = []
        if result.failed:
            extra.append(f"{result.failed} failed image(s)")
        if result.missing_files:
            extra.append(f"{result.missing_files} missing file(s)")
        if result.unreadable_masks:
            extra.append(f"{len(result.unreadable_masks)} unreadable mask(s) skipped")
        shown = f" ({', '.join(extra)})" if extra else ""
        print(f"{prog}: {result.images} images{shown} in {result.build_s:.1f} s: {result.index}")
    return EXIT_FAILED if (result.missing_files or result.unreadable_masks) else EXIT_OK
