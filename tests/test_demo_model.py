"""Tests of the bundled demo: procedural data, masks, model weights, sample image."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from torch import nn

from camlib.demo import (
    CLASS_NAMES,
    DEMO_MEAN,
    DEMO_STD,
    NUM_CLASSES,
    SAMPLE_CLASSES,
    SAMPLE_SEED,
    SPLIT_SEED_RANGES,
    DemoNet,
    ShapesDataset,
    demo_preprocess,
    demo_target_layers,
    load_demo_model,
    load_model_card,
    load_sample_image,
    make_batch,
    make_image,
    make_sample,
    split_seed,
)
from camlib.demo.train import evaluate, predict, train


@pytest.fixture(scope="module")
def model() -> DemoNet:
    return load_demo_model()


@pytest.fixture(scope="module")
def card() -> dict:
    return load_model_card()


# --------------------------------------------------------------------------- data


def test_generator_is_deterministic():
    a = make_image(split_seed("train", 7))
    b = make_image(split_seed("train", 7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = make_image(split_seed("train", 8))
    assert not np.array_equal(a[0], c[0])
    # A Generator argument is consumed, an int seed is not.
    d = make_image(np.random.default_rng(split_seed("train", 7)))
    np.testing.assert_array_equal(a[0], d[0])


def test_splits_are_disjoint():
    train, test = SPLIT_SEED_RANGES["train"], SPLIT_SEED_RANGES["test"]
    assert train.step == test.step == 1
    assert train.stop <= test.start or test.stop <= train.start
    for seeds in SPLIT_SEED_RANGES.values():
        assert SAMPLE_SEED not in seeds
    assert split_seed("train", 0) != split_seed("test", 0)
    with pytest.raises(ValueError, match="out of range"):
        split_seed("train", len(train))
    with pytest.raises(ValueError, match="unknown split"):
        split_seed("val", 0)


@pytest.mark.parametrize("size", [64, 128, 160])
def test_image_layout(size):
    image, label, masks = make_image(3, size)
    assert image.shape == (size, size, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert label.shape == (NUM_CLASSES,) and label.dtype == np.float32
    assert masks.shape == (NUM_CLASSES, size, size) and masks.dtype == bool


def test_labels_match_masks_and_objects_do_not_overlap():
    n_two = 0
    for index in range(40):
        _, label, masks = make_image(split_seed("train", index))
        present = masks.any(axis=(1, 2))
        np.testing.assert_array_equal(present, label.astype(bool))
        assert label.sum() in (1, 2)
        n_two += int(label.sum() == 2)
        assert masks.sum(axis=0).max() == 1  # no pixel belongs to two objects
    assert 5 < n_two < 35  # both one- and two-object images occur


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("classes", [[name] for name in CLASS_NAMES] + [["star", "ring"], ["cross", "square"]])
def test_masks_are_pixel_exact_on_plain_background(seed, classes):
    image, label, masks = make_image(seed, 96, classes=classes, clutter=False)
    assert {CLASS_NAMES[i] for i in np.flatnonzero(label)} == set(classes)
    background = image[0, 0]
    assert not masks[:, 0, 0].any()
    drawn = (image != background).any(axis=-1)
    np.testing.assert_array_equal(drawn, masks.any(axis=0))
    for k in np.flatnonzero(label):
        pixels = image[masks[k]]
        assert len(pixels) > 50
        np.testing.assert_array_equal(pixels, np.broadcast_to(pixels[0], pixels.shape))


def test_ring_has_a_hole_and_disc_does_not():
    for seed in range(5):
        for name, hollow in (("ring", True), ("circle", False)):
            _, _, masks = make_image(seed, classes=[name], clutter=False)
            mask = masks[CLASS_NAMES.index(name)]
            ys, xs = np.nonzero(mask)
            cy, cx = round(ys.mean()), round(xs.mean())
            assert mask[cy, cx] != hollow


def test_make_image_rejects_bad_arguments():
    with pytest.raises(TypeError, match="seed"):
        make_image("0")
    with pytest.raises(ValueError, match="size"):
        make_image(0, 16)
    with pytest.raises(ValueError, match="unknown class"):
        make_image(0, classes=["hexagon"])
    with pytest.raises(ValueError, match="distinct"):
        make_image(0, classes=["star", "star"])


def test_dataset_matches_generator():
    ds = ShapesDataset("test", length=3)
    assert len(ds) == 3 and ds.class_names == CLASS_NAMES
    image, label, masks = ds[1]
    ref_image, ref_label, ref_masks = make_image(split_seed("test", 1))
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), ref_image)
    np.testing.assert_array_equal(label.numpy(), ref_label)
    np.testing.assert_array_equal(masks.numpy(), ref_masks)
    assert len(ShapesDataset("train", length=2, with_masks=False)[0]) == 2
    with pytest.raises(IndexError):
        ds[3]


def test_make_batch_quantises_like_png():
    images, labels, masks = make_batch("test", [0, 5], 64)
    ref = make_image(split_seed("test", 5), 64)
    assert images.dtype == np.uint8 and images.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(images[1], np.round(ref[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(labels[1], ref[1])
    np.testing.assert_array_equal(masks[1], ref[2])


# --------------------------------------------------------------------------- model


def test_model_loads_from_package(model):
    assert isinstance(model, DemoNet) and not model.training
    weights = resources.files("camlib.demo").joinpath("demo_weights.pt")
    assert weights.is_file() and len(weights.read_bytes()) <= 5 * 2**20
    with resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == NUM_CLASSES
    (layer,) = demo_target_layers(model)
    assert layer is model.features[-1]
    assert [type(m) for m in layer] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    with pytest.raises(TypeError, match="DemoNet"):
        demo_target_layers(nn.Linear(2, 2))


def test_card_describes_the_weights(card):
    assert tuple(card["class_names"]) == CLASS_NAMES
    assert tuple(card["normalization"]["mean"]) == DEMO_MEAN
    assert tuple(card["normalization"]["std"]) == DEMO_STD
    assert card["image_size"] == 128
    assert card["heldout"]["mAP"] >= 0.95
    assert card["command"].startswith("python -m camlib.demo.train")
    for key in ("seed", "epochs", "train_images", "torch_version", "train_seconds"):
        assert key in card


def test_model_scores_on_heldout_subset(model, card):
    floor = card["test_subset"]
    n = floor["n_images"]
    # A floor that means something: well above chance, close to the full held-out score.
    assert floor["mAP_floor"] >= 0.9 and floor["per_label_accuracy_floor"] >= 0.9
    images, labels, _ = make_batch("test", range(n), card["image_size"], with_masks=False)
    metrics = evaluate(predict(model, images), labels)
    assert metrics["mAP"] >= floor["mAP_floor"]
    assert metrics["per_label_accuracy"] >= floor["per_label_accuracy_floor"]


def test_preprocess():
    img = load_sample_image()
    x = demo_preprocess(img)
    assert x.shape == (1, 3, 128, 128) and x.dtype == torch.float32
    expected = (torch.from_numpy(img)[..., 0] - DEMO_MEAN[0]) / DEMO_STD[0]
    torch.testing.assert_close(x[0, 0], expected)
    as_uint8 = np.round(img * 255).astype(np.uint8)
    torch.testing.assert_close(demo_preprocess(as_uint8), x)
    assert demo_preprocess(np.stack([img, img])).shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="RGB"):
        demo_preprocess(img.transpose(2, 0, 1))
    with pytest.raises(TypeError):
        demo_preprocess(img.tolist())


def test_sample_image_holds_two_classes(model):
    img = load_sample_image()
    assert img.shape == (128, 128, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    ref, label, masks = make_sample()
    np.testing.assert_array_equal(img, np.round(ref * 255).astype(np.uint8).astype(np.float32) / 255)
    present = [CLASS_NAMES[i] for i in np.flatnonzero(label)]
    assert sorted(present) == sorted(SAMPLE_CLASSES) and len(present) == 2
    assert masks.any(axis=(1, 2)).sum() == 2
    with torch.no_grad():
        logits = model(demo_preprocess(img))[0]
    predicted = {CLASS_NAMES[i] for i in torch.nonzero(logits > 0).flatten().tolist()}
    assert predicted == set(SAMPLE_CLASSES)


def test_training_script_runs(tmp_path):
    threads = torch.get_num_threads()
    card = train(tmp_path, epochs=1, train_images=64, test_images=64, val_images=64, size=64, batch_size=32)
    assert torch.get_num_threads() == threads
    assert {p.name for p in tmp_path.iterdir()} == {"demo_weights.pt", "demo_model_card.json", "sample.png"}
    assert card["train_images"] == 64 and card["image_size"] == 64
    state = torch.load(tmp_path / "demo_weights.pt", map_location="cpu", weights_only=True)
    DemoNet().load_state_dict(state)
