"""OptiCAM (ReciproCAM, GroupCAM, PolyCAM: tests/test_recipro_cam.py, test_group_cam.py, test_poly_cam.py): golden values on hand-set tiny models, paths, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot

from camlib.opti_cam import OptiCAM, opti_cam_mask
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


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


# -- OptiCAM -----------------------------------------------------------------------------------------
def _opti_score(u, a, w, b, category):
    """The objective of ConvGapLinear written out: logit of X masked by the min-max scaled map."""
    s = np.tensordot(_softmax(u), np.maximum(a, 0), axes=1)
    s = (s - s.min()) / max(s.max() - s.min(), 1e-12)
    return (w @ (a * s).mean(axis=(1, 2)) + b)[category]


def test_opti_cam_golden():
    model = ConvGapLinear(W, B).eval()
    w, b, a = np.array(W), np.array(B), X[0].numpy().astype(np.float64)
    category = 0
    # no step: uniform weights, the map is the mean of the ReLU'd channels
    with OptiCAM(model, [model.conv], iterations=0, progress=False) as cam:
        np.testing.assert_allclose(cam(X, [ClassifierOutputTarget(category)])[0], _minmax(np.maximum(a, 0).mean(0)), atol=1e-5)
    # one Adam step moves each weight by learning_rate in the direction that raises the score (finite differences)
    u = np.full(2, 0.5)
    grad = [(_opti_score(u + d, a, w, b, category) - _opti_score(u - d, a, w, b, category)) / 2e-4 for d in np.eye(2) * 1e-4]
    stepped = u + 0.1 * np.sign(grad)
    expected = _minmax(np.tensordot(_softmax(stepped), np.maximum(a, 0), axes=1))
    with OptiCAM(model, [model.conv], iterations=1, learning_rate=0.1, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
        weights = cam.optimised_weights(cam.capture(X, [ClassifierOutputTarget(category)]), 0)
    np.testing.assert_allclose(weights[0].numpy(), _softmax(stepped), atol=1e-5)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_opti_cam_raises_the_masked_score_and_leaves_the_model_alone():
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(4)]
    before = model_snapshot(model)
    scores = []
    for iterations in (0, 20):
        cam = OptiCAM(model, [model.features[4]], iterations=iterations, progress=False)
        capture = cam.capture(x, targets)
        weights = cam.optimised_weights(capture, 0)
        with torch.no_grad():
            logits = torch.log(weights)  # softmax(log w) = w
            mask = opti_cam_mask(torch.relu(capture.activations[0]), logits, (16, 16))
            scores.append(model(x * mask[:, None]).gather(1, torch.tensor([[2], [4]]))[:, 0])
    assert (scores[1] > scores[0]).all()
    assert_model_untouched(model, before)


def test_opti_cam_errors():
    model = TinyCNN().eval()
    with pytest.raises(ValueError, match="iterations must be a non-negative integer"):
        OptiCAM(model, [model.features[4]], iterations=-1)
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        OptiCAM(model, [model.features[4]], learning_rate=0)
