"""``camlib explain``: class activation maps for a whole data set, resumable, sharded with torchrun.

The pipeline, top to bottom:

1. **Plan** (rank 0): collect the input images (:func:`camlib.cli.inputs.collect_images`),
   sorted by their path relative to the inputs' common folder; read the label
   file if any; cut the list into *work units* of consecutive images (one batch,
   or one ``.npz`` shard); check ``--out`` (``--resume``/``--overwrite``) and
   write ``run.json``. The plan is broadcast to every rank.
2. **Model**: :func:`camlib.models.build_model`, target layers, :func:`camlib.models.make_cam`,
   exactly as ``usage_examples/cam.py`` does.
3. **Shard**: unit ``k`` belongs to rank ``k % world_size``. A unit is always
   computed as the same batches of the same images, in every run and on every
   rank, so a map never depends on how many processes ran or on what was done
   before a resume: the union of a 2-process run equals a 1-process run byte for
   byte. (A CAM is computed per image, but a batch of 1 and a batch of 8 may use
   different convolution kernels, which differ in the last bits of float32.)
4. **Compute**: a DataLoader with workers decodes and resizes; the CAM runs in
   batches on the device; a pool of writer threads blends overlays, encodes and
   writes files while the next batch is computed.
5. **Write**: each file goes to a temporary name and is renamed into place;
   only then is the image's manifest record appended (flushed and fsynced) to
   this rank's ``manifest.rank<R>.jsonl``.
6. **Merge** (rank 0): every rank's records are gathered; ``manifest.jsonl``
   (one record per image, input order) and ``summary.json`` are written.

Use it from Python with :func:`run_explain`, from a shell with ``camlib explain``
(see ``docs/explain.md``).

Example:
    >>> import os, tempfile, cv2
    >>> from camlib.demo import make_image
    >>> folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for seed in range(3):
    ...     _ = cv2.imwrite(os.path.join(folder, f"{seed}.png"), (make_image(seed, 64)[0][..., ::-1] * 255).astype("uint8"))
    >>> result = run_explain([folder], out, image_size=64, num_workers=0, device="cpu", progress=False)
    >>> result.ok, result.failed, sorted(os.listdir(os.path.join(out, "heatmaps")))
    (3, 0, ['0.npy', '1.npy', '2.npy'])
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from camlib.cli.dataset import ImageDataset, collate, source_stat, worker_init
from camlib.cli.distributed import DistContext, env_rank, init_distributed
from camlib.cli.inputs import TargetSpec, UsageError, collect_images, parse_targets, read_label_file
from camlib.cli.manifest import (
    MANIFEST_NAME,
    ManifestWriter,
    best_records,
    read_records,
    record_complete,
    shard_files,
    shard_path,
    write_manifest,
)
from camlib.cli.outputs import HEATMAP_DIR, OVERLAY_FORMATS, atomic_write, remove_temporaries, shard_name
from camlib.cli.pipeline import (
    CamEngine,
    LoadedModel,
    OutputOptions,
    OutputWriter,
    Plan,
    WriterFailed,
    load_model,
)
from camlib.models import CAM_METHODS, resolve_device
from camlib.utils.progress import progress_bar, progress_enabled

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RUN_CONFIG_NAME",
    "SAVE_KINDS",
    "SUMMARY_NAME",
    "ExplainAborted",
    "ExplainResult",
    "PeerError",
    "add_explain_arguments",
    "run_explain",
    "run_from_args",
]

logger = logging.getLogger("camlib.cli")

#: Exit status: every image explained.
EXIT_OK = 0
#: Exit status: some images failed (see the manifest and summary), or the run was aborted.
EXIT_FAILED = 1
#: Exit status: bad arguments (argparse's convention).
EXIT_USAGE = 2
#: What ``--save`` accepts.
SAVE_KINDS = ("overlay", "heatmap")
#: The run's settings, under ``--out``; ``--resume`` checks them.
RUN_CONFIG_NAME = "run.json"
#: Totals and failures of the last run, under ``--out``.
SUMMARY_NAME = "summary.json"

# Settings that change the outputs: a resumed run must use the same ones.
_MUST_MATCH = (
    "model",
    "weights",
    "num_classes",
    "method",
    "target_layers",
    "targets",
    "image_size",
    "mean",
    "std",
    "output_size",
    "save",
    "heatmap_format",
    "shard_size",
    "overlay_format",
    "jpeg_quality",
    "aug_smooth",
    "eigen_smooth",
)


class ExplainAborted(RuntimeError):
    """The run stopped part-way (a write failed, the CAM fails for every image, ...).

    What was written so far is complete; fix the cause and run again with ``--resume``.
    """


class PeerError(UsageError):
    """A mistake every rank finds alike (in the arguments, or by rank 0 while planning):
    rank 0 reports it, the other ranks exit without printing it again."""


@dataclass
class ExplainResult:
    """What a run did.

    Attributes:
        out_dir: The output folder.
        manifest: Path of ``manifest.jsonl``.
        total: Images in the input.
        ok: Images with complete outputs (explained now or before a resume).
        failed: Images that could not be read or explained.
        reused: Images already complete before this run (``--resume``).
        computed: Images whose records this run wrote, all processes together.
        elapsed_s: Wall time of the compute phase (the slowest process).
        images_per_s: Images through the CAM per second, all processes together.
        failures: ``(relative path, error message)`` of each failed image.
        world_size: Number of processes.
    """

    out_dir: str
    manifest: str
    total: int
    ok: int
    failed: int
    reused: int
    computed: int
    elapsed_s: float
    images_per_s: float
    failures: List[Tuple[str, str]] = field(default_factory=list)
    world_size: int = 1

    @property
    def exit_code(self) -> int:
        """0 if every image was explained, 1 otherwise."""
        return EXIT_OK if self.failed == 0 else EXIT_FAILED


# --------------------------------------------------------------------------- checking the arguments


@dataclass
class _Settings:
    """The checked arguments of one run."""

    inputs: Sequence[Union[str, os.PathLike]]
    out_dir: str
    model: Union[str, nn.Module]
    weights: Any
    num_classes: Optional[int]
    method: str
    target_layers: Optional[Sequence[Union[str, nn.Module]]]
    spec: TargetSpec
    batch_size: int
    num_workers: int
    device: Union[str, torch.device, None]
    image_size: Optional[Tuple[int, int]]
    mean: Optional[Tuple[float, ...]]
    std: Optional[Tuple[float, ...]]
    save: Tuple[str, ...]
    heatmap_format: str
    shard_size: int
    overlay_format: str
    jpeg_quality: int
    output_size: str
    resume: bool
    overwrite: bool
    aug_smooth: bool
    eigen_smooth: bool
    progress: Optional[bool]
    write_threads: int
    threads: Optional[int]
    fsync: bool
    dist_timeout: float

    @property
    def npz(self) -> bool:
        """Heatmaps go into ``.npz`` shards."""
        return self.heatmap_format == "npz" and "heatmap" in self.save


def _check_method(method: str) -> str:
    if not isinstance(method, str):
        raise UsageError(f"--method must be a method name, got {type(method).__name__}")
    key = method.strip().lower()
    if key not in CAM_METHODS:
        close = difflib.get_close_matches(key, list(CAM_METHODS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown method {method!r}.{hint} Expected one of: {', '.join(CAM_METHODS)}")
    return key


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
    if image_size is None:
        return None
    values = [image_size] if isinstance(image_size, (int, np.integer)) else list(image_size)
    if len(values) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise UsageError(f"--image-size takes one or two positive ints (N, or H W), got {image_size!r}")
    return (int(values[0]), int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def _check_triple(name: str, values: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise UsageError(f"{name} takes three values (R G B), got {len(values)}")
    return values


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise UsageError(f"{name} must be {' or '.join(choices)}, got {value!r}")
    return text


def _pick_device(settings: _Settings, local_rank: int, world: int) -> torch.device:
    """``--device`` as a device; ``auto`` is CUDA if available, and each torchrun process gets its own GPU."""
    device = settings.device
    if isinstance(settings.model, nn.Module):
        own = next((t.device for t in settings.model.parameters()), torch.device("cpu"))
        if device in (None, "auto"):
            return own
        if resolve_device(device) != own:
            raise UsageError(f"the model is on {own} but device={str(device)!r}; move the model or pass device='auto'")
    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and (world > 1 or local_rank > 0):
        text = f"cuda:{local_rank}"  # one GPU per process under torchrun
    try:
        return resolve_device(text)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err


# --------------------------------------------------------------------------- planning (rank 0)


def _run_config(settings: _Settings, loaded: LoadedModel) -> Dict[str, Any]:
    """The settings recorded in ``run.json``."""
    from camlib import __version__

    save = settings.save
    weights = os.fspath(settings.weights) if settings.weights is not None else "none"
    if weights.strip().lower() not in ("default", "none"):
        weights = os.path.abspath(weights)
    jpeg = "overlay" in save and OVERLAY_FORMATS[settings.overlay_format] == ".jpg"
    return {
        "model": loaded.description,
        "weights": weights if isinstance(settings.model, str) else "(model object)",
        "num_classes": settings.num_classes,
        "method": settings.method,
        "target_layers": loaded.layer_names,
        "targets": settings.spec.describe(),
        "image_size": list(loaded.image_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "output_size": settings.output_size,
        "save": list(save),
        "heatmap_format": settings.heatmap_format if "heatmap" in save else None,
        "shard_size": settings.shard_size if settings.npz else None,
        "overlay_format": OVERLAY_FORMATS[settings.overlay_format][1:] if "overlay" in save else None,
        "jpeg_quality": settings.jpeg_quality if jpeg else None,
        "batch_size": settings.batch_size,
        "aug_smooth": settings.aug_smooth,
        "eigen_smooth": settings.eigen_smooth,
        "camlib_version": __version__,
        "torch_version": torch.__version__,
    }


def _prepare_out_dir(settings: _Settings, config: Dict[str, Any]) -> None:
    """Check ``--out`` against an earlier run, clean leftovers, write ``run.json``."""
    out_dir = settings.out_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir!r} is a file; pass a folder (created if needed)")
    config_path = os.path.join(out_dir, RUN_CONFIG_NAME)
    candidates = [config_path, os.path.join(out_dir, MANIFEST_NAME), *shard_files(out_dir)]
    earlier = [p for p in candidates if os.path.exists(p)]
    if earlier and settings.overwrite:
        for path in [*earlier, os.path.join(out_dir, SUMMARY_NAME)]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    elif earlier and not settings.resume:
        raise UsageError(
            f"--out {out_dir!r} already holds a camlib explain run ({os.path.basename(earlier[0])}); "
            "pass --resume to complete it, --overwrite to start again, or choose another --out"
        )
    elif earlier and os.path.exists(config_path):
        try:
            with open(config_path, encoding="utf-8") as handle:
                before = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"cannot read {config_path} ({err}); pass --overwrite to start again") from err
        different = [k for k in _MUST_MATCH if before.get(k) != config.get(k)]
        if different:
            details = "; ".join(f"{k}: {before.get(k)!r} then, {config.get(k)!r} now" for k in different[:4])
            raise UsageError(
                f"--resume: --out {out_dir!r} holds a run made with other settings ({details}); resume with "
                "the same settings, choose another --out, or pass --overwrite to start again"
            )
        if before.get("batch_size") != config.get("batch_size"):
            logger.warning(
                "--resume with --batch-size %s instead of %s: the images explained now are batched differently "
                "and may differ from an uninterrupted run in the last bits",
                config.get("batch_size"),
                before.get("batch_size"),
            )
    os.makedirs(out_dir, exist_ok=True)
    removed = remove_temporaries(out_dir)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    atomic_write(config_path, (json.dumps(config, indent=2) + "\n").encode("utf-8"))


def _make_plan(settings: _Settings, loaded: LoadedModel) -> Plan:
    """Collect the images, read the labels, prepare ``--out``; what every rank will follow."""
    images, root = collect_images(settings.inputs, exclude=settings.out_dir)
    spec = settings.spec
    labels = None
    naming = "topk" if spec.kind == "topk" else "single"
    if spec.kind == "topk" and spec.k > loaded.num_outputs:
        raise UsageError(f"--targets topk:{spec.k} asks for more classes than the model's {loaded.num_outputs} outputs")
    if spec.kind == "labels":
        labels = read_label_file(spec.label_file, images, root)
        too_big = sorted({c for classes in labels.values() for c in classes if c >= loaded.num_outputs})
        if too_big:
            raise UsageError(
                f"label(s) {too_big[:5]} in {spec.label_file} out of range: the model has {loaded.num_outputs} "
                f"outputs (0 to {loaded.num_outputs - 1}); pass --num-classes if its head was retrained"
            )
        if any(len(classes) > 1 for classes in labels.values()):
            naming = "class"
    config = _run_config(settings, loaded)
    _prepare_out_dir(settings, config)
    unit_size = settings.shard_size if settings.npz else settings.batch_size
    return Plan(images, root, labels, unit_size, naming, config)


# --------------------------------------------------------------------------- this rank's share


@dataclass
class _Work:
    """This rank's share: the units still to do and the records it keeps."""

    units: List[Tuple[int, List[int]]]
    skip: Set[int]
    reused: List[dict]

    @property
    def pending(self) -> int:
        """Images this rank will write (the rest of their batches is computed but kept)."""
        return sum(len(positions) for _, positions in self.units) - len(self.skip)


def _local_work(plan: Plan, ctx: DistContext, settings: _Settings) -> _Work:
    """Unit ``k`` belongs to rank ``k % world_size``; with ``--resume``, complete units are skipped.

    A unit with some complete images is computed whole (so that its batches are
    those of an uninterrupted run) but only its incomplete images are written;
    in ``.npz`` mode the whole shard is written again.
    """
    earlier = best_records(read_records(settings.out_dir)) if settings.resume else {}
    work = _Work([], set(), [])
    for unit in range(ctx.rank, plan.num_units, ctx.world_size):
        start, end = plan.unit_range(unit)
        positions = list(range(start, end))
        done: Dict[int, dict] = {}
        for position in positions if earlier else ():
            image = plan.images[position]
            record = earlier.get(image.rel)
            if record is None or not record_complete(record, settings.out_dir, source_stat(image.path)):
                continue
            if plan.labels is not None and record.get("targets") != list(plan.labels[position]):
                continue
            heatmap = record.get("heatmap")
            shard = f"{HEATMAP_DIR}/{shard_name(unit)}"
            if settings.npz and (not isinstance(heatmap, dict) or heatmap.get("file") != shard):
                continue
            record.update(index=image.index, image=image.path)
            done[position] = record
        if len(done) == len(positions):
            work.reused.extend(done[p] for p in positions)
            continue
        work.units.append((unit, positions))
        if not settings.npz:
            work.skip.update(done)
            work.reused.extend(done[p] for p in positions if p in done)
    return work


# --------------------------------------------------------------------------- the compute loop


def _process(plan: Plan, work: _Work, loaded: LoadedModel, ctx: DistContext, settings: _Settings, device: torch.device) -> Tuple[int, float, List[dict]]:
    """Explain this rank's units; return (images processed, seconds, new records)."""
    manifest_path = shard_path(settings.out_dir, ctx.rank)
    if not settings.resume:
        with contextlib.suppress(FileNotFoundError):
            os.remove(manifest_path)  # a stale shard of this rank (another machine's disk)
    if not work.units:
        return 0, 0.0, []
    batches: List[List[int]] = []
    unit_of: Dict[int, int] = {}
    for unit, positions in work.units:
        for i in range(0, len(positions), settings.batch_size):
            batches.append(positions[i : i + settings.batch_size])
            unit_of[batches[-1][0]] = unit
    dataset = ImageDataset(
        [image.path for image in plan.images],
        loaded.image_size,
        loaded.mean,
        loaded.std,
        keep_rgb="overlay" in settings.save,
        original_size=settings.output_size == "original",
    )
    workers = settings.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
    options = OutputOptions(
        save=settings.save,
        npz=settings.npz,
        overlay_extension=OVERLAY_FORMATS[settings.overlay_format],
        jpeg_quality=settings.jpeg_quality,
        original_size=settings.output_size == "original",
        multi_target=plan.naming != "single",
    )
    engine = CamEngine(loaded, settings.spec, plan.labels, settings.aug_smooth, settings.eigen_smooth)
    started = time.perf_counter()
    # OpenCV's thread pool does not survive fork(): a DataLoader worker forked from a process whose
    # pool has threads hangs in its first parallel OpenCV call. Stop the pool before the workers
    # start (the writer threads give the parallelism) and restore it at the end.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        batch_iter = iter(loader)  # the workers start here, before any thread of ours
        with ManifestWriter(manifest_path, fsync=settings.fsync) as manifest:
            writer = OutputWriter(settings.out_dir, plan, loaded, manifest, ctx.rank, options, settings.write_threads)
            bar = progress_bar(
                total=sum(len(b) for b in batches),
                progress=bool(progress_enabled(settings.progress) and ctx.is_main),
                unit="img",
                desc=f"camlib explain ({settings.method})" + (f", rank 0 of {ctx.world_size}" if ctx.world_size > 1 else ""),
                dynamic_ncols=True,
            )
            try:
                processed = _loop(batch_iter, engine, writer, bar, unit_of, work.skip, device)
                writer.close()
            except WriterFailed as err:
                raise ExplainAborted(str(err)) from err
            finally:
                bar.close()
                writer.pool.shutdown(wait=True)
    finally:
        cv2.setNumThreads(cv2_threads)
    return processed, time.perf_counter() - started, writer.records


def _loop(batch_iter, engine: CamEngine, writer: OutputWriter, bar, unit_of: Dict[int, int], skip: Set[int], device: torch.device) -> int:
    """Read, compute, hand to the writers, batch after batch; return the number of images processed."""
    succeeded = processed = 0
    for batch in batch_iter:
        positions, failed = batch["positions"], batch["failed"]
        unit = unit_of[min([*positions, *(f["position"] for f in failed)])]
        errors = [writer.error_record(f["position"], "read", f["error"], f["source"], f["decode_s"]) for f in failed]
        items = []
        if positions:
            x = batch["x"].to(device, non_blocking=True)
            cam_started = time.perf_counter()
            results = engine(x, positions)
            cam_share = (time.perf_counter() - cam_started) / len(positions)
            crashed = [r for r in results if isinstance(r, Exception)]
            if crashed and not succeeded and len(crashed) == len(results):
                error = crashed[0]
                raise ExplainAborted(
                    f"the CAM fails for every image of the first batch: {type(error).__name__}: {' '.join(str(error).split())}"
                ) from error
            succeeded += len(results) - len(crashed)
            for j, (position, result) in enumerate(zip(positions, results)):
                if position in skip:
                    continue
                if isinstance(result, Exception):
                    message = f"{type(result).__name__}: {' '.join(str(result).split())}"
                    errors.append(writer.error_record(position, "cam", message, batch["source"][j], batch["decode_s"][j]))
                    continue
                items.append(
                    {
                        "position": position,
                        "result": result,
                        "rgb": batch["rgb"][j],
                        "orig_size": batch["orig_size"][j],
                        "source": batch["source"][j],
                        "decode_s": batch["decode_s"][j],
                        "cam_s": cam_share,
                    }
                )
        writer.submit(unit, items, [e for e in errors if e["index"] not in skip])
        processed += len(positions) + len(failed)
        bar.update(len(positions) + len(failed))
    return processed


# --------------------------------------------------------------------------- merging (rank 0)


def _merge(plan: Plan, out_dir: str, gathered: List[Dict[str, Any]], world: int, wall_s: float) -> Dict[str, Any]:
    """Write ``manifest.jsonl`` (one record per input image, input order) and ``summary.json``."""
    best = best_records(r for part in gathered for r in part["records"])
    records = []
    for image in plan.images:
        record = best.get(image.rel)
        if record is None:  # only if a process lost work: say so rather than hide it
            record = {
                "index": image.index, "image": image.path, "rel": image.rel, "status": "error",
                "stage": "merge", "error": "no process reported this image", "finished_at": time.time(),
            }  # fmt: skip
        record["index"] = image.index
        records.append(record)
    path = write_manifest(out_dir, records)
    reused = sum(part["reused"] for part in gathered)
    processed = sum(part["processed"] for part in gathered)
    elapsed = max(part["elapsed"] for part in gathered)
    failures = [(r["rel"], f"{r.get('stage', '?')}: {r.get('error', '')}") for r in records if r["status"] != "ok"]
    summary = {
        "total": len(records),
        "ok": len(records) - len(failures),
        "failed": len(failures),
        "reused": reused,
        "computed": sum(len(part["records"]) for part in gathered) - reused,
        "processed": processed,
        "elapsed_s": round(elapsed, 3),
        "wall_s": round(wall_s, 3),
        "images_per_s": round(processed / elapsed, 3) if elapsed > 0 else 0.0,
        "world_size": world,
        "failures": failures,
        "manifest": os.path.basename(path),
        "config": plan.config,
    }
    atomic_write(os.path.join(out_dir, SUMMARY_NAME), (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    for shard in shard_files(out_dir):
        with contextlib.suppress(FileNotFoundError):
            os.remove(shard)
    return summary


# --------------------------------------------------------------------------- the run


def run_explain(
    inputs: Sequence[Union[str, os.PathLike]],
    out: Union[str, os.PathLike],
    *,
    model: Union[str, nn.Module] = "demo",
    weights: Union[str, os.PathLike, None] = "DEFAULT",
    num_classes: Optional[int] = None,
    method: str = "gradcam",
    target_layers: Optional[Sequence[Union[str, nn.Module]]] = None,
    targets: str = "top1",
    batch_size: int = 32,
    num_workers: Optional[int] = None,
    device: Union[str, torch.device, None] = "auto",
    image_size: Union[int, Sequence[int], None] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    save: Union[str, Sequence[str]] = SAVE_KINDS,
    heatmap_format: str = "npy",
    shard_size: int = 1024,
    overlay_format: str = "jpg",
    jpeg_quality: int = 95,
    output_size: str = "input",
    resume: bool = False,
    overwrite: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    progress: Optional[bool] = None,
    write_threads: int = 2,
    threads: Optional[int] = None,
    fsync: bool = True,
    dist_timeout: float = 1800.0,
) -> ExplainResult:
    """Explain every image of a data set and write heatmaps, overlays and a manifest.

    Under ``torchrun`` every process calls this with the same arguments; each
    explains its share and rank 0 merges the manifests (see the module docstring).

    Args:
        inputs: Image files, folders (searched recursively) and text files
            listing image paths (see :func:`camlib.cli.inputs.collect_images`).
        out: The output folder: ``heatmaps/`` and ``overlays/`` mirror the
            inputs' folders; ``manifest.jsonl``, ``summary.json`` and ``run.json``.
        model: ``"demo"``, a torchvision classification model name,
            ``"timm:<name>"`` (see :func:`camlib.models.build_model`), or an
            ``nn.Module`` (then ``image_size`` and ``target_layers`` are needed).
        weights: ``"DEFAULT"``, ``"none"`` or a checkpoint path (model names only).
        num_classes: Outputs of a retrained head.
        method: A key of :data:`camlib.models.CAM_METHODS`.
        target_layers: Layer paths such as ``"layer4[-1]"`` (or modules of a
            model object); default: the architecture's usual layer.
        targets: ``"top1"``, ``"topk:K"`` or a label file
            (see :func:`camlib.cli.inputs.read_label_file`).
        batch_size: Images per CAM call.
        num_workers: DataLoader worker processes (None: up to 4); 0 decodes in
            the main process.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"``; under torchrun ``"cuda"`` means ``cuda:LOCAL_RANK``.
        image_size: Model input size, ``N`` or ``(H, W)`` (default: the model's).
        mean: Normalisation mean (RGB); default: the model's.
        std: Normalisation std (RGB); default: the model's.
        save: ``"overlay"``, ``"heatmap"``, or both (a list or a comma-separated string).
        heatmap_format: ``"npy"`` (one float16 file per image) or ``"npz"``
            (one archive per shard of ``shard_size`` images).
        shard_size: Images per ``.npz`` shard.
        overlay_format: ``"jpg"`` or ``"png"``.
        jpeg_quality: JPEG quality of the overlays (0-100).
        output_size: ``"input"`` (maps and overlays at the model's input size)
            or ``"original"`` (resized back to each image's own size).
        resume: Keep the complete outputs of an earlier run in ``out`` and do the rest.
        overwrite: Start again in an ``out`` that holds an earlier run.
        aug_smooth: Test-time augmentation smoothing.
        eigen_smooth: First principal component of the weighted activations.
        progress: Show a progress bar (None: unless ``CAMLIB_DISABLE_PROGRESS=1``); rank 0 only.
        write_threads: Threads encoding and writing outputs.
        threads: torch's intra-op threads during the call (None: leave as is).
        fsync: fsync the manifest after each batch's records.
        dist_timeout: Seconds a process waits for the others (torchrun) before failing.

    Returns:
        An :class:`ExplainResult` (the same on every rank).

    Raises:
        UsageError: For bad arguments (a :class:`ValueError`).
        ValueError, TypeError, RuntimeError, ImportError: From building the
            model (unknown name, bad checkpoint, no internet for DEFAULT weights).
        ExplainAborted: If the run had to stop part-way (outputs written so far
            are complete; resume later).
    """
    arguments = dict(locals())
    started = time.perf_counter()
    try:
        settings = _check_arguments(**arguments)
    except UsageError as err:
        if env_rank()[0] != 0:
            raise PeerError(str(err)) from err
        raise
    _, world, local_rank = env_rank()
    device_ = _pick_device(settings, local_rank, world)
    ctx = init_distributed(device_, settings.dist_timeout)
    saved = (torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        if device_.type == "cuda":
            torch.cuda.set_device(device_)
            # the same image must give the same bytes in every run and on every GPU
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        summary = _run(settings, ctx, device_, started)
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
        ctx.close()
    return ExplainResult(
        out_dir=settings.out_dir,
        manifest=os.path.join(settings.out_dir, MANIFEST_NAME),
        total=summary["total"],
        ok=summary["ok"],
        failed=summary["failed"],
        reused=summary["reused"],
        computed=summary["computed"],
        elapsed_s=summary["elapsed_s"],
        images_per_s=summary["images_per_s"],
        failures=[tuple(f) for f in summary["failures"]],
        world_size=summary["world_size"],
    )


def _check_arguments(
    *, inputs, out, model, weights, num_classes, method, target_layers, targets, batch_size, num_workers, device,
    image_size, mean, std, save, heatmap_format, shard_size, overlay_format, jpeg_quality, output_size, resume,
    overwrite, aug_smooth, eigen_smooth, progress, write_threads, threads, fsync, dist_timeout,
) -> _Settings:  # fmt: skip
    """:func:`run_explain`'s arguments, checked (:class:`UsageError` for the first mistake)."""
    settings = _Settings(
        inputs=[inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs),
        out_dir=os.path.abspath(os.fspath(out)),
        model=model,
        weights=weights,
        num_classes=num_classes,
        method=_check_method(method),
        target_layers=target_layers,
        spec=parse_targets(targets),
        batch_size=_int_at_least("--batch-size", batch_size),
        num_workers=_int_at_least("--num-workers", min(4, os.cpu_count() or 1) if num_workers is None else num_workers, 0),
        device=device,
        image_size=_check_size(image_size),
        mean=_check_triple("--mean", mean),
        std=_check_triple("--std", std),
        save=_check_save(save),
        heatmap_format=_check_choice("--heatmap-format", heatmap_format, ("npy", "npz")),
        shard_size=_int_at_least("--shard-size", shard_size),
        overlay_format=_check_choice("--overlay-format", overlay_format, tuple(OVERLAY_FORMATS)),
        jpeg_quality=_int_at_least("--jpeg-quality", jpeg_quality, 0),
        output_size=_check_choice("--output-size", output_size, ("input", "original")),
        resume=bool(resume),
        overwrite=bool(overwrite),
        aug_smooth=bool(aug_smooth),
        eigen_smooth=bool(eigen_smooth),
        progress=progress,
        write_threads=_int_at_least("--write-threads", write_threads),
        threads=None if threads is None else _int_at_least("--threads", threads),
        fsync=bool(fsync),
        dist_timeout=float(dist_timeout),
    )
    if settings.jpeg_quality > 100:
        raise UsageError(f"--jpeg-quality must be from 0 to 100, got {jpeg_quality}")
    if settings.resume and settings.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: resume keeps earlier outputs, overwrite redoes them")
    if settings.aug_smooth and settings.method == "fullgrad":
        raise UsageError("--aug-smooth does not apply to fullgrad")
    return settings


def _run(settings: _Settings, ctx: DistContext, device: torch.device, started: float) -> Dict[str, Any]:
    """Plan (rank 0), build the model, process this rank's share, merge (rank 0); return the summary."""

    def build() -> LoadedModel:
        return load_model(
            settings.model, settings.weights, settings.num_classes, device, settings.image_size,
            settings.mean, settings.std, settings.target_layers, settings.method,
        )  # fmt: skip

    # Rank 0 builds the model first (so that a download happens once), then plans; the others wait.
    loaded = None
    if ctx.is_main:
        try:
            loaded = build()
            plan = _make_plan(settings, loaded)
        except Exception as err:
            ctx.broadcast(("error", " ".join(str(err).split()) or type(err).__name__))
            raise
        ctx.broadcast(("ok", plan))
    else:
        status, payload = ctx.broadcast(None)
        if status == "error":
            raise PeerError(payload)
        plan = payload
        loaded = build()
    try:
        return _execute(plan, loaded, ctx, settings, device, started)
    except (ExplainAborted, KeyboardInterrupt):
        raise
    except Exception as err:  # past the setup, a failure is the run's, not the arguments'
        raise ExplainAborted(" ".join(f"{type(err).__name__}: {err}".split())) from err


def _execute(plan: Plan, loaded: LoadedModel, ctx: DistContext, settings: _Settings, device: torch.device, started: float) -> Dict[str, Any]:
    work = _local_work(plan, ctx, settings)
    if ctx.is_main:
        logger.info(
            "%d image(s) under %s; %s%d to explain on %s%s",
            len(plan.images), plan.root, f"{len(work.reused)} already done, " if settings.resume else "",
            work.pending, device, f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "",
        )  # fmt: skip
    processed, elapsed, records = _process(plan, work, loaded, ctx, settings, device)
    gathered = ctx.gather({"records": work.reused + records, "reused": len(work.reused), "processed": processed, "elapsed": elapsed})
    summary = _merge(plan, settings.out_dir, gathered, ctx.world_size, time.perf_counter() - started) if ctx.is_main else None
    summary = ctx.broadcast(summary)
    with contextlib.suppress(FileNotFoundError):
        os.remove(shard_path(settings.out_dir, ctx.rank))  # already merged (a shard on another machine's disk)
    return summary


# --------------------------------------------------------------------------- the command line


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``camlib explain``'s arguments to ``parser``."""
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders (searched recursively) or text files (.txt, .lst) listing image paths",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default="demo",
        help="'demo' (default: camlib's bundled demo model), a torchvision classification model "
        "(resnet50, densenet121, vit_b_16, swin_t, ...) or timm:<name> with timm installed",
    )  # fmt: skip
    model.add_argument(
        "--weights", default="DEFAULT",
        help="DEFAULT: pretrained (demo: bundled, offline; torchvision: downloaded once); none: random; "
        "or a checkpoint path (state_dict or training checkpoint; read with weights_only=True)",
    )  # fmt: skip
    model.add_argument("--num-classes", type=int, default=None, help="outputs of a retrained head, e.g. 14")
    model.add_argument(
        "--method", default="gradcam", metavar="METHOD", help=f"one of: {', '.join(CAM_METHODS)} (default: gradcam)"
    )
    model.add_argument(
        "--target-layer", action="extend", nargs="+", default=None, metavar="PATH",
        help="target layer path(s), e.g. 'layer4[-1]' (quote brackets in a shell); default: the architecture's usual one",
    )  # fmt: skip
    model.add_argument(
        "--targets", default="top1",
        help="top1 (default: each image's top class), topk:K (the K top classes, one map each) or a label "
        "file (.csv, .tsv, .txt, .json) mapping image paths to class indices",
    )  # fmt: skip
    model.add_argument(
        "--image-size", type=int, nargs="+", default=None, metavar="N",
        help="model input size: N (square) or H W (default: 128 for demo, 224 for torchvision models)",
    )  # fmt: skip
    model.add_argument("--mean", type=float, nargs=3, default=None, metavar="M", help="normalisation mean (RGB)")
    model.add_argument("--std", type=float, nargs=3, default=None, metavar="S", help="normalisation std (RGB)")
    model.add_argument("--aug-smooth", action="store_true", help="test-time augmentation smoothing")
    model.add_argument("--eigen-smooth", action="store_true", help="first principal component of the weighted activations")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, default=32, help="images per CAM batch (default: 32)")
    run.add_argument(
        "--num-workers", type=int, default=None,
        help="DataLoader worker processes decoding images (default: min(4, CPUs); 0: in the main process)",
    )  # fmt: skip
    run.add_argument(
        "--device", default="auto",
        help="auto (default: CUDA if available, else CPU), cpu, cuda, cuda:N, mps; under torchrun, cuda means cuda:LOCAL_RANK",
    )  # fmt: skip
    run.add_argument("--resume", action="store_true", help="keep complete outputs in --out and do the rest")
    run.add_argument("--overwrite", action="store_true", help="start again in an --out that holds an earlier run")
    run.add_argument("--write-threads", type=int, default=2, help="threads encoding and writing outputs (default: 2)")
    run.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads of each process (default: torch's; torchrun sets OMP_NUM_THREADS=1)",
    )  # fmt: skip
    run.add_argument("--no-fsync", action="store_true", help="do not fsync the manifest after each batch")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (also CAMLIB_DISABLE_PROGRESS=1)")
    run.add_argument(
        "--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
        help="under torchrun: how long a process waits for the others before failing (default: 1800)",
    )  # fmt: skip
    run.add_argument("-q", "--quiet", action="store_true", help="only errors and the final summary")
    run.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--save", default="overlay,heatmap",
        help="what to write: overlay, heatmap or overlay,heatmap (default); the manifest is always written",
    )  # fmt: skip
    outputs.add_argument(
        "--heatmap-format", choices=("npy", "npz"), default="npy",
        help="npy: one float16 .npy per image (default); npz: one .npz per shard of --shard-size images",
    )  # fmt: skip
    outputs.add_argument("--shard-size", type=int, default=1024, help="images per .npz shard (default: 1024)")
    outputs.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay format (default: jpg)")
    outputs.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the overlays (default: 95)")
    outputs.add_argument(
        "--output-size", choices=("input", "original"), default="input",
        help="input: maps and overlays at the model's input size (default); original: at each image's own size",
    )  # fmt: skip
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. by pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(quiet: bool, rank: int) -> None:
    """Info messages on stderr from rank 0 (warnings only with ``-q`` and on the other ranks)."""
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("camlib explain: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet or rank != 0 else logging.INFO)


def _print_summary(result: ExplainResult) -> None:
    done = f" ({result.reused} already done)" if result.reused else ""
    speed = f"; {result.images_per_s:.1f} images/s" if result.computed else ""
    processes = f" over {result.world_size} processes" if result.world_size > 1 else ""
    print(
        f"camlib explain: {result.total} images: {result.ok} ok{done}, {result.failed} failed{speed}{processes}; "
        f"manifest: {result.manifest}"
    )
    if result.failures:
        print(f"failed ({result.failed}):", file=sys.stderr)
        for rel, error in result.failures[:20]:
            print(f"  {rel}: {error}", file=sys.stderr)
        if result.failed > 20:
            print(f"  ... and {result.failed - 20} more: see {os.path.join(result.out_dir, SUMMARY_NAME)}", file=sys.stderr)


def run_from_args(args: argparse.Namespace, prog: str = "camlib explain") -> int:
    """Run ``camlib explain`` for parsed arguments; return the exit status (0, 1 or 2)."""
    try:
        rank = env_rank()[0]
    except ValueError:
        rank = 0
    where = f" (rank {rank})" if rank else ""  # the same mistake is reported by rank 0 too
    _configure_logging(args.quiet, rank)
    try:
        result = run_explain(
            args.inputs,
            args.out,
            model=args.model,
            weights=args.weights,
            num_classes=args.num_classes,
            method=args.method,
            target_layers=args.target_layer,
            targets=args.targets,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            image_size=args.image_size,
            mean=args.mean,
            std=args.std,
            save=args.save,
            heatmap_format=args.heatmap_format,
            shard_size=args.shard_size,
            overlay_format=args.overlay_format,
            jpeg_quality=args.jpeg_quality,
            output_size=args.output_size,
            resume=args.resume,
            overwrite=args.overwrite,
            aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth,
            progress=False if args.no_progress else None,
            write_threads=args.write_threads,
            threads=args.threads,
            fsync=not args.no_fsync,
            dist_timeout=args.dist_timeout,
        )
    except PeerError:
        return EXIT_USAGE  # rank 0 prints it
    except ExplainAborted as err:
        if args.traceback:
            raise
        print(
            f"{prog}: error{where}: {' '.join(str(err).split())} (the outputs written so far are complete: "
            "fix the cause and run again with --resume)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs written so far are complete: rerun with --resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as err:
        if args.traceback:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error{where}: {message}", file=sys.stderr)
        return EXIT_USAGE
    if rank == 0:
        _print_summary(result)
    return result.exit_code
