"""Does GAIN make the demo CNN look at the object rather than at a spurious cue?

Usage::

    python benchmarks/gain.py                 # writes docs/gain.md, docs/images/gain/, benchmarks/results/gain.json
    python benchmarks/gain.py --seeds 0 1 2 3 --epochs 8
    python benchmarks/gain.py --quick         # smoke run (seconds), into out/gain-quick/

Data: :func:`camlib.demo.data.make_cue_batch`, one shape per image on a
background whose colour is the class's cue colour 90% of the time in the
training split (``--correlation``). The test split is rendered twice from the
same seeds: cue-shuffled (the colour is independent of the class: the
benchmark's measure) and with the training correlation (in-distribution, for
context). A model that reads the colour scores about ``correlation`` in
distribution and 1/6 + (shape it has learned) when shuffled.

Three ways to train the demo CNN (:class:`camlib.demo.DemoNet`, from scratch),
with the same images, number of steps, optimiser, schedule, augmentation and
seeds (so the runs of a seed see the same batches in the same order):

* ``baseline``: cross-entropy only;
* ``GAIN``: :class:`camlib.training.GAIN` with the paper's sigma=0.5, omega=10,
  alpha=1, classification only for the first ``--warmup`` share of the steps;
* ``GAIN_ext``: the same plus the mask loss (weight 10) on the ``--mask-fraction``
  of the training images that come with their object's mask (every 10th image);
* ``no_cue`` (a reference): the baseline trained on images of the same seeds
  whose colour is independent of the class, i.e. what the network can learn of
  the shapes in this budget.

Runs use one torch thread by default: on a shared 2-core machine two threads
per process were about ten times slower (they wait for each other).

Reported per way, as mean +- standard error over the seeds: accuracy on the
cue-shuffled test split, accuracy in distribution, the share of shuffled test
images whose prediction is the cue's class when that is not the true class,
and two localisation scores of the trained model's Grad-CAM map of the true
class against the object's mask (``camlib.metrics``): the pointing game
(tolerance 15 px at 224 px, scaled to the image size) and the energy-based
pointing game (share of the map inside the mask).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from camlib import GradCAM
from camlib.demo import CLASS_NAMES, DemoNet, demo_preprocess
from camlib.demo.data import make_cue_batch
from camlib.metrics import EnergyPointingGame, PointingGame
from camlib.training import GAIN
from camlib.utils.image import show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "GAIN", "GAIN_ext", "no_cue")
#: The ways compared with the baseline (no_cue is a reference: the baseline trained without the cue).
COMPARED = ("GAIN", "GAIN_ext")
METRICS = (
    ("acc_shuffled", "Accuracy, cue-shuffled test"),
    ("acc_in_distribution", "Accuracy, cue as in training"),
    ("cue_following", "Follows the cue (shuffled, cue != class)"),
    ("pointing_game", "Pointing game"),
    ("energy_in_mask", "Energy in mask"),
)


def _augment(x: torch.Tensor, masks: Optional[torch.Tensor], gen: torch.Generator):
    """One random 90-degree rotation and horizontal flip per batch (they keep every class)."""
    k = int(torch.randint(4, (1,), generator=gen))
    flip = bool(torch.randint(2, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    masks = None if masks is None else torch.rot90(masks, k, dims=(1, 2))
    if flip:
        x = torch.flip(x, dims=(3,))
        masks = None if masks is None else torch.flip(masks, dims=(2,))
    return x, masks


def train_variant(variant: str, seed: int, data: Dict[str, Any], cfg: argparse.Namespace) -> Dict[str, Any]:
    """Train one model; returns it with its training log."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DemoNet()
    n = len(data["train_labels"])
    steps_per_epoch = n // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    gain = None
    if variant in COMPARED:
        gain = GAIN(model, [model.features[-1]], warmup_steps=int(cfg.warmup * total))
    images, labels = data["train_images"], data["train_labels"]
    if variant == "no_cue":
        images, labels = data["nocue_images"], data["nocue_labels"]
    masks, has_mask = data["train_masks"], data["train_has_mask"]
    log: List[Dict[str, float]] = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums = {"loss": 0.0, "loss_cl": 0.0, "loss_am": 0.0, "loss_e": 0.0}
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            m = masks[idx].float() if variant == "GAIN_ext" else None
            x, m = _augment(demo_preprocess(images[idx]), m, gen)
            y = labels[idx]
            if gain is None:
                loss = F.cross_entropy(model(x), y)
                parts = {"loss_cl": float(loss.detach())}
            else:
                out = gain(x, y, masks=m, mask_valid=has_mask[idx] if m is not None else None)
                loss = out.loss
                parts = {k: float(getattr(out, k).detach()) for k in ("loss_cl", "loss_am", "loss_e")}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach())
            for k, v in parts.items():
                sums[k] += v
        log.append({k: v / steps_per_epoch for k, v in sums.items()} | {"epoch": epoch + 1})
    model.eval()
    return {"model": model, "log": log, "train_seconds": time.perf_counter() - t0, "steps": total}


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(demo_preprocess(images[i : i + 256])).argmax(1) for i in range(0, len(images), 256)])


def gradcam_maps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The trained model's Grad-CAM map of the true class (camlib's ordinary call), ``[N, H, W]``."""
    out = []
    with GradCAM(model, [model.features[-1]]) as cam:
        for i in range(0, len(images), 64):
            x = demo_preprocess(images[i : i + 64])
            out.append(cam(x, [ClassifierOutputTarget(int(c)) for c in labels[i : i + 64]]))
    return np.concatenate(out)


def evaluate(model: torch.nn.Module, data: Dict[str, Any], cfg: argparse.Namespace) -> Dict[str, Any]:
    y = data["test_labels"]
    pred_shuffled = _predict(model, data["test_images"])
    pred_cued = _predict(model, data["test_cued_images"])
    cues = data["test_cues"]
    off = cues != y
    maps = gradcam_maps(model, data["test_images"][: cfg.map_images], y[: cfg.map_images])
    regions = data["test_masks"][: cfg.map_images].numpy()
    tolerance = 15 * cfg.size / 224
    return {
        "acc_shuffled": float((pred_shuffled == y).float().mean()),
        "acc_in_distribution": float((pred_cued == y).float().mean()),
        "cue_following": float((pred_shuffled[off] == cues[off]).float().mean()),
        "pointing_game": float(PointingGame(tolerance=tolerance)(maps, regions).mean()),
        "energy_in_mask": float(EnergyPointingGame()(maps, regions).mean()),
        "_maps": maps,
    }


def render_data(cfg: argparse.Namespace) -> Dict[str, Any]:
    train = make_cue_batch("train", range(cfg.train_images), cfg.size, correlation=cfg.correlation)
    test = make_cue_batch("test", range(cfg.test_images), cfg.size, correlation=None)
    cued = make_cue_batch("test", range(cfg.test_images), cfg.size, correlation=cfg.correlation)
    nocue = make_cue_batch("train", range(cfg.train_images), cfg.size, correlation=None)
    every = max(1, round(1 / cfg.mask_fraction)) if cfg.mask_fraction > 0 else 0
    has_mask = torch.zeros(cfg.train_images, dtype=torch.bool)
    if every:
        has_mask[::every] = True
    return {
        "train_images": torch.from_numpy(train[0]),
        "train_labels": torch.from_numpy(train[1]),
        "train_masks": torch.from_numpy(train[2]),
        "train_has_mask": has_mask,
        "train_cue_agreement": float((train[1] == train[3]).mean()),
        "test_images": torch.from_numpy(test[0]),
        "test_labels": torch.from_numpy(test[1]),
        "test_masks": torch.from_numpy(test[2]),
        "test_cues": torch.from_numpy(test[3]),
        "test_cued_images": torch.from_numpy(cued[0]),
        "nocue_images": torch.from_numpy(nocue[0]),
        "nocue_labels": torch.from_numpy(nocue[1]),
    }


def _mean_se(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se}


def _figure(path: Path, data: Dict[str, Any], maps: Dict[str, np.ndarray], cfg: argparse.Namespace) -> None:
    """One column per class (a shuffled test image whose cue is another class); rows: image, then each way's map."""
    y, cues = data["test_labels"].numpy(), data["test_cues"].numpy()
    n = min(cfg.map_images, len(y))
    picks = []
    for c in range(len(CLASS_NAMES)):
        idx = [i for i in range(n) if y[i] == c and cues[i] != c]
        if idx:
            picks.append(idx[0])
    scale = max(1, 128 // cfg.size)
    tile = cfg.size * scale
    label_w = 110
    rows = []
    for row_name in ("image", *VARIANTS):
        tiles = []
        for i in picks:
            rgb = data["test_images"][i].numpy().astype(np.float32) / 255.0
            if row_name == "image":
                img = (rgb * 255).astype(np.uint8)
                mask = data["test_masks"][i].numpy().astype(np.uint8)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                img = np.ascontiguousarray(img)
                cv2.drawContours(img, contours, -1, (255, 255, 255), 1)
            else:
                img = show_cam_on_image(rgb, maps[row_name][i], use_rgb=True)
            tiles.append(cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST))
        strip = np.concatenate(tiles, axis=1)
        label = np.full((tile, label_w, 3), 255, np.uint8)
        cv2.putText(label, row_name, (4, tile // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, strip], axis=1))
    header = np.full((22, label_w + tile * len(picks), 3), 255, np.uint8)
    for j, i in enumerate(picks):
        text = f"{CLASS_NAMES[y[i]]} (cue: {CLASS_NAMES[cues[i]]})"
        cv2.putText(header, text, (label_w + j * tile + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header, *rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _machine() -> Dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg": load,
    }


def _fmt(stat: Dict[str, float]) -> str:
    if math.isnan(stat["se"]):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['se']:.3f}"


def write_report(path: Path, summary: Dict[str, Any], figure: str) -> str:
    cfg, runs = summary["config"], summary["runs"]
    lines = [
        "<!-- Written by benchmarks/gain.py between these markers; rerun it to refresh. -->",
        "",
        "Does training with GAIN ([`camlib.training.GAIN`](api/training.md), Li et al., "
        "[\"Tell Me Where to Look\"](https://arxiv.org/abs/1802.10171), CVPR 2018) make the demo CNN "
        "classify shapes by the shape rather than by a background colour that goes with the class in "
        "training? The data are camlib's procedural shapes "
        "([`make_cue_batch`](api/demo.md)): one shape per image, on a background whose colour is the "
        f"class's cue colour for {cfg['correlation']:.0%} of the training images (measured: "
        f"{summary['train_cue_agreement']:.1%}). The test images are rendered twice from the same seeds: "
        "*cue-shuffled* (colour independent of the class, the measure that matters) and with the training "
        "correlation (in distribution).",
        "",
        f"Three ways to train the same network from scratch, and a reference, with the same {cfg['train_images']} images "
        f"({cfg['size']}x{cfg['size']}), {summary['steps']} steps of {cfg['batch_size']} images, AdamW "
        f"(one-cycle, peak lr {cfg['lr']:g}), flips and 90-degree rotations, and the same seeds "
        f"({', '.join(map(str, cfg['seeds']))}): the runs of a seed see the same batches in the same order.",
        "",
        "* **baseline**: cross-entropy only.",
        "* **GAIN**: `GAIN(model, [model.features[-1]])` with the paper's sigma = 0.5, omega = 10, alpha = 1; "
        f"classification only for the first {cfg['warmup']:.0%} of the steps (`warmup_steps`).",
        f"* **GAIN_ext**: the same plus the mask loss (weight 10) on the {cfg['mask_fraction']:.0%} of the "
        "training images that come with their object's mask (every tenth image; the others have none).",
        "* **no_cue** (a reference, not a contender): the baseline trained on images of the same seeds whose "
        "colour is independent of the class: what the network learns of the shapes in this budget when "
        "nothing easier is on offer.",
        "",
        f"Mean ± standard error over {len(cfg['seeds'])} seeds; {cfg['test_images']} test images for the "
        f"accuracies, the first {cfg['map_images']} for the maps (Grad-CAM of the true class on the "
        "cue-shuffled images, camlib's ordinary call on the trained model in eval mode, against the "
        "object's pixel-exact mask). Chance accuracy is 1/6 = 0.167; a model that reads only the colour "
        f"scores about {cfg['correlation']:.2f} in distribution and 0.167 shuffled.",
        "",
        "| Training | " + " | ".join(name for _, name in METRICS) + " | Wall time per run (s) |",
        "| --- | " + " | ".join("---:" for _ in METRICS) + " | ---: |",
    ]
    for variant in VARIANTS:
        stats = summary["summary"][variant]
        lines.append(
            f"| {variant} | "
            + " | ".join(_fmt(stats[key]) for key, _ in METRICS)
            + f" | {stats['train_seconds']['mean']:.0f} |"
        )
    lines += [
        "",
        "Paired differences (same seed) against the baseline, mean ± standard error:",
        "",
        "| Training | " + " | ".join(name for _, name in METRICS) + " |",
        "| --- | " + " | ".join("---:" for _ in METRICS) + " |",
    ]
    for variant in COMPARED:
        diff = summary["paired_vs_baseline"][variant]
        lines.append(f"| {variant} − baseline | " + " | ".join(_fmt(diff[key]) for key, _ in METRICS) + " |")
    lines += [
        "",
        "### What the numbers say",
        "",
        *summary["verdict"],
        "",
        "### Maps before and after",
        "",
        "Grad-CAM of the true class on cue-shuffled test images (each on a background of *another* "
        f"class's colour), seed {cfg['seeds'][0]}; the white outline in the first row is the object's mask.",
        "",
        f"![Grad-CAM maps of the baseline, GAIN and GAIN_ext models]({figure})",
        "",
        "### How it was run",
        "",
        "```bash",
        summary["command"],
        "```",
        "",
        f"Machine: {summary['machine']['platform']}, {summary['machine']['cpu_count']} CPUs visible, "
        f"torch threads: {cfg['threads']}, Python {summary['machine']['python']}, torch {summary['machine']['torch']}. "
        f"Load average at the start {_load(summary['load_start'])}, at the end {_load(summary['machine']['loadavg'])} "
        "(the machine was shared with other jobs, so wall times are upper bounds).",
        f"Wall time: {summary['wall_seconds'] / 60:.1f} minutes in all (data {summary['data_seconds']:.0f} s); "
        "per training run: "
        + ", ".join(f"{r['variant']} seed {r['seed']} {r['train_seconds']:.0f} s" for r in runs)
        + ".",
        "Raw numbers: `benchmarks/results/gain.json`.",
        "",
    ]
    block = "\n".join(lines)
    start, end = "<!-- gain-benchmark:start -->", "<!-- gain-benchmark:end -->"
    page = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in page and end in page:
        head, rest = page.split(start, 1)
        page = head + start + "\n" + block + end + rest.split(end, 1)[1]
    else:
        page = f"# GAIN on the spurious-cue demo\n\n{start}\n{block}{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return block


def _load(value: Any) -> str:
    return "n/a" if not value else f"{value[0]:.1f}"


def _verdict(summary: Dict[str, Any]) -> List[str]:
    """Plain sentences from the numbers: a difference counts when the paired mean is 2 SE away from 0."""
    out = []
    for variant in COMPARED:
        diff = summary["paired_vs_baseline"][variant]
        clear, unclear = [], []
        for key, name in METRICS:
            d = diff[key]
            text = f"{name.lower()} {d['mean']:+.3f} ± {d['se']:.3f}"
            if math.isnan(d["se"]) or abs(d["mean"]) < 2 * d["se"] or d["mean"] == 0:
                unclear.append(text)
            else:
                clear.append(text)
        sentence = f"* **{variant}** vs baseline, paired by seed: "
        sentence += ("clear changes (at least 2 standard errors): " + "; ".join(clear)) if clear else "no clear change"
        if unclear:
            sentence += ". Within 2 standard errors of no change: " + "; ".join(unclear)
        out.append(sentence + ".")
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--map-images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--correlation", type=float, default=0.9)
    parser.add_argument("--mask-fraction", type=float, default=0.1)
    parser.add_argument("--warmup", type=float, default=0.25, help="share of the steps without the GAIN terms")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="folder for gain.md, gain.json and images/gain/")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="rewrite the report from a saved gain.json (no training)"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        summary = json.loads(args.from_json.read_text(encoding="utf-8"))
        summary["verdict"] = _verdict(summary)
        doc = (args.out or ROOT / "docs") / "gain.md"
        figure = (args.out or ROOT / "docs") / "images" / "gain" / "maps.png"
        print(write_report(doc, summary, os.path.relpath(figure, doc.parent)))
        return summary
    if args.quick:
        args.seeds, args.size, args.train_images, args.test_images = args.seeds[:2], 32, 64, 48
        args.map_images, args.epochs, args.batch_size = 24, 1, 16
    if args.out is None and args.quick:
        args.out = Path(tempfile.mkdtemp(prefix="gain-quick-"))
    doc = (args.out or ROOT / "docs") / "gain.md"
    image_dir = (args.out or ROOT / "docs") / "images" / "gain"
    raw = (args.out / "gain.json") if args.out else ROOT / "benchmarks" / "results" / "gain.json"

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        t_start = time.perf_counter()
        load_start = _machine()["loadavg"]
        data = render_data(args)
        data_seconds = time.perf_counter() - t_start
        print(f"data rendered in {data_seconds:.1f} s", flush=True)
        runs, figure_maps = [], {}
        for seed in args.seeds:
            for variant in VARIANTS:
                trained = train_variant(variant, seed, data, args)
                metrics = evaluate(trained["model"], data, args)
                maps = metrics.pop("_maps")
                if seed == args.seeds[0]:
                    figure_maps[variant] = maps
                runs.append({"variant": variant, "seed": seed, **metrics, "train_seconds": trained["train_seconds"],
                             "log": trained["log"]})
                print(f"{variant:9s} seed {seed}: " + ", ".join(f"{k} {metrics[k]:.3f}" for k, _ in METRICS)
                      + f" ({trained['train_seconds']:.0f} s)", flush=True)
        summary: Dict[str, Any] = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "steps": trained["steps"],
            "train_cue_agreement": data["train_cue_agreement"],
            "runs": runs,
            "summary": {},
            "paired_vs_baseline": {},
        }
        for variant in VARIANTS:
            rows = [r for r in runs if r["variant"] == variant]
            summary["summary"][variant] = {
                key: _mean_se([r[key] for r in rows]) for key in [k for k, _ in METRICS] + ["train_seconds"]
            }
        base = {r["seed"]: r for r in runs if r["variant"] == "baseline"}
        for variant in COMPARED:
            rows = [r for r in runs if r["variant"] == variant]
            summary["paired_vs_baseline"][variant] = {
                key: _mean_se([r[key] - base[r["seed"]][key] for r in rows]) for key, _ in METRICS
            }
        summary["verdict"] = _verdict(summary)
        figure = image_dir / "maps.png"
        _figure(figure, data, figure_maps, args)
        summary["machine"] = _machine()
        summary["load_start"] = load_start
        summary["wall_seconds"] = time.perf_counter() - t_start
        summary["data_seconds"] = data_seconds
        summary["command"] = " ".join(["python benchmarks/gain.py", *argv])
        text = write_report(doc, summary, os.path.relpath(figure, doc.parent))
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print(text)
        print(f"wrote {doc}, {figure} and {raw}")
        return summary
    finally:
        torch.set_num_threads(previous_threads)


if __name__ == "__main__":
    main()
