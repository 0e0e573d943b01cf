"""Throughput of ``camlib explain`` against the bare model's inference, in the same run.

Usage::

    python benchmarks/bench_explain.py                                   # demo model, 320 images
    python benchmarks/bench_explain.py --model resnet18 --size 224 --images 256
    python benchmarks/bench_explain.py --json bench.json --markdown bench.md

A few hundred images are generated (:func:`camlib.demo.make_image`, written
as JPEG files to a temporary folder). Each round then measures, one after the
other (in alternating order) so that both see the same machine load:

* **bare inference**: the same DataLoader (same dataset class, workers and
  batches as ``camlib explain``) feeding ``model(x)`` under
  ``torch.inference_mode()``, nothing written;
* **camlib explain**: :func:`camlib.cli.explain.run_explain` with the method
  (GradCAM by default), writing float16 heatmaps, JPEG overlays and the manifest.

Both are timed from the moment the DataLoader starts to the moment the last
batch is done (for ``explain``: the last file written); ``explain``'s
end-to-end wall time (model build, planning, manifest merge) is reported as
well. The medians over the rounds and their ratio are printed and written to
``--json``/``--markdown``, with the machine, the thread count and the load
average (other jobs on the machine slow both equally, but make single rounds noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from camlib.cli.dataset import ImageDataset, collate, worker_init
from camlib.cli.explain import run_explain
from camlib.demo import make_image
from camlib.models import build_model, default_preprocessing

__all__ = ["bare_inference", "generate_images", "main"]


def generate_images(folder: str, count: int, size: int) -> List[str]:
    """Write ``count`` demo images (JPEG, quality 95) of ``size`` pixels into ten sub-folders."""
    paths = []
    for seed in range(count):
        path = os.path.join(folder, f"class{seed % 10}", f"{seed:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rgb = make_image(seed, size)[0]
        cv2.imwrite(path, np.uint8(np.rint(rgb[..., ::-1] * 255)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return sorted(paths)


def bare_inference(model, paths: List[str], size, mean, std, batch_size: int, workers: int, device) -> float:
    """Seconds to decode and run ``model`` on every image, as ``camlib explain`` batches them."""
    dataset = ImageDataset(paths, size, mean, std, keep_rgb=True)
    batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    started = time.perf_counter()
    cv2.setNumThreads(1)  # as camlib explain does: OpenCV's thread pool does not survive fork()
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
        worker_init_fn=worker_init if workers else None, prefetch_factor=4 if workers else None,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    with torch.inference_mode():
        for batch in loader:
            scores = model(batch.x.to(device, non_blocking=True))
            scores.argmax(dim=1).tolist()  # wait for the device, as explain does
    return time.perf_counter() - started


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo (default) or a torchvision model (weights none)")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=None, help="image and input size (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both pipelines)")
    parser.add_argument("--write-threads", type=int, default=2)
    parser.add_argument("--save", default="overlay,heatmap", help="what explain writes (default: overlay,heatmap)")
    parser.add_argument("--heatmap-format", choices=("npy", "npz"), default="npy")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workdir", default=None, help="where the images and outputs go (default: the system's temporary folder)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--markdown", default=None, help="also write a markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    weights = "DEFAULT" if args.model == "demo" else "none"
    model = build_model(args.model, weights, device=device)
    size = (args.size, args.size) if args.size else default_preprocessing(args.model).image_size
    prep = default_preprocessing(args.model)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="camlib-bench-", dir=args.workdir)
    try:
        paths = generate_images(os.path.join(work, "data"), args.images, size[0])
        bare_inference(model, paths[: 2 * args.batch_size], size, prep.mean, prep.std, args.batch_size, 0, device)
        times: Dict[str, List[float]] = {"bare": [], "explain": [], "explain_wall": []}
        for index in range(args.rounds):
            # alternate the order, so that a load that drifts during a round favours neither
            for step in ("bare", "explain") if index % 2 == 0 else ("explain", "bare"):
                if step == "bare":
                    seconds = bare_inference(
                        model, paths, size, prep.mean, prep.std, args.batch_size, args.workers, device
                    )
                    times["bare"].append(seconds)
                    continue
                out = os.path.join(work, f"out{index}")
                started = time.perf_counter()
                result = run_explain(
                    [os.path.join(work, "data")], out, model=args.model, weights=weights, method=args.method,
                    image_size=size, batch_size=args.batch_size, num_workers=args.workers, device=device,
                    write_threads=args.write_threads, save=args.save, heatmap_format=args.heatmap_format,
                    progress=False,
                )  # fmt: skip
                times["explain_wall"].append(time.perf_counter() - started)
                times["explain"].append(result.elapsed_s)
                if result.ok != args.images:
                    raise RuntimeError(f"explain failed for some images: {result.failures[:3]}")
                shutil.rmtree(out)
            print(
                f"round {index + 1}/{args.rounds}: bare {args.images / times['bare'][-1]:7.1f} img/s   "
                f"explain {args.images / times['explain'][-1]:7.1f} img/s "
                f"(end to end {args.images / times['explain_wall'][-1]:.1f}); load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    medians = {key: statistics.median(values) for key, values in times.items()}
    rates = {key: args.images / seconds for key, seconds in medians.items()}
    report: Dict[str, object] = {
        "command": "python benchmarks/bench_explain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "method": args.method,
        "images": args.images,
        "input": [args.batch_size, 3, *size],
        "workers": args.workers,
        "write_threads": args.write_threads,
        "save": args.save,
        "heatmap_format": args.heatmap_format,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rounds": args.rounds,
        "workdir": os.path.dirname(work),
        "seconds": times,
        "images_per_s": {key: round(value, 2) for key, value in rates.items()},
        "ratio": round(rates["explain"] / rates["bare"], 3),
        "ratio_end_to_end": round(rates["explain_wall"] / rates["bare"], 3),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    table = "\n".join(
        [
            "| pipeline | images/s (median) | ratio to bare inference |",
            "| --- | ---: | ---: |",
            f"| bare inference (DataLoader + `model(x)`) | {rates['bare']:.1f} | 1.00 |",
            f"| `camlib explain` ({args.method}, --save {args.save}, {args.heatmap_format}) | {rates['explain']:.1f} | "
            f"{report['ratio']:.2f} |",
            f"| `camlib explain`, end to end (model build, plan, merge) | {rates['explain_wall']:.1f} | "
            f"{report['ratio_end_to_end']:.2f} |",
        ]
    )
    print()
    print(table)
    print(
        f"\n{args.images} images {size[0]}x{size[1]}, {args.model}, batch {args.batch_size}, {args.workers} workers, "
        f"{torch.get_num_threads()} torch threads, {device}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
    return report


if __name__ == "__main__":
    main()
