"""Golden values: a model with hand-set weights whose maps are computed on paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlib
from camlib.utils.image import scale_cam_image
from camlib.utils.model_targets import ClassifierOutputTarget

# Two activation channels on a 2 x 2 grid, global average pooling, a linear head.
A0 = [[1.0, 2.0], [3.0, 4.0]]
A1 = [[4.0, 0.0], [0.0, 0.0]]
W = [[1.0, -1.0], [0.5, 2.0]]


class Golden(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.Identity()
        self.fc = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))

    def forward(self, x):
        return self.fc(self.act(x).mean(dim=(2, 3)))


X = torch.tensor([[A0, A1]])  # the input IS the activation: [1, 2, 2, 2]

# Class 0: dy/dA_k = W[0, k] / 4 everywhere, i.e. +1/4 for channel 0 and -1/4 for channel 1.
# Grad-CAM:  (A0 - A1) / 4 = [[-3, 2], [3, 4]] / 4 -> ReLU -> [[0, .5], [.75, 1]] -> / max
GRADCAM_CLASS0 = [[0.0, 0.5], [0.75, 1.0]]
# Only channel 0 has a positive gradient: LayerCAM, element-wise and Grad-CAM++ keep A0 alone:
# A0 / 4 -> min-max -> (A0 - 1) / 3
A0_ONLY = [[0.0, 1 / 3], [2 / 3, 1.0]]
# Class 1: dy/dA = (1/8, 1/2): Grad-CAM = A0 / 8 + A1 / 2 = [[2.125, .25], [.375, .5]] -> min-max
GRADCAM_CLASS1 = ((np.array(A0) / 8 + np.array(A1) / 2) - 0.25) / (2.125 - 0.25)


@pytest.mark.parametrize(
    ("method", "category", "expected"),
    [
        ("GradCAM", 0, GRADCAM_CLASS0),
        ("HiResCAM", 0, GRADCAM_CLASS0),  # constant gradients: same as Grad-CAM
        ("XGradCAM", 0, GRADCAM_CLASS0),  # sum_ij (A / sum A) g = g: same as Grad-CAM
        ("CAM", 0, GRADCAM_CLASS0),  # weights W[0] = 4 x Grad-CAM's
        ("ShapleyCAM", 0, GRADCAM_CLASS0),  # linear head: Hessian term is 0
        ("LayerCAM", 0, A0_ONLY),
        ("GradCAMElementWise", 0, A0_ONLY),
        ("GradCAMPlusPlus", 0, A0_ONLY),
        ("GradCAM", 1, GRADCAM_CLASS1),
        ("CAM", 1, GRADCAM_CLASS1),
    ],
)
def test_hand_computed_maps(method, category, expected):
    model = Golden().eval()
    maps = getattr(camlib, method)(model, [model.act])(X, [ClassifierOutputTarget(category)])
    np.testing.assert_allclose(maps[0], np.array(expected), atol=1e-6)


def test_grad_cam_plusplus_weight_by_hand():
    # alpha = g^2 / (2 g^2 + sum(A0) g^3) with g = 1/4, sum(A0) = 10; w0 = 4 * g * alpha
    g, s = 0.25, 10.0
    alpha = g**2 / (2 * g**2 + s * g**3)
    activations = X.clone()
    grads = torch.tensor([[[[0.25] * 2] * 2, [[-0.25] * 2] * 2]])
    weights = camlib.grad_cam_plusplus.grad_cam_plusplus_weights(activations, grads)
    np.testing.assert_allclose(weights.numpy(), [[4 * g * alpha, 0.0]], rtol=1e-5)


def test_fem_by_hand():
    # k = 1: channel 0 mean 2.5, std sqrt(1.25): threshold 3.618 -> only the 4 -> w0 = 1/4
    #        channel 1 mean 1,   std sqrt(3):    threshold 2.732 -> only the 4 -> w1 = 1/4
    # map = (A0 + A1) / 4 = [[5, 2], [3, 4]] / 4 -> min-max -> [[1, 0], [1/3, 2/3]]
    model = Golden().eval()
    maps = camlib.FEM(model, [model.act], k=1)(X)
    np.testing.assert_allclose(maps[0], [[1.0, 0.0], [1 / 3, 2 / 3]], atol=1e-6)


def test_eigencam_by_hand():
    # positions x channels, centred: rows (1,4),(2,0),(3,0),(4,0) minus (2.5, 1)
    centred = np.array([[1, 4], [2, 0], [3, 0], [4, 0]], dtype=np.float64) - [2.5, 1.0]
    cov = centred.T @ centred
    _, vecs = np.linalg.eigh(cov)
    projection = centred @ vecs[:, -1]
    if abs(projection.min()) > abs(projection.max()):
        projection = -projection
    expected = np.maximum(projection, 0)
    expected = (expected - expected.min()) / expected.max()
    model = Golden().eval()
    maps = camlib.EigenCAM(model, [model.act])(X)
    np.testing.assert_allclose(maps[0].ravel(), expected, atol=1e-5)


def test_top_class_is_the_default_target():
    model = Golden().eval()
    scores = model(X)[0]
    top = int(scores.argmax())
    default = camlib.GradCAM(model, [model.act])(X)
    explicit = camlib.GradCAM(model, [model.act])(X, [ClassifierOutputTarget(top)])
    np.testing.assert_allclose(default, explicit)


def test_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    cams = rng.random((3, 7, 5)).astype(np.float32)
    ours = scale_cam_image(cams, (23, 31))
    for cam, got in zip(cams, ours):
        scaled = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        np.testing.assert_allclose(got, cv2.resize(scaled, (23, 31)), atol=1e-5)
    # the tensor path gives the same numbers, on the tensor's device
    tensor = scale_cam_image(torch.from_numpy(cams), (23, 31))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), ours, atol=1e-6)
    # 3-D maps: (W, H, D) order, trilinear
    volume = scale_cam_image(rng.random((2, 3, 4, 5)).astype(np.float32), (10, 8, 6))
    assert volume.shape == (2, 6, 8, 10)
