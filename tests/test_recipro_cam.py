"""ReciproCAM: golden values on hand-set tiny models, its copies, paths, precision and bad input."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TinyCNN, assert_model_untouched, model_snapshot
from torchvision.models.vision_transformer import EncoderBlock

from camlib import ReciproCAM
from camlib.recipro_cam import position_masks, reciprocal_copies
from camlib.registry import get_method
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.reshape_transforms import tokens_to_grid
from camlib.utils.tail_scoring import class_probabilities


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
WINDOW = {0: 0.25, 1: 0.125, 2: 0.0625}  # 3x3 Gaussian by |di| + |dj| (corners 1/16)


def _minmax(a):
    return (a - a.min()) / (a.max() - a.min())


def _recipro_by_hand(x, category, gaussian=True, softmax=True):
    """The map of ConvGapLinear written out with loops, as the authors build their copies: the feature
    vector at (i, j) spread over its 3x3 neighbourhood with the Gaussian weights (or kept at (i, j) only),
    mean over the grid, linear layer, softmax."""
    w, b = np.array(W), np.array(B)
    a = x[0].numpy()
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            kept = np.zeros_like(a)
            for u in range(3):
                for v in range(3):
                    if gaussian and abs(u - i) <= 1 and abs(v - j) <= 1:
                        kept[:, u, v] = a[:, i, j] * WINDOW[abs(u - i) + abs(v - j)]
                    elif not gaussian and (u, v) == (i, j):
                        kept[:, u, v] = a[:, i, j]
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


def test_copies_spread_the_centre_feature():
    """Copy p holds A[:, p] times the window around p: not the neighbours' own features."""
    a = torch.arange(18.0).reshape(1, 2, 3, 3)
    copies = reciprocal_copies(a, (1, 2, 3, 3), 0, position_masks((3, 3))[[0, 4]], torch.tensor([0, 4]))
    np.testing.assert_allclose(copies[0, 1].numpy(), 9.0 * np.array([[1 / 4, 1 / 8, 0], [1 / 8, 1 / 16, 0], [0, 0, 0]]))
    np.testing.assert_allclose(copies[1, 0].numpy(), 4.0 * position_masks((3, 3))[4].numpy())
    last = reciprocal_copies(a.permute(0, 2, 3, 1), (1, 2, 3, 3), 0, position_masks((3, 3))[[4]], torch.tensor([4]))
    assert torch.equal(last.permute(0, 3, 1, 2), copies[1:])  # channels last: the same copy


def test_golden_numbers_point_kernel_raw_scores():
    """Written out: class 0 scores w0 . A[:, p] / 9 + b0 = (ch0 - ch1) / 9 + 0.1, so the map is the
    min-max of ch0 - ch1 = [[1, -1, 2], [-1.5, 3, 0], [-1, 0.5, -4]]: (v + 4) / 7."""
    model = ConvGapLinear(W, B).eval()
    with ReciproCAM(model, [model.conv], kernel="point", softmax=False, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(0)])[0]
    expected = np.array([[5, 3, 6], [2.5, 7, 4], [3, 4.5, 0]]) / 7
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "point"])
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("category", [0, 1])
def test_golden_maps(kernel, softmax, category):
    model = ConvGapLinear(W, B).eval()
    expected = _minmax(_recipro_by_hand(X, category, kernel == "gaussian", softmax))
    with ReciproCAM(model, [model.conv], kernel=kernel, softmax=softmax, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
    assert cam.last_paths == ["split"]
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_golden_map_can_fail():
    """The hand computation tells the kernels and the softmax apart, so the golden test above can fail."""
    gaussian = _minmax(_recipro_by_hand(X, 1, True, True))
    assert np.abs(gaussian - _minmax(_recipro_by_hand(X, 1, False, True))).max() > 0.05
    assert np.abs(gaussian - _minmax(_recipro_by_hand(X, 1, True, False))).max() > 0.05


def test_full_model_path_agrees():
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


def test_tokens_keep_prefix_tokens():
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


GAUSSIAN_3X3 = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


def test_token_copies_keep_each_token_own_feature():
    """Tokens (ViT-ReciproCAM): copy p holds each neighbour's own feature times the window around p, the
    class token unchanged; a feature map (Recipro-CAM) spreads the centre feature instead."""
    tokens = torch.arange(20.0).reshape(1, 10, 2)  # class token + a 3x3 grid, 2 channels
    masks = position_masks((3, 3))
    copies = reciprocal_copies(tokens, (1, 2, 3, 3), 0, masks[[0, 4]], torch.tensor([0, 4]))
    assert copies.shape == (2, 10, 2)
    assert torch.equal(copies[:, 0], tokens[0, :1].expand(2, -1))
    grid = tokens[0, 1:].reshape(3, 3, 2)
    for copy_index, window in ((0, masks[0]), (1, masks[4])):
        expected = grid * window[..., None]
        np.testing.assert_allclose(copies[copy_index, 1:].reshape(3, 3, 2).numpy(), expected.numpy())
    by_hand = [[0.75, 0.625, 0], [1.125, 0.6875, 0], [0, 0, 0]]  # channel 1 of tokens 1..9 is 3, 5, 7, ...
    np.testing.assert_allclose(copies[0, 1:, 1].reshape(3, 3).numpy(), by_hand)
    point_mask = position_masks((3, 3), "point")[[5]]
    point = reciprocal_copies(tokens, (1, 2, 3, 3), 0, point_mask, torch.tensor([5]))
    assert torch.equal(point[0, 6], tokens[0, 6])
    assert float(point[0, 1:].abs().sum()) == float(tokens[0, 6].sum())


def _vit_reciprocam_by_hand(
    model, layer, x, prefix, kernel="gaussian", kept_prefix=None, spread_centre=False
):
    """ViT-ReciproCAM written out as sybyun/vitcam's ``src/vit_recipro_cam.py`` does it, one image and one
    grid position at a time: a hook replaces the layer's output by the masked tokens (the grid tokens of the
    3x3 neighbourhood, each its own feature times the Gaussian weight, the prefix tokens kept) and the rest of
    the model runs; the map is the softmax probability of the unmasked image's top class, min-max scaled and
    resized to the input. ``kept_prefix`` (how many prefix tokens to keep, the rest zeroed) and
    ``spread_centre`` (the centre token's feature under the window, as for feature maps) build wrong variants."""
    kept_prefix = prefix if kept_prefix is None else kept_prefix
    maps = []
    with torch.no_grad():
        for image in x.split(1):
            seen = []
            handle = layer.register_forward_hook(lambda module, inputs, output, s=seen: s.append(output))
            try:
                category = int(model(image).argmax(dim=1))
            finally:
                handle.remove()
            tokens = seen[0][0]
            side = math.isqrt(tokens.shape[0] - prefix)
            grid = tokens[prefix:].reshape(side, side, -1)
            scores = torch.zeros(side, side)
            for i in range(side):
                for j in range(side):
                    masked = torch.zeros_like(tokens)
                    masked[:kept_prefix] = tokens[:kept_prefix]
                    for u in range(max(i - 1, 0), min(i + 2, side)):
                        for v in range(max(j - 1, 0), min(j + 2, side)):
                            if kernel == "point" and (u, v) != (i, j):
                                continue
                            weight = 1.0 if kernel == "point" else GAUSSIAN_3X3[u - i + 1][v - j + 1]
                            feature = grid[i, j] if spread_centre else grid[u, v]
                            masked[prefix + u * side + v] = weight * feature
                    handle = layer.register_forward_hook(lambda module, inputs, output, m=masked: m[None])
                    try:
                        scores[i, j] = torch.softmax(model(image), dim=1)[0, category]
                    finally:
                        handle.remove()
            assert float(scores.max() - scores.min()) > 0.01  # a map worth comparing to 1e-5
            scaled = (scores - scores.min()) / (scores.max() - scores.min())
            resized = F.interpolate(scaled[None, None], x.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(resized[0, 0])
    return torch.stack(maps).numpy()


def _tiny_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    torch.nn.init.normal_(model.heads.head.weight, std=0.3)  # torchvision starts this head at zero
    torch.nn.init.normal_(model.heads.head.bias, std=0.1)
    return model.eval()


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("kernel", ["gaussian", "point"])
def test_vit_matches_the_authors_procedure(kernel, split):
    """A seeded torchvision ViT (4x4 tokens and a class token), the authors' target layer (the LayerNorm before
    the attention of the second-to-last block): camlib's map is the loop above, on both paths."""
    model = _tiny_vit()
    layer = model.encoder.layers[-2].ln_1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _vit_reciprocam_by_hand(model, layer, x, prefix=1, kernel=kernel)
    before = model_snapshot(model)
    cam = ReciproCAM(model, [layer], kernel=kernel, batch_size=7, progress=False)
    cam.split_model = split
    got = cam(x, per_layer=True)[:, 0]  # the layer's map, resized: no second scaling by the aggregation
    assert cam.last_paths == ["split" if split else "full"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert_model_untouched(model, before)


def test_vit_procedure_tells_the_variants_apart():
    """The loop above can fail: spreading the centre token's feature (the feature-map rule) or zeroing the
    class token gives another map."""
    model = _tiny_vit()
    layer = model.encoder.layers[-2].ln_1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    authors = _vit_reciprocam_by_hand(model, layer, x, prefix=1)
    spread = _vit_reciprocam_by_hand(model, layer, x, prefix=1, spread_centre=True)
    no_class_token = _vit_reciprocam_by_hand(model, layer, x, prefix=1, kept_prefix=0)
    assert np.abs(authors - spread).max() > 0.05
    assert np.abs(authors - no_class_token).max() > 0.05


class PrefixTokensViT(torch.nn.Module):
    """DeiT-like layout with registers: class, distillation and two register tokens before a 4x4 grid;
    the output is the mean of a head on the class token and one on the distillation token."""

    prefix = 4

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.tokens = torch.nn.Parameter(0.02 * torch.randn(1, self.prefix, 16))
        self.position = torch.nn.Parameter(0.02 * torch.randn(1, self.prefix + 16, 16))
        self.blocks = torch.nn.Sequential(*(EncoderBlock(2, 16, 32, 0.0, 0.0) for _ in range(2)))
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 5)
        self.head_dist = torch.nn.Linear(16, 5)
        for head in (self.head, self.head_dist):
            torch.nn.init.normal_(head.weight, std=0.3)

    def forward(self, x):
        grid = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.tokens.expand(x.shape[0], -1, -1), grid], dim=1) + self.position
        tokens = self.norm(self.blocks(tokens))
        return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2


def test_prefix_tokens_are_all_kept():
    """With distillation and register tokens every prefix token is kept, as the authors keep the class
    token; zeroing the ones after the class token would give another map."""
    torch.manual_seed(0)
    model = PrefixTokensViT().eval()
    layer = model.blocks[0].ln_1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = _vit_reciprocam_by_hand(model, layer, x, prefix=4)
    only_class_token = _vit_reciprocam_by_hand(model, layer, x, prefix=4, kept_prefix=1)
    assert np.abs(expected - only_class_token).max() > 0.05
    grid = partial(tokens_to_grid, prefix=4, height=4, width=4)
    with ReciproCAM(model, [layer], reshape_transform=grid, progress=False) as cam:
        got = cam(x, per_layer=True)[:, 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_feature_pyramid_levels_are_masked_on_their_own_grid():
    levels = OrderedDict(a=torch.ones(1, 2, 4, 4), b=2 * torch.ones(1, 1, 2, 2))
    masks = position_masks((2, 2), "point")
    copies = reciprocal_copies(levels, (1, 3, 2, 2), 0, masks, torch.arange(4))
    assert isinstance(copies, OrderedDict) and copies["a"].shape == (4, 2, 4, 4) and copies["b"].shape == (4, 1, 2, 2)
    assert torch.equal(copies["b"][3, 0], torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    # the top-left cell of the coarse grid covers the top-left quarter of the finer level most
    quarter = copies["a"][0, 0]
    assert float(quarter[:2, :2].sum()) > 3 * float(quarter.sum() - quarter[:2, :2].sum())


def test_softmax_goes_through_the_output_structure_and_adapter():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    probabilities = torch.softmax(logits, dim=-1)
    out = class_probabilities({"features": torch.ones(1, 4), "logits": logits}, lambda o: o["logits"])
    torch.testing.assert_close(out["logits"], probabilities)
    assert torch.equal(out["features"], torch.ones(1, 4))
    # scores computed from the output rather than found in it: nothing to replace, output unchanged
    computed = {"logits": logits}
    assert class_probabilities(computed, lambda o: 2 * o["logits"]) is computed
    assert class_probabilities([{"boxes": torch.zeros(0, 4)}], lambda o: o["logits"])[0]["boxes"].shape == (0, 4)
    torch.testing.assert_close(class_probabilities(logits), probabilities)


def test_negative_raw_scores_are_not_cut_by_the_relu():
    """Every copy's raw score negative (softmax=False): the map is the scores' range, not blank."""
    model = ConvGapLinear(W, [-100.0, -100.0, -100.0]).eval()
    with ReciproCAM(model, [model.conv], kernel="point", softmax=False, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(0)])[0]
    np.testing.assert_allclose(got, np.array([[5, 3, 6], [2.5, 7, 4], [3, 4.5, 0]]) / 7, atol=1e-5)


@pytest.mark.parametrize("mode", ["bfloat16", "autocast"])
def test_half_precision_runs_a_float32_tail(mode):
    """The map is differences of the tail's outputs, which bfloat16 rounds away: the split-off tail runs
    in float32 on a copy, the user's model keeps its dtype and nothing on it changes."""
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    expected = ReciproCAM(model, [model.features[-1]], progress=False)(x, targets)
    if mode == "autocast":
        half, context = model, torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        half, context = copy.deepcopy(model).to(torch.bfloat16), torch.autocast("cpu", enabled=False)
    before = model_snapshot(half)
    with context:
        cam = ReciproCAM(half, [half.features[-1]], progress=False)
        got = cam(x, targets)
    assert cam.last_paths == ["split"]
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99
    assert_model_untouched(half, before)


def test_registered_with_its_capabilities():
    info = get_method("reciprocam")
    assert info.cls is ReciproCAM
    caps = ReciproCAM.capabilities
    assert not caps.gradients and caps.extra_forwards and not caps.eigen_smooth and caps.class_specific


def test_errors():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ReciproCAM(model, [model.features[4]], kernel="box")
    with pytest.raises(ValueError, match="kernel must be one of"):
        position_masks((2, 2), "box")
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
    with pytest.raises(ValueError, match="needs the target layer to return a tensor"):
        reciprocal_copies((torch.ones(1, 2, 2, 2),), (1, 2, 2, 2), 0, position_masks((2, 2)), torch.arange(4))


def test_split_traced_once_and_again_when_the_model_changes(monkeypatch):
    import camlib.utils.tail_scoring as tail_scoring

    traced = []
    original = tail_scoring.split_after_layer

    def counting(model, layer):
        traced.append(layer)
        return original(model, layer)

    monkeypatch.setattr(tail_scoring, "split_after_layer", counting)
    model = ConvGapLinear(W, B).eval()
    cam = ReciproCAM(model, [model.conv], kernel="point", softmax=False, progress=False)
    first = cam(X, [ClassifierOutputTarget(0)])
    second = cam(X, [ClassifierOutputTarget(0)])
    assert len(traced) == 1 and np.array_equal(first, second) and cam.last_paths == ["split"]
    # a swapped head: the cached split no longer reproduces the output, so it is traced again
    model.fc = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.fc.weight.copy_(-torch.tensor(W))
        model.fc.bias.zero_()
    flipped = cam(X, [ClassifierOutputTarget(0)])
    assert len(traced) == 2 and cam.last_paths == ["split"]
    np.testing.assert_allclose(flipped[0], 1 - np.array([[5, 3, 6], [2.5, 7, 4], [3, 4.5, 0]]) / 7, atol=1e-5)
    cam.release()
    assert cam.split_cache == {}


@pytest.mark.slow  # a dozen resnet18 forward passes
def test_bench_cam_reports_reciprocam_against_forward_gradcam_and_scorecam(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cam.py"
    spec = importlib.util.spec_from_file_location("bench_cam_recipro", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (row,) = bench.main([
        "--suites", "reciprocam", "--recipro-model", "resnet18", "--recipro-batch", "2", "--size", "32",
        "--recipro-rounds", "1", "--recipro-scorecam-images", "1", "--scorecam-chunk", "64",
    ])  # fmt: skip
    assert row["suite"] == "reciprocam" and row["paths"] == ["split"]
    medians = row["median_s"]
    assert {"forward", "GradCAM", "ReciproCAM", "ScoreCAM", "ScoreCAM floor"} <= set(medians)
    assert row["recipro_over_forward"] == medians["ReciproCAM"] / medians["forward"] > 0
    assert row["scorecam_over_recipro"] == medians["ScoreCAM"] / medians["ReciproCAM"]
    assert "### ReciproCAM (resnet18" in capsys.readouterr().out
