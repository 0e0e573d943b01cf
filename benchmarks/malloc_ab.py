"""How much of a perturbation method's CPU time is page faults from glibc's allocator?

By default glibc hands large freed buffers back to the operating system, so every
forward pass of the model faults its activations in again. This script runs the
same call (camlib's, and torchcam's with ``--libraries camlib torchcam``) in fresh
processes, alternately with the default allocator
settings and with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` raised
(freed memory kept for reuse), and prints the median seconds and minor page
faults of the second call in each process.

    python benchmarks/malloc_ab.py [--method ISCAM] [--batch 2] [--size 128] [--rounds 3] [--libraries camlib torchcam]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEEP = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32), "MALLOC_TOP_PAD_": str(2**28)}


def child(method: str, batch: int, size: int, samples: int, chunk: int, library: str = "camlib") -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_cam

    model = bench_cam._model("resnet18", "cpu")
    x = bench_cam._inputs(batch, size, "cpu")
    classes = bench_cam._classes(batch)
    run = bench_cam.score_method_runners(method, model, model.layer4[-1], x, classes, samples, chunk)[library]
    with bench_cam._quiet():
        run()  # first call: one-off costs
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ISCAM", choices=["SSCAM", "ISCAM", "SmoothGradCAMpp"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--libraries", nargs="+", default=["camlib"], choices=["camlib", "torchcam"])
    parser.add_argument("--library", default="camlib", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.method, args.batch, args.size, args.samples, args.chunk, args.library)))
        return {}
    settings = {"default": {}, "kept": KEEP}
    runs = [(lib, name) for lib in args.libraries for name in settings]
    samples: dict[tuple, list[dict]] = {run: [] for run in runs}
    for index in range(args.rounds):
        for lib, name in runs if index % 2 == 0 else list(reversed(runs)):
            command = [sys.executable, __file__, "--child", "--library", lib, "--method", args.method,
                       "--batch", str(args.batch), "--size", str(args.size), "--samples", str(args.samples),
                       "--chunk", str(args.chunk)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env.update(settings[name], CAMLIB_DISABLE_PROGRESS="1")
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            samples[lib, name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  round {index + 1}/{args.rounds} {lib} {name}: {samples[lib, name][-1]['seconds']:.3f} s, "
                  f"{samples[lib, name][-1]['minor_faults']} minor faults", flush=True)
    result: dict[str, dict] = {}
    for lib in args.libraries:
        result[lib] = {
            name: {"median_s": statistics.median(s["seconds"] for s in samples[lib, name]),
                   "median_minor_faults": statistics.median(s["minor_faults"] for s in samples[lib, name])}
            for name in settings
        }
        default, kept = result[lib]["default"], result[lib]["kept"]
        print(f"{lib} {args.method}, resnet18, batch {args.batch}, {args.size} px: default {default['median_s']:.3f} s "
              f"({default['median_minor_faults']:.0f} faults), freed memory kept {kept['median_s']:.3f} s "
              f"({kept['median_minor_faults']:.0f} faults): {default['median_s'] / kept['median_s']:.2f}x")
    return result


if __name__ == "__main__":
    main()
