"""Is a forward pass over camlib's ScoreCAM inputs slower than over its peers'?

The same model runs one chunk of masked inputs built by camlib's loop
(``bench_cam.scorecam_masked_inputs``: distinct channel maps, masks built per chunk)
and the same number built the way grad-cam and torchcam build theirs (every
channel upsampled, min-max normalised, multiplied into the image), alternating,
and prints the median seconds of each, their layouts and how many values are 0.

    python benchmarks/scorecam_inputs_ab.py [--model resnet50] [--size 224] [--chunk 32] [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cam


def peer_style_inputs(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, channels: slice) -> torch.Tensor:
    """Masked inputs as grad-cam and torchcam build them, for ``channels`` of one image."""
    captured = []
    handle = layer.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    maps = captured[0][:, channels].transpose(0, 1)  # [n, 1, h, w]
    up = F.interpolate(maps, size=tuple(x.shape[2:]), mode="bilinear", align_corners=True)
    low, high = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
    return x * (up - low) / (high - low + 1e-8)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--start", type=int, default=100, help="first distinct map / channel of the chunk")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    layer = model.layer4[-1]
    x = torch.randn(1, 3, args.size, args.size)
    window = slice(args.start, args.start + args.chunk)
    inputs = {
        "camlib": bench_cam.scorecam_masked_inputs(model, layer, x)[window].clone(),
        "peers": peer_style_inputs(model, layer, x, window),
    }
    for name, batch in inputs.items():
        zeros = float((batch == 0).float().mean())
        print(f"{name}: shape {list(batch.shape)}, strides {batch.stride()}, contiguous {batch.is_contiguous()}, "
              f"{zeros:.1%} zeros")
    times: dict[str, list[float]] = {name: [] for name in inputs}
    with torch.no_grad():
        for batch in inputs.values():
            model(batch)  # warm-up
        for index in range(args.repeats):
            order = list(inputs) if index % 2 == 0 else list(reversed(inputs))
            for name in order:
                start = time.perf_counter()
                model(inputs[name])
                times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    print("median s per forward: " + ", ".join(f"{n} {t:.3f}" for n, t in result.items()))
    return result


if __name__ == "__main__":
    main()
