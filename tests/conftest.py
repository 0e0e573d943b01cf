"""Shared fixtures: offline models (tiny seeded nets, torchvision with weights=None) and helpers."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torchvision

os.environ.setdefault("CAMLIB_DISABLE_PROGRESS", "1")
# one thread per pytest-xdist worker, else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


class TinyCNN(torch.nn.Module):
    """Two conv blocks, global average pooling, linear head: small and seeded."""

    def __init__(self, num_classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(inplace=True),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(inplace=True),
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, num_classes)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                torch.nn.init.uniform_(module.bias, -0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Tiny3D(torch.nn.Module):
    """A small 3-D conv net (volumes or clips), seeded."""

    def __init__(self, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1),
            torch.nn.BatchNorm3d(4),
            torch.nn.ReLU(),
            torch.nn.Conv3d(4, 8, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _vit():
    model = torchvision.models.vit_b_16(weights=None, image_size=32)
    # torchvision zero-initialises the head; give it weights so gradients flow.
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _seeded(factory):
    def build():
        torch.manual_seed(0)
        return factory().eval()

    return build


#: name -> (factory, target layers, input shape, number of classes)
ARCHS = {
    "tiny_cnn": (_seeded(TinyCNN), lambda m: [m.features[-1]], (2, 3, 16, 16), 5),
    "resnet18": (_seeded(lambda: torchvision.models.resnet18(weights=None)), lambda m: [m.layer4[-1]], (2, 3, 64, 64), 1000),
    "vgg11": (_seeded(lambda: torchvision.models.vgg11(weights=None)), lambda m: [m.features[-2]], (2, 3, 64, 64), 1000),
    "densenet121": (
        _seeded(lambda: torchvision.models.densenet121(weights=None)),
        lambda m: [m.features.denseblock2],
        (2, 3, 64, 64),
        1000,
    ),
    "mobilenet_v3_small": (
        _seeded(lambda: torchvision.models.mobilenet_v3_small(weights=None)),
        lambda m: [m.features[-1]],
        (2, 3, 64, 64),
        1000,
    ),
    "vit_b_16": (_seeded(_vit), lambda m: [m.encoder.layers[-2].ln_1], (2, 3, 32, 32), 1000),
    "swin_t": (_seeded(lambda: torchvision.models.swin_t(weights=None)), lambda m: [m.features[-1][-1].norm1], (2, 3, 64, 64), 1000),
    "tiny_3d": (_seeded(Tiny3D), lambda m: [m.features[-1]], (2, 1, 6, 10, 10), 3),
}


class OptionalModule:
    """An optional package (an oracle such as grad-cam, or timm/transformers), imported on first use.

    A test that uses it skips at that point when the package is missing, so only the assertions that
    need it skip, never a whole file of camlib's own tests.
    """

    def __init__(self, name: str, reason: str = "") -> None:
        self._name = name
        self._reason = reason or f"needs the optional package {name!r} (in the test extra)"

    @property
    def __name__(self) -> str:
        return self._name

    def load(self):
        """The module itself (skips the calling test when it is missing)."""
        return pytest.importorskip(self._name, reason=self._reason)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)


def optional(name: str, reason: str = "") -> OptionalModule:
    """``pytest.importorskip`` deferred to the first attribute access, inside a test."""
    return OptionalModule(name, reason)


@functools.cache
def get_model(name: str) -> torch.nn.Module:
    """Build (once per session) the model called ``name`` in ARCHS."""
    return ARCHS[name][0]()


def make_input(name: str, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(ARCHS[name][2], generator=generator)


def model_snapshot(model: torch.nn.Module) -> dict:
    """Everything a CAM call must leave untouched."""
    return {
        "modules": [(name, id(module)) for name, module in model.named_modules()],
        "training": [module.training for module in model.modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def hooks_left(model: torch.nn.Module) -> int:
    count = 0
    for module in model.modules():
        count += len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        count += len(getattr(module, "_backward_pre_hooks", {}))
    return count


def assert_model_untouched(model: torch.nn.Module, before: dict) -> None:
    after = model_snapshot(model)
    assert after["modules"] == before["modules"], "modules were replaced"
    assert after["training"] == before["training"], "training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    assert after["grads"] == before["grads"], "parameters' .grad was written"
    assert after["inplace"] == before["inplace"], "inplace flags changed"
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"state_dict entry {key} changed"
    assert hooks_left(model) == 0, "hooks were left on the model"


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return TinyCNN().eval()


@pytest.fixture
def tiny_3d() -> Tiny3D:
    return Tiny3D().eval()
