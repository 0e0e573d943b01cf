"""Tests of the bundled demo ViT: weights, card, accuracy, and attention maps that follow the objects."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from torch import nn

from camlib import AttentionRollout, GradCAM, TransformerAttribution
from camlib.demo import (
    CLASS_NAMES,
    DemoViT,
    demo_preprocess,
    demo_vit_target_layers,
    load_demo_model,
    load_demo_vit,
    load_sample_image,
    load_vit_model_card,
    make_batch,
)
from camlib.demo.train import evaluate, predict
from camlib.demo.train_vit import stem_features, token_logits, train_vit
from camlib.utils.model_targets import ClassifierOutputTarget


@pytest.fixture(scope="module")
def vit() -> DemoViT:
    return load_demo_vit()


@pytest.fixture(scope="module")
def card() -> dict:
    return load_vit_model_card()


def test_weights_are_small_and_the_stem_is_the_demo_cnn(vit):
    assert isinstance(vit, DemoViT) and not vit.training
    weights = resources.files("camlib.demo").joinpath("demo_vit_weights.pt")
    assert len(weights.read_bytes()) <= 400 * 2**10
    with resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(key.startswith("conv_proj.stem.") for key in state)  # shared with the CNN, not stored twice
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in vit.parameters())
    cnn = load_demo_model().features.state_dict()
    for key, value in vit.conv_proj.stem.state_dict().items():
        torch.testing.assert_close(value, cnn[key], rtol=0, atol=0)
    assert sum(isinstance(m, nn.MultiheadAttention) for m in vit.modules()) == 3
    (layer,) = demo_vit_target_layers(vit)
    assert layer is vit.encoder.layers[-1].ln_1
    with pytest.raises(TypeError, match="DemoViT"):
        demo_vit_target_layers(load_demo_model())


def test_card_and_heldout_accuracy(vit, card):
    assert tuple(card["class_names"]) == CLASS_NAMES
    assert card["heldout"]["mAP"] >= 0.95 and card["command"].startswith("python -m camlib.demo.train_vit")
    floor = card["test_subset"]
    assert floor["mAP_floor"] >= 0.9 and floor["per_label_accuracy_floor"] >= 0.9
    images, labels, _ = make_batch("test", range(floor["n_images"]), 128, with_masks=False)
    metrics = evaluate(predict(vit, images), labels)
    assert metrics["mAP"] >= floor["mAP_floor"]
    assert metrics["per_label_accuracy"] >= floor["per_label_accuracy_floor"]


def test_sample_image_and_token_path(vit):
    x = demo_preprocess(load_sample_image())
    with torch.no_grad():
        logits = vit(x)[0]
        torch.testing.assert_close(token_logits(vit, vit.conv_proj.stem(x))[0], logits)
    assert {CLASS_NAMES[i] for i in torch.nonzero(logits > 0).flatten().tolist()} == {"star", "ring"}


@pytest.mark.parametrize("method", [AttentionRollout, TransformerAttribution, GradCAM])
def test_maps_follow_the_objects(vit, method):
    # the maps mean something: on held-out images their energy sits on the explained object far more
    # than a uniform map's would (the object's share of the image)
    images, labels, masks = make_batch("test", range(8), 128)
    classes = [int(np.flatnonzero(label)[0]) for label in labels]
    with method(vit, demo_vit_target_layers(vit)) as cam:
        maps = cam(demo_preprocess(images), [ClassifierOutputTarget(c) for c in classes])
    objects = np.stack([masks[i, c] for i, c in enumerate(classes)])
    energy = (maps * objects).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert energy.mean() > 2 * objects.mean(), (energy.mean(), objects.mean())


def test_training_script_runs(tmp_path):
    threads = torch.get_num_threads()
    card = train_vit(tmp_path, epochs=1, train_images=64, test_images=32, batch_size=32)
    assert torch.get_num_threads() == threads
    assert {p.name for p in tmp_path.iterdir()} == {"demo_vit_weights.pt", "demo_vit_model_card.json"}
    state = torch.load(tmp_path / "demo_vit_weights.pt", map_location="cpu", weights_only=True)
    model = DemoViT(**card["architecture"])
    missing = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False).missing_keys
    assert missing and all(key.startswith("conv_proj.stem.") for key in missing)
    assert stem_features(model, make_batch("test", range(2), 128, with_masks=False)[0]).shape == (2, 128, 8, 8)
