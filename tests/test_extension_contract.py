"""Code that extends pytorch-grad-cam 1.5.7 runs unchanged on camlib.

Each client class is written once, as a function of the library it extends
(``make(lib)`` builds it on ``pytorch_grad_cam`` or on ``camlib``), so the very
same code runs on grad-cam 1.5.7 (the oracle) and on camlib; the maps must
agree within 1e-4. Where camlib deliberately differs (a model switched to
training mode after the CAM was built, a uint8 input) the warning is asserted.
Nothing else may warn.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import io
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN
from torch import nn

import camlib

ref = pytest.importorskip("pytorch_grad_cam")


def lib(name: str) -> types.SimpleNamespace:
    """The pieces of one library a client imports."""
    if name == "ref":
        import pytorch_grad_cam as root
        from pytorch_grad_cam import ablation_layer, activations_and_gradients, base_cam
        from pytorch_grad_cam.metrics import cam_mult_image, road
        from pytorch_grad_cam.utils import model_targets
    else:
        import camlib as root
        from camlib import ablation_layer, activations_and_gradients, base_cam
        from camlib.metrics import cam_mult_image, road
        from camlib.utils import model_targets
    return types.SimpleNamespace(
        root=root, BaseCAM=base_cam.BaseCAM, GradCAM=root.GradCAM, AblationCAM=root.AblationCAM,
        AblationLayer=ablation_layer.AblationLayer, RandomCAM=root.RandomCAM,
        ActivationsAndGradients=activations_and_gradients.ActivationsAndGradients,
        ClassifierOutputTarget=model_targets.ClassifierOutputTarget,
        ClassifierOutputSoftmaxTarget=model_targets.ClassifierOutputSoftmaxTarget,
        CamMultImageConfidenceChange=cam_mult_image.CamMultImageConfidenceChange,
        ROADMostRelevantFirstAverage=road.ROADMostRelevantFirstAverage,
    )


REF, OURS = lib("ref"), lib("ours")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@contextlib.contextmanager
def reference_run():
    """grad-cam 1.5.7 prints, uses deprecated numpy/torch calls and shows tqdm bars: let it."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def _model(seed: int = 0) -> nn.Module:
    return TinyCNN(num_classes=5, seed=seed).eval()


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _both(make, *, layers=lambda m: [m.features[-1]], targets=(1, 3), model=None, x=None, call=None, **kwargs):
    """Run the client class ``make(lib)`` on each library, each with its own copy of the model."""
    model = _model() if model is None else model
    x = _images(len(targets) if targets else 2) if x is None else x
    results = []
    for library in (REF, OURS):
        net = copy.deepcopy(model)
        cam = make(library)(net, layers(net), **kwargs)
        chosen = None if not targets else [library.ClassifierOutputTarget(c) for c in targets]
        run = reference_run() if library is REF else contextlib.nullcontext()
        with run:
            results.append(call(cam, x, chosen) if call else cam(input_tensor=x, targets=chosen))
        if library is REF:
            cam.activations_and_grads.release()
    return results


# -- 1. numpy overrides of get_cam_weights / get_cam_image -------------------------------------------
def numpy_weights_cam(library):
    class MeanGradCAM(library.BaseCAM):
        def __init__(self, model, target_layers, reshape_transform=None):
            super().__init__(model, target_layers, reshape_transform)

        def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
            weights = np.mean(grads, axis=(2, 3))
            return weights * (weights.shape[1] / np.abs(weights).sum(axis=1, keepdims=True))

    return MeanGradCAM


def numpy_image_cam(library):
    class PositiveGradCAM(library.BaseCAM):
        def __init__(self, model, target_layers, reshape_transform=None):
            super().__init__(model, target_layers, reshape_transform)

        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth=False):
            weights = np.maximum(grads, 0).mean(axis=(2, 3))
            cam = (weights[:, :, None, None] * activations).sum(axis=1)
            cam = cam.copy()
            cam[cam < 0] = 0
            return np.float32(cam)

    return PositiveGradCAM


@pytest.mark.parametrize("make", [numpy_weights_cam, numpy_image_cam], ids=["get_cam_weights", "get_cam_image"])
def test_numpy_override(make):
    theirs, ours = _both(make)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_numpy_override_with_two_layers_and_eigen_smooth():
    theirs, ours = _both(
        numpy_weights_cam, layers=lambda m: [m.features[-3], m.features[-1]],
        call=lambda cam, x, t: cam(x, t, eigen_smooth=False),
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_torch_override_gets_tensors():
    seen = []

    class MaxGradCAM(camlib.base_cam.BaseCAM):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            seen.append((type(activations), type(grads)))
            return grads.flatten(2).amax(dim=2)

    model = _model()
    maps = MaxGradCAM(model, [model.features[-1]])(_images(), None)
    assert maps.shape == (2, 64, 64) and seen == [(torch.Tensor, torch.Tensor)]


def test_declared_numpy_override_gets_arrays():
    seen = []

    class Declared(camlib.base_cam.BaseCAM):
        array_api = "numpy"

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            seen.append(type(grads))
            return grads.mean(axis=(2, 3))

    model = _model()
    Declared(model, [model.features[-1]])(_images(), None)
    assert seen == [np.ndarray]


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"])
def test_get_cam_weights_called_directly_with_numpy(name):
    """A YOLOv8 heat-map script: the method's weights (or map) of arrays it captured itself."""
    rng = np.random.default_rng(0)
    activations = rng.random((1, 16, 8, 8), dtype=np.float32)
    grads = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    results = []
    for library in (REF, OURS):
        model = _model()
        cam = getattr(library.root, name)(model, [model.features[-1]])
        with reference_run() if library is REF else contextlib.nullcontext():
            if name in ("HiResCAM", "LayerCAM"):
                result = cam.get_cam_image(None, None, None, activations, grads, False)
            else:
                result = cam.get_cam_weights(None, None, None, activations, grads)
        results.append(result)
    theirs, ours = results
    assert isinstance(ours, np.ndarray)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# -- 2. ActivationsAndGradients on its own ----------------------------------------------------------------
@pytest.mark.parametrize("detach", [True, False])
def test_activations_and_gradients_by_hand(detach):
    results = []
    for library in (REF, OURS):
        model = _model()
        x = _images()
        grads = library.ActivationsAndGradients(model, [model.features[1], model.features[-1]], None, detach)
        out = grads(x)
        out[0, 2].backward()
        results.append(([a.detach() for a in grads.activations], [g.detach() for g in grads.gradients]))
        if library is REF:
            grads.release()
    (ref_acts, ref_grads), (our_acts, our_grads) = results
    assert len(our_acts) == len(ref_acts) == 2 and len(our_grads) == len(ref_grads) == 2
    for ours, theirs in zip(our_acts + our_grads, ref_acts + ref_grads):
        torch.testing.assert_close(ours, theirs)


def test_activations_and_gradients_with_reshape_transform():
    def to_tokens(t):
        return t.flatten(2).transpose(1, 2)

    results = []
    for library in (REF, OURS):
        model = _model()
        grads = library.ActivationsAndGradients(model, [model.features[-1]], to_tokens)
        grads(_images()).sum().backward()
        results.append((grads.activations[0], grads.gradients[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


# -- 3. forward / compute_cam_per_layer / aggregate_multi_layers overrides ----------------------------------
def second_class_cam(library):
    class SecondClassCAM(library.GradCAM):
        """Explains each image's second-best class when no targets are given."""

        def forward(self, input_tensor, targets, eigen_smooth=False):
            input_tensor = input_tensor.to(self.device)
            outputs = self.activations_and_grads(input_tensor)
            if targets is None:
                ranked = np.argsort(outputs.cpu().data.numpy(), axis=-1)
                targets = [library.ClassifierOutputTarget(int(c)) for c in ranked[:, -2]]
            self.model.zero_grad()
            loss = sum([target(output) for target, output in zip(targets, outputs)])
            loss.backward(retain_graph=True)
            per_layer = self.compute_cam_per_layer(input_tensor, targets, eigen_smooth)
            return self.aggregate_multi_layers(per_layer)

    return SecondClassCAM


def weighted_layers_cam(library):
    class WeightedLayersCAM(library.GradCAM):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            per_layer = super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)
            return [np.float32(cam * (index + 1)) for index, cam in enumerate(per_layer)]

    return WeightedLayersCAM


def max_layers_cam(library):
    class MaxLayersCAM(library.GradCAM):
        def aggregate_multi_layers(self, cam_per_target_layer):
            stacked = np.concatenate(cam_per_target_layer, axis=1)
            return np.max(stacked, axis=1)

    return MaxLayersCAM


@pytest.mark.parametrize("targets", [None, (1, 3)], ids=["top", "given"])
@pytest.mark.parametrize("make", [second_class_cam, weighted_layers_cam, max_layers_cam])
def test_pipeline_overrides(make, targets):
    theirs, ours = _both(make, layers=lambda m: [m.features[-5], m.features[-1]], targets=targets)
    assert isinstance(ours, np.ndarray) and ours.shape == (2, 64, 64)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_compute_cam_per_layer_called_directly():
    """1.5.7's step, called after a capture: per layer ``np.float32 [B, 1, H, W]``."""
    results = []
    for library in (REF, OURS):
        model = _model()
        cam = library.GradCAM(model, [model.features[-1]])
        x = _images()
        targets = [library.ClassifierOutputTarget(c) for c in (0, 4)]
        with reference_run() if library is REF else contextlib.nullcontext():
            cam(x, targets)
            results.append(cam.compute_cam_per_layer(x, targets, False))
    (theirs,), (ours,) = results
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- 4. input_tensor.grad in get_cam_image ------------------------------------------------------------------
def input_grad_cam(library):
    class InputGradientCAM(library.BaseCAM):
        def __init__(self, model, target_layers, reshape_transform=None):
            super().__init__(model, target_layers, reshape_transform, compute_input_gradient=True)

        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            saliency = np.abs(input_tensor.grad.cpu().numpy()).sum(axis=1)  # [B, H, W]
            pooled = (grads * activations).sum(axis=1)  # [B, h, w]
            scale = pooled.reshape(len(pooled), -1).max(axis=1)
            return saliency * scale[:, None, None]

    return InputGradientCAM


def test_input_gradient_read_from_input_tensor_grad():
    theirs, ours = _both(input_grad_cam)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- 5. an AblationLayer subclass for a neck that returns a tuple (mmdet) --------------------------------------
class TupleNeckNet(nn.Module):
    """A backbone, a neck returning two feature maps (a tuple), a head reading both."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.neck = TupleNeck()
        self.head = nn.Linear(4 + 5, 4)

    def forward(self, x):
        fine, coarse = self.neck(self.backbone(x))
        return self.head(torch.cat([fine.mean((2, 3)), coarse.amax((2, 3))], dim=1))


class TupleNeck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Conv2d(6, 4, 3, padding=1)
        self.coarse = nn.Conv2d(6, 5, 3, stride=2, padding=1)

    def forward(self, x):
        return (torch.tanh(self.fine(x)), torch.tanh(self.coarse(x)))


def neck_to_map(outputs):
    size = outputs[0].shape[-2:]
    return torch.cat([torch.nn.functional.interpolate(o, size, mode="bilinear") for o in outputs], dim=1)


def tuple_ablation_layer(library):
    class TupleAblationLayer(library.AblationLayer):
        def __init__(self):
            super().__init__()
            self.activations = None

        def set_next_batch(self, input_batch_index, activations, num_channels_to_ablate):
            if isinstance(activations, torch.Tensor):
                return super().set_next_batch(input_batch_index, activations, num_channels_to_ablate)
            self.activations = [
                level[input_batch_index].clone().unsqueeze(0).repeat(num_channels_to_ablate, 1, 1, 1)
                for level in activations
            ]

        def __call__(self, x):
            result = self.activations
            if isinstance(result, torch.Tensor):
                return super().__call__(x)
            ends = np.cumsum([level.shape[1] for level in result])
            for i in range(result[0].size(0)):
                level = bisect.bisect_right(ends, self.indices[i])
                channel = self.indices[i] - (ends[level - 1] if level > 0 else 0)
                result[level][i, channel, :, :] = -1000
            return tuple(result)

    return TupleAblationLayer


def test_ablation_layer_subclass_on_a_tuple_neck():
    model, x = TupleNeckNet().eval(), _images(batch=2, seed=4)[:, :, :16, :16]
    results = []
    for library in (REF, OURS):
        net = copy.deepcopy(model)
        cam = library.AblationCAM(net, [net.neck], reshape_transform=neck_to_map,
                                  ablation_layer=tuple_ablation_layer(library)(), batch_size=4)
        with reference_run() if library is REF else contextlib.nullcontext():
            results.append(cam(x, [library.ClassifierOutputTarget(c) for c in (1, 2)]))
    theirs, ours = results
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- 6. get_target_width_height for [B, T, C, H, W] clips, time folded into the batch (GolfDB) -------------------
class FramesNet(nn.Module):
    """Per-frame CNN features, a GRU over time, one score vector per frame: ``[B * T, classes]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.rnn = nn.GRU(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        batch, steps = x.shape[:2]
        features = self.cnn(x.reshape(batch * steps, *x.shape[2:]))
        sequence = features.mean((2, 3)).reshape(batch, steps, -1)
        out, _ = self.rnn(sequence)
        return self.fc(out).reshape(batch * steps, -1)


def clip_cam(library):
    class ClipCAM(library.GradCAM):
        def get_target_width_height(self, input_tensor):
            return input_tensor.size(-1), input_tensor.size(-2)

    return ClipCAM


@pytest.mark.parametrize("targets", [None, (0, 1, 2, 0, 1, 2)], ids=["top", "given"])
def test_clip_with_time_folded_into_the_batch(targets):
    x = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    theirs, ours = _both(clip_cam, model=FramesNet().eval(), layers=lambda m: [m.cnn[-1]], x=x, targets=targets)
    assert ours.shape == (6, 16, 16)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- 7. a uint8 image given to a wrapper that runs on data it prepared itself (mmdet) ----------------------------
class PreparedDataWrapper(nn.Module):
    def __init__(self, net, data):
        super().__init__()
        self.net, self.data = net, data

    def forward(self, x):
        return self.net(self.data)


def test_uint8_input_to_a_wrapper_that_ignores_it():
    prepared = _images(batch=1)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    results = []
    for library in (REF, OURS):
        net = _model()
        cam = library.GradCAM(PreparedDataWrapper(net, prepared), [net.features[-1]])
        targets = [library.ClassifierOutputTarget(2)]
        if library is REF:
            with reference_run():
                results.append(cam(image, targets))
        else:
            with pytest.warns(UserWarning, match="input_tensor is uint8: camlib casts it to float32"):
                results.append(cam(image, targets))
    np.testing.assert_allclose(results[1], results[0], atol=1e-4)


# -- 8. the model put in training mode after the CAM was built ------------------------------------------------
def test_training_mode_after_construction_warns_and_computes_in_eval_mode():
    model, x = _model(), _images()
    cam = OURS.GradCAM(model, [model.features[-1]])
    model.train()
    with pytest.warns(UserWarning, match="training mode after GradCAM was built.*eval mode.*differentiable_maps"):
        ours = cam(x, [OURS.ClassifierOutputTarget(c) for c in (1, 3)])
    assert model.training and all(m.training for m in model.modules())
    # the maps of the eval-mode model, as 1.5.7 gives them when the model stays in eval mode ...
    (eval_maps, _) = _both(lambda library: library.GradCAM, model=_model())
    np.testing.assert_allclose(ours, eval_maps, atol=1e-4)
    # ... which differ from 1.5.7's maps in training mode (batch statistics)
    net = _model()
    with reference_run():
        reference = REF.GradCAM(net, [net.features[-1]])
        net.train()
        train_maps = reference(x, [REF.ClassifierOutputTarget(c) for c in (1, 3)])
        reference.activations_and_grads.release()
    assert np.abs(train_maps - ours).max() > 1e-2


def test_training_mode_from_the_start_does_not_warn():
    model = _model().train()
    OURS.GradCAM(model, [model.features[-1]])(_images(), None)
    assert model.training


# -- 9. metrics as the "CAM Metrics and Tuning" tutorial calls them ------------------------------------------------
def test_metrics_tutorial_boolean_mask_and_list_of_maps():
    x = _images(batch=1)
    results = []
    for library in (REF, OURS):
        model = _model()
        with reference_run() if library is REF else contextlib.nullcontext():
            with library.GradCAM(model=model, target_layers=[model.features[-1]]) as cam:
                grayscale_cams = cam(input_tensor=x, targets=[library.ClassifierOutputTarget(2)])
            targets = [library.ClassifierOutputSoftmaxTarget(2)]
            metric = library.CamMultImageConfidenceChange()
            thresholded_cam = grayscale_cams < np.percentile(grayscale_cams, 75)
            scores_bool, visual = metric(x, thresholded_cam, targets, model, return_visualization=True)
            scores_list = metric(x, [thresholded_cam[0]], targets, model)
            np.random.seed(0)  # noqa: NPY002 (the global generator is the point)
            road = library.ROADMostRelevantFirstAverage(percentiles=[20, 40, 60, 80])
            scores_road = road(x, [grayscale_cams[0]], targets, model)
        results.append((np.asarray(scores_bool), visual.cpu().numpy(), np.asarray(scores_list), np.asarray(scores_road)))
    for ours, theirs in zip(results[1][:3], results[0][:3]):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert results[1][3].shape == results[0][3].shape == (1,)


# -- 10. RandomCAM seeded with np.random.seed -------------------------------------------------------------------
def test_random_cam_seeded_with_numpy():
    model, x = _model(), _images()
    runs = []
    for library in (REF, OURS, OURS):
        net = copy.deepcopy(model)
        cam = library.RandomCAM(net, [net.features[-1]])
        np.random.seed(42)  # noqa: NPY002 (the global generator is the point)
        with reference_run() if library is REF else contextlib.nullcontext():
            runs.append(cam(x, None))
    np.testing.assert_array_equal(runs[1], runs[2])
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)
