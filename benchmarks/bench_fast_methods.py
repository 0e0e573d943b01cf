"""ReciproCAM's speed against one forward pass, Grad-CAM and ScoreCAM, in one process.

Usage::

    python benchmarks/bench_fast_methods.py                       # resnet50, batch 8, 224 px, CPU
    python benchmarks/bench_fast_methods.py --scorecam-images 1   # ScoreCAM timed on 1 image, scaled to the batch
    python benchmarks/bench_fast_methods.py --device cuda --out /tmp/fast

Every round runs each participant once, in turn (forward, Grad-CAM, ReciproCAM, ...), so all see the same
machine load; the table reports medians over rounds and ratios of medians. ScoreCAM runs
``--scorecam-rounds`` times on the first ``--scorecam-images`` images of the batch, after the other rounds;
its cost is linear in the number of images (one masked forward per distinct channel map and image), so with
fewer images than the batch its median is scaled by ``batch / scorecam_images`` and the row says so.
The forward pass is one inference pass of the model (``torch.inference_mode``) over the batch.
"""

from __future__ import annotations

import argparse
import json
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
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["main", "markdown", "reciprocam_suite"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(run: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


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
        xs, ts = x[:images], targets[:images]
        score_times = [_timed(lambda: score(xs, ts), args.device) for _ in range(args.scorecam_rounds)]
    medians = {name: statistics.median(values) for name, values in times.items()}
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
        "paths": recipro.last_paths,
        "seconds": times | {"ScoreCAM": score_times},
        "median_s": medians,
        "recipro_over_forward": medians["ReciproCAM"] / medians["forward"],
        "recipro_over_gradcam": medians["ReciproCAM"] / medians["GradCAM"],
        "scorecam_over_recipro": medians["ScoreCAM"] / medians["ReciproCAM"],
    }


def markdown(result: dict) -> str:
    """The result as a markdown table."""
    scaled = result["scorecam_images"] != result["batch"]
    note = f" (timed on {result['scorecam_images']} image(s), x{result['batch'] // result['scorecam_images']})" if scaled else ""
    m = result["median_s"]
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['size']} px, {result['device']}, "
        f"{result['threads']} threads; medians of {result['rounds']} rounds (ScoreCAM: {result['scorecam_rounds']})",
        "",
        "| | median | / forward | ReciproCAM is |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("forward", "GradCAM", "ReciproCAM", "ScoreCAM"):
        faster = m[name] / m["ReciproCAM"]
        lines.append(
            f"| {name}{note if name == 'ScoreCAM' else ''} | {m[name] * 1000:.0f} ms | {m[name] / m['forward']:.2f}x "
            f"| {'-' if name == 'ReciproCAM' else f'{faster:.2f}x faster' if faster >= 1 else f'{1 / faster:.2f}x slower'} |"
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
    parser.add_argument("--scorecam-images", type=int, default=8, help="images ScoreCAM is timed on (scaled to --batch)")
    parser.add_argument("--scorecam-batch-size", type=int, default=32)
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
