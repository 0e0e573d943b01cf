"""Per-call overhead of a Grad-CAM call over the bare work it needs, for camlib trees side by side.

Usage::

    python benchmarks/bench_overhead.py                                  # this tree
    python benchmarks/bench_overhead.py --trees /tmp/before . --rounds 7 # two trees, interleaved

The setting makes the overhead dominate: resnet18 (``weights=None``), one 64 px image, ``layer4[-1]``, one
CPU thread. The floor is the bare work of Grad-CAM in plain PyTorch: one forward pass with a hook keeping the
layer's output, ``torch.autograd.grad`` of the class score on it, the weighted sum, ReLU, min-max scaling and
resize. Times are the calling thread's CPU time (``time.thread_time``; torch runs on that one thread), which a
busy machine inflates less than wall time. Each round runs one worker process per tree, in turn, so every tree sees the same machine load; a
worker times ``--calls`` CAM calls and ``--calls`` floor passes, alternating, and reports their medians. The
table gives, per tree, the median over rounds of (CAM median - floor median), and two deterministic counts
taken with cProfile over one call: Python function calls and ``torch.isfinite`` checks (each one a host
sync on a GPU). ``hold_us`` times what camlib does around every call on the model alone, without the model:
entering and leaving ``camlib.utils.model_state.exclusive_eval`` (the per-model lock and the eval switch).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["main", "worker"]


def worker(calls: int) -> Dict[str, Any]:
    """Time ``calls`` Grad-CAM calls and floor passes in this process (camlib from ``sys.path``)."""
    import torch
    import torch.nn.functional as F
    import torchvision

    import camlib
    from camlib import GradCAM
    from camlib.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    layer = model.layer4[-1]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [ClassifierOutputTarget(1)]
    cam = GradCAM(model, [layer])

    def floor() -> Any:
        kept = []
        handle = layer.register_forward_hook(lambda module, args, out: kept.append(out))
        try:
            with torch.enable_grad():
                out = model(x)
                (grad,) = torch.autograd.grad(out[0, 1], [kept[0]])
        finally:
            handle.remove()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        saliency = torch.relu((weights * kept[0].detach()).sum(dim=1, keepdim=True))
        saliency = F.interpolate(saliency, size=x.shape[2:], mode="bilinear", align_corners=False)
        flat = saliency.flatten(1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - low) / (high - low + 1e-7)).reshape(1, *x.shape[2:]).numpy()

    def run_cam() -> Any:
        return cam(x, targets)

    try:
        from camlib.utils.model_state import exclusive_eval
    except ImportError:  # a tree from before the per-model lock (07e6d1d): only eval_mode
        from camlib.utils.model_state import eval_mode as exclusive_eval

    hold_times: List[float] = []
    for _ in range(20 * calls):
        start = time.thread_time()
        with exclusive_eval(model):
            pass
        hold_times.append(time.thread_time() - start)
    for _ in range(5):
        floor()
        run_cam()
    cam_times: List[float] = []
    floor_times: List[float] = []
    for _ in range(calls):
        start = time.thread_time()
        run_cam()
        cam_times.append(time.thread_time() - start)
        start = time.thread_time()
        floor()
        floor_times.append(time.thread_time() - start)
    profile = cProfile.Profile()
    profile.enable()
    run_cam()
    profile.disable()
    stats = pstats.Stats(profile)
    isfinite = sum(
        row[1] for key, row in stats.stats.items() if key[2] in ("<built-in method torch.isfinite>",)
    )
    return {
        "tree": str(Path(camlib.__file__).resolve().parent.parent),
        "cam_ms": 1e3 * statistics.median(cam_times),
        "floor_ms": 1e3 * statistics.median(floor_times),
        "hold_us": 1e6 * statistics.mean(hold_times),
        "python_calls": stats.total_calls,
        "isfinite_calls": isfinite,
    }


def main(argv: List[str] | None = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=["."], help="camlib source trees to compare")
    parser.add_argument("--rounds", type=int, default=5, help="worker processes per tree, interleaved")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.calls)))
        return []
    trees = [str(Path(t).resolve()) for t in args.trees]
    runs: Dict[str, List[Dict[str, Any]]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree, CAMLIB_DISABLE_PROGRESS="1")
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", "--calls", str(args.calls)],
                env=env, cwd=tree, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            if result["tree"] != tree:
                raise RuntimeError(f"the worker imported camlib from {result['tree']}, not {tree}")
            runs[tree].append(result)
    rows = []
    print("| tree | CAM call (ms) | floor (ms) | overhead (ms), per round | hold (us) | Python calls / call | isfinite / call |")
    print("|---|---|---|---|---|---|---|")
    for tree, results in runs.items():
        row = {
            "tree": tree,
            "cam_ms": statistics.median(r["cam_ms"] for r in results),
            "floor_ms": statistics.median(r["floor_ms"] for r in results),
            "overhead_ms": statistics.median(r["cam_ms"] - r["floor_ms"] for r in results),
            "overhead_per_round_ms": [round(r["cam_ms"] - r["floor_ms"], 3) for r in results],
            "hold_us": statistics.median(r["hold_us"] for r in results),
            "python_calls": results[-1]["python_calls"],
            "isfinite_calls": results[-1]["isfinite_calls"],
        }
        rows.append(row)
        print(
            f"| {tree} | {row['cam_ms']:.3f} | {row['floor_ms']:.3f} | {row['overhead_ms']:.3f} "
            f"{row['overhead_per_round_ms']} | {row['hold_us']:.1f} | {row['python_calls']} | {row['isfinite_calls']} |"
        )
    return rows


if __name__ == "__main__":
    main()
