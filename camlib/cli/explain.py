"""``camlib explain``: class activation maps for a whole data set, resumable, sharded with torchrun.

The pipeline, top to bottom:

1. **Plan** (rank 0): collect the input images (:func:`camlib.cli.inputs.collect_images`),
   sorted by their path relative to the inputs' common folder; read the label
   file if any; cut the list into *work units* of consecutive images (one batch,
   or one ``.npz`` shard); check ``--out`` (``--resume``/``--overwrite``) and
   write ``run.json``. The plan is broadcast to every rank.
2. **Model**: :func:`camlib.models.load_model` (the loader ``usage_examples/cam.py``
   uses too) and :func:`camlib.registry.make_cam`.
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

The settings travel as one :class:`~camlib.cli.settings.ExplainSettings`;
what ``--out`` may hold and what the tool deletes there is in
:mod:`camlib.cli.rundir`. Use it from Python with :func:`run_explain` (or
:func:`run_settings`), from a shell with ``camlib explain`` (see ``docs/explain.md``).

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
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Set, Tuple, Union

import cv2
import torch
from torch import nn
from torch.utils.data import DataLoader

from camlib.cli.dataset import DecodedBatch, ImageDataset, collate, source_stat, worker_init
from camlib.cli.distributed import DistContext, env_rank, init_distributed
from camlib.cli.inputs import UsageError, collect_images, read_label_file
from camlib.cli.manifest import (
    MANIFEST_NAME,
    ImageRecord,
    ManifestWriter,
    best_records,
    read_records,
    record_complete,
    shard_files,
    shard_path,
    write_manifest,
)
from camlib.cli.outputs import HEATMAP_DIR, atomic_write, shard_name
from camlib.cli.pipeline import (
    CamEngine,
    ExplainedImage,
    Explainer,
    OutputOptions,
    OutputWriter,
    Plan,
    WriterFailed,
    load_explainer,
)
from camlib.cli.rundir import RUN_CONFIG_NAME, RUN_TOOL, SUMMARY_NAME, prepare_out_dir
from camlib.cli.settings import SAVE_KINDS, ExplainSettings, add_explain_arguments
from camlib.models import resolve_device
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
    "ExplainSettings",
    "PeerError",
    "RunSummary",
    "add_explain_arguments",
    "run_explain",
    "run_from_args",
    "run_settings",
]

logger = logging.getLogger("camlib.cli")

#: Exit status: every image explained.
EXIT_OK = 0
#: Exit status: some images failed (see the manifest and summary), or the run was aborted.
EXIT_FAILED = 1
#: Exit status: bad arguments (argparse's convention).
EXIT_USAGE = 2


class ExplainAborted(RuntimeError):
    """The run stopped part-way (a write failed, a process was lost, ...).

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


@dataclass
class RunSummary:
    """The totals rank 0 writes to ``summary.json`` and broadcasts (see :class:`ExplainResult`)."""

    total: int
    ok: int
    failed: int
    reused: int
    computed: int
    processed: int
    elapsed_s: float
    wall_s: float
    images_per_s: float
    world_size: int
    failures: List[Tuple[str, str]]
    manifest: str
    config: Dict[str, Any]

    def to_json(self) -> Dict[str, Any]:
        """``summary.json``'s content."""
        data = dict(self.__dict__)
        data["failures"] = [list(f) for f in self.failures]
        return data


@dataclass
class _RankReport:
    """What each rank sends rank 0 at the end."""

    records: List[ImageRecord]
    reused: int
    processed: int
    elapsed: float


def _pick_device(settings: ExplainSettings, local_rank: int, world: int) -> torch.device:
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


def _run_config(settings: ExplainSettings, explainer: Explainer) -> Dict[str, Any]:
    """The settings recorded in ``run.json`` (which also marks ``--out`` as a camlib run)."""
    from camlib import __version__

    save = settings.save
    if isinstance(settings.model, nn.Module):
        weights, kind = "(model object)", "(model object)"
    else:
        weights = os.fspath(settings.weights) if settings.weights is not None else "none"
        kind = weights.strip().lower()
        if kind not in ("default", "none"):
            weights, kind = os.path.abspath(weights), "path"
    jpeg = "overlay" in save and settings.overlay_extension == ".jpg"
    loaded = explainer.model
    return {
        "tool": RUN_TOOL,
        "model": loaded.name,
        "weights": weights,
        "weights_kind": kind,
        "num_classes": settings.num_classes,
        "method": explainer.method,
        "target_layers": explainer.layer_names,
        "targets": settings.spec.describe(),
        "image_size": list(loaded.image_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "output_size": settings.output_size,
        "save": list(save),
        "heatmap_format": settings.heatmap_format if "heatmap" in save else None,
        "shard_size": settings.shard_size if settings.npz else None,
        "overlay_format": settings.overlay_extension[1:] if "overlay" in save else None,
        "jpeg_quality": settings.jpeg_quality if jpeg else None,
        "batch_size": settings.batch_size,
        "aug_smooth": settings.aug_smooth,
        "eigen_smooth": settings.eigen_smooth,
        "camlib_version": __version__,
        "torch_version": torch.__version__,
    }


def _make_plan(settings: ExplainSettings, explainer: Explainer) -> Plan:
    """Collect the images, read the labels, prepare ``--out``; what every rank will follow."""
    images, root = collect_images(settings.inputs, exclude=settings.out_dir)
    spec = settings.spec
    num_outputs = explainer.model.num_outputs
    labels = None
    naming = "topk" if spec.kind == "topk" else "single"
    if spec.kind == "topk" and spec.k > num_outputs:
        raise UsageError(f"--targets topk:{spec.k} asks for more classes than the model's {num_outputs} outputs")
    if spec.kind == "labels":
        labels = read_label_file(spec.label_file, images, root)
        too_big = sorted({c for classes in labels.values() for c in classes if c >= num_outputs})
        if too_big:
            raise UsageError(
                f"label(s) {too_big[:5]} in {spec.label_file} out of range: the model has {num_outputs} "
                f"outputs (0 to {num_outputs - 1}); pass --num-classes if its head was retrained"
            )
        if any(len(classes) > 1 for classes in labels.values()):
            naming = "class"
    config = _run_config(settings, explainer)
    prepare_out_dir(settings.out_dir, config, resume=settings.resume, overwrite=settings.overwrite)
    unit_size = settings.shard_size if settings.npz else settings.batch_size
    return Plan(images, root, labels, unit_size, naming, config)


# --------------------------------------------------------------------------- this rank's share


@dataclass
class _Work:
    """This rank's share: the units still to do and the records it keeps."""

    units: List[Tuple[int, List[int]]]
    skip: Set[int]
    reused: List[ImageRecord]

    @property
    def pending(self) -> int:
        """Images this rank will write (the rest of their batches is computed but kept)."""
        return sum(len(positions) for _, positions in self.units) - len(self.skip)


def _local_work(plan: Plan, ctx: DistContext, settings: ExplainSettings) -> _Work:
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
        done: Dict[int, ImageRecord] = {}
        for position in positions if earlier else ():
            image = plan.images[position]
            record = earlier.get(image.rel)
            if record is None or not record_complete(record, settings.out_dir, source_stat(image.path)):
                continue
            if plan.labels is not None and record.targets != list(plan.labels[position]):
                continue
            shard = f"{HEATMAP_DIR}/{shard_name(unit)}"
            if settings.npz and (not isinstance(record.heatmap, dict) or record.heatmap.get("file") != shard):
                continue
            record.index, record.image = image.index, image.path
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


def _process(
    plan: Plan, work: _Work, explainer: Explainer, ctx: DistContext, settings: ExplainSettings, device: torch.device
) -> Tuple[int, float, List[ImageRecord]]:
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
    loaded = explainer.model
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
        overlay_extension=settings.overlay_extension,
        jpeg_quality=settings.jpeg_quality,
        original_size=settings.output_size == "original",
        multi_target=plan.naming != "single",
    )
    engine = CamEngine(explainer.cam, settings.spec, plan.labels, settings.aug_smooth, settings.eigen_smooth)
    started = time.perf_counter()
    # OpenCV's thread pool does not survive fork(): a DataLoader worker forked from a process whose
    # pool has threads hangs in its first parallel OpenCV call. Stop the pool before the workers
    # start (the writer threads give the parallelism) and restore it at the end.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        batch_iter = iter(loader)  # the workers start here, before any thread of ours
        with ManifestWriter(manifest_path, fsync=settings.fsync) as manifest:
            writer = OutputWriter(settings.out_dir, plan, explainer, manifest, ctx.rank, options, settings.write_threads)
            bar = progress_bar(
                total=sum(len(b) for b in batches),
                progress=bool(progress_enabled(settings.progress) and ctx.is_main),
                unit="img",
                desc=f"camlib explain ({explainer.method})" + (f", rank 0 of {ctx.world_size}" if ctx.world_size > 1 else ""),
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


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _loop(batch_iter, engine: CamEngine, writer: OutputWriter, bar, unit_of: Dict[int, int], skip: Set[int], device: torch.device) -> int:
    """Read, compute, hand to the writers, batch after batch; return the number of images processed.

    An image that cannot be read or explained gets an error record and the run
    goes on, whatever its position and batch.
    """
    processed = 0
    batch: DecodedBatch
    for batch in batch_iter:
        positions = batch.positions
        unit = unit_of[min([*positions, *(f.position for f in batch.failed)])]
        errors = [writer.error_record(f, "read", f.error) for f in batch.failed]
        items: List[ExplainedImage] = []
        if positions:
            x = batch.x.to(device, non_blocking=True)
            cam_started = time.perf_counter()
            results = engine(x, positions)
            cam_share = (time.perf_counter() - cam_started) / len(positions)
            for decoded, result in zip(batch.images, results):
                if decoded.position in skip:
                    continue
                if isinstance(result, Exception):
                    errors.append(writer.error_record(decoded, "cam", _one_line(result)))
                else:
                    items.append(ExplainedImage(decoded, result, cam_share))
        writer.submit(unit, items, [e for e in errors if e.index not in skip])
        processed += len(positions) + len(batch.failed)
        bar.update(len(positions) + len(batch.failed))
    return processed


# --------------------------------------------------------------------------- merging (rank 0)


def _merge(plan: Plan, out_dir: str, gathered: List[_RankReport], world: int, wall_s: float) -> RunSummary:
    """Write ``manifest.jsonl`` (one record per input image, input order) and ``summary.json``."""
    best = best_records(r for part in gathered for r in part.records)
    records: List[ImageRecord] = []
    for image in plan.images:
        record = best.get(image.rel)
        if record is None:  # only if a process lost work: say so rather than hide it
            record = ImageRecord(
                image.index, image.path, image.rel, "error", stage="merge",
                error="no process reported this image", finished_at=time.time(),
            )  # fmt: skip
        record.index = image.index
        records.append(record)
    path = write_manifest(out_dir, records)
    reused = sum(part.reused for part in gathered)
    processed = sum(part.processed for part in gathered)
    elapsed = max(part.elapsed for part in gathered)
    failures = [(r.rel, f"{r.stage or '?'}: {r.error or ''}") for r in records if not r.ok]
    summary = RunSummary(
        total=len(records),
        ok=len(records) - len(failures),
        failed=len(failures),
        reused=reused,
        computed=sum(len(part.records) for part in gathered) - reused,
        processed=processed,
        elapsed_s=round(elapsed, 3),
        wall_s=round(wall_s, 3),
        images_per_s=round(processed / elapsed, 3) if elapsed > 0 else 0.0,
        world_size=world,
        failures=failures,
        manifest=os.path.basename(path),
        config=plan.config,
    )
    atomic_write(os.path.join(out_dir, SUMMARY_NAME), (json.dumps(summary.to_json(), indent=2) + "\n").encode("utf-8"))
    for shard in shard_files(out_dir):
        with contextlib.suppress(FileNotFoundError):
            os.remove(shard)
    return summary


# --------------------------------------------------------------------------- the run


def run_explain(
    inputs: Sequence[Union[str, os.PathLike]], out: Union[str, os.PathLike], **options: Any
) -> ExplainResult:
    """Explain every image of a data set and write heatmaps, overlays and a manifest.

    Under ``torchrun`` every process calls this with the same arguments; each
    explains its share and rank 0 merges the manifests (see the module docstring).

    Args:
        inputs: Image files, folders (searched recursively) and text files
            listing image paths (see :func:`camlib.cli.inputs.collect_images`).
        out: The output folder: ``heatmaps/`` and ``overlays/`` mirror the
            inputs' folders; ``manifest.jsonl``, ``summary.json`` and ``run.json``.
            It must be new, empty, or an earlier run (with ``resume`` or ``overwrite``).
        **options: The other fields of :class:`~camlib.cli.settings.ExplainSettings`,
            as keywords: ``model`` (``"demo"``, a torchvision name, ``"timm:<name>"``
            or an ``nn.Module``, which then needs ``image_size`` and ``target_layers``),
            ``weights``, ``num_classes``, ``method`` (a registered name),
            ``target_layers``, ``targets`` (``"top1"``, ``"topk:K"`` or a label
            file), ``batch_size``, ``num_workers``, ``device``, ``image_size``,
            ``mean``, ``std``, ``save``, ``heatmap_format``, ``shard_size``,
            ``overlay_format``, ``jpeg_quality``, ``output_size``, ``resume``,
            ``overwrite``, ``aug_smooth``, ``eigen_smooth``, ``progress``,
            ``write_threads``, ``threads``, ``fsync``, ``dist_timeout``.

    Returns:
        An :class:`ExplainResult` (the same on every rank).

    Raises:
        TypeError: For an unknown keyword.
        UsageError: For bad arguments (a :class:`ValueError`).
        ValueError, TypeError, RuntimeError, ImportError: From building the
            model (unknown name, bad checkpoint, no internet for DEFAULT weights).
        ExplainAborted: If the run had to stop part-way (outputs written so far
            are complete; resume later).
    """
    return run_settings(ExplainSettings(inputs, out, **options))


def run_settings(settings: ExplainSettings) -> ExplainResult:
    """Run ``camlib explain`` with :class:`~camlib.cli.settings.ExplainSettings` (see :func:`run_explain`)."""
    started = time.perf_counter()
    try:
        settings = settings.checked()
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
        total=summary.total,
        ok=summary.ok,
        failed=summary.failed,
        reused=summary.reused,
        computed=summary.computed,
        elapsed_s=summary.elapsed_s,
        images_per_s=summary.images_per_s,
        failures=[tuple(f) for f in summary.failures],
        world_size=summary.world_size,
    )


def _run(settings: ExplainSettings, ctx: DistContext, device: torch.device, started: float) -> RunSummary:
    """Plan (rank 0), build the model, process this rank's share, merge (rank 0); return the summary."""

    def build() -> Explainer:
        return load_explainer(
            settings.model, settings.method, weights=settings.weights, num_classes=settings.num_classes,
            device=device, image_size=settings.image_size, mean=settings.mean, std=settings.std,
            target_layers=settings.target_layers,
        )  # fmt: skip

    # Rank 0 builds the model first (so that a download happens once), then plans; the others wait.
    if ctx.is_main:
        try:
            explainer = build()
            plan = _make_plan(settings, explainer)
        except Exception as err:
            ctx.broadcast(("error", " ".join(str(err).split()) or type(err).__name__))
            raise
        ctx.broadcast(("ok", plan))
    else:
        status, payload = ctx.broadcast(None)
        if status == "error":
            raise PeerError(payload)
        plan = payload
        explainer = build()
    try:
        return _execute(plan, explainer, ctx, settings, device, started)
    except (ExplainAborted, KeyboardInterrupt):
        raise
    except Exception as err:  # past the setup, a failure is the run's, not the arguments'
        raise ExplainAborted(" ".join(f"{type(err).__name__}: {err}".split())) from err


def _execute(
    plan: Plan, explainer: Explainer, ctx: DistContext, settings: ExplainSettings, device: torch.device, started: float
) -> RunSummary:
    work = _local_work(plan, ctx, settings)
    if ctx.is_main:
        logger.info(
            "%d image(s) under %s; %s%d to explain on %s%s",
            len(plan.images), plan.root, f"{len(work.reused)} already done, " if settings.resume else "",
            work.pending, device, f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "",
        )  # fmt: skip
    processed, elapsed, records = _process(plan, work, explainer, ctx, settings, device)
    gathered = ctx.gather(_RankReport(work.reused + records, len(work.reused), processed, elapsed))
    summary = _merge(plan, settings.out_dir, gathered, ctx.world_size, time.perf_counter() - started) if ctx.is_main else None
    summary = ctx.broadcast(summary)
    with contextlib.suppress(FileNotFoundError):
        os.remove(shard_path(settings.out_dir, ctx.rank))  # already merged (a shard on another machine's disk)
    return summary


# --------------------------------------------------------------------------- the command line


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
        result = run_settings(ExplainSettings.from_namespace(args))
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
