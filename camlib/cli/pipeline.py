"""The moving parts of ``camlib explain``: the model, the CAM engine and the output writer.

* :func:`load_model` builds the model and its CAM exactly as
  ``usage_examples/cam.py`` does (:mod:`camlib.models`), checks that it is a
  classifier that accepts the input size, and returns a :class:`LoadedModel`.
* :class:`CamEngine` turns a batch into maps, predictions and scores: one CAM
  call per target slot (``top1``: one; ``topk:K``: K; a label file: as many as
  the image with the most labels).
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
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from camlib.cli.inputs import InputImage, TargetSpec, UsageError
from camlib.cli.manifest import ManifestWriter
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
from camlib.finer_cam import FinerCAM, finer_targets
from camlib.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    class_names,
    default_preprocessing,
    default_target_layer_paths,
    make_cam,
    resolve_target_layers,
)
from camlib.utils.model_state import eval_mode
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["CamEngine", "LoadedModel", "OutputOptions", "OutputWriter", "Plan", "WriterFailed", "load_model"]


class WriterFailed(RuntimeError):
    """Writing an output failed (disk full, permissions, ...); the run cannot go on."""


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


# --------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    """A model ready to explain.

    Attributes:
        net: The model, in eval mode, on its device.
        cam: The CAM object (:func:`camlib.models.make_cam`).
        layer_names: The target layers' paths (as recorded in the manifest).
        image_size: ``(height, width)`` of its input.
        mean: Normalisation mean (RGB).
        std: Normalisation std (RGB).
        num_outputs: Number of classes.
        class_names: Names of the classes, when known.
        description: The model's name, or ``module:<class>`` for a model object.
    """

    net: nn.Module
    cam: Any
    layer_names: List[str]
    image_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_outputs: int
    class_names: Optional[List[str]]
    description: str


def _layer_name(net: nn.Module, layer: nn.Module) -> str:
    for name, module in net.named_modules():
        if module is layer:
            return name
    raise UsageError(f"target layer {repr(layer).splitlines()[0]} is not a submodule of the model")


def load_model(
    model: Union[str, nn.Module],
    weights: Union[str, os.PathLike, None],
    num_classes: Optional[int],
    device: torch.device,
    image_size: Optional[Tuple[int, int]],
    mean: Optional[Tuple[float, ...]],
    std: Optional[Tuple[float, ...]],
    target_layers: Optional[Sequence[Union[str, nn.Module]]],
    method: str,
) -> LoadedModel:
    """Build the model and its CAM, and check that it is a classifier taking ``image_size``.

    Args:
        model: A name for :func:`camlib.models.build_model`, or a model object
            (used as it is, on its own device; then ``image_size`` is required,
            ``mean``/``std`` default to ImageNet's, and ``target_layers`` are
            required unless it is the demo model).
        weights: Passed to :func:`~camlib.models.build_model` (names only).
        num_classes: Passed to :func:`~camlib.models.build_model` (names only).
        device: Where to build a named model.
        image_size: Input size; default: the architecture's.
        mean: Normalisation mean; default: the architecture's.
        std: Normalisation std; default: the architecture's.
        target_layers: Layer paths (or modules); default: the architecture's.
        method: A key of :data:`camlib.models.CAM_METHODS`.

    Returns:
        The :class:`LoadedModel`.

    Raises:
        UsageError: If the model fails on a zero image of ``image_size`` or
            does not return ``[batch, classes]`` scores, or a model object
            lacks ``image_size``/``target_layers``.
        ValueError, TypeError, RuntimeError, ImportError: From
            :func:`~camlib.models.build_model` and :func:`~camlib.models.resolve_target_layers`.
    """
    if isinstance(model, str):
        vit_size = image_size[0] if image_size is not None and image_size[0] == image_size[1] else None
        net = build_model(model, weights, num_classes, device, image_size=vit_size)
        preprocessing = default_preprocessing(model, net)
        size = image_size or preprocessing.image_size
        mean = mean or tuple(preprocessing.mean)
        std = std or tuple(preprocessing.std)
        paths = [str(p) for p in target_layers] if target_layers else default_target_layer_paths(model)
        layers = resolve_target_layers(net, paths)
        description = model
    elif isinstance(model, nn.Module):
        net = model
        if image_size is None:
            raise UsageError("image_size is needed with a model object (the input size it expects, e.g. 224)")
        size = image_size
        mean = mean or IMAGENET_MEAN
        std = std or IMAGENET_STD
        if not target_layers:
            from camlib.demo import DemoNet

            if not isinstance(net, DemoNet):
                raise UsageError("target_layers is needed with a model object, e.g. ['layer4[-1]']")
            target_layers = ["features[-1]"]
        strings = [t for t in target_layers if isinstance(t, str)]
        resolved = iter(resolve_target_layers(net, strings) if strings else [])
        layers = [next(resolved) if isinstance(t, str) else t for t in target_layers]
        paths = [t if isinstance(t, str) else _layer_name(net, t) for t in target_layers]
        description = f"module:{type(net).__qualname__}"
    else:
        raise UsageError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
    probe_device = next((t.device for t in net.parameters()), device)
    with torch.no_grad(), eval_mode(net):
        try:
            scores = net(torch.zeros(1, 3, *size, device=probe_device))
        except Exception as err:
            raise UsageError(
                f"the model fails on a {size[0]}x{size[1]} input ({_one_line(err)[:300]}); check --image-size"
            ) from err
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise UsageError(f"camlib explain needs a classifier returning [batch, classes] scores, got {shape}")
    cam = make_cam(method, net, layers, progress=False)
    names = class_names(model, scores.shape[1]) if isinstance(model, str) else None
    if method == "fullgrad":
        paths = ["<every layer with a bias>"]  # FullGrad ignores the target layers
    return LoadedModel(net, cam, paths, size, tuple(mean), tuple(std), int(scores.shape[1]), names, description)


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


class CamEngine:
    """Maps, predictions and scores for a batch, one CAM call per target slot.

    Args:
        model: The loaded model.
        spec: What to explain.
        labels: ``{image index: classes}`` for a label file.
        aug_smooth: Passed to the CAM.
        eigen_smooth: Passed to the CAM.
    """

    def __init__(
        self,
        model: LoadedModel,
        spec: TargetSpec,
        labels: Optional[Dict[int, Tuple[int, ...]]],
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> None:
        self.model = model
        self.cam = model.cam
        self.spec = spec
        self.labels = labels
        self.kwargs = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
        self.finer = isinstance(self.cam, FinerCAM)

    def __call__(self, x: torch.Tensor, positions: List[int]) -> List[Union[Dict[str, Any], Exception]]:
        """One result per image: a dict (``maps`` float32 ``[K, H, W]``, ``targets``,
        ``target_scores``, ``pred``, ``score``), or the exception that image raised.

        If the batch fails as a whole, each image is tried alone, so that one
        bad image does not fail the others.
        """
        try:
            return self._explain(x, positions)
        except Exception as err:
            if len(positions) == 1:
                return [err]
        results: List[Union[Dict[str, Any], Exception]] = []
        for i, position in enumerate(positions):
            try:
                results.extend(self._explain(x[i : i + 1], [position]))
            except Exception as err:
                results.append(err)
        return results

    def _scores(self) -> torch.Tensor:
        outputs = self.cam.outputs
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            raise TypeError("the model must return [batch, classes] scores")
        return outputs.detach().float().cpu()

    def _target(self, scores: Optional[torch.Tensor], row: int, category: int) -> Any:
        if self.finer:
            return finer_targets(scores[row : row + 1], target_idx=category)[0]
        return ClassifierOutputTarget(category)

    def _explain(self, x: torch.Tensor, positions: List[int]) -> List[Dict[str, Any]]:
        n = len(positions)
        if self.spec.kind in ("top1", "topk"):
            # targets=None explains each image's top class (argmax: the first of equal scores),
            # which is the first of the stable descending order below
            first = self.cam(x, None, **self.kwargs)
            scores = self._scores()
            order = torch.argsort(scores, dim=1, descending=True, stable=True)
            classes = [order[i, : self.spec.k or 1].tolist() for i in range(n)]
        else:
            classes = [list(self.labels[p]) for p in positions]
            scores = None
            if self.finer:  # Finer-CAM's targets need the scores first
                with torch.no_grad(), eval_mode(self.model.net):
                    scores = self.model.net(x).detach().float().cpu()
            first = self.cam(x, [self._target(scores, i, classes[i][0]) for i in range(n)], **self.kwargs)
            scores = self._scores()
        maps = [[first[i]] for i in range(n)]
        for slot in range(1, max(len(c) for c in classes)):
            rows = [i for i in range(n) if len(classes[i]) > slot]
            more = self.cam(x[rows], [self._target(scores, i, classes[i][slot]) for i in rows], **self.kwargs)
            for j, i in enumerate(rows):
                maps[i].append(more[j])
        results = []
        for i in range(n):
            pred = int(scores[i].argmax())
            results.append(
                {
                    "maps": np.stack(maps[i]).astype(np.float32, copy=False),
                    "targets": [int(c) for c in classes[i]],
                    "target_scores": [float(scores[i, c]) for c in classes[i]],
                    "pred": pred,
                    "score": float(scores[i, pred]),
                }
            )
        return results


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


class OutputWriter:
    """Writes outputs and then manifest records, in a pool of threads.

    :meth:`submit` queues one batch; at most ``2 * threads + 1`` batches wait,
    so the compute loop is held back when the disk cannot keep up. The first
    error of a writer thread is raised by the next :meth:`submit` or by
    :meth:`close`, as :class:`WriterFailed`.

    Args:
        out_dir: The output folder.
        plan: The run's plan.
        model: The loaded model (layer names, class names, input size).
        manifest: This rank's manifest shard.
        rank: This process's rank (recorded).
        options: What to write.
        threads: Writer threads.
    """

    def __init__(
        self,
        out_dir: str,
        plan: Plan,
        model: LoadedModel,
        manifest: ManifestWriter,
        rank: int,
        options: OutputOptions,
        threads: int = 2,
    ) -> None:
        self.out_dir = out_dir
        self.plan = plan
        self.model = model
        self.manifest = manifest
        self.rank = rank
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="camlib-writer")
        self.slots = threading.BoundedSemaphore(2 * threads + 1)
        self.lock = threading.Lock()
        self.error: Optional[BaseException] = None
        self.records: List[dict] = []
        self.shards: Dict[int, Dict[str, Any]] = {}
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
    def _base(self, image: InputImage) -> Dict[str, Any]:
        return {"index": image.index, "image": image.path, "rel": image.rel}

    def error_record(self, position: int, stage: str, error: str, source: Any, decode_s: float) -> dict:
        """The record of an image that could not be read (``stage="read"``) or explained (``"cam"``)."""
        record = self._base(self.plan.images[position])
        record.update(
            status="error",
            stage=stage,
            error=error,
            method=self.plan.config["method"],
            layers=self.model.layer_names,
            source=source,
            rank=self.rank,
            time={"decode_s": round(decode_s, 6)},
            finished_at=time.time(),
        )
        return record

    # -- jobs --------------------------------------------------------------------
    def submit(self, unit: int, items: List[Dict[str, Any]], errors: List[dict]) -> None:
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

    def _job(self, unit: int, items: List[Dict[str, Any]], errors: List[dict]) -> None:
        records = list(errors)
        arrays: Dict[int, np.ndarray] = {}
        for item in items:
            record, heatmap = self._write_image(unit, item)
            records.append(record)
            if heatmap is not None:
                arrays[item["position"]] = heatmap
        if not self.options.npz:
            self.manifest.write(records)
            with self.lock:
                self.records.extend(records)
            return
        with self.lock:
            state = self.shards.setdefault(unit, {"records": {}, "arrays": {}})
            state["records"].update({r["index"]: r for r in records})
            state["arrays"].update(arrays)
            start, end = self.plan.unit_range(unit)
            complete = len(state["records"]) == end - start
            if complete:
                del self.shards[unit]
        if complete:
            self._finish_shard(unit, state)

    def _finish_shard(self, unit: int, state: Dict[str, Any]) -> None:
        records = [state["records"][i] for i in sorted(state["records"])]
        if state["arrays"]:
            rel = f"{HEATMAP_DIR}/{shard_name(unit)}"
            started = time.perf_counter()
            content = {self.plan.images[i].rel: state["arrays"][i] for i in sorted(state["arrays"])}
            size = self._write(rel, npz_bytes(content))
            share = (time.perf_counter() - started) / len(content)
            for record in records:
                if record["status"] == "ok":
                    record["files"][rel] = size
                    record["time"]["write_s"] = round(record["time"]["write_s"] + share, 6)
        self.manifest.write(records)
        with self.lock:
            self.records.extend(records)

    def _write_image(self, unit: int, item: Dict[str, Any]) -> Tuple[dict, Optional[np.ndarray]]:
        started = time.perf_counter()
        options = self.options
        image = self.plan.images[item["position"]]
        result = item["result"]
        maps = resize_maps(result["maps"], item["orig_size"] if options.original_size else None)
        files: Dict[str, int] = {}
        record = self._base(image)
        record.update(status="ok", pred=result["pred"])
        if self.model.class_names is not None:
            record["pred_name"] = self.model.class_names[result["pred"]]
        record.update(
            score=result["score"],
            targets=result["targets"],
            target_scores=result["target_scores"],
            method=self.plan.config["method"],
            layers=self.model.layer_names,
            input_size=list(self.model.image_size),
            image_size=list(item["orig_size"]),
        )
        heatmap = None
        if "heatmap" in options.save:
            heatmap = (maps if options.multi_target else maps[0]).astype(np.float16)
            if options.npz:
                record["heatmap"] = {"file": f"{HEATMAP_DIR}/{shard_name(unit)}", "key": image.rel}
            else:
                rel = f"{HEATMAP_DIR}/{image.stem}.npy"
                files[rel] = self._write(rel, npy_bytes(heatmap))
                record["heatmap"] = rel
        if "overlay" in options.save:
            names = overlay_names(image.stem, result["targets"], self.plan.naming, options.overlay_extension)
            for rel, one_map in zip(names, maps):
                data = encode_overlay(item["rgb"], one_map, options.overlay_extension, options.jpeg_quality)
                files[rel] = self._write(rel, data)
            record["overlays"] = names
        record.update(
            files=files,
            source=item["source"],
            rank=self.rank,
            time={
                "decode_s": round(item["decode_s"], 6),
                "cam_s": round(item["cam_s"], 6),
                "write_s": round(time.perf_counter() - started, 6),
            },
            finished_at=time.time(),
        )
        return record, heatmap
