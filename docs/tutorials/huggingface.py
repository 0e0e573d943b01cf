"""Tutorial: Hugging Face transformers image classifiers (ViT, DeiT, Swin, ConvNeXt), no wrapper.

A Hugging Face model returns a ``ModelOutput`` (``ImageClassifierOutput``), not a
tensor: pytorch-grad-cam users write a wrapper module returning ``.logits`` and a
``reshape_transform`` for the tokens. camlib needs neither: the targets and
``targets=None`` find the scores in ``.logits`` (see
``camlib.utils.model_outputs.logits_of``), and the tokens are laid out on the
patch grid (the class and distillation tokens are counted from the model's
``cls_token`` / ``distillation_token`` parameters).

The models here are built from small configs with random weights, so the tutorial
runs offline. With a checkpoint, use
``ViTForImageClassification.from_pretrained("google/vit-base-patch16-224")``
and its image processor; the CAM code is the same.

Run it::

    python docs/tutorials/huggingface.py --out hf_maps

Layer paths are those of transformers 5 (``model.vit.layers``); in transformers 4
the same layers are ``model.vit.encoder.layer``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from camlib import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from camlib.demo import load_sample_image
from camlib.models import resize_image
from camlib.utils.find_layers import get_layer_by_path
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_hf_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    rgb = resize_image(load_sample_image(), 64)
    x = preprocess_image(rgb)  # [1, 3, 64, 64]; a real model's image processor gives pixel_values
    small = {"image_size": 64, "num_labels": 10}
    transformer = {**small, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "intermediate_size": 128}  # fmt: skip

    # -- model, and the layer to explain (a dotted path, resolved without eval())
    models = {
        # ViT: the LayerNorm before the attention of the second-to-last layer; the last layer's
        # patch tokens do not reach the [CLS] token the classifier reads (no gradient).
        "vit": (ViTForImageClassification(ViTConfig(**transformer)), "vit.layers[-2].layernorm_before"),
        # DeiT with a distillation token: two tokens before the patches, found from the model.
        "deit": (
            DeiTForImageClassificationWithTeacher(DeiTConfig(**transformer)),
            "deit.layers[-2].layernorm_before",
        ),
        # Swin averages all tokens of its last stage, so the last block works.
        "swin": (
            SwinForImageClassification(
                SwinConfig(**small, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4)
            ),
            "swin.encoder.layers[-1].blocks[-1].layernorm_before",
        ),
        # ConvNeXt is a CNN: its stages output [B, C, h, w].
        "convnext": (
            ConvNextForImageClassification(
                ConvNextConfig(num_labels=10, num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 2])
            ),
            "convnext.encoder.stages[-1]",
        ),
    }
    for key, (model, path) in models.items():
        model.eval()
        layers = [get_layer_by_path(model, path)]
        # targets=None: the top class, read from output.logits.
        with GradCAM(model, layers) as cam:
            save(out / f"{key}_gradcam.png", rgb, cam(x)[0])
        # An explicit class: ClassifierOutputTarget indexes output.logits too.
        with GradCAMPlusPlus(model, layers) as cam:
            save(out / f"{key}_gradcampp_class_7.png", rgb, cam(x, [ClassifierOutputTarget(7)])[0])

    # Methods that run extra forward passes call the model as it is, and read .logits each time.
    vit, path = models["vit"]
    layers = [get_layer_by_path(vit, path)]
    save(out / "vit_scorecam.png", rgb, ScoreCAM(vit, layers, batch_size=64)(x)[0])
    save(out / "vit_eigencam.png", rgb, EigenCAM(vit, layers)(x)[0])

    # If a model's output keeps its scores under another name, say where with output_adapter:
    deit, path = models["deit"]
    with GradCAM(deit, [get_layer_by_path(deit, path)], output_adapter=lambda out: out.cls_logits) as cam:
        save(out / "deit_class_token_head_gradcam.png", rgb, cam(x)[0])  # the class-token head only
    return out


if __name__ == "__main__":
    main()
