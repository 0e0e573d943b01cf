"""The moving parts of ``camlib explain``: the model, the CAM engine and the output writer.

* :func:`load_explainer` loads the model with :func:`camlib.models.load_model`
  (the loader ``usage_examples/cam.py`` uses too) and builds its CAM with
  :func:`camlib.registry.make_cam`, returning an :class:`Explainer`.
* :class:`CamEngine` turns a batch into :class:`CamResult` records (maps,
  predictions and scores): one CAM call per target slot (``top1``: one;
  ``topk:K``: K; a label file: as many as the image with the most labels).
* :class:`OutputWriter` writes each image's files from a pool of threads
  (float16 heatmaps, overlays) and, once they are all in place, appends the
  image's manifest record; in ``.npz`` mode it collects a shard's maps and
  writes the archive, then the shard's records.
* :class:`Plan` is what rank 0 decides and broadcasts: the images, their
  labels, and the work units (``unit_size`` consecutive images each).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from camlib.cli.dataset import DecodedImage
from camlib.cli.inputs import InputImage, TargetSpec
from camlib.cli.manifest import ImageRecord, ManifestWriter
from camlib.cli.outputs import (
    HEATMAP_DIR,
    atomic_write,
    encode_overlay,
    npy_bytes,
    npz_bytes,
    overlay_names,
    resize_maps,
    shard_name,
)
from camlib.models import LoadedModel, load_model
from camlib.registry import get_method, make_cam

__all__ = [
    "CamEngine",
    "CamResult",
    "ExplainedImage",
    "Explainer",
    "OutputOptions",
    "OutputWriter",
    "Plan",
    "WriterFailed",
    "load_explainer",
]


class WriterFailed(RuntimeError):
    """Writing an output failed (disk full, permissions, ...); the run cannot go on."""


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Explainer:
    """A loaded model and its CAM.

    Attributes:
        model: The model and its input settings (:func:`camlib.models.load_model`).
        cam: The CAM object (:func:`camlib.registry.make_cam`).
        method: The method's registered name.
        layer_names: What the manifest records as the target layers.
    """

    model: LoadedModel
    cam: Any
    method: str
    layer_names: List[str]


def load_explainer(
    model: Union[str, nn.Module],
    method: str,
    *,
    weights: Union[str, os.PathLike, None],
    num_classes: Optional[int],
    device: torch.device,
    image_size: Optional[Tuple[int, int]],
    mean: Optional[Tuple[float, ...]],
    std: Optional[Tuple[float, ...]],
    target_layers: Optional[Sequence[Union[str, nn.Module]]],
) -> Explainer:
    """Load the model (:func:`camlib.models.load_model`) and build its CAM.

    A method that chooses its own layers (``capabilities.own_layers``, e.g.
    FullGrad) is recorded with the layers ``["<every layer with a bias>"]``.

    Raises:
        ValueError, TypeError, RuntimeError, ImportError: From loading the model.
    """
    loaded = load_model(
        model, weights=weights, num_classes=num_classes, device=device, image_size=image_size,
        mean=mean, std=std, target_layers=target_layers,
    )  # fmt: skip
    info = get_method(method)
    cam = make_cam(info.name, loaded.net, loaded.target_layers, progress=False)
    names = ["<every layer with a bias>"] if info.capabilities.own_layers else list(loaded.layer_paths)
    return Explainer(loaded, cam, info.name, names)


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What rank 0 decided, broadcast to every rank.

    Attributes:
        images: The input images, in order.
        root: Their common folder (mirrored under ``--out``).
        labels: ``{image index: classes}`` from a label file, or None.
        unit_size: Images per work unit (``--batch-size``, or ``--shard-size`` with ``.npz`` heatmaps).
        naming: Overlay naming (see :func:`camlib.cli.outputs.overlay_names`).
        config: The run's settings (``run.json``).
    """

    images: List[InputImage]
    root: str
    labels: Optional[Dict[int, Tuple[int, ...]]]
    unit_size: int
    naming: str
    config: Dict[str, Any]

    @property
    def num_units(self) -> int:
        """Number of work units."""
        return (len(self.images) + self.unit_size - 1) // self.unit_size

    def unit_range(self, unit: int) -> Tuple[int, int]:
        """Positions ``[start, end)`` of work unit ``unit``."""
        start = unit * self.unit_size
        return start, min(start + self.unit_size, len(self.images))


# --------------------------------------------------------------------------- computing the maps


@dataclass(frozen=True)
class CamResult:
    """The maps of one image and what they explain.

    Attributes:
        maps: float32 ``[K, H, W]``, one map per target.
        targets: The explained classes.
        target_scores: Their scores.
        pred: The top class.
        score: Its score.
    """

    maps: np.ndarray
    targets: List[int]
    target_scores: List[float]
    pred: int
    score: float


class CamEngine:
    """Maps, predictions and scores for a batch, one CAM call per target slot.

    Targets for a class come from the CAM itself (``cam.class_target(c)``), so
    every registered method is asked for a class the same way.

    Args:
        cam: The CAM object.
        spec: What to explain.
        labels: ``{image index: classes}`` for a label file.
        aug_smooth: Passed to the CAM.
        eigen_smooth: Passed to the CAM.
    """

    def __init__(
        self,
        cam: Any,
        spec: TargetSpec,
        labels: Optional[Dict[int, Tuple[int, ...]]],
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> None:
        self.cam = cam
        self.spec = spec
        self.labels = labels
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth

    def __call__(self, x: torch.Tensor, positions: List[int]) -> List[Union[CamResult, Exception]]:
        """One result per image: a :class:`CamResult`, or the exception that image raised.

        If the batch fails as a whole, each image is tried alone, so that one
        bad image does not fail the others.
        """
        try:
            return self._explain(x, positions)
        except Exception as err:
            if len(positions) == 1:
                return [err]
        results: List[Union[CamResult, Exception]] = []
        for i, position in enumerate(positions):
            try:
                results.extend(self._explain(x[i : i + 1], [position]))
            except Exception as err:
                results.append(err)
        return results

    def _maps(self, x: torch.Tensor, targets: Optional[list]) -> Tuple[np.ndarray, torch.Tensor]:
        maps = self.cam(x, targets, aug_smooth=self.aug_smooth, eigen_smooth=self.eigen_smooth)
        outputs = self.cam.outputs
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            raise TypeError("the model must return [batch, classes] scores")
        return maps, outputs.detach().float().cpu()

    def _explain(self, x: torch.Tensor, positions: List[int]) -> List[CamResult]:
        n = len(positions)
        if self.spec.kind in ("top1", "topk"):
            # targets=None explains each image's top class (argmax: the first of equal scores),
            # which is the first of the stable descending order below
            first, scores = self._maps(x, None)
            order = torch.argsort(scores, dim=1, descending=True, stable=True)
            classes = [order[i, : self.spec.k or 1].tolist() for i in range(n)]
        else:
            classes = [list(self.labels[p]) for p in positions]
            first, scores = self._maps(x, [self.cam.class_target(classes[i][0]) for i in range(n)])
        maps = [[first[i]] for i in range(n)]
        for slot in range(1, max(len(c) for c in classes)):
            rows = [i for i in range(n) if len(classes[i]) > slot]
            more, _ = self._maps(x[rows], [self.cam.class_target(classes[i][slot]) for i in rows])
            for j, i in enumerate(rows):
                maps[i].append(more[j])
        results = []
        for i in range(n):
            pred = int(scores[i].argmax())
            results.append(
                CamResult(
                    maps=np.stack(maps[i]).astype(np.float32, copy=False),
                    targets=[int(c) for c in classes[i]],
                    target_scores=[float(scores[i, c]) for c in classes[i]],
                    pred=pred,
                    score=float(scores[i, pred]),
                )
            )
        return results


@dataclass(frozen=True)
class ExplainedImage:
    """An image with its maps, on its way to the writer threads.

    Attributes:
        decoded: The image as the DataLoader read it.
        result: Its maps.
        cam_s: Its share of the batch's CAM time, in seconds.
    """

    decoded: DecodedImage
    result: CamResult
    cam_s: float

    @property
    def position(self) -> int:
        """Position in the run's input list."""
        return self.decoded.position


# --------------------------------------------------------------------------- writing the outputs


@dataclass(frozen=True)
class OutputOptions:
    """What to write, and how.

    Attributes:
        save: ``"overlay"`` and/or ``"heatmap"``.
        npz: Heatmaps go into one ``.npz`` per work unit.
        overlay_extension: ``".jpg"`` or ``".png"``.
        jpeg_quality: JPEG quality.
        original_size: Maps and overlays at each image's own size.
        multi_target: Heatmaps are ``[K, H, W]`` (``topk``, several labels) rather than ``[H, W]``.
    """

    save: Tuple[str, ...]
    npz: bool
    overlay_extension: str
    jpeg_quality: int
    original_size: bool
    multi_target: bool


@dataclass
class _Shard:
    """The records and maps of one ``.npz`` work unit, collected until it is complete."""

    records: Dict[int, ImageRecord] = field(default_factory=dict)
    arrays: Dict[int, np.ndarray] = field(default_factory=dict)


class OutputWriter:
    """Writes outputs and then manifest records, in a pool of threads.

    :meth:`submit` queues one batch; at most ``2 * threads + 1`` batches wait,
    so the compute loop is held back when the disk cannot keep up. The first
    error of a writer thread is raised by the next :meth:`submit` or by
    :meth:`close`, as :class:`WriterFailed`.

    Args:
        out_dir: The output folder.
        plan: The run's plan.
        explainer: The model and method (layer names, class names, input size).
        manifest: This rank's manifest shard.
        rank: This process's rank (recorded).
        options: What to write.
        threads: Writer threads.
    """

    def __init__(
        self,
        out_dir: str,
        plan: Plan,
        explainer: Explainer,
        manifest: ManifestWriter,
        rank: int,
        options: OutputOptions,
        threads: int = 2,
    ) -> None:
        self.out_dir = out_dir
        self.plan = plan
        self.explainer = explainer
        self.manifest = manifest
        self.rank = rank
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="camlib-writer")
        self.slots = threading.BoundedSemaphore(2 * threads + 1)
        self.lock = threading.Lock()
        self.error: Optional[BaseException] = None
        self.records: List[ImageRecord] = []
        self.shards: Dict[int, _Shard] = {}
        self.folders: set = set()

    def _write(self, rel: str, data: bytes) -> int:
        """Write one output file (``rel`` under ``--out``) atomically; return its size."""
        path = os.path.join(self.out_dir, rel)
        folder = os.path.dirname(path)
        if folder not in self.folders:
            os.makedirs(folder, exist_ok=True)
            self.folders.add(folder)
        return atomic_write(path, data, make_dirs=False)

    # -- records ---------------------------------------------------------------
    def error_record(self, image: DecodedImage, stage: str, error: str) -> ImageRecord:
        """The record of an image that could not be read (``stage="read"``) or explained (``"cam"``)."""
        source = self.plan.images[image.position]
        return ImageRecord(
            index=source.index,
            image=source.path,
            rel=source.rel,
            status="error",
            stage=stage,
            error=error,
            method=self.explainer.method,
            layers=self.explainer.layer_names,
            source=image.source,
            rank=self.rank,
            time={"decode_s": round(image.decode_s, 6)},
            finished_at=time.time(),
        )

    # -- jobs --------------------------------------------------------------------
    def submit(self, unit: int, items: List[ExplainedImage], errors: List[ImageRecord]) -> None:
        """Queue one batch of work unit ``unit``: ``items`` (images with their maps) and ready error records."""
        self.raise_if_failed()
        self.slots.acquire()
        try:
            future = self.pool.submit(self._job, unit, items, errors)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self.slots.release()
        error = future.exception()
        if error is not None:
            with self.lock:
                if self.error is None:
                    self.error = error

    def raise_if_failed(self) -> None:
        """Raise :class:`WriterFailed` for the first error of a writer thread, if any."""
        if self.error is not None:
            raise WriterFailed(f"writing the outputs failed: {_one_line(self.error)}") from self.error

    def close(self) -> None:
        """Wait for every queued job; raise the first error."""
        self.pool.shutdown(wait=True)
        self.raise_if_failed()
        if self.shards:
            raise WriterFailed(f"internal error: {len(self.shards)} heatmap shard(s) left incomplete")

    def _job(self, unit: int, items: List[ExplainedImage], errors: List[ImageRecord]) -> None:
        records = list(errors)
        arrays: Dict[int, np.ndarray] = {}
        for item in items:
            record, heatmap = self._write_image(unit, item)
            records.append(record)
            if heatmap is not None:
                arrays[item.position] = heatmap
        if not self.options.npz:
            self.manifest.write(records)
            with self.lock:
                self.records.extend(records)
            return
        with self.lock:
            shard = self.shards.setdefault(unit, _Shard())
            shard.records.update({r.index: r for r in records})
            shard.arrays.update(arrays)
            start, end = self.plan.unit_range(unit)
            complete = len(shard.records) == end - start
            if complete:
                del self.shards[unit]
        if complete:
            self._finish_shard(unit, shard)

    def _finish_shard(self, unit: int, shard: _Shard) -> None:
        records = [shard.records[i] for i in sorted(shard.records)]
        if shard.arrays:
            rel = f"{HEATMAP_DIR}/{shard_name(unit)}"
            started = time.perf_counter()
            content = {self.plan.images[i].rel: shard.arrays[i] for i in sorted(shard.arrays)}
            size = self._write(rel, npz_bytes(content))
            share = (time.perf_counter() - started) / len(content)
            for record in records:
                if record.ok:
                    record.files[rel] = size
                    record.time["write_s"] = round(record.time["write_s"] + share, 6)
        self.manifest.write(records)
        with self.lock:
            self.records.extend(records)

    def _write_image(self, unit: int, item: ExplainedImage) -> Tuple[ImageRecord, Optional[np.ndarray]]:
        started = time.perf_counter()
        options = self.options
        decoded, result = item.decoded, item.result
        image: InputImage = self.plan.images[item.position]
        maps = resize_maps(result.maps, decoded.orig_size if options.original_size else None)
        files: Dict[str, int] = {}
        names = self.explainer.model.class_names
        record = ImageRecord(
            index=image.index,
            image=image.path,
            rel=image.rel,
            status="ok",
            pred=result.pred,
            pred_name=names[result.pred] if names is not None else None,
            score=result.score,
            targets=result.targets,
            target_scores=result.target_scores,
            method=self.explainer.method,
            layers=self.explainer.layer_names,
            input_size=list(self.explainer.model.image_size),
            image_size=list(decoded.orig_size),
        )
        heatmap = None
        if "heatmap" in options.save:
            heatmap = (maps if options.multi_target else maps[0]).astype(np.float16)
            if options.npz:
                record.heatmap = {"file": f"{HEATMAP_DIR}/{shard_name(unit)}", "key": image.rel}
            else:
                rel = f"{HEATMAP_DIR}/{image.stem}.npy"
                files[rel] = self._write(rel, npy_bytes(heatmap))
                record.heatmap = rel
        if "overlay" in options.save:
            overlays = overlay_names(image.stem, result.targets, self.plan.naming, options.overlay_extension)
            for rel, one_map in zip(overlays, maps):
                data = encode_overlay(decoded.rgb, one_map, options.overlay_extension, options.jpeg_quality)
                files[rel] = self._write(rel, data)
            record.overlays = overlays
        record.files = files
        record.source = decoded.source
        record.rank = self.rank
        record.time = {
            "decode_s": round(decoded.decode_s, 6),
            "cam_s": round(item.cam_s, 6),
            "write_s": round(time.perf_counter() - started, 6),
        }
        record.finished_at = time.time()
        return record, heatmap
