"""Tests of the metrics beyond the reference: Average Drop / Increase in Confidence, deletion and
insertion, the pointing games, the randomisation sanity check, ROAD's direct solver, and the
quality table script.

Golden values are computed by hand on tiny linear models (the score is a weighted sum of the
pixels, so every perturbed score can be written down); torchcam 0.5.0 is a cross-check where it
is installed; the demo model and its exact masks check that a perfect map beats a random one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot
from torch import nn

import camlib.metrics as cm
from camlib import GradCAM
from camlib.demo import demo_preprocess, demo_target_layers, load_demo_model, make_batch
from camlib.metrics import confidence, deletion_insertion, pointing_game, sanity
from camlib.metrics._imputation import _choose_solver, linear_infill
from camlib.utils.model_targets import ClassifierOutputTarget

# The reference calls numpy functions on torch tensors, which NumPy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
NEW_MODULES = [confidence, deletion_insertion, pointing_game, sanity]


# -- helpers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy machine, two OpenMP threads spin-wait for each other on these small
    batches (a 4-image forward pass of the demo model takes 40x longer); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_model(weight: torch.Tensor) -> nn.Module:
    """``score_k = sum(weight[k] * x)``; ``weight`` is ``[K, *input shape]``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight[0].numel(), weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight.reshape(weight.shape[0], -1))
    return model.eval()


def sum_model(numel: int) -> nn.Module:
    """The score is the sum of the pixels."""
    return linear_model(torch.ones(1, numel))


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.fixture(scope="module")
def demo():
    """Four held-out demo images, one present class each, with its exact mask."""
    torch.manual_seed(0)
    model = load_demo_model()
    images, labels, masks = make_batch("test", range(4))
    classes = [int(np.flatnonzero(label)[0]) for label in labels]
    gt = np.stack([masks[i, c] for i, c in enumerate(classes)])
    return model, demo_preprocess(images), classes, gt


def random_smooth_maps(count: int, size: int, seed: int = 0) -> np.ndarray:
    """8x8 uniform noise upsampled: a random map with a CAM's smoothness."""
    grid = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(grid, size=(size, size), mode="bilinear")[:, 0].numpy()


# -- public API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", NEW_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_new_modules_are_exported_and_cite_their_paper(module):
    assert module.__all__, "a public module needs __all__"
    for name in module.__all__:
        assert hasattr(module, name)
        assert getattr(cm, name) is getattr(module, name), f"{name} is not exported by camlib.metrics"
    assert "https://arxiv.org/abs/" in module.__doc__


def test_every_reference_metric_is_at_the_reference_path():
    """The issue's list, by module path (test_metrics.py checks parity for each)."""
    expected = {
        "perturbation_confidence": [
            "PerturbationConfidenceMetric",
            "RemoveMostRelevantFirst",
            "RemoveLeastRelevantFirst",
            "AveragerAcrossThresholds",
        ],
        "cam_mult_image": ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence"],
        "road": [
            "ROADMostRelevantFirst",
            "ROADLeastRelevantFirst",
            "ROADMostRelevantFirstAverage",
            "ROADLeastRelevantFirstAverage",
            "ROADCombined",
            "NoisyLinearImputer",
        ],
        "arcc": ["ARCC", "Complexity", "Coherency"],
    }
    for module_name, names in expected.items():
        module = importlib.import_module(f"camlib.metrics.{module_name}")
        for name in names:
            assert name in module.__all__ and getattr(cm, name) is getattr(module, name)


# -- Average Drop and Increase in Confidence ------------------------------------------------------------------


def test_average_drop_and_increase_golden_values_on_probabilities():
    # logits = the two pixels of a 1x2 image; explain class 0
    model = linear_model(torch.eye(2).reshape(2, 1, 1, 2))
    x = torch.tensor([[[[2.0, 0.0]]], [[[0.0, 2.0]]], [[[2.0, 5.0]]]])
    cams = torch.tensor([[[0.5, 1.0]], [[1.0, 0.5]], [[1.0, 0.2]]])
    targets = [ClassifierOutputTarget(0)] * 3

    def softmax0(a, b):
        return math.exp(a) / (math.exp(a) + math.exp(b))

    y = [softmax0(2, 0), softmax0(0, 2), softmax0(2, 5)]
    o = [softmax0(1, 0), softmax0(0, 1), softmax0(2, 1)]  # after x * cam
    drop = [100 * max(0.0, yi - oi) / yi for yi, oi in zip(y, o)]
    np.testing.assert_allclose(cm.AverageDrop(progress=False)(x, cams, targets, model), drop, rtol=1e-5)
    np.testing.assert_array_equal(
        cm.ConfidenceIncrease(progress=False)(x, cams, targets, model), [0.0, 100.0, 100.0]
    )
    # sigmoid (multi-label): only the target's own logit matters
    y, o = [sigmoid(2), sigmoid(0), sigmoid(2)], [sigmoid(1), sigmoid(0), sigmoid(2)]
    drop = [100 * max(0.0, yi - oi) / yi for yi, oi in zip(y, o)]
    result = cm.AverageDrop(score_fn="sigmoid", progress=False)(x, cams, targets, model)
    np.testing.assert_allclose(result, drop, rtol=1e-5, atol=1e-6)
    assert result.dtype == np.float32 and result.shape == (3,)
    # equal scores are not an increase
    np.testing.assert_array_equal(
        cm.ConfidenceIncrease(score_fn="sigmoid", progress=False)(x, cams, targets, model), [0.0, 0.0, 0.0]
    )
    # a callable score function
    np.testing.assert_allclose(
        cm.AverageDrop(score_fn=torch.sigmoid, progress=False)(x, cams, targets, model), drop, rtol=1e-5, atol=1e-6
    )


def test_average_drop_with_raw_scores_zero_and_negative():
    model = linear_model(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    cams = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    x = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])  # scores 10 and 0
    drop = cm.AverageDrop(score_fn=None, progress=False)(x, cams, [ClassifierOutputTarget(0)] * 2, model)
    np.testing.assert_allclose(drop, [70.0, 0.0])  # (10 - 3) / 10; a zero score cannot drop
    with pytest.raises(ValueError, match="non-negative"):
        cm.AverageDrop(score_fn=None, progress=False)(-x, cams, [ClassifierOutputTarget(0)] * 2, model)


def test_confidence_metrics_check_their_maps_and_arguments():
    model = sum_model(4)
    x, targets = torch.ones(1, 1, 2, 2), [ClassifierOutputTarget(0)]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cm.AverageDrop(score_fn=None, progress=False)(x, torch.full((1, 2, 2), 2.0), targets, model)
    # interpolation round-off above 1 is clipped, not an error
    slightly = torch.full((1, 2, 2), 1.00001)
    np.testing.assert_allclose(cm.AverageDrop(score_fn=None, progress=False)(x, slightly, targets, model), [0.0])
    with pytest.raises(ValueError, match="score_fn"):
        cm.AverageDrop(score_fn="probabilities")
    with pytest.raises(TypeError, match="score_fn"):
        cm.ConfidenceIncrease(score_fn=3)
    with pytest.raises(TypeError, match="one callable per image"):
        cm.AverageDrop(progress=False)(x, torch.ones(1, 2, 2), None, model)
    with pytest.raises(ValueError, match="dimension 1"):
        cm.AverageDrop(progress=False)(x, torch.ones(1, 2, 2), [lambda out: out], lambda t: t.sum())


# -- deletion and insertion -------------------------------------------------------------------------------------


def test_deletion_and_insertion_golden_values():
    model = sum_model(4)
    x = torch.tensor([[[[4.0, 3.0, 2.0, 1.0]]]])
    targets = [ClassifierOutputTarget(0)]
    deletion = cm.Deletion(steps=4, score_fn=None, progress=False)(x, x[:, 0], targets, model, return_curves=True)
    np.testing.assert_allclose(deletion.scores, [[10, 6, 3, 1, 0]])
    np.testing.assert_allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(deletion.auc, [0.25 * (8 + 4.5 + 2 + 0.5)])
    insertion = cm.Insertion(steps=4, substrate="zeros", score_fn=None, progress=False)
    np.testing.assert_allclose(insertion(x, x[:, 0], targets, model), [0.25 * (2 + 5.5 + 8 + 9.5)])
    # the reversed map deletes the smallest pixels first
    reverse = cm.Deletion(steps=4, score_fn=None, progress=False)(x, -x[:, 0], targets, model, return_curves=True)
    np.testing.assert_allclose(reverse.scores, [[10, 9, 7, 4, 0]])


def test_uneven_last_step_and_raster_order_for_ties():
    model = sum_model(5)
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    targets = [ClassifierOutputTarget(0)]
    # 5 pixels, 2 per step: 0, 2, 4, 5 pixels deleted, at fractions 0, .4, .8, 1
    flat = torch.zeros(1, 1, 5)  # every pixel tied: deleted in raster order
    result = cm.Deletion(step_size=2, score_fn=None, progress=False)(x, flat, targets, model, return_curves=True)
    np.testing.assert_allclose(result.fractions, [0, 0.4, 0.8, 1.0])
    np.testing.assert_allclose(result.scores, [[15, 12, 5, 0]])
    np.testing.assert_allclose(result.auc, [0.4 * 13.5 + 0.4 * 8.5 + 0.2 * 2.5], rtol=1e-6)
    torch.testing.assert_close(cm.pixel_ranks(flat), torch.tensor([[0, 1, 2, 3, 4]]))


def test_substrates():
    model = sum_model(4)
    x = torch.tensor([[[[4.0, 3.0, 2.0, 1.0]]], [[[1.0, 1.0, 1.0, 5.0]]]])
    cams = x[:, 0]
    targets = [ClassifierOutputTarget(0)] * 2

    def first_insertion_score(substrate):
        metric = cm.Insertion(steps=4, substrate=substrate, score_fn=None, progress=False)
        return metric(x, cams, targets, model, return_curves=True).scores[:, 0]

    np.testing.assert_allclose(first_insertion_score("mean"), [10.0, 8.0])  # the image's mean everywhere
    np.testing.assert_allclose(first_insertion_score(0.5), [2.0, 2.0])
    np.testing.assert_allclose(first_insertion_score(torch.full((1, 1, 4), 2.0)), [8.0, 8.0])
    np.testing.assert_allclose(first_insertion_score(lambda images: images * 2), [20.0, 16.0])
    # default insertion substrate: the blurred image (RISE's 11-tap Gaussian of sigma 5)
    default = cm.Insertion(steps=4, score_fn=None, progress=False)(x, cams, targets, model, return_curves=True)
    np.testing.assert_allclose(default.scores[:, 0], cm.gaussian_blur(x).sum(dim=(1, 2, 3)).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="broadcast"):
        first_insertion_score(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="substrate"):
        cm.Insertion(substrate="noise")
    with pytest.raises(TypeError, match="substrate"):
        cm.Deletion(substrate=[0.0])


def test_gaussian_blur_golden_values():
    x = torch.zeros(1, 1, 1, 5)
    x[..., 2] = 1.0
    side = math.exp(-0.5)
    expected = torch.tensor([0.0, side, 1.0, side, 0.0]) / (1 + 2 * side)
    torch.testing.assert_close(cm.gaussian_blur(x, sigma=1.0, kernel_size=3)[0, 0, 0], expected)
    # separable over every spatial dimension, and a constant image stays constant (edge padding)
    image = torch.zeros(1, 2, 7, 7)
    image[:, :, 3, 3] = 1.0
    blurred = cm.gaussian_blur(image, sigma=1.0, kernel_size=3)[0, 0, 2:5, 2:5]
    torch.testing.assert_close(blurred, expected[1:4, None] * expected[None, 1:4])
    constant = torch.full((2, 3, 6, 9), 0.7)
    torch.testing.assert_close(cm.gaussian_blur(constant), constant)
    volume = torch.full((1, 1, 4, 5, 6), 0.3)
    torch.testing.assert_close(cm.gaussian_blur(volume, 2.0, 5), volume)
    with pytest.raises(ValueError, match="odd"):
        cm.gaussian_blur(x, kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        cm.blur_substrate(sigma=0)


def test_curves_on_volumes_and_any_batch_size():
    values = torch.arange(1.0, 9.0).reshape(1, 1, 2, 2, 2)
    model = sum_model(8)
    metric = cm.Deletion(steps=8, score_fn=None, progress=False)
    result = metric(values, values[:, 0], [ClassifierOutputTarget(0)], model, return_curves=True)
    np.testing.assert_allclose(result.scores[0], [36, 28, 21, 15, 10, 6, 3, 1, 0])
    generator = torch.Generator().manual_seed(0)
    cnn = TinyCNN(num_classes=4, seed=1).eval()
    x = torch.randn(3, 3, 12, 10, generator=generator)
    cams = torch.rand(3, 12, 10, generator=generator)
    targets = [ClassifierOutputTarget(c) for c in (0, 3, 1)]
    small = cm.Insertion(steps=7, batch_size=1, progress=False)(x, cams, targets, cnn, return_curves=True)
    large = cm.Insertion(steps=7, batch_size=500, progress=False)(x, cams, targets, cnn, return_curves=True)
    np.testing.assert_allclose(small.scores, large.scores, atol=1e-6)
    np.testing.assert_allclose(small.auc, large.auc, atol=1e-6)
    alone = cm.Insertion(steps=7, progress=False)(x[1:2], cams[1:2], targets[1:2], cnn)
    np.testing.assert_allclose(alone, large.auc[1:2], atol=1e-6)


def test_curve_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        cm.Deletion(steps=10, step_size=3)
    with pytest.raises(ValueError, match="steps"):
        cm.Deletion(steps=0)
    with pytest.raises(ValueError, match="step_size"):
        cm.Insertion(step_size=-2)
    assert cm.Deletion(step_size=224).step_size == 224
    assert cm.Deletion().counts(1000)[:3] == [0, 10, 20]
    assert cm.Deletion(steps=3).counts(10) == [0, 4, 8, 10]
    with pytest.raises(ValueError, match="cams must have shape"):
        cm.Deletion(progress=False)(torch.ones(1, 1, 2, 2), torch.ones(1, 3, 3), [ClassifierOutputTarget(0)], sum_model(4))


# -- pointing game and energy -------------------------------------------------------------------------------


def test_pointing_game_golden_values():
    masks = torch.zeros(4, 6, 6, dtype=torch.bool)
    masks[:, 0:2, 0:2] = True
    cams = torch.zeros(4, 6, 6)
    cams[0, 1, 1] = 1.0  # inside
    cams[1, 1, 4] = 1.0  # 3 px right of the mask
    cams[2, 4, 4] = 1.0  # sqrt(9 + 9) from the mask's corner (1, 1)
    cams[3] = 0.5  # constant: points nowhere
    np.testing.assert_array_equal(cm.PointingGame(tolerance=0)(cams, masks), [1, 0, 0, 0])
    np.testing.assert_array_equal(cm.PointingGame(tolerance=3)(cams, masks), [1, 1, 0, 0])  # distance 3 counts
    np.testing.assert_array_equal(cm.PointingGame(tolerance=math.sqrt(18))(cams, masks), [1, 1, 1, 0])
    # ties: the first maximum in raster order decides
    tied = torch.zeros(1, 6, 6)
    tied[0, 0, 5] = tied[0, 1, 1] = 1.0
    np.testing.assert_array_equal(cm.PointingGame(tolerance=0)(tied, masks[:1]), [0.0])
    np.testing.assert_array_equal(cm.PointingGame.points(tied), [[0, 5]])
    # numpy inputs, 0/1 float masks, and 3-D maps
    volume = np.zeros((1, 3, 4, 5), np.float32)
    volume[0, 2, 3, 4] = 1.0
    region = np.zeros((1, 3, 4, 5), np.float32)
    region[0, 0, 0, 0] = 1.0
    distance = math.sqrt(4 + 9 + 16)
    assert cm.PointingGame(tolerance=distance - 0.01)(volume, region)[0] == 0.0
    assert cm.PointingGame(tolerance=distance)(volume, region)[0] == 1.0


def test_pointing_game_equals_membership_in_the_dilated_mask():
    """The oracle: OpenCV's dilation of the mask by a disc of radius ``tolerance``."""
    rng = np.random.default_rng(0)
    for tolerance in (0, 2, 3.5, 7):
        radius = math.floor(tolerance)
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        disc = ((yy**2 + xx**2) <= tolerance**2).astype(np.uint8)
        cams = rng.random((24, 20, 23)).astype(np.float32)
        masks = np.zeros((24, 20, 23), bool)
        for i in range(24):
            y, x, h, w = rng.integers(0, 15), rng.integers(0, 18), rng.integers(1, 6), rng.integers(1, 6)
            masks[i, y : y + h, x : x + w] = True
        expected = []
        for cam, mask in zip(cams, masks):
            dilated = cv2.dilate(mask.astype(np.uint8), disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            expected.append(float(dilated[y, x]))
        np.testing.assert_array_equal(cm.PointingGame(tolerance)(cams, masks), expected)


def test_energy_pointing_game_golden_values():
    cams = torch.tensor([[[0.5, 0.25], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 1]], [[1, 1], [0, 0]]])
    np.testing.assert_allclose(cm.EnergyPointingGame()(cams, masks), [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        cm.EnergyPointingGame()(cams - 0.1, masks)


def test_boxes_to_masks():
    masks = cm.boxes_to_masks([(1, 0, 3, 2), [[0, 2, 1, 3], [3, 2, 9, 9]]], (3, 4))
    expected = torch.tensor(
        [[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]], dtype=torch.bool
    )
    assert torch.equal(masks, expected)
    assert torch.equal(cm.boxes_to_masks(torch.tensor([[1, 0, 3, 2]]), (3, 4)), expected[:1])
    with pytest.raises(ValueError, match="x2 < x1"):
        cm.boxes_to_masks([(3, 0, 1, 2)], (3, 4))
    with pytest.raises(ValueError, match=r"\(x1, y1, x2, y2\)"):
        cm.boxes_to_masks([(1, 2, 3)], (3, 4))


def test_localisation_errors_are_clear():
    cams = torch.rand(2, 4, 4)
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        cm.PointingGame()(cams, masks[:, :3])
    empty = masks.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] is empty"):
        cm.EnergyPointingGame()(cams, empty)
    with pytest.raises(TypeError, match="masks"):
        cm.PointingGame()(cams, masks.tolist())
    with pytest.raises(ValueError, match="tolerance"):
        cm.PointingGame(tolerance=-1)
    with pytest.raises(ValueError, match="NaN"):
        cm.PointingGame()(torch.full((2, 4, 4), float("nan")), masks)


# -- rank correlation and the randomisation test ------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = np.round(rng.random((5, 40)) * 6).astype(np.float32)  # many ties
    b = (a + rng.normal(0, 2, a.shape)).astype(np.float32)
    b[1] = np.round(b[1])
    expected = [stats.spearmanr(a[i], b[i]).statistic for i in range(5)]
    np.testing.assert_allclose(cm.spearman_correlation(a, b), expected, atol=1e-6)
    assert isinstance(cm.spearman_correlation(torch.from_numpy(a), b), torch.Tensor)
    np.testing.assert_allclose(cm.spearman_correlation(a, np.ones_like(a)), np.zeros(5))  # constant: 0
    np.testing.assert_allclose(cm.spearman_correlation(a[:1], -a[:1]), [-1.0], atol=1e-6)


def test_randomisation_order_of_the_demo_model():
    model = load_demo_model()
    order = cm.randomisation_order(model, torch.zeros(1, 3, 32, 32))
    assert order[0] == "fc" and order[-1] == "features.0.0" and len(order) == 11
    assert order.index("features.7.1") < order.index("features.7.0") < order.index("features.6.1")


def edge_explainer(model, target_layers):
    """A model-free 'explanation': the gradient magnitude of the input (an edge map)."""

    def explain(input_tensor, targets):
        grey = input_tensor.mean(dim=1)
        dy = torch.zeros_like(grey)
        dx = torch.zeros_like(grey)
        dy[:, 1:] = grey[:, 1:] - grey[:, :-1]
        dx[:, :, 1:] = grey[:, :, 1:] - grey[:, :, :-1]
        return (dy.abs() + dx.abs()).numpy()

    return explain


def test_randomisation_separates_a_trained_model_from_a_randomised_one(demo):
    model, x, classes, _ = demo
    targets = [ClassifierOutputTarget(c) for c in classes]
    layers = demo_target_layers(model)
    steps = ["fc", "features.7", "features.4", "features"]  # the head, then down to the input
    result = cm.ModelParameterRandomisation(GradCAM, model, layers, layers=steps, progress=False)(x, targets)
    assert result.correlations.shape == (4, 4) and result.layers == tuple(steps)
    # Grad-CAM's maps change once the weights are gone ...
    assert result.mean_correlation[-1] < 0.5
    assert result.mean_correlation.mean() < 0.5
    # ... a model-free edge map does not: the test flags it.
    control = cm.ModelParameterRandomisation(edge_explainer, model, layers, layers=steps, progress=False)(x, targets)
    np.testing.assert_allclose(control.correlations, 1.0, atol=1e-6)


def test_randomisation_leaves_the_model_and_random_state_alone():
    model = TinyCNN(num_classes=3, seed=2).train()
    before = model_snapshot(model)
    rng_before = torch.get_rng_state()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    check = cm.ModelParameterRandomisation(GradCAM, model, [model.features[-1]], return_maps=True, progress=False)
    result = check(x)  # targets=None: the trained model's top classes
    assert_model_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert result.randomised.shape == (len(result.layers), 2, 12, 12)
    assert result.original.shape == (2, 12, 12) and hooks_left(model) == 0


def test_randomisation_is_seeded_by_module_name_and_modes_agree():
    model = TinyCNN(num_classes=3, seed=2).eval()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    layers = [model.features[-1]]

    def run(**kwargs):
        return cm.ModelParameterRandomisation(GradCAM, model, layers, progress=False, **kwargs)(x).correlations

    cascading = run(layers=["fc", "features.4"])
    np.testing.assert_array_equal(cascading, run(layers=[model.fc, model.features[4]]))
    assert not np.allclose(cascading, run(layers=["fc", "features.4"], seed=1))
    independent = run(layers=["fc", "features.4"], mode="independent")
    np.testing.assert_array_equal(independent[0], cascading[0])
    # independent: the second step sees a trained head again, exactly as a run of that layer alone
    np.testing.assert_array_equal(independent[1], run(layers=["features.4"])[0])


@pytest.mark.parametrize("init", ["reset", "shuffle"])
def test_randomisation_inits(init):
    model = TinyCNN(num_classes=3, seed=2).eval()
    seen = []

    def recording_gradcam(copy, target_layers):
        seen.append({k: v.clone() for k, v in copy.state_dict().items()})
        return GradCAM(copy, target_layers)

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cm.ModelParameterRandomisation(
        recording_gradcam, model, [model.features[-1]], layers=["fc", "features.1"], init=init, progress=False
    )(x)
    original, head, batch_norm = seen
    trained = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in trained.items())
    assert not torch.equal(head["fc.weight"], trained["fc.weight"])
    assert torch.equal(head["features.0.weight"], trained["features.0.weight"])
    if init == "shuffle":  # the same values, in another order
        torch.testing.assert_close(head["fc.weight"].flatten().sort().values, trained["fc.weight"].flatten().sort().values)
        assert torch.equal(batch_norm["features.1.running_var"], trained["features.1.running_var"])
    else:  # BatchNorm's own initialisation, which also forgets the running statistics
        assert torch.equal(batch_norm["features.1.weight"], torch.ones(8))
        assert torch.equal(batch_norm["features.1.running_var"], torch.ones(8))


def test_randomisation_errors_are_clear():
    model = TinyCNN(num_classes=3).eval()
    other = TinyCNN(num_classes=3).eval()
    layers = [model.features[-1]]
    with pytest.raises(ValueError, match="mode"):
        cm.ModelParameterRandomisation(GradCAM, model, layers, mode="successive")
    with pytest.raises(ValueError, match="init"):
        cm.ModelParameterRandomisation(GradCAM, model, layers, init="zeros")
    with pytest.raises(ValueError, match="not a submodule"):
        cm.ModelParameterRandomisation(GradCAM, model, [other.features[-1]])
    with pytest.raises(ValueError, match="no module named 'head'"):
        cm.ModelParameterRandomisation(GradCAM, model, layers, layers=["head"])
    with pytest.raises(TypeError, match="CAM class or a factory"):
        cm.ModelParameterRandomisation("GradCAM", model, layers)
    with pytest.raises(ValueError, match="one callable per image"):
        cm.ModelParameterRandomisation(GradCAM, model, layers, progress=False)(
            torch.randn(2, 3, 8, 8), [ClassifierOutputTarget(0)]
        )


# -- a perfect map beats a random one ---------------------------------------------------------------------


def distance_ranked(masks: np.ndarray) -> np.ndarray:
    """The masks with their ties broken by the distance to the edge (thresholding at 0.5 gives them back)."""
    maps = []
    for mask in masks.astype(np.uint8):
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
        maps.append(np.where(mask > 0, 0.999 + 1e-3 * inside / inside.max(), 1e-3 / (1 + outside)))
    return np.stack(maps).astype(np.float32)


def test_the_ground_truth_mask_beats_a_random_map_on_every_metric(demo):
    """On the demo's held-out images, scored for the class whose exact mask is the map.

    The randomisation test is left out on purpose: the mask does not depend on the model, so it
    fails that test by design (it is a property of an explainer, not of a map).
    """
    model, x, classes, gt = demo
    perfect, random = gt.astype(np.float32), random_smooth_maps(len(gt), gt.shape[-1])
    targets = [ClassifierOutputTarget(c) for c in classes]
    probability = dict(score_fn="sigmoid", progress=False)

    def mean(metric, maps, *args):
        return float(np.mean(metric(*args[:1], maps, *args[1:]) if args else metric(maps, gt)))

    higher = {
        "pointing game": lambda maps: mean(cm.PointingGame(tolerance=5), maps),
        "energy": lambda maps: mean(cm.EnergyPointingGame(), maps),
        "insertion": lambda maps: mean(cm.Insertion(steps=8, **probability), maps, x, targets, model),
        "confidence increase": lambda maps: mean(cm.ConfidenceIncrease(**probability), maps, x, targets, model),
    }
    lower = {
        "deletion": lambda maps: mean(cm.Deletion(steps=8, **probability), maps, x, targets, model),
        "average drop": lambda maps: mean(cm.AverageDrop(**probability), maps, x, targets, model),
    }
    for name, score in higher.items():
        assert score(perfect) > score(random), name
    for name, score in lower.items():
        assert score(perfect) < score(random), name
    # ROAD thresholds at percentiles and, as pytorch-grad-cam defines it, removes every pixel tied
    # at the threshold: a binary mask ties on the whole background, so most percentiles remove
    # the whole image. Ranked by the distance to the mask's edge, it is the same mask without ties.
    road = cm.ROADCombined([50], imputer=cm.NoisyLinearImputer(noise=0.0), progress=False)
    road_targets = [lambda out, c=c: torch.sigmoid(out[..., c]) for c in classes]
    assert road(x, distance_ranked(gt), road_targets, model).mean() > road(x, random, road_targets, model).mean()


def test_metrics_leave_a_training_model_as_it_was(demo):
    _, x, classes, gt = demo
    model = TinyCNN(num_classes=6, seed=4).train()
    before = model_snapshot(model)
    targets = [ClassifierOutputTarget(c) for c in classes]
    maps = random_smooth_maps(len(gt), gt.shape[-1])
    for metric in (cm.AverageDrop(progress=False), cm.ConfidenceIncrease(progress=False),
                   cm.Deletion(steps=4, progress=False), cm.Insertion(steps=4, progress=False)):
        metric(x, maps, targets, model)
        assert_model_untouched(model, before)


# -- torchcam 0.5.0 as a cross-check ------------------------------------------------------------------------


class FixedMaps:
    """A torchcam CAM extractor that returns given maps, so both libraries score the same maps."""

    def __init__(self, model, maps):
        self.model, self.maps = model, torch.as_tensor(maps)

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


@pytest.mark.parametrize("score_fn", ["sigmoid", "softmax"])
def test_confidence_and_curves_match_torchcam(demo, score_fn):
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    model, x, classes, _ = demo
    targets = [ClassifierOutputTarget(c) for c in classes]
    maps = GradCAM(model, demo_target_layers(model))(x, targets)
    logits_fn = torch.sigmoid if score_fn == "sigmoid" else partial(torch.softmax, dim=-1)

    reference = torchcam_metrics.ClassificationMetric(FixedMaps(model, maps), logits_fn)
    reference.update(x, class_idx=classes)
    summary = reference.summary()
    drop = cm.AverageDrop(score_fn=score_fn, progress=False)(x, maps, targets, model)
    increase = cm.ConfidenceIncrease(score_fn=score_fn, progress=False)(x, maps, targets, model)
    assert drop.mean() / 100 == pytest.approx(summary["avg_drop"], abs=1e-6)  # torchcam: fractions
    assert increase.mean() / 100 == pytest.approx(summary["conf_increase"], abs=1e-6)

    for substrate, baseline in (("zeros", None), ("blur", cm.gaussian_blur)):
        curves = torchcam_metrics.DeletionInsertionMetric(
            FixedMaps(model, maps), logits_fn, steps=5, baseline=baseline, batch_size=24
        )
        curves.update(x, class_idx=classes)
        summary = curves.summary()
        options = dict(substrate=substrate, score_fn=score_fn, progress=False)
        assert cm.Deletion(5, **options)(x, maps, targets, model).mean() == pytest.approx(summary["deletion_auc"], abs=1e-5)
        assert cm.Insertion(5, **options)(x, maps, targets, model).mean() == pytest.approx(summary["insertion_auc"], abs=1e-5)


# -- ROAD's direct solver ---------------------------------------------------------------------------------


def test_direct_and_iterative_solvers_agree():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 17, 23, generator=generator)
    missing = torch.rand(4, 17, 23, generator=generator) > 0.4
    missing[1] = True  # nothing to interpolate from: 0, as the iterative solvers leave it
    missing[2] = False
    missing[3, 4:12, 5:15] = True
    weighting = cm.road.neighbors_weights
    with pytest.warns(RuntimeWarning, match="every pixel"):
        direct = cm.NoisyLinearImputer(noise=0.0, solver="direct")(images, (~missing).float())
    with pytest.warns(RuntimeWarning, match="every pixel"):
        iterative = cm.NoisyLinearImputer(noise=0.0, solver="iterative")(images, (~missing).float())
    torch.testing.assert_close(direct, iterative, atol=1e-5, rtol=0)
    assert torch.equal(direct[1], torch.zeros_like(direct[1])) and torch.equal(direct[2], images[2])
    four = [((0, 1), 0.25), ((0, -1), 0.25), ((1, 0), 0.25), ((-1, 0), 0.25)]
    torch.testing.assert_close(
        linear_infill(images, missing, four, "direct"), linear_infill(images, missing, four, "iterative"), atol=1e-5, rtol=0
    )
    # the iterative solver works on the removed pixels' bounding box when it can
    block = torch.zeros(2, 17, 23, dtype=torch.bool)
    block[0, 3:9, 4:10] = True
    block[1, 0:17:3, :] = True
    torch.testing.assert_close(
        linear_infill(images[:2], block, weighting, "iterative"),
        linear_infill(images[:2], block, weighting, "direct"),
        atol=1e-5,
        rtol=0,
    )
    assert _choose_solver("auto", torch.device("cpu"), weighting) == "direct"
    asymmetric = [((0, 1), 0.5), ((1, 0), 0.5)]
    assert _choose_solver("auto", torch.device("cpu"), asymmetric) == "iterative"
    with pytest.raises(ValueError, match="symmetric"):
        cm.NoisyLinearImputer(noise=0.0, weighting=asymmetric, solver="direct")(images[0], torch.ones(17, 23))
    with pytest.raises(ValueError, match="solver"):
        cm.NoisyLinearImputer(solver="cholesky")


@pytest.mark.parametrize("solver", ["direct", "iterative"])
def test_road_parity_with_the_reference_for_each_solver(solver):
    ref_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    cnn = TinyCNN(num_classes=5, seed=3).eval()
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 16, 20, generator=generator)
    cams = torch.rand(2, 16, 20, generator=generator).numpy()
    targets = [ClassifierOutputTarget(c) for c in (0, 2)]
    torch.manual_seed(11)
    ours = cm.ROADCombined([30, 70], imputer=cm.NoisyLinearImputer(solver=solver), progress=False)(x, cams, targets, cnn)
    torch.manual_seed(11)
    theirs = ref_road.ROADCombined([30, 70])(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- progress bars --------------------------------------------------------------------------------------------


def test_progress_bars(capsys, monkeypatch):
    model = sum_model(4)
    x, cams, targets = torch.ones(2, 1, 2, 2), torch.rand(2, 2, 2), [ClassifierOutputTarget(0)] * 2
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS", raising=False)
    cm.Deletion(steps=2, score_fn=None, progress=True)(x, cams, targets, model)
    cm.AverageDrop(score_fn=None, progress=True)(x, cams, targets, model)
    err = capsys.readouterr().err
    assert "Deletion" in err and "AverageDrop" in err
    cm.Insertion(steps=2, score_fn=None, progress=False)(x, cams, targets, model)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")
    cm.Insertion(steps=2, score_fn=None)(x, cams, targets, model)
    assert capsys.readouterr().err == ""
    tiny = TinyCNN(num_classes=3).eval()
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS")
    cm.ModelParameterRandomisation(GradCAM, tiny, [tiny.features[-1]], layers=["fc"])(torch.randn(1, 3, 8, 8))
    assert "ModelParameterRandomisation" in capsys.readouterr().err


# -- the quality table ---------------------------------------------------------------------------------------


def test_quality_script_quick_run(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality", quality)  # its dataclasses look their module up
    spec.loader.exec_module(quality)
    start = time.perf_counter()
    assert quality.main(["--quick", "--threads", "1", "--docs", str(tmp_path)]) == 0
    assert torch.get_num_threads() == 1  # restored
    assert time.perf_counter() - start < 30
    report = (tmp_path / "quality.md").read_text(encoding="utf-8")
    for row in ("GradCAM", "CAM (Zhou et al.)", "ground-truth mask", "random map"):
        assert f"| {row}" in report or f"| *{row}" in report, row
    assert "Pointing game" in report and "load average" in report and "--quick" in report
    data = json.loads((tmp_path / "images" / "quality" / "results.json").read_text(encoding="utf-8"))
    # on a model ending in global average pooling and a linear layer, CAM and Grad-CAM give the same maps;
    # whichever the registry lists first is scored, the other is marked as the same
    pair = {data["results"]["CAM (Zhou et al.)"]["same_maps_as"], data["results"]["GradCAM"]["same_maps_as"]}
    assert pair in ({"GradCAM", None}, {"CAM (Zhou et al.)", None})
    assert data["results"]["ground-truth mask"]["mean"]["rho_all"] == pytest.approx(1.0)
    for name in ("methods.jpg", "overview.jpg", "curves.png", "randomisation.jpg"):
        image = cv2.imread(str(tmp_path / "images" / "quality" / name))
        assert image is not None and image.std() > 10, name
    (tmp_path / "quality.md").unlink()
    assert quality.main(["--report-only", "--docs", str(tmp_path)]) == 0
    assert (tmp_path / "quality.md").read_text(encoding="utf-8") == report


# -- on a GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_new_metrics_on_cuda_match_cpu():
    generator = torch.Generator().manual_seed(0)
    cnn = TinyCNN(num_classes=4, seed=1).eval()
    gpu = TinyCNN(num_classes=4, seed=1).eval().cuda()
    x = torch.randn(3, 3, 16, 16, generator=generator)
    cams = torch.rand(3, 16, 16, generator=generator)
    targets = [ClassifierOutputTarget(c) for c in (0, 3, 1)]
    for metric in (
        cm.AverageDrop(progress=False),
        cm.ConfidenceIncrease(progress=False),
        cm.Deletion(steps=6, progress=False),
        cm.Insertion(steps=6, progress=False),
    ):
        np.testing.assert_allclose(metric(x.cuda(), cams.cuda(), targets, gpu), metric(x, cams, targets, cnn), atol=1e-4)
    masks = cams > 0.7
    for game in (cm.PointingGame(2), cm.EnergyPointingGame()):
        np.testing.assert_allclose(game(cams.cuda(), masks.cuda()), game(cams, masks), atol=1e-6)
    check = partial(cm.ModelParameterRandomisation, GradCAM, init="shuffle", layers=["fc", "features.4"], progress=False)
    on_gpu = check(gpu, [gpu.features[-1]])(x.cuda(), targets).correlations
    np.testing.assert_allclose(on_gpu, check(cnn, [cnn.features[-1]])(x, targets).correlations, atol=1e-3)
    missing = torch.rand(2, 16, 16, generator=generator) > 0.5
    images = torch.randn(2, 3, 16, 16, generator=generator)
    direct = linear_infill(images.cuda(), missing.cuda(), cm.road.neighbors_weights, "direct")
    assert direct.device.type == "cuda"
    iterative = linear_infill(images.cuda(), missing.cuda(), cm.road.neighbors_weights, "auto")  # iterative there
    torch.testing.assert_close(direct, iterative, atol=1e-5, rtol=0)
