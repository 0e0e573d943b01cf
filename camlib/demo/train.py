"""Train the bundled demo model and write its weights, model card and sample image.

Run ``python -m camlib.demo.train --out camlib/demo`` to reproduce the shipped
``demo_weights.pt``, ``demo_model_card.json`` and ``sample.png``. With the
defaults it uses about 10 CPU-minutes (2 threads). On the project's shared
2-core machine, with other jobs keeping the load average at 4-7, three runs
took 12.4, 15.0 and 16.1 minutes of wall time; an unshared 2-core machine
should need a few minutes (one training step of 32 images took 0.055 s there
when it was idle). Fewer epochs do not reach the card's quality (4 epochs gave
a held-out mAP of 0.92). Training is deterministic for a given seed, thread
count and torch build (repeated runs wrote byte-identical weights): the data
are a pure function of their seeds, and torch's generator is seeded.

Protocol: a fixed set of ``--train-images`` images of the train split is
rendered once (quantised to 8 bits, like a PNG), then the model is trained for
``--epochs`` epochs with AdamW, a one-cycle learning-rate schedule, random flips
and 90-degree rotations (which preserve every class), and
``BCEWithLogitsLoss`` (multi-label). Progress is checked on unseen train-split
seeds; the held-out metrics in the card are computed once, at the end, on the
first ``--test-images`` images of the test split, whose seeds never meet the
train seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from camlib.demo.data import (
    CLASS_NAMES,
    SAMPLE_CLASSES,
    SAMPLE_SEED,
    make_batch,
    make_sample,
    save_sample,
)
from camlib.demo.model import CARD_FILE, DEMO_MEAN, DEMO_STD, WEIGHTS_FILE, DemoNet, demo_preprocess

__all__ = ["evaluate", "main", "predict", "train"]

logger = logging.getLogger("camlib.demo.train")

#: Number of held-out test images the test suite re-scores, and the margin its floors leave.
TEST_SUBSET = 64
_FLOOR_MARGIN = 0.03


def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Return the model's logits for uint8 (or [0, 1] float) RGB images.

    Args:
        model: The demo model (its mode is left as it is; pass it in eval mode).
        images: Images ``[N, H, W, 3]``.
        batch_size: Images per forward pass.

    Returns:
        float32 logits ``[N, num_classes]``.
    """
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = demo_preprocess(images[start : start + batch_size], device=device)
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def evaluate(logits: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """Multi-label metrics of logits against multi-hot labels.

    Args:
        logits: Scores ``[N, K]``; a class is predicted present when its logit is positive.
        labels: Multi-hot ground truth ``[N, K]``.

    Returns:
        ``mAP`` (macro average precision over classes, ``sklearn``'s
        ``average_precision_score``), ``exact_match_accuracy`` (fraction of images
        whose whole label vector is right), ``per_label_accuracy`` (fraction of
        the N*K binary decisions that are right) and ``per_class_AP``.
    """
    pred = logits > 0
    truth = labels > 0.5
    per_class = average_precision_score(truth, logits, average=None)
    return {
        "mAP": float(np.mean(per_class)),
        "exact_match_accuracy": float((pred == truth).all(axis=1).mean()),
        "per_label_accuracy": float((pred == truth).mean()),
        "per_class_AP": {name: float(ap) for name, ap in zip(CLASS_NAMES, per_class)},
    }


def _load_average() -> Optional[float]:
    """The 1-minute load average, or None where the platform has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations, one draw per batch (cheap, class-preserving)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def train(
    out_dir: Path,
    *,
    epochs: int = 5,
    train_images: int = 8_000,
    test_images: int = 1_000,
    val_images: int = 500,
    size: int = 128,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    threads: int = 2,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    """Train the demo model and write weights, model card and sample image to ``out_dir``.

    Args:
        out_dir: Folder receiving ``demo_weights.pt``, ``demo_model_card.json`` and ``sample.png``.
        epochs: Passes over the training images.
        train_images: Number of train-split images (indices ``0 .. train_images - 1``).
        test_images: Number of held-out test-split images scored at the end.
        val_images: Unseen train-split images (after the training ones) scored each epoch.
        size: Image height and width.
        batch_size: Images per optimisation step.
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        seed: Seed of torch's generator (initial weights, shuffling, augmentation).
        threads: ``torch.set_num_threads`` value.
        command: Command line recorded in the card.

    Returns:
        The model card (also written to ``out_dir / "demo_model_card.json"``).

    Note:
        Seeds torch's global generator; the thread count and denormal flushing
        it sets are restored on return.
    """
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        return _train(
            Path(out_dir), epochs=epochs, train_images=train_images, test_images=test_images,
            val_images=val_images, size=size, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            seed=seed, threads=threads, command=command,
        )
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_flush_denormal(False)


def _train(
    out_dir: Path,
    *,
    epochs: int,
    train_images: int,
    test_images: int,
    val_images: int,
    size: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    threads: int,
    command: Optional[str],
) -> Dict[str, Any]:
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = _load_average()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    logger.info("rendering %d train, %d val and %d test images", train_images, val_images, test_images)
    x_train, y_train, _ = make_batch("train", range(train_images), size, with_masks=False)
    x_val, y_val, _ = make_batch("train", range(train_images, train_images + val_images), size, with_masks=False)
    x_test, y_test, _ = make_batch("test", range(test_images), size, with_masks=False)
    x_train_t = torch.from_numpy(x_train)
    y_train_t = torch.from_numpy(y_train)
    t_data = time.perf_counter() - t_start
    logger.info("data rendered in %.1f s", t_data)

    model = DemoNet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = train_images // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    history: List[Dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        t_epoch = time.perf_counter()
        order = torch.randperm(train_images, generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = demo_preprocess(x_train_t[idx])
            x = _augment(x, gen).contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(model(x), y_train_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        model.eval()
        val = evaluate(predict(model, x_val), y_val)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / steps_per_epoch,
                "val_mAP": val["mAP"],
                "val_exact_match_accuracy": val["exact_match_accuracy"],
                "seconds": time.perf_counter() - t_epoch,
            }
        )
        logger.info(
            "epoch %d/%d  loss %.4f  val mAP %.4f  val exact-match %.3f  (%.0f s)",
            epoch + 1, epochs, history[-1]["train_loss"], val["mAP"], val["exact_match_accuracy"],
            history[-1]["seconds"],
        )
    t_train = time.perf_counter() - t_start

    model.eval()
    test_logits = predict(model, x_test)
    heldout = evaluate(test_logits, y_test)
    subset = evaluate(test_logits[:TEST_SUBSET], y_test[:TEST_SUBSET])
    logger.info("held-out mAP %.4f, exact-match accuracy %.4f", heldout["mAP"], heldout["exact_match_accuracy"])

    state = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    weights_path = out_dir / WEIGHTS_FILE
    torch.save(state, weights_path)
    save_sample(out_dir / "sample.png", size)
    sample_logits = predict(model, (np.round(make_sample(size)[0] * 255)).astype(np.uint8)[None])[0]

    card: Dict[str, Any] = {
        "model": "camlib.demo.model.DemoNet",
        "task": "multi-label classification of procedural shapes (camlib.demo.data)",
        "class_names": list(CLASS_NAMES),
        "output": "logits, one per class; sigmoid for probabilities; a class is predicted present when its logit > 0",
        "target_layer": "features[-1]",
        "classifier": "fc (Linear after global average pooling; usable by the original CAM)",
        "image_size": size,
        "input": "RGB float in [0, 1], [H, W, 3]; see demo_preprocess",
        "normalization": {"mean": list(DEMO_MEAN), "std": list(DEMO_STD)},
        "seed": seed,
        "epochs": epochs,
        "train_images": train_images,
        "train_split_indices": [0, train_images],
        "val_images": val_images,
        "batch_size": batch_size,
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay, "schedule": "OneCycleLR pct_start=0.1"},
        "loss": "BCEWithLogitsLoss (multi-label)",
        "augmentation": "random 90-degree rotation and horizontal flip, one draw per batch",
        "heldout": {
            "split": "test",
            "indices": [0, test_images],
            "n_images": test_images,
            "mAP_definition": "macro average precision: sklearn.metrics.average_precision_score(average=None), mean over classes",
            "accuracy_definition": "exact_match_accuracy: all class decisions (logit > 0) right; "
            "per_label_accuracy: fraction of the N*K decisions right",
            **heldout,
        },
        "test_subset": {
            "split": "test",
            "n_images": TEST_SUBSET,
            "mAP": subset["mAP"],
            "exact_match_accuracy": subset["exact_match_accuracy"],
            "per_label_accuracy": subset["per_label_accuracy"],
            "mAP_floor": round(min(subset["mAP"], heldout["mAP"]) - _FLOOR_MARGIN, 3),
            "per_label_accuracy_floor": round(
                min(subset["per_label_accuracy"], heldout["per_label_accuracy"]) - _FLOOR_MARGIN, 3
            ),
            "floor_rule": f"min(subset, full held-out) - {_FLOOR_MARGIN}, checked by tests/test_demo_model.py",
        },
        "sample": {
            "file": "sample.png",
            "seed": SAMPLE_SEED,
            "classes": list(SAMPLE_CLASSES),
            "logits": {name: float(v) for name, v in zip(CLASS_NAMES, sample_logits)},
        },
        "history": history,
        "weights_file": WEIGHTS_FILE,
        "weights_bytes": weights_path.stat().st_size,
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": command or "python -m camlib.demo.train",
        "threads": threads,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "load_average_1min": {"start": load_start, "end": _load_average()},
        "timing_note": "wall times depend on how busy the machine is; cpu_seconds / threads approximates "
        "the wall time on an otherwise idle machine",
    }
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s, %s and sample.png to %s", WEIGHTS_FILE, CARD_FILE, out_dir)
    return card


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m camlib.demo.train --out camlib/demo``.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit status, 0 on success.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m camlib.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (camlib/demo to refresh the package)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=8_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(
        args.out,
        epochs=args.epochs,
        train_images=args.train_images,
        test_images=args.test_images,
        val_images=args.val_images,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
        command=" ".join(["python -m camlib.demo.train", *argv]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
