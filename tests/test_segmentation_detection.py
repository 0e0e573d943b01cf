"""Semantic segmentation (dict outputs, a class in a region) and object detection (lists of
dicts, FPN backbones) with torchvision's own models, random weights, no wrappers."""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_model_untouched, model_snapshot
from methods import build, capabilities, method_names
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.segmentation.fcn import FCN, FCNHead

import camlib
from camlib import AblationCAM, AblationLayerFasterRCNN, EigenCAM, GradCAM
from camlib.utils.model_targets import FasterRCNNBoxScoreTarget, SemanticSegmentationTarget
from camlib.utils.reshape_transforms import fasterrcnn_reshape_transform, feature_pyramid_to_map

METHODS = method_names()


def _sign_fixed(projection_fn):
    """The reference's principal component with camlib's sign rule (largest magnitude positive)."""

    @functools.wraps(projection_fn)
    def wrapper(*args, **kwargs):
        result = np.array(projection_fn(*args, **kwargs))
        flat = result.reshape(result.shape[0], -1)
        flat[np.abs(flat.min(axis=1)) > np.abs(flat.max(axis=1))] *= -1
        return flat.reshape(result.shape)

    return wrapper


@pytest.fixture
def reference(monkeypatch):
    ref = pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam.eigen_cam

    monkeypatch.setattr(
        pytorch_grad_cam.eigen_cam, "get_2d_projection", _sign_fixed(pytorch_grad_cam.eigen_cam.get_2d_projection)
    )
    return ref


def _reference_maps(ref, name, model, layers, x, targets, **kwargs):
    cam = getattr(ref, name)(model, layers, **kwargs)
    try:
        return cam(x, targets)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


# -- semantic segmentation ---------------------------------------------------------------------


class _TinyBackbone(torch.nn.Module):
    """Returns {"out": stride-4 features, "aux": stride-2 features}, as torchvision's backbones do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.body = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())

    def forward(self, x):
        aux = self.stem(x)
        return OrderedDict(out=self.body(aux), aux=aux)


@pytest.fixture(scope="module")
def tiny_fcn():
    """torchvision's FCN (its forward, its dict output) around a tiny backbone, 3 classes."""
    torch.manual_seed(0)
    return FCN(_TinyBackbone(), FCNHead(16, 3), FCNHead(8, 3)).eval()


@pytest.fixture(scope="module")
def segmentation_models():
    segmentation = torchvision.models.segmentation
    torch.manual_seed(0)
    return {
        "deeplabv3": segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True),
        "fcn": segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True),
    }


def _predicted_region(model, x, category):
    with torch.no_grad():
        return (model(x)["out"].argmax(1) == category).float().numpy()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_segmentation_model(method, tiny_fcn):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = _predicted_region(tiny_fcn, x, 1)
    region = np.zeros((32, 32), np.float32)
    region[8:24, 4:20] = 1
    targets = [SemanticSegmentationTarget(1, masks[0]), SemanticSegmentationTarget(2, region)]
    before = model_snapshot(tiny_fcn)
    if capabilities(method).classifier_weights:  # the segmenter has no final linear classifier
        with pytest.raises(TypeError, match=r"nn\.Linear"):
            build(method, tiny_fcn, [tiny_fcn.backbone.body])
        return
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = build(method, tiny_fcn, [tiny_fcn.backbone.body])(x, targets)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.max() > 0
    assert_model_untouched(tiny_fcn, before)


@pytest.mark.parametrize(
    ("arch", "methods"),
    [("deeplabv3", ("GradCAM", "EigenCAM")), ("fcn", ("LayerCAM",))],
)
def test_segmentation_parity_with_reference(arch, methods, segmentation_models, reference):
    """The reference needs a wrapper returning model(x)["out"]; camlib reads the dict itself."""
    model = segmentation_models[arch].eval()

    class OutOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    ref_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = _predicted_region(model, x, 1)[0]
    assert mask.sum() > 0
    layers = [model.backbone.layer4]
    for name in methods:
        expected = _reference_maps(
            reference, name, OutOnly(model).eval(), layers, x, [ref_targets.SemanticSegmentationTarget(1, mask)]
        )
        got = getattr(camlib, name)(model, layers)(x, [SemanticSegmentationTarget(1, mask)])
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{arch} {name}")


def test_region_changes_the_map(segmentation_models):
    model = segmentation_models["deeplabv3"].eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    left, right = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    left[:, :32], right[:, 32:] = 1, 1
    with GradCAM(model, [model.backbone.layer4]) as cam:
        maps_left = cam(x, [SemanticSegmentationTarget(2, left)])
        maps_right = cam(x, [SemanticSegmentationTarget(2, right)])
    assert np.abs(maps_left - maps_right).max() > 0.05


def test_segmentation_targets_none_explains_how(tiny_fcn):
    x = torch.randn(1, 3, 32, 32)
    for method in ("GradCAM", "ScoreCAM", "CAM"):
        with pytest.raises((ValueError, TypeError), match=r"SemanticSegmentationTarget\(category, mask\)|nn.Linear"):
            build(method, tiny_fcn, [tiny_fcn.backbone.body])(x)
    # class-agnostic methods need no target
    for method in ("EigenCAM", "KPCA_CAM"):
        assert build(method, tiny_fcn, [tiny_fcn.backbone.body])(x).max() > 0


def test_semantic_segmentation_target():
    output = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = np.zeros((3, 4), np.float32)
    mask[0, :2] = 1
    target = SemanticSegmentationTarget(1, mask)
    assert target(output).item() == 12 + 13
    assert target({"out": output, "aux": output * 0}).item() == 25
    torch.testing.assert_close(target(output[None].repeat(2, 1, 1, 1)), torch.tensor([25.0, 25.0]))
    assert SemanticSegmentationTarget(1, torch.ones(3, 4, dtype=torch.bool))(output).item() == output[1].sum()
    volume = torch.ones(2, 2, 3, 4)
    assert SemanticSegmentationTarget(0, np.ones((2, 3, 4)))(volume).item() == 24
    with pytest.raises(ValueError, match="2-D"):
        SemanticSegmentationTarget(0, np.ones(4))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\).*\(2, 5, 5\)"):
        target(torch.zeros(2, 5, 5))


# -- object detection --------------------------------------------------------------------------


@functools.cache
def tiny_faster_rcnn() -> FasterRCNN:
    """Faster R-CNN with a ResNet-18 FPN of 16 channels, small images and few proposals.
    box_score_thresh=0 keeps detections although random weights score them low."""
    torch.manual_seed(0)
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    backbone = BackboneWithFPN(torchvision.models.resnet18(weights=None), layers, [64, 128, 256, 512], 16)
    return FasterRCNN(
        backbone, num_classes=3, min_size=96, max_size=96, rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=10, box_detections_per_img=5, box_score_thresh=0.0,
    ).eval()  # fmt: skip


def _detection_setup(model, batch=1, seed=0):
    x = torch.rand(batch, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        detections = model(x)
    targets = [FasterRCNNBoxScoreTarget.from_detections(d, score_threshold=0.0) for d in detections]
    assert all(t.labels for t in targets), "the detector must find boxes for the target to have a gradient"
    return x, targets


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_faster_rcnn(method):
    model = tiny_faster_rcnn()
    x, targets = _detection_setup(model)
    before = model_snapshot(model)
    layers = [model.backbone]  # its output is a dict of FPN levels: laid out automatically
    caps = capabilities(method)
    if caps.classifier_weights:  # the box head's linear layer does not read the FPN's channels
        with pytest.raises(ValueError, match="input features"):
            build(method, model, layers)(x, targets)
        return
    if not caps.detectors:
        with pytest.raises(TypeError, match="list of detections"):
            build(method, model, layers)(x, targets)
        assert_model_untouched(model, before)
        return
    if caps.second_order:  # RoIAlign has no double backward
        with pytest.raises(RuntimeError, match=r"second derivatives.*GradCAM"):
            build(method, model, layers)(x, targets)
        assert_model_untouched(model, before)
        return
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = build(method, model, layers)(x, targets)
    assert maps.shape == (1, 96, 96) and np.isfinite(maps).all()
    if caps.min_positions <= 4:  # the coarsest FPN level has 2x2 positions
        assert maps.max() > 0
    assert_model_untouched(model, before)


def test_faster_rcnn_eigencam_parity_with_reference(reference):
    model = tiny_faster_rcnn()
    x, targets = _detection_setup(model, batch=2, seed=1)
    ref_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    reference_targets = [
        ref_targets.FasterRCNNBoxScoreTarget(t.labels, np.asarray(t.bounding_boxes)) for t in targets
    ]
    layers = [model.backbone]
    # (the reference's gradient methods cannot take gradients of the backbone's dict output)
    expected = _reference_maps(
        reference, "EigenCAM", model, layers, x, reference_targets, reshape_transform=fasterrcnn_reshape_transform
    )
    got = EigenCAM(model, layers, reshape_transform=fasterrcnn_reshape_transform)(x, targets)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_faster_rcnn_ablation_cam_picks_the_fpn_layer():
    """With ablation_layer=None a dict of FPN levels gets AblationLayerFasterRCNN; the reference's
    setup (its reshape transform, a share of the channels) runs too."""
    model = tiny_faster_rcnn()
    x, targets = _detection_setup(model)
    layers = [model.backbone]
    before = model_snapshot(model)
    automatic = AblationCAM(model, layers, batch_size=40)(x, targets)
    assert automatic.shape == (1, 96, 96) and np.isfinite(automatic).all() and automatic.max() > 0
    cam = AblationCAM(
        model, layers, reshape_transform=fasterrcnn_reshape_transform, ablation_layer=AblationLayerFasterRCNN(),
        ratio_channels_to_ablate=0.25, batch_size=40,
    )  # fmt: skip
    assert cam(x, targets).max() > 0
    assert_model_untouched(model, before)


def test_retinanet_without_a_pool_level():
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=256, max_size=256, score_thresh=0.0,
        topk_candidates=20, detections_per_img=5,
    ).eval()  # fmt: skip
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        detections = model(x)
    assert "pool" not in model.backbone(x)
    target = FasterRCNNBoxScoreTarget.from_detections(detections[0], score_threshold=0.0, max_boxes=3)
    assert len(target.labels) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-gradient warning: the scores depend on the FPN
        eigen = EigenCAM(model, [model.backbone], reshape_transform=fasterrcnn_reshape_transform)(x, [target])
        grad_cam = GradCAM(model, [model.backbone])
        grad = grad_cam(x, [target])
    assert eigen.shape == grad.shape == (1, 256, 256) and np.isfinite(eigen).all() and np.isfinite(grad).all()
    assert eigen.max() > 0
    # five levels of 256 channels, laid out at the coarsest level's size (p7, stride 128)
    assert grad_cam.activations_and_grads.gradients[0].shape == (1, 5 * 256, 2, 2)


def test_detection_targets_none_explains_how():
    model = tiny_faster_rcnn()
    x = torch.rand(1, 3, 96, 96)
    with pytest.raises(TypeError, match=r"detections.*FasterRCNNBoxScoreTarget\.from_detections"):
        GradCAM(model, [model.backbone])(x)
    # a class-agnostic method needs no target
    assert EigenCAM(model, [model.backbone])(x).max() > 0


def test_box_score_target():
    detections = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 9.0, 10.0]]),
        "labels": torch.tensor([1, 2, 1]),
        "scores": torch.tensor([0.9, 0.6, 0.3]),
    }
    target = FasterRCNNBoxScoreTarget.from_detections(detections, score_threshold=0.5)
    assert target.labels == [1, 2]
    assert target(detections).item() == pytest.approx((1 + 0.9) + (1 + 0.6))
    assert FasterRCNNBoxScoreTarget.from_detections(detections, score_threshold=0.0, max_boxes=1).labels == [1]
    assert FasterRCNNBoxScoreTarget([2], [[0.0, 0.0, 10.0, 10.0]])(detections).item() == 0  # label mismatch
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    assert target(empty).item() == 0
    with pytest.raises(TypeError, match="'boxes', 'labels' and 'scores'"):
        FasterRCNNBoxScoreTarget.from_detections([detections])
    with pytest.raises(TypeError, match="one image's detections"):
        target(torch.zeros(3))


def test_feature_pyramid_to_map():
    fpn = OrderedDict(
        [("0", torch.randn(2, 4, 16, 16)), ("1", torch.randn(2, 4, 8, 8)), ("p6", torch.randn(2, 4, 4, 4))]
    )
    merged = feature_pyramid_to_map(fpn)
    assert merged.shape == (2, 12, 4, 4)
    torch.testing.assert_close(merged[:, 8:], fpn["p6"])
    # the reference transform: absolute values, sized like "pool" when there is one, else the coarsest
    assert fasterrcnn_reshape_transform(fpn).shape == (2, 12, 4, 4) and fasterrcnn_reshape_transform(fpn).min() >= 0
    with_pool = OrderedDict(fpn, pool=torch.randn(2, 4, 2, 2))
    assert fasterrcnn_reshape_transform(with_pool).shape == (2, 16, 2, 2)
