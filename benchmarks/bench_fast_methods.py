"""ReciproCAM's speed against one forward pass, Grad-CAM and ScoreCAM, in one process.

Usage::

    python benchmarks/bench_fast_methods.py                       # resnet50, batch 8, 224 px, CPU
    python benchmarks/bench_fast_methods.py --scorecam-images 0   # ScoreCAM's forward passes only (2 CPU cores)
    python benchmarks/bench_fast_methods.py --device cuda --out /tmp/fast

Every round runs each participant once, in turn (forward, Grad-CAM, ReciproCAM), so all see the same
machine load; the table reports medians over rounds and ratios of medians. The forward pass is one inference
pass of the model (``torch.inference_mode``) over the batch.

ScoreCAM: its forward passes alone are always measured: the masked inputs camlib's ScoreCAM scores (the distinct
channel maps of each image) in chunks of ``--scorecam-batch-size``, one chunk's forward timed
``--scorecam-chunk-rounds`` times, times the number of chunks (a floor: mask building is left out). With
``--scorecam-images N`` (N > 0) ScoreCAM itself also runs ``--scorecam-rounds`` times on the first N images, its
median scaled by ``batch / N`` (its cost is linear in the number of images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision

from camlib import GradCAM, ReciproCAM, ScoreCAM
from camlib.score_cam import distinct_channel_maps
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["main", "markdown", "reciprocam_suite", "scorecam_masked_forwards"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(run: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def scorecam_masked_forwards(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> int:
    """How many masked inputs camlib's ScoreCAM scores for ``x``: the distinct channel maps of each image."""
    store: dict = {}
    handle = layer.register_forward_hook(lambda module, args, output: store.__setitem__("a", output.detach()))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return int(distinct_channel_maps(store["a"].float())[0].shape[0])


def reciprocam_suite(args: argparse.Namespace) -> dict:
    """Median seconds of a forward pass, Grad-CAM, ReciproCAM and ScoreCAM on one batch, and their ratios."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(args.device)
    layers = [model.layer4[-1]]
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    targets = [ClassifierOutputTarget(7 * i + 1) for i in range(args.batch)]
    grad_cam = GradCAM(model, layers)
    recipro = ReciproCAM(model, layers, batch_size=args.recipro_batch_size, progress=False)
    score = ScoreCAM(model, layers, batch_size=args.scorecam_batch_size, progress=False)

    def forward() -> Any:
        with torch.inference_mode():
            return model(x)

    runners = {"forward": forward, "GradCAM": lambda: grad_cam(x, targets), "ReciproCAM": lambda: recipro(x, targets)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in runners.values():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in runners.items():
                times[name].append(_timed(run, args.device))
        images = min(args.scorecam_images, args.batch)
        score_times = []
        if images:
            xs, ts = x[:images], targets[:images]
            score_times = [_timed(lambda: score(xs, ts), args.device) for _ in range(args.scorecam_rounds)]
    medians = {name: statistics.median(values) for name, values in times.items()}
    # ScoreCAM's forward passes alone: one per distinct channel map and image (what camlib's ScoreCAM
    # scores), in chunks of --scorecam-batch-size, each chunk's forward timed on its own.
    masked_inputs = scorecam_masked_forwards(model, layers[0], x)
    chunk = x[torch.arange(args.scorecam_batch_size) % args.batch]

    def forward_chunk() -> Any:
        with torch.inference_mode():
            return model(chunk)

    chunk_times = [_timed(forward_chunk, args.device) for _ in range(args.scorecam_chunk_rounds)]
    times["ScoreCAM floor"] = chunk_times
    medians["ScoreCAM floor"] = statistics.median(chunk_times) * math.ceil(masked_inputs / args.scorecam_batch_size)
    if images:
        medians["ScoreCAM"] = statistics.median(score_times) * args.batch / images
    return {
        "model": args.model,
        "batch": args.batch,
        "size": args.size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "scorecam_rounds": args.scorecam_rounds,
        "scorecam_images": images,
        "scorecam_masked_forwards": masked_inputs,
        "scorecam_batch_size": args.scorecam_batch_size,
        "paths": recipro.last_paths,
        "seconds": times | {"ScoreCAM": score_times},
        "median_s": medians,
        "recipro_over_forward": medians["ReciproCAM"] / medians["forward"],
        "recipro_over_gradcam": medians["ReciproCAM"] / medians["GradCAM"],
        "scorecam_floor_over_recipro": medians["ScoreCAM floor"] / medians["ReciproCAM"],
        "scorecam_over_recipro": medians["ScoreCAM"] / medians["ReciproCAM"] if images else None,
    }


def markdown(result: dict) -> str:
    """The result as a markdown table."""
    m = result["median_s"]
    images = result["scorecam_images"]
    labels = {
        "forward": "one forward pass (inference mode)",
        "GradCAM": "GradCAM",
        "ReciproCAM": "ReciproCAM",
        "ScoreCAM": f"ScoreCAM, run on {images} image(s), scaled to the batch",
        "ScoreCAM floor": f"ScoreCAM's forwards alone: {result['scorecam_masked_forwards']} masked inputs, "
        f"{math.ceil(result['scorecam_masked_forwards'] / result['scorecam_batch_size'])} chunks of "
        f"{result['scorecam_batch_size']} x one chunk's median (not run whole)",
    }
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['size']} px, {result['device']}, "
        f"{result['threads']} threads; medians of {result['rounds']} rounds",
        "",
        "| | median | / forward | / GradCAM | ReciproCAM is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("forward", "GradCAM", "ReciproCAM", "ScoreCAM", "ScoreCAM floor"):
        if name not in m:
            continue
        faster = m[name] / m["ReciproCAM"]
        verdict = "-" if name == "ReciproCAM" else f"{faster:.2f}x faster" if faster >= 1 else f"{1 / faster:.2f}x slower"
        lines.append(
            f"| {labels[name]} | {m[name]:.2f} s | {m[name] / m['forward']:.2f}x | {m[name] / m['GradCAM']:.2f}x | {verdict} |"
        )
    lines.append("")
    lines.append(f"ReciproCAM path: {result['paths']}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipro-batch-size", type=int, default=64)
    parser.add_argument("--scorecam-rounds", type=int, default=1)
    parser.add_argument("--scorecam-images", type=int, default=8,
                        help="images ScoreCAM is run on (scaled to --batch); 0: only its floor")
    parser.add_argument("--scorecam-batch-size", type=int, default=32)
    parser.add_argument("--scorecam-chunk-rounds", type=int, default=3, help="timings of one ScoreCAM chunk's forward")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = reciprocam_suite(args)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    text = markdown(result)
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        Path(f"{args.out}.md").write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
