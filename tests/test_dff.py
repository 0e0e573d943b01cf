"""Tests for camlib.feature_factorization: Deep Feature Factorization."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from torch import nn

from camlib.feature_factorization import DeepFeatureFactorization, dff, run_dff_on_image
from camlib.utils._display import create_labels_legend, show_factorization_on_image

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N_CLASSES = 5


class TinyNet(nn.Module):
    """Conv features (with BatchNorm, a stride and an inplace ReLU) and a linear head on pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, N_CLASSES)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.fail:
            raise RuntimeError("failure after the target layer")
        return self.head(self.dropout(x.mean(dim=(2, 3))))


def make_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        net.features[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def net() -> TinyNet:
    return make_net()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- dff()


def test_dff_matches_reference_and_does_not_mutate():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as reference_dff

    acts = np.random.default_rng(0).standard_normal((2, 6, 4, 5)).astype(np.float32)
    acts[0, 1, 2, 3] = np.nan
    before = acts.copy()
    concepts, explanations = dff(acts, n_components=3)
    np.testing.assert_array_equal(acts, before)  # NaN is still there: the input was not touched
    ref_concepts, ref_explanations = reference_dff(acts.copy(), n_components=3)
    assert concepts.shape == (6, 3) and explanations.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(concepts, ref_concepts, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(explanations, ref_explanations, rtol=1e-6, atol=1e-6)
    torch_concepts, torch_explanations = dff(torch.from_numpy(before), n_components=3)
    np.testing.assert_array_equal(torch_concepts, concepts)
    np.testing.assert_array_equal(torch_explanations, explanations)


def test_dff_golden_rank_one():
    # A[c, p] = w_c * m_p is exactly rank one and non-negative: one component recovers it.
    w = np.array([1.0, 2.0, 3.0])
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    acts = (w[:, None, None] * m)[None]
    concepts, explanations = dff(acts, n_components=1)
    np.testing.assert_allclose(concepts[:, 0] / concepts[0, 0], w, rtol=1e-3)
    np.testing.assert_allclose(concepts[:, 0, None, None] * explanations[0, 0], acts[0], atol=1e-3)


def test_dff_errors():
    with pytest.raises(TypeError, match="list"):
        dff([[1.0]])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        dff(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="n_components"):
        dff(np.ones((1, 3, 2, 2)), n_components=0)


# --------------------------------------------------------------------------- DeepFeatureFactorization


def test_matches_reference(net, images):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        DeepFeatureFactorization as Reference,
    )

    concepts, explanations, outputs = DeepFeatureFactorization(
        net, net.features[4], computation_on_concepts=net.head
    )(images, n_components=3)

    ref_net = copy.deepcopy(net)
    reference = Reference(ref_net, ref_net.features[4], computation_on_concepts=ref_net.head)
    try:
        ref_concepts, ref_explanations, ref_outputs = reference(images, n_components=3)
    finally:
        reference.activations_and_grads.release()

    assert concepts.shape == (8, 3) and outputs.shape == (3, N_CLASSES)
    assert isinstance(explanations, list) and len(explanations) == 2
    np.testing.assert_allclose(concepts, ref_concepts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs, ref_outputs, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(explanations, ref_explanations):
        assert ours.shape == theirs.shape == (3, 16, 16)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_token_layer_with_reshape_transform_matches_reference():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        DeepFeatureFactorization as Reference,
    )

    class Tokens(nn.Module):
        """Patchify to 4x4 tokens of 6 features, then a token-wise linear layer."""

        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 6, 4, stride=4)
            self.mix = nn.Linear(6, 6)

        def forward(self, x):
            return self.mix(self.patch(x).flatten(2).transpose(1, 2)).relu().mean(dim=1)

    def tokens_to_maps(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], 4, 4)

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(1, 3, 16, 16)
    concepts, explanations = DeepFeatureFactorization(model, model.mix, tokens_to_maps)(x, n_components=2)
    reference = Reference(model, model.mix, tokens_to_maps)
    try:
        ref_concepts, ref_explanations = reference(x, n_components=2)
    finally:
        reference.activations_and_grads.release()
    np.testing.assert_allclose(concepts, ref_concepts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(explanations[0], ref_explanations[0], rtol=0, atol=1e-4)


def test_golden_explanations():
    # The target layer scales a one-channel image m (min 0) by w: A = w (x) m, rank one, offset 0.
    # The single concept's heatmap, min-max scaled, is m / max(m); its embedding is proportional to w.
    layer = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1))
    model = nn.Sequential(layer)
    m = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 8.0]])
    concepts, explanations = DeepFeatureFactorization(model, layer)(m[None, None], n_components=1)
    np.testing.assert_allclose(explanations[0][0], (m / 8).numpy(), atol=1e-3)
    np.testing.assert_allclose(concepts[:, 0] / concepts[0, 0], [1.0, 2.0, 3.0], rtol=1e-3)


def test_two_separate_concepts_are_found():
    # Left half of the image activates channels (1, 0), right half channels (0, 1).
    layer = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    x = torch.zeros(1, 2, 4, 6)
    x[0, 0, :, :3] = 1.0
    x[0, 1, :, 3:] = 2.0
    _, explanations = DeepFeatureFactorization(nn.Sequential(layer), layer)(x, n_components=2)
    winner = explanations[0].argmax(axis=0)
    assert len(np.unique(winner[:, :3])) == 1 and len(np.unique(winner[:, 3:])) == 1
    assert winner[0, 0] != winner[0, 5]


# --------------------------------------------------------------------------- hygiene


def _snapshot(model: nn.Module):
    return [(name, module, module.training) for name, module in model.named_modules(remove_duplicate=False)]


def _assert_untouched(model: nn.Module, before, state_before) -> None:
    after = _snapshot(model)
    assert [(n, id(m), t) for n, m, t in after] == [(n, id(m), t) for n, m, t in before]
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {name}"
        assert not module._backward_hooks, f"backward hook left on {name}"
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name}.grad was written"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state_before[key], rtol=0, atol=0, msg=f"{key} changed")


def test_model_untouched_after_call(net, images):
    net.train()
    net.features[1].eval()
    before, state = _snapshot(net), copy.deepcopy(net.state_dict())
    first = DeepFeatureFactorization(net, net.features[4], computation_on_concepts=net.head)(images, 2)
    _assert_untouched(net, before, state)
    # The model ran in eval mode (dropout off, BatchNorm statistics used and not updated): repeatable.
    second = DeepFeatureFactorization(net, net.features[4], computation_on_concepts=net.head)(images, 2)
    np.testing.assert_array_equal(first[2], second[2])


def test_model_untouched_after_exception(net, images):
    net.train()
    before, state = _snapshot(net), copy.deepcopy(net.state_dict())
    net.fail = True
    with pytest.raises(RuntimeError, match="failure after the target layer"):
        DeepFeatureFactorization(net, net.features[4])(images)
    net.fail = False
    _assert_untouched(net, before, state)

    def broken_transform(tensor):
        raise KeyError("transform failed")

    with pytest.raises(KeyError, match="transform failed"):
        DeepFeatureFactorization(net, net.features[4], reshape_transform=broken_transform)(images)
    _assert_untouched(net, before, state)


def test_computation_on_concepts_flags_restored(net, images):
    head = nn.Sequential(nn.Dropout(0.9), nn.Linear(8, 3)).train()
    method = DeepFeatureFactorization(net, net.features[4], computation_on_concepts=head)
    _, _, first = method(images, 2)
    _, _, second = method(images, 2)
    np.testing.assert_array_equal(first, second)  # dropout was off during the call
    assert head.training and head[0].training


def test_context_manager_does_not_swallow(net, images):
    with DeepFeatureFactorization(net, net.features[4]) as method:
        concepts, explanations = method(images, 2)
    assert concepts.shape == (8, 2) and len(explanations) == 2
    with pytest.raises(ZeroDivisionError), DeepFeatureFactorization(net, net.features[4]):
        _ = 1 / 0


def test_errors(net, images):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        DeepFeatureFactorization(net, "features.4")
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        DeepFeatureFactorization(net, net.features[4])(images.numpy())
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        DeepFeatureFactorization(net, net.features[4])(images[0])
    with pytest.raises(ValueError, match="not called during the forward pass"):
        DeepFeatureFactorization(net, nn.Conv2d(3, 3, 1))(images)
    with pytest.raises(ValueError, match="reshape_transform"):
        DeepFeatureFactorization(net, net.head)(images)
    with pytest.raises(ValueError, match="n_components"):
        DeepFeatureFactorization(net, net.features[4])(images, n_components=-1)
    for name, module in net.named_modules():
        assert not module._forward_hooks, f"hook left on {name}"


# --------------------------------------------------------------------------- run_dff_on_image


def _labelled_net() -> TinyNet:
    net = make_net()
    net.config = types.SimpleNamespace(id2label={i: f"class{i}, alias" for i in range(N_CLASSES)})
    return net


def test_run_dff_on_image_layout(images):
    from PIL import Image

    net = _labelled_net()
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = run_dff_on_image(net, net.features[4], net.head, Image.fromarray(rgb), images[0], n_components=3)
    assert out.shape == (16, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :16], rgb)

    _, explanations, scores = DeepFeatureFactorization(
        net, net.features[4], computation_on_concepts=net.head
    )(images[:1], 3)
    labels = create_labels_legend(
        torch.softmax(torch.from_numpy(scores), dim=-1).numpy(), net.config.id2label
    )
    expected = show_factorization_on_image(
        rgb / 255, explanations[0], image_weight=0.3, concept_labels=labels
    )
    np.testing.assert_array_equal(out[:, 16:], expected)

    # labels= replaces config.id2label; a numpy image works as well as a PIL one.
    plain = make_net()
    names = [f"class{i}, alias" for i in range(N_CLASSES)]
    out2 = run_dff_on_image(
        plain, plain.features[4], plain.head, rgb, images[0], n_components=3, labels=names
    )
    np.testing.assert_array_equal(out2, out)


@pytest.mark.filterwarnings("ignore:Tight layout not applied")
def test_run_dff_on_image_matches_reference_left_part(images, monkeypatch):
    pytest.importorskip("pytorch_grad_cam")
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        run_dff_on_image as reference_run,
    )

    monkeypatch.setattr(matplotlib.cm, "get_cmap", matplotlib.colormaps.get_cmap, raising=False)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    net = _labelled_net()
    ours = run_dff_on_image(net, net.features[4], net.head, Image.fromarray(rgb), images[0], None, 3)
    ref_net = _labelled_net()
    theirs = reference_run(
        ref_net, ref_net.features[4], ref_net.head, Image.fromarray(rgb), images[0], None, 3
    )
    assert ours.shape == theirs.shape
    # Image and coloured concepts agree (up to 1 grey level from float rounding); the legend is drawn differently.
    diff = np.abs(ours[:, :32].astype(int) - theirs[:, :32].astype(int))
    assert diff.max() <= 1


def test_run_dff_on_image_errors(images):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    plain = make_net()
    with pytest.raises(ValueError, match="labels="):
        run_dff_on_image(plain, plain.features[4], plain.head, rgb, images[0])
    net = _labelled_net()
    with pytest.raises(ValueError, match="same pixels"):
        run_dff_on_image(net, net.features[4], net.head, np.zeros((8, 16, 3), np.uint8), images[0])
    with pytest.raises(ValueError, match="RGB"):
        run_dff_on_image(net, net.features[4], net.head, np.zeros((16, 16), np.uint8), images[0])


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(images):
    cpu_net = make_net()
    cpu = DeepFeatureFactorization(cpu_net, cpu_net.features[4], computation_on_concepts=cpu_net.head)
    cuda_net = make_net().cuda()
    cuda = DeepFeatureFactorization(cuda_net, cuda_net.features[4], computation_on_concepts=cuda_net.head)
    cpu_out = cpu(images, 3)
    cuda_out = cuda(images, 3)  # a CPU input is moved to the model's device
    np.testing.assert_allclose(cuda_out[0], cpu_out[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(cuda_out[2], cpu_out[2], rtol=1e-3, atol=1e-3)
