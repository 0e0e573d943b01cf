"""ScoreCAM: parity with pytorch-grad-cam, 5-D input, deduplicated masks, hygiene, progress bars."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot, optional

from camlib.base_cam import BaseCAM
from camlib.score_cam import ScoreCAM, distinct_channel_maps, score_cam_masks
from camlib.utils.model_targets import ClassifierOutputTarget

ref = optional("pytorch_grad_cam")


def _targets(*classes):
    return [ClassifierOutputTarget(c) for c in classes]


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


class Tiny3D(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(4, 6, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class CountingCNN(torch.nn.Module):
    """Conv -> ReLU with 3 dead channels (all zero) and 2 identical channels; counts images seen."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, stride=2)
        with torch.no_grad():
            self.conv.weight[:3] = 0
            self.conv.bias[:3] = -1.0
            self.conv.weight[4] = self.conv.weight[3]
            self.conv.bias[4] = self.conv.bias[3]
            self.conv.bias[3:] = 5.0  # the live channels stay positive: no accidental dead channel
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(8, 4)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def _reference(model, layers, x, classes, batch_size=64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ref.ScoreCAM(model, layers) as cam:
            cam.batch_size = batch_size
            return cam(x, [ref.utils.model_targets.ClassifierOutputTarget(c) for c in classes])


# -- parity with pytorch-grad-cam ------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch",
    [
        # layer3 (256 channels, 3x3 at 33x33): half the 1024 masked forwards layer4 would cost
        ("resnet18", _resnet18, lambda m: [m.layer3[-1]], (2, 3, 33, 33), (3, 7)),
        ("tiny_cnn", lambda: TinyCNN().eval(), lambda m: [m.features[-1]], (3, 3, 16, 16), (0, 2, 4)),
        (
            "tiny_cnn_two_layers",
            lambda: TinyCNN().eval(),
            lambda m: [m.features[2], m.features[-1]],
            (2, 3, 16, 16),
            (1, 3),
        ),
        ("dead_and_twin_channels", CountingCNN, lambda m: [m.relu], (2, 3, 12, 12), (0, 3)),
    ],
    ids=lambda a: a[0],
)
def test_parity_with_reference(arch):
    _, build, layers_of, shape, classes = arch
    model = build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with ScoreCAM(model, layers_of(model), batch_size=64, progress=False) as cam:
        ours = cam(x, _targets(*classes))
    expected = _reference(model, layers_of(model), x, classes)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


# -- 5-D input ---------------------------------------------------------------------------------------------
class _SlowScoreCAM(BaseCAM):
    """The textbook algorithm, one forward per (image, channel), for comparison."""

    uses_gradients = False

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        batch, channels = activations.shape[:2]
        scores = torch.zeros(batch, channels)
        for b in range(batch):
            for c in range(channels):
                up = F.interpolate(
                    activations[b : b + 1, c : c + 1],
                    size=input_tensor.shape[2:],
                    mode="trilinear",
                    align_corners=True,
                )
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                with torch.no_grad():
                    scores[b, c] = targets[b](self.model(input_tensor[b : b + 1] * mask)[0])
        return torch.softmax(scores, dim=-1)


def test_5d_matches_straightforward_implementation():
    model = Tiny3D().eval()
    x = torch.randn(2, 1, 6, 8, 8, generator=torch.Generator().manual_seed(2))
    layers = [model.features[-1]]
    with ScoreCAM(model, layers, progress=False, batch_size=5) as cam:
        maps = cam(x, _targets(0, 2))
    assert maps.shape == (2, 6, 8, 8) and maps.dtype == np.float32
    expected = _SlowScoreCAM(model, layers)(x, _targets(0, 2))
    np.testing.assert_allclose(maps, expected, atol=1e-5)


# -- deduplication -----------------------------------------------------------------------------------------
def test_identical_masks_need_one_forward():
    model = CountingCNN().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with ScoreCAM(model, [model.relu], progress=False, batch_size=4) as cam:
        model.images_seen = 0
        cam(x, _targets(0, 1))
    # per image: one all-zero mask (channels 0-2), one for the twins (3, 4), three others
    assert model.images_seen == 2 + 2 * 5


def test_a_chunks_outputs_are_freed_before_the_next_forward_pass():
    """The loop keeps only the scores of a chunk: its output is not alive during the next
    chunk's forward pass (it would add an output's size to the peak memory)."""
    import weakref

    base = TinyCNN().eval()
    alive = []

    class Watched(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = base
            self.last = None

        def forward(self, x):
            alive.append(self.last is not None and self.last() is not None)
            out = self.model(x)
            self.last = weakref.ref(out)
            return out

    model = Watched()
    ScoreCAM(model, [base.features[-1]], batch_size=2, progress=False)(torch.randn(1, 3, 16, 16), [ClassifierOutputTarget(0)])
    assert len(alive) > 3 and not any(alive[2:]), alive  # [0] capture pass, [1] first chunk


def test_distinct_channel_maps():
    acts = torch.zeros(2, 5, 3, 3)
    acts[:, 1] = 7.0  # constant: same (zero) mask as the dead channels
    acts[0, 2] = acts[0, 3] = torch.arange(9.0).reshape(3, 3)
    acts[1, 2] = torch.rand(3, 3)
    acts[1, 4] = acts[0, 2]  # same values as image 0's channel, but another image
    maps, image, inverse = distinct_channel_maps(acts)
    assert image.tolist() == [0, 0, 1, 1, 1]
    assert maps.shape == (5, 3, 3)
    for b in range(2):
        for c in range(5):
            row = int(inverse[b * 5 + c])
            assert int(image[row]) == b
            expected = acts[b, c] if acts[b, c].max() != acts[b, c].min() else torch.zeros(3, 3)
            assert torch.equal(maps[row], expected)


def test_masks_match_reference_formula():
    acts = torch.rand(4, 3, 3)
    acts[1] = 2.0
    masks = score_cam_masks(acts, (8, 8))
    up = torch.nn.UpsamplingBilinear2d(size=(8, 8))(acts[None])[0]
    flat = up.reshape(4, -1)
    expected = (up - flat.min(1).values[:, None, None]) / (
        flat.max(1).values[:, None, None] - flat.min(1).values[:, None, None] + 1e-8
    )
    torch.testing.assert_close(masks[[0, 2, 3]], expected[[0, 2, 3]])
    assert masks.min() >= 0 and masks.max() <= 1


# -- hygiene --------------------------------------------------------------------------------------------------
class _Boom:
    def __init__(self, after):
        self.after = after
        self.calls = 0

    def __call__(self, output):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return output[0]


def test_model_and_input_untouched():
    model = TinyCNN()
    model.train()
    x = torch.randn(2, 3, 16, 16)
    x_before = x.clone()
    before = model_snapshot(model)
    layer = model.features[-1]
    with ScoreCAM(model, [layer], progress=False, batch_size=4) as cam:
        maps = cam(x, _targets(0, 1))
        assert_model_untouched(model, before)
        with pytest.raises(RuntimeError, match="boom"):
            cam(x, [_Boom(after=3), _Boom(after=3)])
    assert maps.shape == (2, 16, 16)
    assert torch.equal(x, x_before)
    assert_model_untouched(model, before)
    assert hooks_left(model) == 0
    assert model.features[-1] is layer


def test_default_batch_size_and_override():
    model = TinyCNN().eval()
    assert ScoreCAM(model, [model.features[-1]]).batch_size == 16
    cam = ScoreCAM(model, [model.features[-1]], batch_size=3, progress=False)
    assert cam.batch_size == 3
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        cam(torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert calls[0] == 1 and max(calls[1:]) <= 3


# -- progress bars --------------------------------------------------------------------------------------------
def test_progress_bar_switches(capsys, monkeypatch):
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    layers = [model.features[-1]]
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS", raising=False)
    ScoreCAM(model, layers, progress=True)(x)
    assert "ScoreCAM" in capsys.readouterr().err
    ScoreCAM(model, layers, progress=False)(x)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")
    ScoreCAM(model, layers)(x)
    assert capsys.readouterr().err == ""
