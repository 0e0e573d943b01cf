"""Tutorial: models whose output is not a tensor (dicts, tuples, ModelOutput) - no wrapper needed.

pytorch-grad-cam calls each target on ``output[i]``, which only works when the model
returns a tensor (or a detector's list of dicts), so models returning a dict, a
tuple or a Hugging Face ``ModelOutput`` need a hand-written wrapper module. camlib:

1. splits the output per image keeping its structure (a dict of batched tensors
   becomes one dict per image), and gives each target its image's output;
2. lets the built-in targets find the scores in it with
   ``camlib.utils.model_outputs.logits_of``: a tensor as it is; the ``"logits"``,
   ``"out"`` or ``"logits_per_image"`` entry of a dict or ``ModelOutput``; the
   ``logits`` field of a named tuple; else the first tensor of a tuple;
3. uses the same rule to pick the top class when ``targets=None``;
4. takes ``output_adapter=`` when the scores are elsewhere: a function that
   *selects* them from the output (for one image or the batch), applied before
   every target call.

Run it::

    python docs/tutorials/structured_outputs.py --out structured_maps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from camlib import AblationCAM, GradCAM
from camlib.demo import load_sample_image
from camlib.models import IMAGENET_MEAN, IMAGENET_STD, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_outputs import logits_of
from camlib.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


class MultiHead(torch.nn.Module):
    """A ResNet-18 with two heads, returning a dict: {"species": ..., "embedding": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = torch.nn.Identity()
        self.species = torch.nn.Linear(512, 5)

    def forward(self, x):
        features = self.backbone(x)
        return {"embedding": features, "species": self.species(features)}


class WithAuxiliary(torch.nn.Module):
    """Returns (logits, auxiliary_logits), like networks trained with deep supervision."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=5)
        self.aux = torch.nn.Linear(256, 5)

    def forward(self, x):
        n = self.net
        x = n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))))
        aux = self.aux(x.mean(dim=(2, 3)))
        return n.fc(torch.flatten(n.avgpool(n.layer4(x)), 1)), aux


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_structured_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rgb = resize_image(load_sample_image(), 96)
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    # -- 1. A tuple (logits, aux): the first tensor is taken, for targets=None and for the targets.
    model = WithAuxiliary().eval()
    print("logits_of picks:", tuple(logits_of(model(x)).shape))  # (1, 5): the main head
    layers = [model.net.layer4[-1]]
    with GradCAM(model, layers) as cam:
        save(out / "tuple_gradcam_top_class.png", rgb, cam(x)[0])
        save(out / "tuple_gradcam_softmax_class_2.png", rgb, cam(x, [ClassifierOutputSoftmaxTarget(2)])[0])
    # The auxiliary head instead: say where the scores are.
    with GradCAM(model, [model.net.layer3[-1]], output_adapter=lambda output: output[1]) as cam:
        save(out / "tuple_gradcam_auxiliary_head.png", rgb, cam(x)[0])

    # -- 2. A dict with a key camlib does not know ("species"): without an adapter, the error says
    #       what the output holds and how to select from it.
    model = MultiHead().eval()
    layers = [model.backbone.layer4[-1]]
    try:
        GradCAM(model, layers)(x)
    except TypeError as err:
        print("without an adapter:", str(err)[:150], "...")
    # output_adapter: used to choose the top class, and before every target call, including the
    # many forward passes of the perturbation methods.
    adapter = lambda output: output["species"]  # noqa: E731
    with GradCAM(model, layers, output_adapter=adapter) as cam:
        save(out / "dict_gradcam_species.png", rgb, cam(x, [ClassifierOutputTarget(4)])[0])
    with AblationCAM(model, layers, output_adapter=adapter, batch_size=128) as cam:
        save(out / "dict_ablationcam_species.png", rgb, cam(x)[0])
    # A custom target gets the output for one image as the model returned it (no adapter):
    with GradCAM(model, layers) as cam:
        grayscale = cam(x, [lambda output: output["species"][4] - output["species"].mean()])
    save(out / "dict_gradcam_custom_target.png", rgb, grayscale[0])
    return out


if __name__ == "__main__":
    main()
