"""The settings of one ``camlib explain`` run: one dataclass, from argparse or from Python to the pipeline.

:class:`ExplainSettings` is written once: its fields are the keyword
arguments of :func:`camlib.cli.explain.run_explain`, the argparse
destinations of :func:`add_explain_arguments` (so :meth:`ExplainSettings.from_namespace`
needs no table), and what the pipeline reads. :meth:`ExplainSettings.checked`
returns a normalised copy or raises :class:`~camlib.cli.inputs.UsageError`
naming the option and the fix.

Example:
    >>> settings = ExplainSettings(inputs=["data"], out="cams", method="GradCAM", save="heatmap").checked()
    >>> settings.method, settings.save, settings.spec.kind
    ('gradcam', ('heatmap',), 'top1')
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from camlib.cli.inputs import TargetSpec, UsageError, parse_targets
from camlib.cli.outputs import OVERLAY_FORMATS
from camlib.models.loading import rgb_triple, size_pair
from camlib.registry import get_method, method_names

__all__ = ["SAVE_KINDS", "ExplainSettings", "add_explain_arguments"]

#: What ``--save`` accepts.
SAVE_KINDS = ("overlay", "heatmap")


@dataclass(frozen=True)
class ExplainSettings:
    """Everything one run of ``camlib explain`` needs (see :func:`camlib.cli.explain.run_explain`).

    Attributes:
        inputs: Image files, folders and text files listing image paths.
        out: The output folder.
        model: A model name (``"demo"``, ``"resnet50"``, ``"timm:<name>"``) or an ``nn.Module``.
        weights: ``"DEFAULT"``, ``"none"`` or a checkpoint path (model names only).
        num_classes: Outputs of a retrained head.
        method: A registered method name (:func:`camlib.registry.method_names`).
        target_layers: Layer paths (or modules of a model object); None: the architecture's.
        targets: ``"top1"``, ``"topk:K"`` or a label file.
        batch_size: Images per CAM call.
        num_workers: DataLoader worker processes (None: up to 4).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        image_size: Model input size, ``N`` or ``(H, W)``; None: the model's.
        mean: Normalisation mean (RGB); None: the model's.
        std: Normalisation std (RGB); None: the model's.
        save: ``"overlay"``, ``"heatmap"`` or both.
        heatmap_format: ``"npy"`` or ``"npz"``.
        shard_size: Images per ``.npz`` shard.
        overlay_format: ``"jpg"`` or ``"png"``.
        jpeg_quality: JPEG quality of the overlays (0-100).
        output_size: ``"input"`` or ``"original"``.
        resume: Keep the complete outputs of an earlier run and do the rest.
        overwrite: Start again in an ``out`` that holds an earlier run.
        aug_smooth: Test-time augmentation smoothing.
        eigen_smooth: First principal component of the weighted activations.
        progress: Progress bar (None: unless ``CAMLIB_DISABLE_PROGRESS=1``).
        write_threads: Threads encoding and writing outputs.
        threads: torch's intra-op threads during the run (None: leave as is).
        fsync: fsync the manifest after each batch's records.
        dist_timeout: Seconds a process waits for the others under torchrun.
    """

    inputs: Sequence[Union[str, os.PathLike]]
    out: Union[str, os.PathLike]
    model: Union[str, nn.Module] = "demo"
    weights: Union[str, os.PathLike, None] = "DEFAULT"
    num_classes: Optional[int] = None
    method: str = "gradcam"
    target_layers: Optional[Sequence[Union[str, nn.Module]]] = None
    targets: str = "top1"
    batch_size: int = 32
    num_workers: Optional[int] = None
    device: Union[str, torch.device, None] = "auto"
    image_size: Union[int, Sequence[int], None] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    save: Union[str, Sequence[str]] = SAVE_KINDS
    heatmap_format: str = "npy"
    shard_size: int = 1024
    overlay_format: str = "jpg"
    jpeg_quality: int = 95
    output_size: str = "input"
    resume: bool = False
    overwrite: bool = False
    aug_smooth: bool = False
    eigen_smooth: bool = False
    progress: Optional[bool] = None
    write_threads: int = 2
    threads: Optional[int] = None
    fsync: bool = True
    dist_timeout: float = 1800.0

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> ExplainSettings:
        """The settings from :func:`add_explain_arguments`'s parsed arguments (other attributes are ignored)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    # -- derived values (of checked settings) ----------------------------------
    @property
    def out_dir(self) -> str:
        """``out`` as a string."""
        return os.fspath(self.out)

    @cached_property
    def spec(self) -> TargetSpec:
        """``targets`` parsed."""
        return parse_targets(self.targets)

    @property
    def npz(self) -> bool:
        """Heatmaps go into ``.npz`` shards."""
        return self.heatmap_format == "npz" and "heatmap" in self.save

    @property
    def overlay_extension(self) -> str:
        """``".jpg"`` or ``".png"``."""
        return OVERLAY_FORMATS[self.overlay_format]

    # -- checking ---------------------------------------------------------------
    def checked(self) -> ExplainSettings:
        """A normalised copy (absolute ``out``, lower-case names, tuples).

        Raises:
            UsageError: For the first invalid setting, naming its option.
        """
        inputs = self.inputs
        settings = replace(
            self,
            inputs=[inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs),
            out=os.path.abspath(os.fspath(self.out)),
            method=_check_method(self.method),
            batch_size=_int_at_least("--batch-size", self.batch_size),
            num_workers=_int_at_least(
                "--num-workers", min(4, os.cpu_count() or 1) if self.num_workers is None else self.num_workers, 0
            ),
            image_size=_check_size(self.image_size),
            mean=_check_triple("--mean", self.mean),
            std=_check_triple("--std", self.std),
            save=_check_save(self.save),
            heatmap_format=_check_choice("--heatmap-format", self.heatmap_format, ("npy", "npz")),
            shard_size=_int_at_least("--shard-size", self.shard_size),
            overlay_format=_check_choice("--overlay-format", self.overlay_format, tuple(OVERLAY_FORMATS)),
            jpeg_quality=_int_at_least("--jpeg-quality", self.jpeg_quality, 0),
            output_size=_check_choice("--output-size", self.output_size, ("input", "original")),
            resume=bool(self.resume),
            overwrite=bool(self.overwrite),
            aug_smooth=bool(self.aug_smooth),
            eigen_smooth=bool(self.eigen_smooth),
            write_threads=_int_at_least("--write-threads", self.write_threads),
            threads=None if self.threads is None else _int_at_least("--threads", self.threads),
            fsync=bool(self.fsync),
            dist_timeout=float(self.dist_timeout),
        )
        settings.spec  # noqa: B018 (parses --targets now, so that a mistake is reported before any work)
        if settings.jpeg_quality > 100:
            raise UsageError(f"--jpeg-quality must be from 0 to 100, got {self.jpeg_quality}")
        if settings.resume and settings.overwrite:
            raise UsageError(
                "--resume and --overwrite exclude each other: resume keeps earlier outputs, overwrite redoes them"
            )
        capabilities = get_method(settings.method).capabilities
        if settings.aug_smooth and not capabilities.aug_smooth:
            raise UsageError(f"--aug-smooth does not apply to {settings.method}")
        if settings.eigen_smooth and not capabilities.eigen_smooth:
            raise UsageError(f"--eigen-smooth does not apply to {settings.method}")
        return settings


def _check_method(method: Any) -> str:
    if not isinstance(method, str):
        raise UsageError(f"--method must be a method name, got {type(method).__name__}")
    try:
        return get_method(method).name
    except ValueError as err:
        raise UsageError(str(err)) from err


def _check_save(save: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    items = save.split(",") if isinstance(save, str) else list(save)
    kinds = []
    for item in items:
        kind = str(item).strip().lower()
        kind = kind[:-1] if kind in ("overlays", "heatmaps") else kind
        if kind not in SAVE_KINDS:
            raise UsageError(f"--save {','.join(map(str, items))!r}: {item!r} is not one of {', '.join(SAVE_KINDS)}")
        kinds.append(kind)
    if not kinds:
        raise UsageError("--save is empty; use overlay, heatmap or overlay,heatmap")
    return tuple(k for k in SAVE_KINDS if k in kinds)


def _int_at_least(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(image_size: Union[int, Sequence[int], None]) -> Optional[Tuple[int, int]]:
    try:
        return size_pair(image_size)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--image-size takes one or two positive ints (N, or H W), got {image_size!r}") from err


def _check_triple(name: str, values: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    try:
        return rgb_triple(name, values)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise UsageError(f"{name} must be {' or '.join(choices)}, got {value!r}")
    return text


# --------------------------------------------------------------------------- the command line


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``camlib explain``'s arguments to ``parser``; their destinations are :class:`ExplainSettings`' fields."""
    d = ExplainSettings  # the defaults live on the dataclass
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders (searched recursively) or text files (.txt, .lst) listing image paths",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=d.model,
        help="'demo' (default: camlib's bundled demo model), a torchvision classification model "
        "(resnet50, densenet121, vit_b_16, swin_t, ...) or timm:<name> with timm installed",
    )  # fmt: skip
    model.add_argument(
        "--weights", default=d.weights,
        help="DEFAULT: pretrained (demo: bundled, offline; torchvision: downloaded once); none: random; "
        "or a checkpoint path (state_dict or training checkpoint; read with weights_only=True)",
    )  # fmt: skip
    model.add_argument("--num-classes", type=int, default=d.num_classes, help="outputs of a retrained head, e.g. 14")
    model.add_argument(
        "--method", default=d.method, metavar="METHOD",
        help=f"one of: {', '.join(method_names())} (default: {d.method})",
    )  # fmt: skip
    model.add_argument(
        "--target-layer", dest="target_layers", action="extend", nargs="+", default=d.target_layers, metavar="PATH",
        help="target layer path(s), e.g. 'layer4[-1]' (quote brackets in a shell); default: the architecture's usual one",
    )  # fmt: skip
    model.add_argument(
        "--targets", default=d.targets,
        help="top1 (default: each image's top class), topk:K (the K top classes, one map each) or a label "
        "file (.csv, .tsv, .txt, .json) mapping image paths to class indices",
    )  # fmt: skip
    model.add_argument(
        "--image-size", type=int, nargs="+", default=d.image_size, metavar="N",
        help="model input size: N (square) or H W (default: 128 for demo, 224 for torchvision models)",
    )  # fmt: skip
    model.add_argument("--mean", type=float, nargs=3, default=d.mean, metavar="M", help="normalisation mean (RGB)")
    model.add_argument("--std", type=float, nargs=3, default=d.std, metavar="S", help="normalisation std (RGB)")
    model.add_argument("--aug-smooth", action="store_true", help="test-time augmentation smoothing")
    model.add_argument("--eigen-smooth", action="store_true", help="first principal component of the weighted activations")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per CAM batch (default: {d.batch_size})")
    run.add_argument(
        "--num-workers", type=int, default=d.num_workers,
        help="DataLoader worker processes decoding images (default: min(4, CPUs); 0: in the main process)",
    )  # fmt: skip
    run.add_argument(
        "--device", default=d.device,
        help="auto (default: CUDA if available, else CPU), cpu, cuda, cuda:N, mps; under torchrun, cuda means cuda:LOCAL_RANK",
    )  # fmt: skip
    run.add_argument("--resume", action="store_true", help="keep complete outputs in --out and do the rest")
    run.add_argument(
        "--overwrite", action="store_true",
        help="start again in an --out that holds an earlier camlib run (its recorded outputs are deleted)",
    )  # fmt: skip
    run.add_argument(
        "--write-threads", type=int, default=d.write_threads,
        help=f"threads encoding and writing outputs (default: {d.write_threads})",
    )  # fmt: skip
    run.add_argument(
        "--threads", type=int, default=d.threads,
        help="torch CPU threads of each process (default: torch's; torchrun sets OMP_NUM_THREADS=1)",
    )  # fmt: skip
    run.add_argument(
        "--no-fsync", dest="fsync", action="store_false", help="do not fsync the manifest after each batch"
    )
    run.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, default=d.progress,
        help="no progress bar (also CAMLIB_DISABLE_PROGRESS=1)",
    )  # fmt: skip
    run.add_argument(
        "--dist-timeout", type=float, default=d.dist_timeout, metavar="SECONDS",
        help=f"under torchrun: how long a process waits for the others before failing (default: {d.dist_timeout:g})",
    )  # fmt: skip
    run.add_argument("-q", "--quiet", action="store_true", help="only errors and the final summary")
    run.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--save", default=",".join(d.save),
        help="what to write: overlay, heatmap or overlay,heatmap (default); the manifest is always written",
    )  # fmt: skip
    outputs.add_argument(
        "--heatmap-format", choices=("npy", "npz"), default=d.heatmap_format,
        help="npy: one float16 .npy per image (default); npz: one .npz per shard of --shard-size images",
    )  # fmt: skip
    outputs.add_argument(
        "--shard-size", type=int, default=d.shard_size, help=f"images per .npz shard (default: {d.shard_size})"
    )
    outputs.add_argument(
        "--overlay-format", choices=("jpg", "png"), default=d.overlay_format, help="overlay format (default: jpg)"
    )
    outputs.add_argument(
        "--jpeg-quality", type=int, default=d.jpeg_quality, help=f"JPEG quality of the overlays (default: {d.jpeg_quality})"
    )
    outputs.add_argument(
        "--output-size", choices=("input", "original"), default=d.output_size,
        help="input: maps and overlays at the model's input size (default); original: at each image's own size",
    )  # fmt: skip
    return parser
