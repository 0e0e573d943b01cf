"""Time AblationCAM: pytorch-grad-cam 1.5.7 against camlib, interleaved A B A B.

Usage::

    python benchmarks/bench_ablation.py                     # resnet18 and resnet50, 3 rounds
    python benchmarks/bench_ablation.py --models resnet18 --rounds 5 --size 224

Each round runs the reference, then camlib, on the same model (``weights=None``,
seeded), the same single image and the same target, so both see the same
machine load; the medians over rounds and their ratio are reported, with the
largest absolute difference between the two implementations' maps. Runs on
the CPU by default (``--device cuda`` if available).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import warnings

import numpy as np
import torch
import torchvision

from camlib.ablation_cam import AblationCAM
from camlib.utils.model_targets import ClassifierOutputTarget

__all__ = ["main", "time_once"]


def time_once(make_cam, x, targets) -> tuple[float, np.ndarray]:
    """Seconds for one construction + call + release, and the maps."""
    start = time.perf_counter()
    with make_cam() as cam:
        maps = cam(x, targets)
    return time.perf_counter() - start, maps


def _reference_factory(model, layers, batch_size):
    from pytorch_grad_cam import AblationCAM as ReferenceAblationCAM

    return lambda: ReferenceAblationCAM(model, layers, batch_size=batch_size)


def _camlib_factory(model, layers, batch_size):
    return lambda: AblationCAM(model, layers, batch_size=batch_size, progress=False)


def bench_model(name: str, rounds: int, size: int, batch_size: int, device: str, category: int) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    layers = [model.layer4[-1]]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    targets = [ClassifierOutputTarget(category)]
    reference = _reference_factory(model, layers, batch_size)
    ours = _camlib_factory(model, layers, batch_size)
    time_once(ours, x, targets)  # warm-up (imports, first trace)
    times = {"reference": [], "camlib": []}
    maps = {}
    quiet = io.StringIO()  # the reference prints tqdm bars it cannot switch off
    for index in range(rounds):
        for label, factory in (("reference", reference), ("camlib", ours)):
            with warnings.catch_warnings(), contextlib.redirect_stderr(quiet):
                warnings.simplefilter("ignore")
                seconds, result = time_once(factory, x, targets)
            times[label].append(seconds)
            maps[label] = result
            print(f"  {name} round {index + 1}/{rounds} {label:9s} {seconds:8.3f} s", flush=True)
    median_ref = statistics.median(times["reference"])
    median_ours = statistics.median(times["camlib"])
    return {
        "model": name,
        "layer": "layer4[-1]",
        "input": [1, 3, size, size],
        "device": device,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "reference_s": times["reference"],
        "camlib_s": times["camlib"],
        "reference_median_s": median_ref,
        "camlib_median_s": median_ours,
        "speedup": median_ref / median_ours,
        "max_abs_diff": float(np.abs(maps["reference"] - maps["camlib"]).max()),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="ablated copies per forward (both libraries)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--category", type=int, default=281)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        print(f"{name}: AblationCAM, layer4[-1], 1x3x{args.size}x{args.size}, {args.device}", flush=True)
        results.append(bench_model(name, args.rounds, args.size, args.batch_size, args.device, args.category))
    print()
    print(
        f"{'model':10s} {'reference (median)':>19s} {'camlib (median)':>16s} {'speedup':>8s} {'max |diff|':>11s}"
    )
    for r in results:
        print(
            f"{r['model']:10s} {r['reference_median_s']:17.2f} s {r['camlib_median_s']:14.3f} s "
            f"{r['speedup']:7.1f}x {r['max_abs_diff']:11.2e}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
