"""AblationCAM and the ablation layers: parity with pytorch-grad-cam, the split and full-model
paths, 5-D input, detection-style outputs, hygiene of the model, progress bars."""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot, optional

from camlib.ablation_cam import AblationCAM, split_after_layer
from camlib.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from camlib.base_cam import BaseCAM
from camlib.utils.model_targets import ClassifierOutputTarget

ref = optional("pytorch_grad_cam")
ref_layers = optional("pytorch_grad_cam.ablation_layer")
ref_reshapes = optional("pytorch_grad_cam.utils.reshape_transforms")


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model


class Tiny3D(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(4, 6, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _targets(*classes):
    return [ClassifierOutputTarget(c) for c in classes]


def _reference(model, layers, x, classes, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ref.AblationCAM(model, layers, **kwargs) as cam:
            return cam(x, [ref.utils.model_targets.ClassifierOutputTarget(c) for c in classes])


def _ours(model, layers, x, classes, split=True, **kwargs):
    with AblationCAM(model, layers, progress=False, **kwargs) as cam:
        cam.split_model = split
        maps = cam(x, _targets(*classes))
    return maps, cam.last_paths


# -- parity with pytorch-grad-cam ------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch",
    [
        # resnet18 at 33x33 still has a 2x2 layer4 (and the reference runs 1024 full forwards)
        ("resnet18", _resnet18, lambda m: [m.layer4[-1]], (2, 3, 33, 33), (3, 7)),
        ("tiny_cnn", lambda: TinyCNN().eval(), lambda m: [m.features[-1]], (3, 3, 16, 16), (0, 2, 4)),
    ],
    ids=lambda a: a[0],
)
def test_parity_with_reference(arch):
    _, build, layers_of, shape, classes = arch
    model = build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours, paths = _ours(model, layers_of(model), x, classes)
    expected = _reference(model, layers_of(model), x, classes)
    assert paths == ["split"]
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_parity_ratio_channels_to_ablate():
    """Channel selection with ratio < 1 (on a conv output, whose channel scores have no ties)."""
    model = TinyCNN().eval()
    layers = [model.features[4]]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for ratio in (0.25, 0.5):
        ours, _ = _ours(model, layers, x, (1, 3), ratio_channels_to_ablate=ratio)
        expected = _reference(model, layers, x, (1, 3), ratio_channels_to_ablate=ratio)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_parity_vit_tokens():
    """Token outputs [B, N, C]: the default layer ablates the last dim, like AblationLayerVit."""
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = _reference(
        model,
        [model.encoder.layers[-1]],
        x,
        (1, 4),
        reshape_transform=functools.partial(ref_reshapes.vit_reshape_transform, height=4, width=4),
        ablation_layer=ref_layers.AblationLayerVit(),
    )
    ours, paths = _ours(model, [model.encoder.layers[-1]], x, (1, 4))
    assert paths == ["split"]
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    explicit, _ = _ours(model, [model.encoder.layers[-1]], x, (1, 4), ablation_layer=AblationLayerVit())
    np.testing.assert_allclose(explicit, ours, atol=1e-6)


def test_selection_matches_reference():
    """activations_to_be_ablated picks the same channels (as a set) on tie-free activations."""
    acts = torch.rand(64, 5, 5, generator=torch.Generator().manual_seed(4))
    for ratio in (0.1, 0.3, 0.5, 1.0):
        expected = ref_layers.AblationLayer().activations_to_be_ablated(acts.numpy(), ratio)
        got = AblationLayer().activations_to_be_ablated(acts, ratio)
        assert set(got.tolist()) == set(np.asarray(expected).tolist())
    # ratio > 0.5: every channel at most once (the reference lists some twice)
    got = AblationLayer().activations_to_be_ablated(acts, 0.75)
    assert got.tolist() == list(range(64))


# -- ablation layers -------------------------------------------------------------------------------------
def test_layer_matches_reference_protocol():
    acts = torch.relu(torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(5)))
    indices = np.array([5, 0, 3], dtype=np.int32)
    reference = ref_layers.AblationLayer()
    reference.indices = indices
    reference.set_next_batch(input_batch_index=1, activations=acts, num_channels_to_ablate=3)
    expected = reference(None)
    ours = AblationLayer()
    ours.indices = indices
    ours.set_next_batch(input_batch_index=1, activations=acts, num_channels_to_ablate=3)
    torch.testing.assert_close(ours(None), expected)
    torch.testing.assert_close(AblationLayer().ablated_batch(acts, 1, torch.tensor([5, 0, 3])), expected)


def test_negative_minimum_uses_one_value_for_every_copy():
    """Deliberate deviation: pytorch-grad-cam lowers the value by 1e7 for each further copy."""
    acts = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(6))
    out = AblationLayer().ablate(acts, [0, 1, 2, 3])
    value = acts.min() - 1e7
    for i in range(4):
        assert torch.all(out[i, i] == value)
        others = [c for c in range(4) if c != i]
        torch.testing.assert_close(out[i, others], acts[0, others])


def test_vit_layer_matches_reference():
    tokens = torch.relu(torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(7)))
    indices = np.array([7, 1], dtype=np.int32)
    reference = ref_layers.AblationLayerVit()
    reference.indices = indices
    reference.set_next_batch(input_batch_index=0, activations=tokens, num_channels_to_ablate=2)
    torch.testing.assert_close(
        AblationLayerVit().ablated_batch(tokens, 0, torch.tensor([7, 1])), reference(None)
    )


def test_fasterrcnn_layer_matches_reference():
    generator = torch.Generator().manual_seed(8)
    keys = ["0", "1", "2", "3", "pool"]
    fpn = OrderedDict(
        (k, torch.randn(2, 256, 4 >> min(i, 2), 4 >> min(i, 2), generator=generator))
        for i, k in enumerate(keys)
    )
    indices = np.array([0, 300, 700, 1100, 1279, 255], dtype=np.int32)
    reference = ref_layers.AblationLayerFasterRCNN()
    reference.indices = indices
    reference.set_next_batch(input_batch_index=1, activations=fpn, num_channels_to_ablate=len(indices))
    expected = reference(None)
    got = AblationLayerFasterRCNN().ablated_batch(fpn, 1, torch.as_tensor(indices))
    assert list(got) == keys
    for key in keys:
        torch.testing.assert_close(got[key], expected[key])
    assert AblationLayerFasterRCNN().num_channels(fpn) == 1280


def test_default_ablation_layer_is_not_shared():
    model = TinyCNN().eval()
    first = AblationCAM(model, [model.features[-1]])
    second = AblationCAM(model, [model.features[-1]])
    assert isinstance(first.ablation_layer, AblationLayer)
    assert first.ablation_layer is not second.ablation_layer


def test_subclass_in_reference_style_is_used():
    """A pytorch-grad-cam style subclass (own set_next_batch / __call__ state) still works."""

    class ZeroOut(AblationLayer):
        calls = 0

        def __call__(self, x):
            type(self).calls += 1
            output = self.activations
            for i in range(output.size(0)):
                output[i, self.indices[i], :] = 0
            return output

    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    default, _ = _ours(model, [model.features[-1]], x, (1, 2))  # ReLU output: ablation value 0 too
    custom, _ = _ours(model, [model.features[-1]], x, (1, 2), ablation_layer=ZeroOut(), batch_size=5)
    assert ZeroOut.calls > 0
    np.testing.assert_allclose(custom, default, atol=1e-6)


def test_subclass_overriding_ablation_value():
    class Mean(AblationLayer):
        def ablation_value(self, activations):
            return activations.mean()

    acts = torch.rand(1, 3, 2, 2)
    out = Mean().ablate(acts, [1])
    assert torch.allclose(out[0, 1], acts.mean().expand(2, 2))


# -- the split and the full-model path -------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        ("resnet18", _resnet18, lambda m: [m.layer4[-1]], (2, 3, 33, 33)),
        (
            "tiny_cnn_two_layers",
            lambda: TinyCNN().eval(),
            lambda m: [m.features[2], m.features[-1]],
            (2, 3, 16, 16),
        ),
        ("tiny_3d", lambda: Tiny3D().eval(), lambda m: [m.features[-1]], (2, 1, 4, 6, 6)),
        ("vit", _tiny_vit, lambda m: [m.encoder.layers[-1]], (2, 3, 32, 32)),
        # inside residual blocks: the part after the layer also needs the block's input
        ("resnet18_bn2", _resnet18, lambda m: [m.layer4[-1].bn2], (2, 3, 33, 33)),
        ("vit_ln_1", _tiny_vit, lambda m: [m.encoder.layers[-1].ln_1], (2, 3, 32, 32)),
    ],
    ids=lambda c: c[0],
)
def test_split_and_full_model_agree(case):
    name, build, layers_of, shape = case
    model = build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(10))
    # fewer channels on resnet18, where the full path runs the whole network per channel
    kwargs = {"ratio_channels_to_ablate": 0.02} if name.startswith("resnet18") else {}
    kwargs["batch_size"] = 7  # chunks that do not divide the channels
    split, split_paths = _ours(model, layers_of(model), x, (0, 2), **kwargs)
    full, full_paths = _ours(model, layers_of(model), x, (0, 2), split=False, **kwargs)
    assert set(split_paths) == {"split"} and set(full_paths) == {"full"}
    np.testing.assert_allclose(split, full, atol=1e-5)


def test_split_after_layer():
    model = _resnet18()
    before = model_snapshot(model)
    assert split_after_layer(model, model) is None
    # after layer4[-1]: pooling and the classifier, nothing else from before
    split = split_after_layer(model, model.layer4[-1])
    assert split is not None and split.prefix is None
    x = torch.randn(1, 512, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(split.rest(x), model.fc(torch.flatten(model.avgpool(x), 1)))
    # inside a residual block: the block's input is a side value
    split = split_after_layer(model, model.layer4[-1].conv1)
    assert split is not None and split.prefix is not None
    image = torch.randn(2, 3, 33, 33)
    captured = {}
    handle = model.layer4[-1].conv1.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    try:
        with torch.no_grad():
            expected = model(image)
    finally:
        handle.remove()
    with torch.no_grad():
        side = split.prefix(image)
        torch.testing.assert_close(split.rest(captured["out"], *side), expected)
    assert_model_untouched(model, before)


def test_tracing_undoes_forward_side_effects():
    """A forward that sets attributes would leave fx Proxies on the model while traced."""

    class Counting(TinyCNN):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):
            self.seen += x.shape[0]
            return super().forward(x)

    model = Counting().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(16))
    _, paths = _ours(model, [model.features[-1]], x, (0, 1))
    assert paths == ["split"]
    assert type(model.seen) is int and model.seen == 2  # the one real forward pass


def test_untraceable_model_takes_full_path():
    class DataDependent(TinyCNN):
        def forward(self, x):
            features = self.features(x)
            if features.sum() > -1:  # a Python branch on a tensor: torch.fx cannot trace it
                features = features * 1.0
            return self.fc(torch.flatten(self.pool(features), 1))

    model = DataDependent().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    maps, paths = _ours(model, [model.features[-1]], x, (0, 1))
    assert paths == ["full"]
    expected = _reference(model, [model.features[-1]], x, (0, 1))
    np.testing.assert_allclose(maps, expected, atol=1e-4)


# -- 5-D input ---------------------------------------------------------------------------------------------
class _SlowAblationCAM(BaseCAM):
    """The textbook algorithm, one full forward per (image, channel), for comparison."""

    uses_gradients = False

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        batch, channels = activations.shape[:2]
        weights = torch.zeros(batch, channels)
        for b in range(batch):
            x = input_tensor[b : b + 1]
            with torch.no_grad():
                original = float(targets[b](self.model(x)[0]))
            for c in range(channels):

                def ablate(module, args, output, c=c):
                    low = output.min()
                    output = output.clone()
                    output[:, c] = 0.0 if low == 0 else low - 1e7
                    return output

                handle = target_layer.register_forward_hook(ablate)
                try:
                    with torch.no_grad():
                        score = float(targets[b](self.model(x)[0]))
                finally:
                    handle.remove()
                weights[b, c] = (original - score) / original
        return weights


def test_5d_matches_straightforward_implementation():
    model = Tiny3D().eval()
    x = torch.randn(2, 1, 4, 6, 6, generator=torch.Generator().manual_seed(13))
    layers = [model.features[-1]]
    with AblationCAM(model, layers, progress=False, batch_size=4) as cam:
        maps = cam(x, _targets(0, 2))
    assert cam.last_paths == ["split"]
    assert maps.shape == (2, 4, 6, 6) and maps.dtype == np.float32
    expected = _SlowAblationCAM(model, layers)(x, _targets(0, 2))
    np.testing.assert_allclose(maps, expected, atol=1e-5)


# -- detection-style outputs (dict of feature maps, list of dicts out) -------------------------------------------
class TinyDetector(torch.nn.Module):
    """A backbone returning an FPN-like dict of feature maps, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.backbone = _FPN()
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        features = self.backbone(torch.relu(self.stem(x)))
        pooled = torch.cat([features["0"].mean(dim=(2, 3)), features["pool"].mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


class ListDetector(TinyDetector):
    """The same, returning one dict per image like torchvision's detectors (not traceable)."""

    def forward(self, x):
        return [{"scores": s} for s in super().forward(x)]


class _FPN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.c1 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        level0 = self.c0(x)
        return OrderedDict([("0", level0), ("pool", self.c1(level0))])


def _fpn_transform(features):
    size = features["pool"].shape[-2:]
    return torch.cat(
        [torch.nn.functional.interpolate(f.abs(), size, mode="bilinear") for f in features.values()], 1
    )


class _ScoreOf:
    def __init__(self, k):
        self.k = k

    def __call__(self, output):
        return output["scores"][self.k]


def test_dict_activations():
    """A dict-valued target layer: split and full paths agree, list-of-dict outputs work."""
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(14))
    results = {}
    for name, model, targets, split in [
        ("split", TinyDetector().eval(), _targets(0, 2), True),
        ("full", TinyDetector().eval(), _targets(0, 2), False),
        ("list", ListDetector().eval(), [_ScoreOf(0), _ScoreOf(2)], True),
    ]:
        with AblationCAM(
            model, [model.backbone], _fpn_transform, ablation_layer=AblationLayerFasterRCNN(), progress=False
        ) as cam:
            cam.split_model = split
            results[name] = cam(x, targets)
        assert cam.last_paths == ["split" if name == "split" else "full"]
    assert results["split"].shape == (2, 8, 8)
    np.testing.assert_allclose(results["split"], results["full"], atol=1e-5)
    np.testing.assert_allclose(results["list"], results["full"], atol=1e-5)


def test_torchvision_faster_rcnn_runs():
    """The real detector (random weights, small sizes), a few FPN channels."""
    from camlib.utils.model_targets import FasterRCNNBoxScoreTarget
    from camlib.utils.reshape_transforms import fasterrcnn_reshape_transform

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        min_size=64,
        max_size=64,
        rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_test=10,
        box_score_thresh=0.0,
        box_detections_per_img=3,
    ).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        detections = model(x)[0]
    targets = [FasterRCNNBoxScoreTarget(detections["labels"][:1], detections["boxes"][:1])]
    before = model_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AblationCAM(
            model,
            [model.backbone],
            reshape_transform=fasterrcnn_reshape_transform,
            ablation_layer=AblationLayerFasterRCNN(),
            ratio_channels_to_ablate=0.002,  # 2 of the 768 FPN channels (1 high- and 1 low-scoring)
            batch_size=1,  # the batch shape already run: no new oneDNN kernels to build
            progress=False,
        ) as cam:
            maps = cam(x, targets)
    assert cam.last_paths == ["full"]
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()
    assert_model_untouched(model, before)


# -- hygiene ----------------------------------------------------------------------------------------------
class _Boom:
    """A target that raises after ``after`` calls."""

    def __init__(self, after):
        self.after = after
        self.calls = 0

    def __call__(self, output):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return output[0]


@pytest.mark.parametrize("split", [True, False], ids=["split", "full"])
def test_model_untouched(split):
    model = TinyCNN()
    model.train()
    model.features[1].eval()  # mixed flags must come back as they were
    x = torch.randn(2, 3, 16, 16)
    before = model_snapshot(model)
    layer = model.features[-1]
    with AblationCAM(model, [layer], progress=False, batch_size=4) as cam:
        cam.split_model = split
        cam(x, _targets(0, 1))
        assert_model_untouched(model, before)
        with pytest.raises(RuntimeError, match="boom"):
            cam(x, [_Boom(after=5), _Boom(after=5)])
    assert cam.last_paths == ["split" if split else "full"]
    assert_model_untouched(model, before)
    assert hooks_left(model) == 0
    assert model.features[-1] is layer


# -- errors and edge cases ---------------------------------------------------------------------------------
def test_errors():
    model = TinyCNN().eval()
    layers = [model.features[-1]]
    with pytest.raises(ValueError, match="ratio_channels_to_ablate"):
        AblationCAM(model, layers, ratio_channels_to_ablate=0.0)
    with pytest.raises(ValueError, match="ratio_channels_to_ablate"):
        AblationCAM(model, layers, ratio_channels_to_ablate=1.5)
    with pytest.raises(TypeError, match="ablation_layer"):
        AblationCAM(model, layers, ablation_layer="zero")
    with pytest.raises(ValueError, match="batch_size"):
        AblationCAM(model, layers, batch_size=0)
    vit = _tiny_vit()
    with pytest.raises(ValueError, match="AblationLayerVit"):
        AblationCAM(vit, [vit.encoder.layers[-1]], ablation_layer=AblationLayer(), progress=False)(
            torch.randn(1, 3, 32, 32)
        )


def test_zero_original_score_warns():
    model = TinyCNN().eval()
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.zeros_(model.fc.bias)
    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match="exactly 0"):
        maps, _ = _ours(model, [model.features[-1]], x, (0,))
    assert np.isfinite(maps).all()


# -- progress bars --------------------------------------------------------------------------------------
def test_progress_bar_switches(capsys, monkeypatch):
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    layers = [model.features[-1]]
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS", raising=False)
    AblationCAM(model, layers, progress=True)(x)
    assert "AblationCAM" in capsys.readouterr().err
    AblationCAM(model, layers, progress=False)(x)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")
    AblationCAM(model, layers)(x)
    assert capsys.readouterr().err == ""
