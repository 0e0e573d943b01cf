"""Split one first ScoreCAM call's memory growth into allocated and library-code pages.

In a fresh process (run it with ``MALLOC_MMAP_THRESHOLD_=131072``, as the memory
suite does), one library's ScoreCAM call (resnet18 ``layer4[-1]``, batch 8 at
64x64, 64 masked inputs per forward, the memory suite's configuration) runs
once; printed: the peak growth of the resident set, and after the call the
growth of its anonymous part (memory the call allocated and kept: heap,
oneDNN primitives) and of its file-backed part (library code and constant data
mapped in because the call ran kernels for the first time).

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/memory_split.py camlib
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/memory_split.py torchcam
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cam

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", choices=bench_cam.LIBRARIES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = bench_cam._model("resnet18", "cpu")
    x = bench_cam._inputs(args.batch, args.size, "cpu")
    run = bench_cam.scorecam_runners(model, model.layer4[-1], x, bench_cam._classes(args.batch), args.chunk)[
        args.library
    ]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts at the current resident set
    before = {field: bench_cam._proc_status_kib(field) for field in FIELDS}
    with bench_cam._quiet():
        run()
    result = {"peak_mib": (bench_cam._proc_status_kib("VmHWM") - before["VmRSS"]) / 1024}
    result.update({f"{field}_mib": (bench_cam._proc_status_kib(field) - before[field]) / 1024 for field in FIELDS})
    print(f"{args.library}: peak +{result['peak_mib']:.2f} MiB; after the call: resident +{result['VmRSS_mib']:.2f}, "
          f"anonymous +{result['RssAnon_mib']:.2f}, file-backed +{result['RssFile_mib']:.2f} MiB")
    return result


if __name__ == "__main__":
    main()
