"""camlib against pytorch-grad-cam 1.5.7 and torchcam 0.5.0, side by side in one process.

Usage::

    python benchmarks/bench_cam.py                          # every suite, CPU
    python benchmarks/bench_cam.py --suites gradient --models resnet50 --batches 8
    python benchmarks/bench_cam.py --suites scorecam memory leak
    python benchmarks/bench_cam.py --device cuda            # batch 64, synchronised timings
    python benchmarks/bench_cam.py --out docs/bench         # + bench.json and bench.md

Suites:

* ``gradient``: GradCAM, HiResCAM, GradCAM++, XGradCAM, LayerCAM, EigenGradCAM
  and GradCAMElementWise on ``layer4[-1]`` of resnet18/resnet50, 224x224, for each
  batch size. The floor is one inference forward pass of the model
  (``torch.inference_mode``), timed in the same rounds.
* ``ablation``: AblationCAM on ``layer4[-1]``, batch 1 (camlib and grad-cam;
  torchcam has no Ablation-CAM), with the largest difference between the maps.
* ``scorecam``: ScoreCAM on resnet18 ``layer4[-1]``, batch 8 at 64x64, the same
  chunk size for every library. The floor is the forward passes over exactly
  the masked inputs camlib has to score (its distinct masks), prebuilt and timed
  on their own.
* ``memory``: peak extra memory of one ScoreCAM call (the ``scorecam`` setting,
  ``--memory-chunk`` masked inputs per forward for every library, 64 by default):
  on the CPU, each library runs in a fresh subprocess and the peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) is
  compared with the resident set before it; on CUDA,
  ``torch.cuda.max_memory_allocated`` around the call. ``--memory-methods``
  adds SSCAM and ISCAM (the ``score-methods`` setting, against torchcam).
* ``scorecam-large``: ScoreCAM in the reference's ``cam.py`` configuration:
  resnet50 ``layer4[-1]``, one 224x224 image, 32 masked inputs per forward for
  every library (``--large-rounds`` rounds, 1 by default: 2048 channels make
  each call long on a CPU; ``--large-channels N`` explains only the first N
  channels, camlib and grad-cam only). Each library's forward passes are timed
  apart (the model wrapped in :class:`ForwardTimer`): the table gives the images
  it ran the model on and its time outside the model.
* ``scorecam-frcnn``: ScoreCAM in grad-cam's Faster R-CNN tutorial configuration
  (fasterrcnn_resnet50_fpn with weights=None, ``model.backbone`` through
  ``fasterrcnn_reshape_transform``, ``FasterRCNNBoxScoreTarget``), camlib against
  grad-cam; ``--frcnn-size``, ``--frcnn-channels``, ``--frcnn-rounds``.
* ``score-methods``: SSCAM, ISCAM and SmoothGradCAMpp against torchcam's
  (resnet18 ``layer4[-1]``, ``--methods-batch`` images of ``--methods-size``
  pixels, ``--methods-samples`` samples, 64 masked inputs per forward).
* ``reciprocam``: ReciproCAM on resnet50 ``layer4[-1]``, batch 8 at 224x224
  (``--recipro-model``, ``--recipro-batch``), against one forward pass, GradCAM
  and ScoreCAM in the same rounds (``benchmarks/bench_fast_methods.py``'s
  ``reciprocam_suite``): ScoreCAM runs whole on ``--recipro-scorecam-images``
  images (scaled to the batch; by default the whole batch on CUDA, none on the
  CPU) and its forward passes alone are always timed (a floor).
* ``leak``: 1000 consecutive GradCAM calls on resnet18 (one 224x224 image):
  growth of the resident set, and whether any tensor the autograd graph saved
  is still alive after a call (tracked with ``saved_tensors_hooks``).
* ``autocast``: the gradient methods (``--methods``) under
  ``torch.autocast`` with float16 and with bfloat16, against float32 in the
  same rounds: median time, and the smallest per-image correlation and the
  largest difference between the half-precision and the float32 maps
  (``ok``: finite maps, correlation above 0.98, no blank float32 map).

The ScoreCAM and AblationCAM settings can be moved (``--scorecam-model``,
``--scorecam-batch``, ``--scorecam-size``; ``--ablation-batch`` images of
``--size`` pixels): ``benchmarks/gpu_check.sh`` runs them on resnet50 at 224x224.
On CUDA every timed call also records its peak extra GPU memory
(``torch.cuda.max_memory_allocated`` above the level before the call, outside
the timed window), reported as ``<library>_peak_mib`` and in a table.

Timing: every round runs each participant once, in turn (A B C A B C ...), so
all of them see the same machine load; the tables report medians over rounds
and ratios of medians. A participant is one complete explanation of the batch
as its library's users write it: camlib and grad-cam ``cam(x, targets)``
(returning normalised maps at the input's size as numpy), torchcam
``out = model(x); extractor(class_idx, out)`` (maps at the layer's resolution,
as tensors). CAM objects are built once per setting, outside the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torchvision

import camlib
from camlib.score_cam import distinct_channel_maps, score_cam_masks
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["main"]

#: Benchmark name -> class name in (camlib, pytorch_grad_cam, torchcam.methods); None: not offered.
GRADIENT_METHODS = {
    "GradCAM": ("GradCAM", "GradCAM", "GradCAM"),
    "HiResCAM": ("HiResCAM", "HiResCAM", None),
    "GradCAM++": ("GradCAMPlusPlus", "GradCAMPlusPlus", "GradCAMpp"),
    "XGradCAM": ("XGradCAM", "XGradCAM", "XGradCAM"),
    "LayerCAM": ("LayerCAM", "LayerCAM", "LayerCAM"),
    "EigenGradCAM": ("EigenGradCAM", "EigenGradCAM", None),
    "GradCAMElementWise": ("GradCAMElementWise", "GradCAMElementWise", None),
}
LIBRARIES = ("camlib", "grad-cam", "torchcam")


# --------------------------------------------------------------------------- helpers


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _quiet() -> contextlib.ExitStack:
    """Silence warnings and the reference's tqdm bars (it cannot switch them off)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def _inputs(batch: int, size: int, device: str) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)


def _classes(batch: int) -> list[int]:
    return [(7 * i + 3) % 1000 for i in range(batch)]


def interleaved(
    participants: dict[str, Callable[[], Any]],
    rounds: int,
    device: str,
    label: str,
    warmup: Optional[tuple[str, ...]] = None,
) -> dict:
    """Median seconds of each participant over ``rounds`` rounds, run in turn.

    Each participant in ``warmup`` (default: all) runs once untimed first, for
    lazy initialisation, the first trace and the allocator's first growth.
    The order rotates from round to round (round ``r`` starts with participant
    ``r mod n``), so no library always pays for running first or after another.
    """
    for name, run in participants.items():
        if warmup is None or name in warmup:
            with _quiet():
                run()
    times: dict[str, list[float]] = {name: [] for name in participants}
    peaks: dict[str, list[float]] = {name: [] for name in participants}
    cuda = device.startswith("cuda")
    order = list(participants.items())
    for index in range(rounds):
        shift = index % len(order)
        for name, run in order[shift:] + order[:shift]:
            _sync(device)
            if cuda:  # outside the timed window
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            with _quiet():
                start = time.perf_counter()
                run()
                _sync(device)
                times[name].append(time.perf_counter() - start)
            if cuda:
                peaks[name].append((torch.cuda.max_memory_allocated(device) - before) / 2**20)
        summary = "  ".join(f"{n} {times[n][-1] * 1e3:8.1f} ms" for n in participants)
        print(f"  {label} round {index + 1}/{rounds}: {summary}", flush=True)
    result = {name: {"median_s": statistics.median(t), "all_s": t} for name, t in times.items()}
    if cuda:
        for name, values in peaks.items():
            result[name]["peak_extra_mib"] = max(values)
    return result


def _add_peaks(row: dict, timed: dict, names: dict[str, str]) -> None:
    """Copy each participant's peak extra GPU memory (CUDA only) into ``row``."""
    for name, key in names.items():
        if "peak_extra_mib" in timed.get(name, {}):
            row[f"{key}_peak_mib"] = timed[name]["peak_extra_mib"]


def camlib_runner(cls: type, model, layers, x, targets, **kwargs) -> Callable[[], Any]:
    """One camlib explanation; the CAM object is built and released inside, like the peers'."""

    def run():
        with cls(model, layers, progress=False, **kwargs) as cam:
            return cam(x, targets)

    return run


def reference_runner(cls: type, model, layers, x, targets, attributes=None, **kwargs) -> Callable[[], Any]:
    """One pytorch-grad-cam explanation. Its hooks live only inside the run, so they
    never slow down another library's turn."""

    def run():
        with cls(model, layers, **kwargs) as cam:
            for name, value in (attributes or {}).items():
                setattr(cam, name, value)
            return cam(input_tensor=x, targets=targets)

    return run


def torchcam_runner(cls: type, model, layer, x, classes, needs_grad=True, **kwargs) -> Callable[[], Any]:
    """One torchcam explanation: the user's forward, then the extractor."""

    def run():
        with cls(model, layer, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
            with torch.set_grad_enabled(needs_grad):
                out = model(x)
            maps = extractor(classes, out)
        model.zero_grad(set_to_none=True)
        return maps

    return run


def _load_loadavg() -> Optional[list[float]]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "camlib": camlib.__version__,
        "device": device,
        "loadavg_start": _load_loadavg(),
    }
    for module, key in (("pytorch_grad_cam", "grad-cam"), ("torchcam", "torchcam")):
        try:
            from importlib.metadata import version

            info[key] = version({"pytorch_grad_cam": "grad-cam"}.get(module, module))
        except Exception:  # not installed: that library's columns stay empty
            info[key] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- suites


def gradient_suite(args: argparse.Namespace) -> list[dict]:
    rows = []
    have_reference, have_torchcam = _have("pytorch_grad_cam"), _have("torchcam")
    for model_name in args.models:
        model = _model(model_name, args.device)
        layer = model.layer4[-1]
        for batch in args.batches:
            x = _inputs(batch, args.size, args.device)
            classes = _classes(batch)
            targets = [ClassifierOutputTarget(c) for c in classes]

            def forward(x=x, model=model):
                with torch.inference_mode():
                    return model(x)

            for method in args.methods:
                ours_name, ref_name, tc_name = GRADIENT_METHODS[method]
                participants: dict[str, Callable] = {
                    "forward": forward,
                    "camlib": camlib_runner(getattr(camlib, ours_name), model, [layer], x, targets),
                }
                if have_reference:
                    import pytorch_grad_cam

                    participants["grad-cam"] = reference_runner(
                        getattr(pytorch_grad_cam, ref_name), model, [layer], x, targets
                    )
                if have_torchcam and tc_name:
                    import torchcam.methods

                    participants["torchcam"] = torchcam_runner(
                        getattr(torchcam.methods, tc_name), model, layer, x, classes
                    )
                timed = interleaved(participants, args.rounds, args.device, f"{method} {model_name} b{batch}")
                model.zero_grad(set_to_none=True)
                floor = timed["forward"]["median_s"]
                row = {"suite": "gradient", "method": method, "model": model_name, "batch": batch,
                       "size": args.size, "floor": "1 inference forward", "floor_s": floor}
                for lib in LIBRARIES:
                    if lib in timed:
                        row[f"{lib}_s"] = timed[lib]["median_s"]
                        row[f"{lib}_x_floor"] = timed[lib]["median_s"] / floor
                _add_peaks(row, timed, {"forward": "floor", **{lib: lib for lib in LIBRARIES}})
                rows.append(row)
    return rows


def ablation_suite(args: argparse.Namespace) -> list[dict]:
    rows = []
    have_reference = _have("pytorch_grad_cam")
    for model_name in args.models:
        model = _model(model_name, args.device)
        layer = model.layer4[-1]
        x = _inputs(args.ablation_batch, args.size, args.device)
        targets = [ClassifierOutputTarget(c) for c in _classes(args.ablation_batch)]
        channels = layer.conv1.in_channels  # a Bottleneck/BasicBlock's output channels
        maps = {}

        def keep(name, run, maps=maps):
            return lambda: maps.__setitem__(name, run())

        bs = args.ablation_batch_size
        participants = {"camlib": keep("camlib", camlib_runner(camlib.AblationCAM, model, [layer], x, targets,
                                                               batch_size=bs))}
        if have_reference:
            import pytorch_grad_cam

            participants["grad-cam"] = keep(
                "grad-cam", reference_runner(pytorch_grad_cam.AblationCAM, model, [layer], x, targets, batch_size=bs)
            )
        # The reference's call takes minutes and has nothing to trace: only camlib warms up.
        timed = interleaved(
            participants, args.ablation_rounds, args.device, f"AblationCAM {model_name}", warmup=("camlib",)
        )
        model.zero_grad(set_to_none=True)
        passes = f"{channels} ablated passes" if args.ablation_batch == 1 else \
            f"{channels} ablated passes per image ({args.ablation_batch * channels} in all)"
        row = {"suite": "ablation", "method": "AblationCAM", "model": model_name, "batch": args.ablation_batch,
               "size": args.size, "floor": f"1 forward + {passes}", "floor_s": None,
               "camlib_s": timed["camlib"]["median_s"]}
        _add_peaks(row, timed, {lib: lib for lib in LIBRARIES})
        if "grad-cam" in timed:
            row["grad-cam_s"] = timed["grad-cam"]["median_s"]
            row["speedup_vs_grad-cam"] = row["grad-cam_s"] / row["camlib_s"]
            row["max_abs_diff"] = float(np.abs(maps["camlib"] - maps["grad-cam"]).max())
        rows.append(row)
    return rows


def _scorecam_setting(args: argparse.Namespace):
    model = _model(getattr(args, "scorecam_model", "resnet18"), args.device)
    x = _inputs(args.scorecam_batch, args.scorecam_size, args.device)
    classes = _classes(args.scorecam_batch)
    return model, model.layer4[-1], x, classes


def scorecam_masked_inputs(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exactly the masked inputs camlib's ScoreCAM scores: one per distinct channel map."""
    captured = []
    handle = layer.register_forward_hook(lambda m, a, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    maps, image, _ = distinct_channel_maps(captured[0])
    return x[image] * score_cam_masks(maps, tuple(x.shape[2:]))[:, None]


def scorecam_runners(model, layer, x, classes, chunk, channels: Optional[int] = None) -> dict[str, Callable]:
    """One ScoreCAM explanation per library, all scoring ``chunk`` masked inputs per forward.

    ``channels``: explain only the layer's first ``channels`` channels (a reshape
    transform that slices them, for camlib and grad-cam; torchcam has no such
    hook, so it is left out), to time a cut-down version of a long configuration.
    """
    targets = [ClassifierOutputTarget(c) for c in classes]
    first = None if channels is None else (lambda activations: activations[:, :channels])
    runners = {"camlib": camlib_runner(camlib.ScoreCAM, model, [layer], x, targets, batch_size=chunk,
                                       reshape_transform=first)}
    if _have("pytorch_grad_cam"):
        import pytorch_grad_cam

        # the reference reads its chunk size from this attribute when it exists
        runners["grad-cam"] = reference_runner(
            pytorch_grad_cam.ScoreCAM, model, [layer], x, targets, attributes={"batch_size": chunk},
            reshape_transform=first,
        )
    if _have("torchcam") and channels is None:
        import torchcam.methods

        runners["torchcam"] = torchcam_runner(
            torchcam.methods.ScoreCAM, model, layer, x, classes, needs_grad=False, batch_size=chunk
        )
    return runners


class ForwardTimer(torch.nn.Module):
    """The model, counting the images it is called on and the seconds its forward passes take."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        super().__init__()
        self.model = model
        self.device = device
        self.images = 0
        self.seconds = 0.0

    def forward(self, x, *args, **kwargs):
        _sync(self.device)
        start = time.perf_counter()
        out = self.model(x, *args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.images += len(x)
        return out


def timed_forwards(runners: dict[str, Callable], timer: ForwardTimer) -> tuple[dict[str, Callable], dict]:
    """Wrap each runner so that each call records the images ``timer``'s model saw and
    the seconds its forward passes took; also keeps each call's maps (the last one)."""
    record: dict[str, dict] = {name: {"images": [], "forward_s": [], "maps": None} for name in runners}

    def wrap(name, run):
        def wrapped():
            timer.images, timer.seconds = 0, 0.0
            maps = run()
            record[name]["images"].append(timer.images)
            record[name]["forward_s"].append(timer.seconds)
            record[name]["maps"] = maps
            return maps

        return wrapped

    return {name: wrap(name, run) for name, run in runners.items()}, record


def forward_breakdown(row: dict, timed: dict, record: dict) -> None:
    """Add each library's median time, forward passes and time outside the model to ``row``,
    and the largest difference between camlib's and grad-cam's maps."""
    for lib, entry in record.items():
        times = timed[lib]["all_s"]
        forward = entry["forward_s"][-len(times):]  # the timed rounds (not the warm-up)
        row[f"{lib}_s"] = timed[lib]["median_s"]
        row[f"{lib}_rounds_s"] = list(times)
        row[f"{lib}_images"] = entry["images"][-1]
        row[f"{lib}_forward_s"] = statistics.median(forward)
        row[f"{lib}_outside_model_s"] = statistics.median(t - f for t, f in zip(times, forward))
    if record.get("camlib", {}).get("maps") is not None and record.get("grad-cam", {}).get("maps") is not None:
        row["max_abs_diff_vs_grad-cam"] = float(np.abs(record["camlib"]["maps"] - record["grad-cam"]["maps"]).max())


def scorecam_suite(args: argparse.Namespace) -> list[dict]:
    model, layer, x, classes = _scorecam_setting(args)
    chunk = args.scorecam_chunk
    masked = scorecam_masked_inputs(model, layer, x)

    def floor():
        with torch.no_grad():
            for start in range(0, masked.shape[0], chunk):
                model(masked[start : start + chunk])

    participants = {"floor": floor, **scorecam_runners(model, layer, x, classes, chunk)}
    timed = interleaved(participants, args.scorecam_rounds, args.device, f"ScoreCAM {args.scorecam_model}")
    floor_s = timed["floor"]["median_s"]
    row = {"suite": "scorecam", "method": "ScoreCAM", "model": args.scorecam_model, "batch": args.scorecam_batch,
           "size": args.scorecam_size, "floor": f"{masked.shape[0]} masked inputs (of "
           f"{x.shape[0] * layer.conv1.in_channels}) in chunks of {chunk}", "floor_s": floor_s}
    for lib in LIBRARIES:
        if lib in timed:
            row[f"{lib}_s"] = timed[lib]["median_s"]
            row[f"{lib}_x_floor"] = timed[lib]["median_s"] / floor_s
    _add_peaks(row, timed, {"floor": "floor", **{lib: lib for lib in LIBRARIES}})
    return [row]



def scorecam_large_suite(args: argparse.Namespace) -> list[dict]:
    """The reference's cam.py configuration: resnet50 layer4[-1], one 224 px image, chunks of 32.

    ``--large-channels K`` explains only the first K channels (camlib and grad-cam),
    a cut-down run for a slow machine; each library's forward passes are timed
    apart from the rest, so the time spent outside the model is reported too.
    """
    timer = ForwardTimer(_model(args.large_model, args.device), args.device)
    layer = timer.model.layer4[-1]
    x = _inputs(1, args.large_size, args.device)
    runners = scorecam_runners(timer, layer, x, _classes(1), args.large_chunk, channels=args.large_channels)
    runners = {lib: run for lib, run in runners.items() if lib == "camlib" or lib in args.large_libraries}
    runners, record = timed_forwards(runners, timer)
    label = f"ScoreCAM {args.large_model} {args.large_size}px"
    timed = interleaved(runners, args.large_rounds, args.device, label, warmup=())
    row = {"suite": "scorecam-large", "method": "ScoreCAM", "model": args.large_model, "batch": 1,
           "size": args.large_size, "chunk": args.large_chunk, "rounds": args.large_rounds,
           "channels": args.large_channels or layer.conv1.in_channels, "all_channels": args.large_channels is None}
    forward_breakdown(row, timed, record)
    _add_peaks(row, timed, {lib: lib for lib in LIBRARIES})
    return [row]


def frcnn_setting(args: argparse.Namespace):
    """grad-cam's Faster R-CNN tutorial, without downloads: fasterrcnn_resnet50_fpn (weights=None,
    images resized to ``--frcnn-size``), the target layer ``model.backbone`` through the
    FPN reshape transform, and a box-score target on the model's own top detection."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=args.frcnn_size, max_size=args.frcnn_size,
        box_score_thresh=0.0,  # an untrained head scores below the default 0.05: keep its detections
    ).eval().to(args.device)
    x = torch.rand(1, 3, args.frcnn_size, args.frcnn_size, generator=torch.Generator().manual_seed(1)).to(args.device)
    with torch.no_grad():
        detections = model(x)[0]
    if len(detections["boxes"]):
        boxes, labels = detections["boxes"][:1].cpu(), [int(detections["labels"][0])]
    else:
        quarter = args.frcnn_size / 4
        boxes, labels = torch.tensor([[quarter, quarter, 3 * quarter, 3 * quarter]]), [1]
    return model, x, boxes, labels


def scorecam_frcnn_suite(args: argparse.Namespace) -> list[dict]:
    """ScoreCAM on grad-cam's Faster R-CNN tutorial configuration (camlib and grad-cam; torchcam
    cannot take a detector's FPN output)."""
    from camlib.utils.model_targets import FasterRCNNBoxScoreTarget
    from camlib.utils.reshape_transforms import fasterrcnn_reshape_transform

    model, x, boxes, labels = frcnn_setting(args)
    timer = ForwardTimer(model, args.device)
    keep = args.frcnn_channels

    def reshape(transform):
        return transform if keep is None else (lambda features: transform(features)[:, :keep])

    runners = {"camlib": camlib_runner(
        camlib.ScoreCAM, timer, [model.backbone], x, [FasterRCNNBoxScoreTarget(labels, boxes)],
        batch_size=args.frcnn_chunk, reshape_transform=reshape(fasterrcnn_reshape_transform))}
    if _have("pytorch_grad_cam"):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as ReferenceTarget
        from pytorch_grad_cam.utils.reshape_transforms import (
            fasterrcnn_reshape_transform as reference_reshape,
        )

        runners["grad-cam"] = reference_runner(
            pytorch_grad_cam.ScoreCAM, timer, [model.backbone], x, [ReferenceTarget(labels, boxes)],
            attributes={"batch_size": args.frcnn_chunk}, reshape_transform=reshape(reference_reshape))
    runners, record = timed_forwards(runners, timer)
    timed = interleaved(runners, args.frcnn_rounds, args.device, f"ScoreCAM Faster R-CNN {args.frcnn_size}px",
                        warmup=())
    with torch.no_grad():
        channels = fasterrcnn_reshape_transform(model.backbone(model.transform([x[0]])[0].tensors)).shape[1]
    row = {"suite": "scorecam-frcnn", "method": "ScoreCAM", "model": "fasterrcnn_resnet50_fpn", "batch": 1,
           "size": args.frcnn_size, "chunk": args.frcnn_chunk, "rounds": args.frcnn_rounds,
           "channels": min(keep or channels, channels), "all_channels": keep is None or keep >= channels}
    forward_breakdown(row, timed, record)
    _add_peaks(row, timed, {lib: lib for lib in LIBRARIES})
    return [row]


#: Score-CAM variants timed against torchcam: name -> (arguments, whether the method needs gradients).
SCORE_METHODS = {
    "SSCAM": (dict(std=2.0), False),
    "ISCAM": ({}, False),
    "SmoothGradCAMpp": (dict(std=0.3), True),
}


def score_method_runners(name: str, model, layer, x, classes, samples: int, chunk: int) -> dict[str, Callable]:
    """One explanation by camlib's and torchcam's ``name`` (a key of :data:`SCORE_METHODS`),
    ``samples`` samples, ``chunk`` masked inputs per forward (not for Smooth Grad-CAM++)."""
    extra, needs_grad = SCORE_METHODS[name]
    common = dict(num_samples=samples, **extra, **({} if needs_grad else {"batch_size": chunk}))
    targets = [ClassifierOutputTarget(c) for c in classes]
    runners = {"camlib": camlib_runner(getattr(camlib, name), model, [layer], x, targets, **common)}
    if _have("torchcam"):
        import torchcam.methods

        runners["torchcam"] = torchcam_runner(
            getattr(torchcam.methods, name), model, layer, x, classes, needs_grad=needs_grad, **common
        )
    return runners


def score_methods_suite(args: argparse.Namespace) -> list[dict]:
    """SSCAM, ISCAM and SmoothGradCAMpp: camlib against torchcam in the same rounds."""
    model = _model("resnet18", args.device)
    layer = model.layer4[-1]
    x = _inputs(args.methods_batch, args.methods_size, args.device)
    classes = _classes(args.methods_batch)
    n = args.methods_samples
    rows = []
    for name in SCORE_METHODS:
        runners = score_method_runners(name, model, layer, x, classes, n, 64)
        timed = interleaved(runners, args.methods_rounds, args.device, name)
        row = {"suite": "score-methods", "method": name, "model": "resnet18", "batch": args.methods_batch,
               "size": args.methods_size, "num_samples": n}
        for lib in runners:
            row[f"{lib}_s"] = timed[lib]["median_s"]
        _add_peaks(row, timed, {lib: lib for lib in runners})
        rows.append(row)
    return rows


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def prefault_code(only: Optional[str] = None) -> float:
    """Map in now every page of the read-only file mappings (the code and constant data
    of the shared libraries loaded so far), so that a later call's growth of the
    resident set is the memory it allocates, not library code it runs for the first
    time (file-backed pages, shared between processes). ``only``: just the files whose
    path contains it. Returns the MiB mapped in."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    populate_read = 22  # MADV_POPULATE_READ (Linux 5.14+)
    before = _proc_status_kib("RssFile")
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or "r" not in fields[1] or "w" in fields[1] or not fields[5].startswith("/"):
            continue
        if only is not None and only not in fields[5]:
            continue
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if libc.madvise(start, end - start, populate_read) != 0:
            page = 4096
            for address in range(start, end, page):  # older kernels: touch each page
                ctypes.string_at(address, 1)
    return (_proc_status_kib("RssFile") - before) / 1024


def _peak_extra_mib(run: Callable[[], Any], device: str) -> float:
    """Peak memory above the level just before ``run()``, in MiB."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with _quiet():
            run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _proc_status_kib("VmRSS")
    with _quiet():
        run()
    return (_proc_status_kib("VmHWM") - before) / 1024


def measure_scorecam_memory(library: str, args: argparse.Namespace) -> tuple[float, float]:
    """Peak extra memory (MiB) of ``library``'s first call of ``args.memory_method`` (ScoreCAM
    by default) in this process (cold: includes one-off costs such as oneDNN primitives and
    lazily loaded code) and of its second call (warm: what every further call costs).

    ScoreCAM runs in the ``scorecam`` setting; SSCAM and ISCAM in the ``score-methods`` one
    (``--methods-batch`` images of ``--methods-size`` pixels, ``--methods-samples`` samples);
    every library scores ``--memory-chunk`` masked inputs per forward."""
    method = getattr(args, "memory_method", "ScoreCAM")
    if method == "ScoreCAM":
        model, layer, x, classes = _scorecam_setting(args)
        run = scorecam_runners(model, layer, x, classes, args.memory_chunk)[library]
    else:
        model = _model("resnet18", args.device)
        x = _inputs(args.methods_batch, args.methods_size, args.device)
        runners = score_method_runners(method, model, model.layer4[-1], x, _classes(args.methods_batch),
                                       args.methods_samples, args.memory_chunk)
        run = runners[library]
    if getattr(args, "prefault_code", False):
        prefault_code()
    return _peak_extra_mib(run, args.device), _peak_extra_mib(run, args.device)


def memory_suite(args: argparse.Namespace) -> list[dict]:
    rows = []
    for method in args.memory_methods:
        if method == "ScoreCAM":
            row = {"suite": "memory", "method": method, "model": args.scorecam_model, "batch": args.scorecam_batch,
                   "size": args.scorecam_size}
            peers = (("grad-cam", "pytorch_grad_cam"), ("torchcam", "torchcam"))
        else:
            row = {"suite": "memory", "method": method, "model": "resnet18", "batch": args.methods_batch,
                   "size": args.methods_size, "num_samples": args.methods_samples}
            peers = (("torchcam", "torchcam"),)
        row.update(chunk=args.memory_chunk, device=args.device)
        libraries = ["camlib"] + [lib for lib, mod in peers if _have(mod)]
        samples: dict[str, list[tuple[float, float]]] = {lib: [] for lib in libraries}
        code_prefaulted: dict[str, list[float]] = {lib: [] for lib in libraries}
        # (lib, False): as a user's process runs it; (lib, True): the libraries' code mapped in first,
        # so the first call's growth is the memory it allocates (no library code run for the first time)
        variants = (False,) if args.device.startswith("cuda") else (False, True)  # CUDA: allocated GPU memory
        runs = [(lib, prefault) for lib in libraries for prefault in variants]
        for index in range(args.memory_rounds):
            for lib, prefault in runs:
                command = [sys.executable, __file__, "--measure-memory", lib, "--memory-method", method,
                           "--device", args.device, "--scorecam-model", args.scorecam_model,
                           "--scorecam-batch", str(args.scorecam_batch), "--scorecam-size", str(args.scorecam_size),
                           "--methods-batch", str(args.methods_batch), "--methods-size", str(args.methods_size),
                           "--methods-samples", str(args.methods_samples), "--memory-chunk", str(args.memory_chunk)]
                command += ["--prefault-code"] if prefault else []
                # Fixed mmap threshold: large freed buffers go back to the OS, so the
                # resident set before the call is not inflated by earlier allocations.
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "CAMLIB_DISABLE_PROGRESS": "1"}
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                cold, warm = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
                if prefault:
                    code_prefaulted[lib].append(cold)
                    print(f"  memory {method} round {index + 1}/{args.memory_rounds}: {lib} first call, code "
                          f"mapped in before, +{cold:.1f} MiB", flush=True)
                    continue
                samples[lib].append((cold, warm))
                print(f"  memory {method} round {index + 1}/{args.memory_rounds}: {lib} first call +{cold:.1f} MiB, "
                      f"second call +{warm:.1f} MiB", flush=True)
        for lib in libraries:
            row[f"{lib}_peak_extra_mib"] = statistics.median(cold for cold, _ in samples[lib])
            row[f"{lib}_warm_peak_extra_mib"] = statistics.median(warm for _, warm in samples[lib])
            row[f"{lib}_first_call_mib_all"] = [cold for cold, _ in samples[lib]]
            if code_prefaulted[lib]:
                row[f"{lib}_code_prefaulted_peak_extra_mib"] = statistics.median(code_prefaulted[lib])
        rows.append(row)
    return rows


class SavedTensorCounter:
    """Counts the tensors autograd saved for backward that are still alive."""

    def __init__(self) -> None:
        self.alive: weakref.WeakSet = weakref.WeakSet()

    def pack(self, tensor: torch.Tensor) -> Any:
        box = _Box(tensor)
        self.alive.add(box)
        return box

    @staticmethod
    def unpack(box: Any) -> torch.Tensor:
        return box.tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Box:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _rss_mib() -> float:
    return _proc_status_kib("VmRSS") / 1024


def leak_suite(args: argparse.Namespace) -> list[dict]:
    model = _model("resnet18", args.device)
    layer = model.layer4[-1]
    x = _inputs(1, args.size, args.device)
    targets = [ClassifierOutputTarget(3)]
    rows = []
    libraries = ["camlib"] + (["grad-cam"] if args.leak_reference and _have("pytorch_grad_cam") else [])
    for lib in libraries:
        # One CAM object for all the calls, the way a notebook or a data loop uses it.
        if lib == "camlib":
            cam = camlib.GradCAM(model, [layer], progress=False)
            run = functools.partial(cam, x, targets)
        else:
            import pytorch_grad_cam

            cam = pytorch_grad_cam.GradCAM(model, [layer])
            run = functools.partial(cam, input_tensor=x, targets=targets)
        counter = SavedTensorCounter()
        with _quiet(), counter.hooks():
            run()
            gc.collect()
            graph_alive = len(counter.alive)
        for _ in range(args.leak_warmup):
            with _quiet():
                run()
        gc.collect()
        start = _rss_mib()
        began = time.perf_counter()
        for index in range(args.leak_calls):
            with _quiet():
                run()
            if (index + 1) % 200 == 0:
                print(f"  leak {lib}: {index + 1}/{args.leak_calls} calls, RSS {_rss_mib():.0f} MiB", flush=True)
        gc.collect()
        growth = _rss_mib() - start
        cam.__exit__(None, None, None)
        model.zero_grad(set_to_none=True)
        rows.append({"suite": "leak", "library": lib, "model": "resnet18", "calls": args.leak_calls,
                     "size": args.size, "rss_growth_mib": growth,
                     "saved_tensors_alive_after_call": graph_alive,
                     "seconds": time.perf_counter() - began})
        print(f"  leak {lib}: RSS growth {growth:+.1f} MiB over {args.leak_calls} calls; "
              f"{graph_alive} saved tensors of the graph alive after a call", flush=True)
    return rows


def _min_correlation(got: np.ndarray, expected: np.ndarray) -> float:
    """Smallest Pearson correlation between corresponding maps (1.0 for two constant maps)."""
    values = []
    for a, b in zip(got.reshape(len(got), -1), expected.reshape(len(expected), -1)):
        if a.std() == 0 or b.std() == 0:
            values.append(1.0 if np.array_equal(a, b) else 0.0)
        else:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return min(values)


def autocast_suite(args: argparse.Namespace) -> list[dict]:
    """The gradient methods under ``torch.autocast`` (float16, bfloat16) against float32."""
    rows = []
    device_type = torch.device(args.device).type
    for model_name in args.models:
        model = _model(model_name, args.device)
        layer = model.layer4[-1]
        for batch in args.batches:
            x = _inputs(batch, args.size, args.device)
            targets = [ClassifierOutputTarget(c) for c in _classes(batch)]
            for method in args.methods:
                cls = getattr(camlib, GRADIENT_METHODS[method][0])
                maps: dict[str, np.ndarray] = {}

                def runner(dtype_name: str, cls=cls, maps=maps, x=x, targets=targets, model=model, layer=layer):
                    def run():
                        context = contextlib.nullcontext() if dtype_name == "float32" else \
                            torch.autocast(device_type, dtype=getattr(torch, dtype_name))
                        with context, cls(model, [layer], progress=False) as cam:
                            maps[dtype_name] = cam(x, targets)

                    return run

                participants = {name: runner(name) for name in ("float32", "float16", "bfloat16")}
                timed = interleaved(participants, args.rounds, args.device, f"autocast {method} {model_name} b{batch}")
                model.zero_grad(set_to_none=True)
                for dtype_name in ("float16", "bfloat16"):
                    got, expected = maps[dtype_name], maps["float32"]
                    finite = bool(np.isfinite(got).all())
                    correlation = _min_correlation(got, expected) if finite else float("nan")
                    # a blank (constant) float32 map would make any comparison pass
                    blank = bool((expected.reshape(len(expected), -1).std(axis=1) == 0).any())
                    row = {"suite": "autocast", "method": method, "model": model_name, "batch": batch,
                           "size": args.size, "dtype": dtype_name, "float32_s": timed["float32"]["median_s"],
                           "autocast_s": timed[dtype_name]["median_s"],
                           "speedup": timed["float32"]["median_s"] / timed[dtype_name]["median_s"],
                           "finite": finite, "dtype_out": str(got.dtype),
                           "max_abs_diff": float(np.abs(got - expected).max()) if finite else float("nan"),
                           "min_correlation": correlation, "float32_blank": blank,
                           "ok": finite and not blank and correlation > 0.98}
                    _add_peaks(row, timed, {"float32": "float32", dtype_name: "autocast"})
                    rows.append(row)
                    print(f"  autocast {dtype_name} {method}: correlation >= {correlation:.4f}, "
                          f"max |diff| {row['max_abs_diff']:.2e}{', blank float32 map' if blank else ''}, "
                          f"{'ok' if row['ok'] else 'NOT OK'}", flush=True)
    return rows


def reciprocam_suite(args: argparse.Namespace) -> list[dict]:
    spec = importlib.util.spec_from_file_location("bench_fast_methods", Path(__file__).with_name("bench_fast_methods.py"))
    fast = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fast)
    images = args.recipro_scorecam_images
    if images is None:
        images = args.recipro_batch if args.device.startswith("cuda") else 0
    result = fast.reciprocam_suite(argparse.Namespace(
        model=args.recipro_model, batch=args.recipro_batch, size=args.size, device=args.device,
        rounds=args.recipro_rounds, recipro_batch_size=64, scorecam_images=images, scorecam_rounds=1,
        scorecam_batch_size=args.scorecam_chunk, scorecam_chunk_rounds=3,
    ))  # fmt: skip
    print(fast.markdown(result), flush=True)
    return [{"suite": "reciprocam", **result}]


SUITES = {
    "gradient": gradient_suite,
    "ablation": ablation_suite,
    "scorecam": scorecam_suite,
    "memory": memory_suite,
    "scorecam-large": scorecam_large_suite,
    "scorecam-frcnn": scorecam_frcnn_suite,
    "score-methods": score_methods_suite,
    "reciprocam": reciprocam_suite,
    "leak": leak_suite,
    "autocast": autocast_suite,
}


# --------------------------------------------------------------------------- report


def _ms(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _cell(row: dict, lib: str) -> str:
    seconds = row.get(f"{lib}_s")
    if seconds is None:
        return "n/a"
    ratio = row.get(f"{lib}_x_floor")
    return _ms(seconds) + (f" ({ratio:.2f}x)" if ratio is not None else "")


def markdown(results: list[dict], info: dict) -> str:
    out = []
    gradient = [r for r in results if r["suite"] == "gradient"]
    if gradient:
        out += [f"### Gradient methods (`layer4[-1]`, {gradient[0]['size']}x{gradient[0]['size']})", "",
                "Median time per explanation of the batch; in brackets, the ratio to the floor "
                "(one inference forward pass, same rounds). Speed-up: the peer's median over camlib's.", "",
                "| method | model | batch | floor | camlib | grad-cam | torchcam | vs grad-cam | vs torchcam |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in gradient:
            vs = [f"{r[f'{lib}_s'] / r['camlib_s']:.2f}x" if f"{lib}_s" in r else "n/a"
                  for lib in ("grad-cam", "torchcam")]
            out.append(f"| {r['method']} | {r['model']} | {r['batch']} | {_ms(r['floor_s'])} | "
                       f"{_cell(r, 'camlib')} | {_cell(r, 'grad-cam')} | {_cell(r, 'torchcam')} | "
                       f"{vs[0]} | {vs[1]} |")
        out.append("")
    recipro = [r for r in results if r["suite"] == "reciprocam"]
    for r in recipro:
        m = r["median_s"]
        out += [f"### ReciproCAM ({r['model']} `layer4[-1]`, batch {r['batch']}, {r['size']}x{r['size']})", "",
                "| | median | / forward | / GradCAM | / ReciproCAM |", "|---|---:|---:|---:|---:|"]
        for name in ("forward", "GradCAM", "ReciproCAM", "ScoreCAM", "ScoreCAM floor"):
            if name in m:
                out.append(f"| {name} | {_ms(m[name])} | {m[name] / m['forward']:.2f}x | "
                           f"{m[name] / m['GradCAM']:.2f}x | {m[name] / m['ReciproCAM']:.2f}x |")
        out += ["", f"ReciproCAM path: {r['paths']}; ScoreCAM run whole on {r['scorecam_images']} image(s) "
                "(scaled to the batch); floor: its forward passes alone.", ""]
    ablation = [r for r in results if r["suite"] == "ablation"]
    if ablation:
        what = "one image" if ablation[0]["batch"] == 1 else f"batch {ablation[0]['batch']}"
        out += [f"### AblationCAM (`layer4[-1]`, {what}, {ablation[0]['size']}x{ablation[0]['size']})", "",
                "| model | passes needed | camlib | grad-cam | speed-up | max abs difference |",
                "|---|---|---:|---:|---:|---:|"]
        for r in ablation:
            speedup = r.get("speedup_vs_grad-cam")
            diff = r.get("max_abs_diff")
            out.append(f"| {r['model']} | {r['floor']} | {_ms(r['camlib_s'])} | {_ms(r.get('grad-cam_s'))} | "
                       f"{'n/a' if speedup is None else f'{speedup:.0f}x'} | "
                       f"{'n/a' if diff is None else f'{diff:.1e}'} |")
        out.append("")
    scorecam = [r for r in results if r["suite"] == "scorecam"]
    memory = [r for r in results if r["suite"] == "memory"]
    for r in scorecam:
        out += [f"### ScoreCAM ({r['model']} `layer4[-1]`, batch {r['batch']}, {r['size']}x{r['size']})", "",
                f"Floor: {r['floor']}, {_ms(r['floor_s'])}. In brackets, the ratio to the floor.", "",
                "| camlib | grad-cam | torchcam |", "|---:|---:|---:|",
                f"| {_cell(r, 'camlib')} | {_cell(r, 'grad-cam')} | {_cell(r, 'torchcam')} |", ""]
    for r in memory:
        where = "GPU memory allocated" if r["device"].startswith("cuda") else "resident set"
        chunk = f"{r['chunk']} masked inputs per forward for every library; " if "chunk" in r else ""
        samples = f", {r['num_samples']} samples" if "num_samples" in r else ""
        out += [f"### {r.get('method', 'ScoreCAM')} memory ({r['model']} `layer4[-1]`, batch {r['batch']}, "
                f"{r['size']}x{r['size']}{samples})", "",
                f"Peak extra memory of one call ({where}; {chunk}median over fresh processes):", "",
                "| call | camlib | grad-cam | torchcam |", "|---|---:|---:|---:|"]
        for label, key in (("first in the process", "peak_extra_mib"),
                           ("first, the libraries' code mapped in before", "code_prefaulted_peak_extra_mib"),
                           ("second", "warm_peak_extra_mib")):
            if not any(f"{lib}_{key}" in r for lib in LIBRARIES):
                continue
            cells = [f"+{r[f'{lib}_{key}']:.2f} MiB" if f"{lib}_{key}" in r else "n/a" for lib in LIBRARIES]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    for r in [r for r in results if r["suite"] in ("scorecam-large", "scorecam-frcnn")]:
        if r["suite"] == "scorecam-large":
            title = (f"ScoreCAM, the reference's cam.py configuration ({r['model']} `layer4[-1]`, one "
                     f"{r['size']}x{r['size']} image, {r['chunk']} masked inputs per forward")
        else:
            title = (f"ScoreCAM, grad-cam's Faster R-CNN tutorial configuration ({r['model']}, weights=None, "
                     f"{r['size']} px, target `model.backbone` through `fasterrcnn_reshape_transform`, "
                     f"`FasterRCNNBoxScoreTarget`, {r['chunk']} masked inputs per forward")
        title += ", all channels)" if r.get("all_channels", True) else f", the first {r['channels']} channels only)"
        libs = [lib for lib in LIBRARIES if f"{lib}_s" in r]
        diff = r.get("max_abs_diff_vs_grad-cam")
        out += [f"### {title}", "",
                f"Median over {r['rounds']} round(s); images: the inputs the model was run on (the capture pass "
                "included); outside the model: the call's time minus its forward passes'; speed-up: the peer's "
                "median over camlib's."
                + ("" if diff is None else f" Largest difference between camlib's and grad-cam's maps: {diff:.1e}."),
                "", "| library | rounds | time | images | forward passes | outside the model | speed-up |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for lib in libs:
            rounds = " / ".join(_ms(t) for t in r.get(f"{lib}_rounds_s", []))
            out.append(f"| {lib} | {rounds} | {_ms(r[f'{lib}_s'])} | {r.get(f'{lib}_images', 'n/a')} | "
                       f"{_ms(r.get(f'{lib}_forward_s'))} | {_ms(r.get(f'{lib}_outside_model_s'))} | "
                       f"{r[f'{lib}_s'] / r['camlib_s']:.2f}x |")
        out.append("")
    methods = [r for r in results if r["suite"] == "score-methods"]
    if methods:
        r = methods[0]
        out += [f"### SS-CAM, IS-CAM, Smooth Grad-CAM++ against torchcam (resnet18 `layer4[-1]`, batch {r['batch']}, "
                f"{r['size']}x{r['size']}, {r['num_samples']} samples)", "",
                "| method | camlib | torchcam | speed-up |", "|---|---:|---:|---:|"]
        for r in methods:
            speedup = f"{r['torchcam_s'] / r['camlib_s']:.2f}x" if "torchcam_s" in r else "n/a"
            out.append(f"| {r['method']} | {_ms(r['camlib_s'])} | {_ms(r.get('torchcam_s'))} | {speedup} |")
        out.append("")
    leak = [r for r in results if r["suite"] == "leak"]
    if leak:
        out += ["### Leaks (GradCAM, resnet18, one 224x224 image per call)", "",
                "| library | calls | RSS growth | graph tensors alive after a call |", "|---|---:|---:|---:|"]
        for r in leak:
            out.append(f"| {r['library']} | {r['calls']} | {r['rss_growth_mib']:+.1f} MiB | "
                       f"{r['saved_tensors_alive_after_call']} |")
        out.append("")
    autocast = [r for r in results if r["suite"] == "autocast"]
    if autocast:
        out += ["### Autocast (float16, bfloat16) against float32", "",
                "| method | model | batch | dtype | float32 | autocast | speed-up | min correlation | max abs diff "
                "| peak GPU memory (float32 / autocast) | ok |",
                "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in autocast:
            memory = (f"{r['float32_peak_mib']:.0f} / {r['autocast_peak_mib']:.0f} MiB"
                      if "autocast_peak_mib" in r else "n/a")
            out.append(f"| {r['method']} | {r['model']} | {r['batch']} | {r['dtype']} | {_ms(r['float32_s'])} | "
                       f"{_ms(r['autocast_s'])} | {r['speedup']:.2f}x | {r['min_correlation']:.4f} | "
                       f"{r['max_abs_diff']:.1e} | {memory} | {'yes' if r['ok'] else 'NO'} |")
        out.append("")
    peaks = [r for r in results if r["suite"] != "autocast" and any(k.endswith("_peak_mib") for k in r)]
    if peaks:
        out += ["### Peak extra GPU memory per call (`torch.cuda.max_memory_allocated`, largest over rounds)", "",
                "| suite | method | model | batch | floor | camlib | grad-cam | torchcam |",
                "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in peaks:
            cells = [f"{r[f'{k}_peak_mib']:.0f} MiB" if f"{k}_peak_mib" in r else "n/a" for k in ("floor", *LIBRARIES)]
            out.append(f"| {r['suite']} | {r['method']} | {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
        out.append("")
    load = info.get("loadavg_start"), info.get("loadavg_end")
    out += [f"Machine: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']} "
            f"({info['torch_threads']} threads), device {info['device']}"
            + (f" ({info['gpu']})" if info.get("gpu") else "")
            + f"; camlib {info['camlib']}, grad-cam {info.get('grad-cam')}, torchcam {info.get('torchcam')}; "
            f"load average at start/end {load[0]} / {load[1]}."]
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=list(GRADIENT_METHODS), choices=list(GRADIENT_METHODS))
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help="gradient suite batch sizes (default 1 8 on the CPU, 64 on CUDA)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ablation-rounds", type=int, default=3)
    parser.add_argument("--ablation-batch", type=int, default=1, help="images per AblationCAM call")
    parser.add_argument("--ablation-batch-size", type=int, default=32, help="ablated copies per forward")
    parser.add_argument("--scorecam-model", default="resnet18")
    parser.add_argument("--scorecam-batch", type=int, default=8)
    parser.add_argument("--scorecam-size", type=int, default=64)
    parser.add_argument("--scorecam-chunk", type=int, default=32, help="masked inputs per forward (all libraries)")
    parser.add_argument("--scorecam-rounds", type=int, default=3)
    parser.add_argument("--memory-rounds", type=int, default=3)
    parser.add_argument("--memory-chunk", type=int, default=64, help="masked inputs per forward in the memory suite")
    parser.add_argument("--memory-methods", nargs="+", default=["ScoreCAM"], choices=["ScoreCAM", "SSCAM", "ISCAM"],
                        help="methods of the memory suite (SSCAM and ISCAM in the score-methods setting)")
    parser.add_argument("--large-rounds", type=int, default=1, help="rounds of the scorecam-large suite")
    parser.add_argument("--large-libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES),
                        help="libraries the scorecam-large suite runs (camlib always; e.g. camlib torchcam)")
    parser.add_argument("--large-model", default="resnet50")
    parser.add_argument("--large-size", type=int, default=224)
    parser.add_argument("--large-chunk", type=int, default=32, help="masked inputs per forward (all libraries)")
    parser.add_argument("--large-channels", type=int, default=None,
                        help="explain only the first N channels (cut-down run; camlib and grad-cam only)")
    parser.add_argument("--frcnn-rounds", type=int, default=1, help="rounds of the scorecam-frcnn suite")
    parser.add_argument("--frcnn-size", type=int, default=800, help="Faster R-CNN min_size = max_size, and image size")
    parser.add_argument("--frcnn-chunk", type=int, default=32, help="masked inputs per forward (both libraries)")
    parser.add_argument("--frcnn-channels", type=int, default=None,
                        help="explain only the first N of the 1280 FPN channels (cut-down run)")
    parser.add_argument("--methods-batch", type=int, default=1)
    parser.add_argument("--methods-size", type=int, default=64)
    parser.add_argument("--methods-samples", type=int, default=2)
    parser.add_argument("--methods-rounds", type=int, default=3)
    parser.add_argument("--recipro-model", default="resnet50")
    parser.add_argument("--recipro-batch", type=int, default=8)
    parser.add_argument("--recipro-rounds", type=int, default=3)
    parser.add_argument("--recipro-scorecam-images", type=int, default=None,
                        help="images ScoreCAM runs whole on in the reciprocam suite (default: the batch on CUDA, 0 on the CPU)")
    parser.add_argument("--leak-calls", type=int, default=1000)
    parser.add_argument("--leak-warmup", type=int, default=20)
    parser.add_argument("--leak-reference", action="store_true", help="also run the leak suite on grad-cam")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--measure-memory", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--prefault-code", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-method", default="ScoreCAM", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.measure_memory:  # child process of the memory suite
        print("{:.3f} {:.3f}".format(*measure_scorecam_memory(args.measure_memory, args)))
        return []
    if args.batches is None:
        args.batches = [64] if args.device.startswith("cuda") else [1, 8]
    info = machine_info(args.device)
    print(json.dumps(info), flush=True)
    results: list[dict] = []
    for suite in args.suites:
        print(f"== {suite}", flush=True)
        results += SUITES[suite](args)
    info["loadavg_end"] = _load_loadavg()
    info["command"] = " ".join(["python", "benchmarks/bench_cam.py", *(argv if argv is not None else sys.argv[1:])])
    table = markdown(results, info)
    print()
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
        Path(args.out + ".md").write_text(table)
    return results


if __name__ == "__main__":
    main()
