"""SS-CAM, IS-CAM and Smooth Grad-CAM++: golden values on a linear toy model, parity with torchcam 0.5.0,
a statistical test of SS-CAM's noise, bad arguments, hygiene."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot

from camlib import ISCAM, SSCAM, ScoreCAM, SmoothGradCAMpp
from camlib.is_cam import is_cam_coefficients, is_cam_weights
from camlib.score_cam import channel_mask_scores, normalized_upsampled_masks
from camlib.smooth_grad_cam_pp import smooth_grad_cam_pp_weights
from camlib.ss_cam import ss_cam_weights
from camlib.utils.image import scale_cam_image
from camlib.utils.model_targets import ClassifierOutputTarget


def _targets(*classes):
    return [ClassifierOutputTarget(c) for c in classes]


class LinearToy(torch.nn.Module):
    """x [1, 1, 2, 2] -> A_0 = x, A_1 = 3 - x (1x1 conv) -> scores (mean A_0, mean A_1).

    Everything is linear, so the scores of masked inputs are easy to compute by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.fc = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 3.0]))
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


X = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
# Masks: M_0 = x / 3, M_1 = (3 - x) / 3. Class 0 scores mean(conv(X * M)[0]) = mean(X * M):
# X * M_0 = [[0, 1/3], [4/3, 3]] -> 7/6, X * M_1 = [[0, 2/3], [2/3, 0]] -> 1/3.
SCORES_CLASS_0 = np.array([7 / 6, 1 / 3])
A = np.stack([X[0, 0].numpy(), 3 - X[0, 0].numpy()])


def _expected_map(weights):
    cam = np.maximum((np.asarray(weights)[:, None, None] * A).sum(0), 0)
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def _softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


# -- golden values -----------------------------------------------------------------------------------------------
def test_is_cam_coefficients_accumulate():
    np.testing.assert_allclose(is_cam_coefficients(3).numpy(), [1 / 3, 1.0, 2.0])
    np.testing.assert_allclose(is_cam_coefficients(10).numpy()[-1], 5.5)


def test_normalized_upsampled_masks_by_hand():
    masks = normalized_upsampled_masks(torch.stack([X[0, 0], 3 - X[0, 0], torch.full((2, 2), 4.0)]), (2, 2))
    np.testing.assert_allclose(masks[0].numpy(), X[0, 0].numpy() / 3, atol=1e-7)
    np.testing.assert_allclose(masks[1].numpy(), (3 - X[0, 0].numpy()) / 3, atol=1e-7)
    assert torch.equal(masks[2], torch.zeros(2, 2))  # a constant channel gives the zero mask
    up = normalized_upsampled_masks(torch.tensor([[[0.0, 1.0]]]).expand(1, 1, 2), (1, 4))
    np.testing.assert_allclose(up[0, 0].numpy(), [0, 0.25, 0.75, 1], atol=1e-7)  # half-pixel centres


@pytest.mark.parametrize("num_samples", [1, 2, 3, 7])
def test_iscam_golden(num_samples):
    model = LinearToy()
    # the score is linear in the mask, so the mean over the multiples c_i scales it by mean(c_i) = (N+1)(N+2)/(6N)
    mean_c = (num_samples + 1) * (num_samples + 2) / (6 * num_samples)
    weights = _softmax(SCORES_CLASS_0 * mean_c)
    got = is_cam_weights(model, X, model.conv(X).detach(), _targets(0), num_samples=num_samples)
    np.testing.assert_allclose(got[0].numpy(), weights, atol=1e-6)
    with ISCAM(model, [model.conv], num_samples=num_samples, progress=False) as cam:
        np.testing.assert_allclose(cam(X, _targets(0))[0], _expected_map(weights), atol=1e-5)


def test_sscam_golden_without_noise():
    model = LinearToy()
    got = ss_cam_weights(model, X, model.conv(X).detach(), _targets(0), num_samples=3, std=0.0)
    np.testing.assert_allclose(got[0].numpy(), _softmax(SCORES_CLASS_0), atol=1e-6)
    with SSCAM(model, [model.conv], num_samples=2, std=0.0, progress=False) as cam:
        np.testing.assert_allclose(cam(X, _targets(0))[0], _expected_map(_softmax(SCORES_CLASS_0)), atol=1e-5)


def test_sscam_noise_averages_out():
    """Statistical: the noise adds mean(X * delta) to each score, N(0, std^2 * sum(x^2) / 16) = N(0, 3.5) for
    std = 2; averaged over N samples the log-ratio of the two weights is 5/6 within 5 standard deviations."""
    model = LinearToy()
    n = 2000
    sigma = math.sqrt(2 * 3.5 / n)
    torch.manual_seed(0)
    w = ss_cam_weights(model, X, model.conv(X).detach(), _targets(0), num_samples=n, std=2.0, batch_size=4096)[0]
    log_ratio = float(torch.log(w[0] / w[1]))
    assert abs(log_ratio - 5 / 6) < 5 * sigma
    # and the noise is there: a second draw differs
    w2 = ss_cam_weights(model, X, model.conv(X).detach(), _targets(0), num_samples=n, std=2.0, batch_size=4096)[0]
    assert not torch.equal(w, w2)


def test_smooth_grad_cam_pp_golden():
    """Class 0: dy/dA_0 = 1/4 everywhere whatever the noise (the model is linear), dy/dA_1 = 0.
    alpha = (1/16) / (2/16 + sum(A_0) / 64) = 2/7 with sum(A_0) = 6, so w_0 = 4 * 2/7 * 1/4 = 2/7, w_1 = 0."""
    model = LinearToy()
    grads = [torch.stack([torch.full((2, 2), 0.25), torch.zeros(2, 2)])[None]] * 3
    w = smooth_grad_cam_pp_weights(model.conv(X).detach(), grads)
    np.testing.assert_allclose(w[0].numpy(), [2 / 7, 0.0], atol=1e-6)
    torch.manual_seed(0)
    with SmoothGradCAMpp(model, [model.conv], num_samples=3, std=0.5) as cam:
        np.testing.assert_allclose(cam(X, _targets(0))[0], _expected_map([2 / 7, 0.0]), atol=1e-5)


def test_channel_mask_scores_order_is_sample_major():
    model = LinearToy()
    maps = model.conv(X).detach()[0]
    scale = torch.tensor([1.0, 2.0, 4.0])
    scores = channel_mask_scores(
        model, X, maps, torch.zeros(2, dtype=torch.long), _targets(0), masks=normalized_upsampled_masks,
        samples=3, perturb=lambda m, s: m * scale[s].reshape(-1, 1, 1), batch_size=4,
    )  # fmt: skip
    np.testing.assert_allclose(scores.numpy(), scale.numpy()[:, None] * SCORES_CLASS_0[None], atol=1e-6)


# -- parity with torchcam 0.5.0 ----------------------------------------------------------------------------------
class TwoConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _torchcam_maps(cls_name, model, layer, x, classes, **kwargs):
    tm = pytest.importorskip("torchcam.methods")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with getattr(tm, cls_name)(model, layer, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
            out = model(x)
            maps = extractor(classes, out)[0]
    # camlib resizes the layer's map to the input and rescales it to [0, 1] after resizing
    return scale_cam_image(scale_cam_image(maps.detach(), tuple(x.shape[2:][::-1]))).numpy()


PARITY = [
    ("SSCAM", SSCAM, {"num_samples": 3, "std": 2.0}),  # the same noise draws for the same seed
    ("SSCAM", SSCAM, {"num_samples": 1, "std": 0.5}),
    ("ISCAM", ISCAM, {"num_samples": 4}),
    ("ISCAM", ISCAM, {"num_samples": 10}),
    ("SmoothGradCAMpp", SmoothGradCAMpp, {"num_samples": 3, "std": 1e-30}),  # deterministic part (no noise)
]


@pytest.mark.parametrize("name, cls, kwargs", PARITY, ids=[f"{p[0]}-{i}" for i, p in enumerate(PARITY)])
def test_parity_with_torchcam(name, cls, kwargs):
    model = TwoConv().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layer = model.features[2]
    torch.manual_seed(5)
    expected = _torchcam_maps(name, model, layer, x, [1, 3], **kwargs)
    torch.manual_seed(5)
    with cls(model, [layer], batch_size=7, **kwargs) as cam:
        got = cam(x, _targets(1, 3))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_smooth_grad_cam_pp_weights_match_torchcam_with_one_noisy_sample():
    """With one sample, the weights are torchcam's for the same noise (torchcam then builds the map on the noisy
    pass's activations, camlib on the clean input's: the maps differ by design)."""
    tm = pytest.importorskip("torchcam.methods")
    model = TwoConv().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layer = model.features[2]
    with tm.SmoothGradCAMpp(model, layer, num_samples=1, std=0.3, input_shape=(3, 16, 16)) as extractor:
        out = model(x)
        torch.manual_seed(11)
        expected = extractor._get_weights([1, 3], out)[0]
    cam = SmoothGradCAMpp(model, [layer], num_samples=1, std=0.3)
    record = cam.capture(cam.prepare_input(x), _targets(1, 3))
    torch.manual_seed(11)
    passes = cam.noisy_gradients(record)
    got = smooth_grad_cam_pp_weights(record.activations[0], [p[0] for p in passes])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_smooth_grad_cam_pp_noise_is_seeded_and_matters():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cam = SmoothGradCAMpp(model, [model.features[4]], num_samples=2, std=0.5)
    torch.manual_seed(3)
    a = cam(x, _targets(1))
    torch.manual_seed(3)
    b = cam(x, _targets(1))
    c = cam(x, _targets(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_smooth_grad_cam_pp_backpropagates_only_the_noisy_passes(monkeypatch):
    """The clean pass gives the activations only: num_samples + 1 forward passes, num_samples backward."""
    model = TinyCNN().eval()
    forwards, backwards = [], []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        backwards.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    handle = model.register_forward_hook(lambda module, args, out: forwards.append(out.shape[0]))
    try:
        SmoothGradCAMpp(model, [model.features[4]], num_samples=3, std=0.5)(torch.randn(2, 3, 16, 16), _targets(0, 1))
    finally:
        handle.remove()
    assert forwards == [2, 2, 2, 2] and len(backwards) == 3


# -- shared loop, arguments, hygiene ------------------------------------------------------------------------------
def test_iscam_scores_each_distinct_channel_once_per_sample():
    calls = []

    class Counting(TinyCNN):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    model = Counting().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = model.features(x)
    distinct = len({tuple(row.tolist()) for row in torch.where(
        (acts[0].flatten(1).amax(1) == acts[0].flatten(1).amin(1))[:, None], 0.0, acts[0].flatten(1))})
    calls.clear()
    with ISCAM(model, [model.features[6]], num_samples=3, batch_size=1000, progress=False) as cam:
        cam(x, _targets(0))
    assert sum(calls) == 1 + 3 * distinct


@pytest.mark.parametrize("cls", [SSCAM, ISCAM, SmoothGradCAMpp])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_num_samples(cls, bad):
    model = TinyCNN()
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        cls(model, [model.features[4]], num_samples=bad)


@pytest.mark.parametrize("cls", [SSCAM, SmoothGradCAMpp])
def test_bad_std(cls):
    model = TinyCNN()
    with pytest.raises(ValueError, match="std must be a non-negative number"):
        cls(model, [model.features[4]], std=-1.0)


@pytest.mark.parametrize("cls", [SSCAM, ISCAM, SmoothGradCAMpp])
def test_model_untouched_and_3d(cls, tiny_3d):
    before = model_snapshot(tiny_3d)
    x = torch.randn(1, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with cls(tiny_3d, [tiny_3d.features[3]], num_samples=2, batch_size=64) as cam:
        maps = cam(x, _targets(0))
    assert maps.shape == (1, 4, 8, 8) and np.isfinite(maps).all() and maps.max() > 0
    assert hooks_left(tiny_3d) == 0
    assert_model_untouched(tiny_3d, before)


def test_scorecam_still_scores_with_the_shared_loop():
    model = LinearToy()
    with ScoreCAM(model, [model.conv], progress=False) as cam:
        maps = cam(X, _targets(0))
    # at the layer's own size, Score-CAM's masks are the normalised channels too
    np.testing.assert_allclose(maps[0], _expected_map(_softmax(SCORES_CLASS_0)), atol=1e-5)
