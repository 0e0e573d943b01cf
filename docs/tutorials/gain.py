"""Tutorial: training with CAMs - GAIN, and a "right for the right reasons" loss on the differentiable map.

A classifier can be right for the wrong reasons: on camlib's spurious-cue demo
data (:func:`camlib.demo.data.make_cue_batch`) each shape sits, in 90% of the
training images, on a background of "its" colour, and a small CNN learns the
colour long before the shape. Its Grad-CAM map then spreads over the
background instead of the object.

This script trains the demo CNN three short ways and saves the maps:

1. plain cross-entropy (the baseline);
2. :class:`camlib.training.GAIN` (Li et al., "Tell Me Where to Look", CVPR
   2018): the same loss plus attention mining, and a mask loss on the few
   images that come with the object's mask (GAIN_ext);
3. a loss of your own on the differentiable map: cross-entropy plus the share
   of the map's energy *outside* the object's mask, where a mask is known (in
   the spirit of Ross et al., "Right for the Right Reasons", IJCAI 2017, who
   penalised input gradients outside a mask).

``cam.differentiable_maps(x, targets)`` returns ``[B, H, W]`` maps in [0, 1]
that carry the autograd graph back to the model's weights, so any loss built
on them trains the model. The runs here are seconds long, to show the code;
``benchmarks/gain.py`` measures the effect properly (see docs/gain.md).

Run it (offline, CPU, about half a minute)::

    python docs/tutorials/gain.py --out gain_maps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from camlib import GradCAM
from camlib.demo import DemoNet, demo_preprocess
from camlib.demo.data import CLASS_NAMES, make_cue_batch
from camlib.training import GAIN
from camlib.utils.image import show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget

SIZE = 64
STEPS = 60
BATCH = 16


def train(kind: str, images, labels, masks, has_mask) -> torch.nn.Module:
    torch.manual_seed(0)
    model = DemoNet()  # 6 classes; Conv-BN-ReLU blocks, global average pooling, a linear head
    layer = model.features[-1]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gain = GAIN(model, [layer], warmup_steps=STEPS // 4) if kind == "gain" else None
    cam = GradCAM(model, [layer]) if kind == "rrr" else None
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    model.train()
    for step in range(STEPS):
        idx = order[(step * BATCH) % len(labels) :][:BATCH]
        x, y = demo_preprocess(images[idx]), labels[idx]
        if kind == "baseline":
            loss = F.cross_entropy(model(x), y)
        elif kind == "gain":
            # Masks for the images that have one; NaN (no mask) elsewhere.
            m = torch.where(has_mask[idx, None, None], masks[idx].float(), torch.tensor(float("nan")))
            out = gain(x, y, masks=m)
            loss = out.loss  # = out.loss_cl + alpha * out.loss_am + ext_weight * out.loss_e
        else:
            # A loss of your own on the differentiable maps: energy outside the object, where known.
            # (differentiable_maps runs its own forward pass; in training mode batch norm sees the batch twice.)
            logits = model(x)
            maps = cam.differentiable_maps(x, [ClassifierOutputTarget(int(c)) for c in y])  # [B, H, W]
            outside = (maps * (1 - masks[idx].float())).flatten(1).sum(1) / (maps.flatten(1).sum(1) + 1e-6)
            known = has_mask[idx]
            penalty = outside[known].mean() if bool(known.any()) else maps.sum() * 0
            loss = F.cross_entropy(logits, y) + 1.0 * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == STEPS - 1:
            extra = ""
            if kind == "gain":
                extra = "  (cl {:.3f}, am {:.3f}, e {:.3f})".format(*(float(t.detach()) for t in out[3:]))
            print(f"{kind:8s} step {step:3d}  loss {float(loss.detach()):.3f}{extra}")
    return model.eval()


def save(path: Path, model: torch.nn.Module, images, labels) -> None:
    with GradCAM(model, [model.features[-1]]) as cam:  # the ordinary (numpy) call, model in eval mode
        maps = cam(demo_preprocess(images), [ClassifierOutputTarget(int(c)) for c in labels])
    tiles = [
        cv2.resize(show_cam_on_image(img.numpy() / 255.0, m, use_rgb=True), (128, 128), interpolation=cv2.INTER_NEAREST)
        for img, m in zip(images, maps)
    ]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_gain_"))
    out.mkdir(parents=True, exist_ok=True)

    # Training split: the background colour goes with the class 90% of the time.
    images, labels, masks, _ = (torch.from_numpy(a) for a in make_cue_batch("train", range(480), SIZE))
    has_mask = torch.arange(len(labels)) % 10 == 0  # masks for one image in ten
    # Test images where the colour says nothing about the class (cue-shuffled); keep 6 whose cue misleads.
    t_images, t_labels, _, t_cues = (torch.from_numpy(a) for a in make_cue_batch("test", range(120), SIZE, correlation=None))
    pick = [int(torch.nonzero((t_labels == c) & (t_cues != c))[0]) for c in range(len(CLASS_NAMES))]
    print("test images:", ", ".join(f"{CLASS_NAMES[t_labels[i]]} on {CLASS_NAMES[t_cues[i]]}'s colour" for i in pick))

    for kind in ("baseline", "gain", "rrr"):
        model = train(kind, images, labels, masks, has_mask)
        with torch.no_grad():
            accuracy = float((model(demo_preprocess(t_images)).argmax(1) == t_labels).float().mean())
        print(f"{kind}: accuracy on 120 cue-shuffled test images {accuracy:.2f} (after {STEPS} steps only)")
        save(out / f"{kind}_maps.png", model, t_images[pick], t_labels[pick])
    return out


if __name__ == "__main__":
    main()
