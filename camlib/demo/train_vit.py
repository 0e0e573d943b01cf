"""Train the bundled demo ViT and write its weights and model card.

Run ``python -m camlib.demo.train_vit --out camlib/demo`` to reproduce the
shipped ``demo_vit_weights.pt`` and ``demo_vit_model_card.json``. The stem of
:class:`camlib.demo.vit.DemoViT` is the bundled demo CNN's ``features``,
frozen, so only the transformer (1 x 1 projection, class token, position
embeddings, blocks, head) is trained, on the stem's output computed once per
image: with the defaults about one CPU-minute (one thread; 52 s for the
shipped weights), 5 minutes of wall time on the project's shared 2-core
machine under a load average of 5-10. Training is deterministic for a given seed, thread
count and torch build: the data are a pure function of their seeds, and
torch's generator is seeded.

Protocol: the first ``--train-images`` images of the train split (the
first of the demo CNN's training images) are rendered and passed
through the frozen stem once; the transformer is trained for ``--epochs``
epochs with AdamW, a one-cycle learning-rate schedule, random flips and
90-degree rotations of the 8 x 8 feature grid (one draw per batch; the CNN was
trained on such rotations of its images) and ``BCEWithLogitsLoss``
(multi-label). The held-out metrics in the card are those of the whole model
on raw images of the test split, the same images the demo CNN's card scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from camlib.demo.data import CLASS_NAMES, make_batch
from camlib.demo.model import demo_preprocess, load_demo_model
from camlib.demo.train import TEST_SUBSET, evaluate, predict
from camlib.demo.vit import VIT_CARD_FILE, VIT_WEIGHTS_FILE, DemoViT

__all__ = ["main", "stem_features", "token_logits", "train_vit"]

logger = logging.getLogger("camlib.demo.train_vit")

_FLOOR_MARGIN = 0.03


def stem_features(model: DemoViT, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The frozen stem's output ``[N, C, H/16, W/16]`` for uint8 RGB images ``[N, H, W, 3]``."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model.conv_proj.stem(demo_preprocess(images[start : start + batch_size])))
    return torch.cat(out)


def token_logits(model: DemoViT, features: torch.Tensor) -> torch.Tensor:
    """The model's logits from the stem's output: what ``model(x)`` computes after the stem."""
    tokens = model.conv_proj.proj(features).flatten(2).transpose(1, 2)  # [N, h*w, hidden]
    tokens = torch.cat([model.class_token.expand(len(tokens), -1, -1), tokens], dim=1)
    return model.heads(model.encoder(tokens)[:, 0])


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def train_vit(
    out_dir: Path,
    *,
    epochs: int = 4,
    train_images: int = 4_000,
    test_images: int = 1_000,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    threads: int = 1,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    """Train the demo ViT's transformer and write its weights and card to ``out_dir``.

    Args:
        out_dir: Folder receiving ``demo_vit_weights.pt`` and ``demo_vit_model_card.json``.
        epochs: Passes over the training images.
        train_images: Train-split images (indices ``0 .. train_images - 1``).
        test_images: Held-out test-split images scored at the end.
        batch_size: Images per optimisation step.
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        seed: Seed of torch's generator (initial weights, shuffling, augmentation).
        threads: ``torch.set_num_threads`` value (restored on return).
        command: Command line recorded in the card.

    Returns:
        The model card (also written to ``out_dir / "demo_vit_model_card.json"``).
    """
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return _train(
            Path(out_dir), epochs=epochs, train_images=train_images, test_images=test_images,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, threads=threads, command=command,
        )
    finally:
        torch.set_num_threads(previous)


def _train(
    out_dir: Path,
    *,
    epochs: int,
    train_images: int,
    test_images: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    threads: int,
    command: Optional[str],
) -> Dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    architecture = {"num_layers": 3, "num_heads": 4, "hidden_dim": 64, "mlp_dim": 128, "image_size": 128}
    model = DemoViT(**architecture)
    model.conv_proj.stem.load_state_dict(load_demo_model().features.state_dict())
    model.eval()

    logger.info("rendering %d train and %d test images", train_images, test_images)
    x_train, y_train, _ = make_batch("train", range(train_images), 128, with_masks=False)
    x_test, y_test, _ = make_batch("test", range(test_images), 128, with_masks=False)
    features = stem_features(model, x_train)
    del x_train
    labels = torch.from_numpy(y_train)
    t_data = time.perf_counter() - t_start
    logger.info("data rendered and passed through the stem in %.1f s", t_data)

    trained = [p for name, p in model.named_parameters() if not name.startswith("conv_proj.stem.")]
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = train_images // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    history: List[Dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        model.conv_proj.stem.eval()  # frozen, batch norm statistics included
        t_epoch = time.perf_counter()
        order = torch.randperm(train_images, generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.binary_cross_entropy_with_logits(token_logits(model, _augment(features[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "train_loss": total / steps_per_epoch, "seconds": time.perf_counter() - t_epoch})
        logger.info("epoch %d/%d  loss %.4f  (%.0f s)", epoch + 1, epochs, history[-1]["train_loss"], history[-1]["seconds"])
    t_train = time.perf_counter() - t_start
    model.eval()

    test_logits = predict(model, x_test)
    heldout = evaluate(test_logits, y_test)
    subset = evaluate(test_logits[:TEST_SUBSET], y_test[:TEST_SUBSET])
    cnn = evaluate(predict(load_demo_model(), x_test), y_test)
    logger.info("held-out mAP %.4f, exact-match %.4f (demo CNN: %.4f, %.4f)", heldout["mAP"],
                heldout["exact_match_accuracy"], cnn["mAP"], cnn["exact_match_accuracy"])

    state = {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.startswith("conv_proj.stem.")
    }
    weights_path = out_dir / VIT_WEIGHTS_FILE
    torch.save(state, weights_path)
    card: Dict[str, Any] = {
        "model": "camlib.demo.vit.DemoViT",
        "architecture": architecture,
        "task": "multi-label classification of procedural shapes (camlib.demo.data)",
        "class_names": list(CLASS_NAMES),
        "output": "logits, one per class; sigmoid for probabilities; a class is predicted present when its logit > 0",
        "stem": "conv_proj.stem = the bundled demo CNN's features (demo_weights.pt), frozen; not stored here",
        "target_layer": "encoder.layers[-1].ln_1 (CNN-style methods); the attention methods read every block",
        "seed": seed,
        "epochs": epochs,
        "train_images": train_images,
        "train_split_indices": [0, train_images],
        "batch_size": batch_size,
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay, "schedule": "OneCycleLR pct_start=0.1"},
        "loss": "BCEWithLogitsLoss (multi-label)",
        "augmentation": "random 90-degree rotation and horizontal flip of the stem's feature grid, one draw per batch",
        "heldout": {"split": "test", "indices": [0, test_images], "n_images": test_images, **heldout},
        "heldout_demo_cnn": {k: cnn[k] for k in ("mAP", "exact_match_accuracy", "per_label_accuracy")},
        "test_subset": {
            "split": "test",
            "n_images": TEST_SUBSET,
            "mAP": subset["mAP"],
            "per_label_accuracy": subset["per_label_accuracy"],
            "mAP_floor": round(min(subset["mAP"], heldout["mAP"]) - _FLOOR_MARGIN, 3),
            "per_label_accuracy_floor": round(
                min(subset["per_label_accuracy"], heldout["per_label_accuracy"]) - _FLOOR_MARGIN, 3
            ),
            "floor_rule": f"min(subset, full held-out) - {_FLOOR_MARGIN}, checked by tests/test_demo_vit.py",
        },
        "history": history,
        "weights_file": VIT_WEIGHTS_FILE,
        "weights_dtype": "float16 (loaded as float32)",
        "weights_bytes": weights_path.stat().st_size,
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "trained_parameters": sum(p.numel() for p in trained),
        "command": command or "python -m camlib.demo.train_vit",
        "threads": threads,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    (out_dir / VIT_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s to %s", VIT_WEIGHTS_FILE, VIT_CARD_FILE, out_dir)
    return card


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m camlib.demo.train_vit --out camlib/demo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m camlib.demo.train_vit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (camlib/demo to refresh the package)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=4_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_vit(
        args.out, epochs=args.epochs, train_images=args.train_images, test_images=args.test_images,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        threads=args.threads, command=" ".join(["python -m camlib.demo.train_vit", *argv]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
