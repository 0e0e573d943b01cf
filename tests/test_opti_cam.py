"""OptiCAM: each image's optimisation is independent of the other images of the batch."""

from __future__ import annotations

import numpy as np
import torch
from conftest import assert_model_untouched, model_snapshot

from camlib import OptiCAM
from camlib.utils.model_targets import ClassifierOutputTarget


class BatchCoupled(torch.nn.Module):
    """A tiny CNN whose forward pass depends slightly on the other images of the batch (a stand-in for
    the rounding of batched convolutions, which 50 Adam steps amplify to ~1e-2 on resnet18)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = x + 1e-3 * x.mean(dim=0, keepdim=True)  # couples the images of a batch
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_batch_maps_equal_single_image_maps_at_default_iterations():
    model = BatchCoupled().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = [ClassifierOutputTarget(c) for c in (0, 1, 3)]
    before = model_snapshot(model)
    cam = OptiCAM(model, [model.conv2], progress=False)
    assert cam.iterations == 50
    batch = cam(x, targets)
    single = np.stack([OptiCAM(model, [model.conv2], progress=False)(x[i : i + 1], [targets[i]])[0] for i in range(3)])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    assert (batch.reshape(3, -1).max(axis=1) > 0.99).all()
    assert_model_untouched(model, before)
