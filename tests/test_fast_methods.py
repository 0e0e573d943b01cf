"""ReciproCAM, GroupCAM, PolyCAM and OptiCAM: golden values on hand-set tiny models, paths, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot

from camlib.recipro_cam import ReciproCAM, position_masks
from camlib.utils.model_targets import ClassifierOutputTarget


class ConvGapLinear(torch.nn.Module):
    """1x1 conv (identity), global average pooling, linear head: maps computable on paper."""

    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2, len(bias))
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


W = [[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]
B = [0.1, -0.2, 0.0]
X = torch.tensor(
    [[[[1.0, 0.0, 2.0], [0.5, 3.0, 1.0], [0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.0, 0.5, 4.0]]]]
)


def _minmax(a):
    a = np.maximum(a, 0)
    return (a - a.min()) / (a.max() - a.min() + 1e-7)


def _recipro_by_hand(x, category, gaussian=True, softmax=True):
    """The map of ConvGapLinear written out with loops: window kept around each position, mean over the
    3x3 grid, linear layer, softmax."""
    w, b = np.array(W), np.array(B)
    a = x[0].numpy()
    window = {0: 0.25, 1: 0.125, 2: 0.0625}  # by |di| + |dj| (corners 1/16)
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            kept = np.zeros_like(a)
            for u in range(3):
                for v in range(3):
                    if gaussian and abs(u - i) <= 1 and abs(v - j) <= 1:
                        kept[:, u, v] = a[:, u, v] * window[abs(u - i) + abs(v - j)]
                    elif not gaussian and (u, v) == (i, j):
                        kept[:, u, v] = a[:, u, v]
            logits = w @ kept.mean(axis=(1, 2)) + b
            if softmax:
                logits = np.exp(logits - logits.max())
                logits = logits / logits.sum()
            out[i, j] = logits[category]
    return out


def test_position_masks_by_hand():
    masks = position_masks((3, 3))
    assert masks.shape == (9, 3, 3)
    np.testing.assert_allclose(masks[4].numpy(), [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])
    np.testing.assert_allclose(masks[0].numpy(), [[1 / 4, 1 / 8, 0], [1 / 8, 1 / 16, 0], [0, 0, 0]])
    assert torch.equal(position_masks((2, 3), "point"), torch.eye(6).reshape(6, 2, 3))
    volume = position_masks((3, 3, 3))
    assert volume.shape == (27, 3, 3, 3) and float(volume[13].max()) == 0.125 and float(volume[13].sum()) == 1.0


@pytest.mark.parametrize("kernel", ["gaussian", "point"])
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("category", [0, 1])
def test_recipro_cam_golden(kernel, softmax, category):
    model = ConvGapLinear(W, B).eval()
    expected = _minmax(_recipro_by_hand(X, category, kernel == "gaussian", softmax))
    with ReciproCAM(model, [model.conv], kernel=kernel, softmax=softmax, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
    assert cam.last_paths == ["split"]
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_recipro_cam_full_model_path_agrees():
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = [ClassifierOutputTarget(c) for c in (0, 3, 1)]
    before = model_snapshot(model)
    split = ReciproCAM(model, [model.features[4]], batch_size=7, progress=False)
    full = ReciproCAM(model, [model.features[4]], batch_size=7, progress=False)
    full.split_model = False
    np.testing.assert_allclose(split(x, targets), full(x, targets), atol=1e-5)
    assert (split.last_paths, full.last_paths) == (["split"], ["full"])
    assert_model_untouched(model, before)


def test_recipro_cam_tokens_keep_prefix_tokens():
    """A class token plus a 2x2 grid of tokens: the class token is kept, the grid masked position by position."""

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Identity()
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):  # x [B, 3, 2, 2] -> tokens [B, 5, 3] -> head of (class token + mean of all)
            grid = x.flatten(2).transpose(1, 2)
            tokens = self.embed(torch.cat([x.mean(dim=(2, 3))[:, None], grid], dim=1))
            return self.head(tokens[:, 0] + tokens.mean(dim=1))

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(1, 3, 2, 2)
    with ReciproCAM(model, [model.embed], kernel="point", softmax=False, progress=False) as cam:
        got = cam.compute(x, [ClassifierOutputTarget(1)], per_layer=True)[0, 0]
    with torch.no_grad():
        grid = x.flatten(2).transpose(1, 2)[0]
        cls = x.mean(dim=(2, 3))[0]
        raw = []
        for p in range(4):
            kept = torch.zeros_like(grid)
            kept[p] = grid[p]
            tokens = torch.cat([cls[None], kept])
            raw.append(model.head(tokens[0] + tokens.mean(dim=0))[1])
        raw = torch.stack(raw).reshape(2, 2).numpy()
    np.testing.assert_allclose(got.numpy(), _minmax(raw), atol=1e-5)


def test_recipro_cam_errors():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ReciproCAM(model, [model.features[4]], kernel="box")
    with pytest.raises(TypeError, match="softmax must be True or False"):
        ReciproCAM(model, [model.features[4]], softmax="yes")
    with pytest.raises(ValueError, match="eigen_smooth"):
        ReciproCAM(model, [model.features[4]], progress=False)(x, eigen_smooth=True)

    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.mean(dim=(2, 3)))

    odd = ConvNet().eval()
    # a reshape transform that crops the map: its positions match no layout of the raw output
    cam = ReciproCAM(odd, [odd.conv], reshape_transform=lambda t: t[:, :, :, :3], progress=False)
    with pytest.raises(ValueError, match="cannot tell where the positions"):
        cam(torch.randn(1, 3, 5, 5), [ClassifierOutputTarget(0)])
