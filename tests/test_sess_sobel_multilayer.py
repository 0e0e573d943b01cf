"""SESS, sobel_cam and the multi-layer Ablation-CAM: parity with pytorch-grad-cam 1.5.7
where it works, an independent oracle where it does not, and model hygiene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot, optional

from camlib.ablation_cam_multilayer import AblationCAM as MultiLayerAblationCAM
from camlib.ablation_cam_multilayer import AblationLayer, replace_layer_recursive
from camlib.eigen_cam import EigenCAM
from camlib.fullgrad_cam import FullGrad
from camlib.grad_cam import GradCAM
from camlib.sess import SESS, SMOOTH_KERNEL_SIZE, SMOOTH_SIGMA, sliding_window, window_starts
from camlib.sobel_cam import sobel_cam
from camlib.utils.image import gaussian_blur, linear_resize_matrix
from camlib.utils.model_targets import ClassifierOutputTarget

ref = optional("pytorch_grad_cam")
ref_targets = optional("pytorch_grad_cam.utils.model_targets")


def _input(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class RaiseOnCall:
    """A target that raises on its ``n``-th call (to interrupt a call midway)."""

    def __init__(self, category: int, n: int) -> None:
        self.category, self.n, self.calls = category, n, 0

    def __call__(self, output):
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("target failed on purpose")
        return output[..., self.category]


# -- SESS --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "length, step, window",
    [(10, 4, 4), (8, 4, 4), (7, 10, 4), (3, 2, 5), (32, 9, 32), (131, 32, 32), (50, 7, 16), (1, 1, 1)],
)
def test_window_helpers_match_reference(length, step, window):
    from pytorch_grad_cam.sess import sliding_window as ref_sliding
    from pytorch_grad_cam.sess import window_starts as ref_starts

    assert window_starts(length, step, window) == ref_starts(length, step, window)
    assert sliding_window(length, length + 3, step, window) == ref_sliding(length, length + 3, step, window)


def test_window_helpers_reject_bad_steps():
    with pytest.raises(ValueError, match="step_size"):
        window_starts(10, 0, 4)
    with pytest.raises(TypeError, match="window_size"):
        sliding_window(10, 10, 2, 2.5)


SESS_CASES = {
    "default": dict(num_scales=3),
    "max": dict(num_scales=3, pool="max"),
    "prefilter": dict(num_scales=4, pre_filter_ratio=0.5, smooth=False),
    "window": dict(num_scales=3, window_size=16, step_size=8, theta=0.1),
    "raw_scores": dict(num_scales=2, use_softmax_scores=False, scales=[32, 40]),
}


@pytest.mark.parametrize("case", sorted(SESS_CASES))
def test_sess_matches_reference(case):
    kwargs = SESS_CASES[case]
    x = _input((2, 3, 32, 40))
    ref_model = TinyCNN().eval()
    expected = ref.SESS(ref_model, [ref_model.features[-1]], **kwargs)(x, [ref_targets.ClassifierOutputTarget(1), ref_targets.ClassifierOutputTarget(3)])
    model = TinyCNN().eval()
    got = SESS(model, [model.features[-1]], progress=False, **kwargs)(
        x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    )
    assert got.dtype == np.float32 and got.shape == (2, 32, 40)
    assert expected.std() > 0.05  # a real map, not a constant
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_sess_top_class_targets_match_reference():
    x = _input((2, 3, 24, 24), seed=3)
    ref_model = TinyCNN().eval()
    expected = ref.SESS(ref_model, [ref_model.features[-1]], num_scales=2)(x)
    model = TinyCNN().eval()
    got = SESS(model, [model.features[-1]], num_scales=2, progress=False)(x)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # None inside the list means the top class of that image
    top = model(x).argmax(dim=-1).tolist()
    mixed = SESS(model, [model.features[-1]], num_scales=2, progress=False)(
        x, [None, ClassifierOutputTarget(top[1])]
    )
    np.testing.assert_allclose(mixed, got, atol=1e-6)


def test_sess_batch_does_not_change_maps():
    model = TinyCNN().eval()
    x = _input((3, 3, 24, 24), seed=5)
    targets = [ClassifierOutputTarget(c) for c in (0, 2, 4)]
    together = SESS(model, [model.features[-1]], num_scales=2, batch_size=7, progress=False)(x, targets)
    alone = SESS(model, [model.features[-1]], num_scales=2, batch_size=64, progress=False)
    for i in range(3):
        np.testing.assert_allclose(together[i], alone(x[i : i + 1], targets[i : i + 1])[0], atol=1e-5)


@pytest.mark.parametrize("base", [EigenCAM, FullGrad])
def test_sess_other_base_methods_and_options(base):
    model = TinyCNN().eval()
    layers = [] if base is FullGrad else [model.features[-1]]
    maps = SESS(model, layers, base_method=base, num_scales=2, progress=False)(_input((1, 3, 16, 16)))
    assert maps.shape == (1, 16, 16) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0


def test_sess_eigen_and_aug_smooth_reach_the_base_method():
    model = TinyCNN().eval()
    x = _input((1, 3, 16, 16))
    cam = SESS(model, [model.features[-1]], num_scales=2, progress=False)
    plain, eigen = cam(x, None), cam(x, None, True)  # third positional is eigen_smooth, as in the reference
    smoothed = cam(x, None, aug_smooth=True)
    assert plain.shape == eigen.shape == smoothed.shape == (1, 16, 16)
    assert not np.allclose(plain, eigen)


def test_sess_leaves_model_untouched_after_normal_call_and_exception():
    model = TinyCNN().train()
    before = model_snapshot(model)
    with SESS(model, [model.features[-1]], num_scales=2, progress=False) as cam:
        cam(_input((2, 3, 16, 16)))
        assert hooks_left(model) == 0
        assert_model_untouched(model, before)
        # 5 patches: fail while scoring them, then in the base method's pass
        for n in (3, 7):
            with pytest.raises(RuntimeError, match="on purpose"):
                cam(_input((1, 3, 16, 16)), [RaiseOnCall(1, n)])
            assert_model_untouched(model, before)
    assert model.training


def test_sess_with_block_does_not_swallow_exceptions():
    model = TinyCNN().eval()
    with pytest.raises(IndexError):
        with SESS(model, [model.features[-1]], num_scales=1, progress=False):
            raise IndexError("must propagate")
    with pytest.raises(ValueError, match="targets"):
        with SESS(model, [model.features[-1]], num_scales=1, progress=False) as cam:
            cam(_input((2, 3, 16, 16)), [ClassifierOutputTarget(0)])
    assert hooks_left(model) == 0


def test_sess_errors_name_the_problem():
    model = TinyCNN().eval()
    layers = [model.features[-1]]
    with pytest.raises(ValueError, match="pool"):
        SESS(model, layers, pool="sum")
    with pytest.raises(ValueError, match="pre_filter_ratio"):
        SESS(model, layers, pre_filter_ratio=1.0)
    with pytest.raises(TypeError, match="base_method"):
        SESS(model, layers, base_method=GradCAM(model, layers))
    with pytest.raises(TypeError, match="scales"):
        SESS(model, layers, scales=32)
    cam = SESS(model, layers, num_scales=1, progress=False)
    with pytest.raises(ValueError, match="unsqueeze"):
        cam(_input((3, 16, 16)))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        cam(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="window size"):
        SESS(model, layers, scales=[8], window_size=16, progress=False)(_input((1, 3, 16, 16)))


def test_sess_gaussian_blur_and_resize_match_opencv():
    rng = np.random.default_rng(0)
    for shape in [(32, 40), (4, 5), (1, 7), (3, 3)]:
        image = rng.random(shape, dtype=np.float32)
        got = gaussian_blur(
            torch.from_numpy(image)[None], SMOOTH_SIGMA, SMOOTH_KERNEL_SIZE, dims=(1, 2), border="reflect"
        )[0].numpy()
        np.testing.assert_allclose(got, cv2.GaussianBlur(image, (11, 11), 5.0, 0), atol=1e-6)
    for (in_h, in_w), (out_h, out_w) in [((96, 80), (64, 40)), ((41, 50), (32, 39)), ((16, 16), (24, 20))]:
        image = rng.random((in_h, in_w), dtype=np.float32)
        rows = linear_resize_matrix(in_h, out_h, torch.device("cpu"))
        cols = linear_resize_matrix(in_w, out_w, torch.device("cpu"))
        got = (rows @ torch.from_numpy(image) @ cols.T).numpy()
        np.testing.assert_allclose(got, cv2.resize(image, (out_w, out_h)), atol=1e-5)


# -- sobel_cam ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 256, (12, 15, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (12, 15, 4), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 60000, (9, 7, 3)).astype(np.uint16),
        (255 * np.random.default_rng(3).random((9, 7, 3))).astype(np.float32),
    ],
    ids=["uint8", "rgba", "uint16", "float32"],
)
def test_sobel_cam_matches_reference(image):
    from pytorch_grad_cam.sobel_cam import sobel_cam as ref_sobel

    got = sobel_cam(image)
    expected = ref_sobel(image)
    assert got.dtype == expected.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_sobel_cam_inputs():
    image = 255 * np.random.default_rng(0).random((8, 8, 3))
    np.testing.assert_array_equal(sobel_cam(image), sobel_cam(image.astype(np.float32)))  # float64 accepted
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        sobel_cam(np.random.default_rng(0).random((8, 8, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="numpy"):
        sobel_cam(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="transpose"):
        sobel_cam(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="int32"):
        sobel_cam(np.zeros((8, 8, 3), np.int32))


# -- multi-layer Ablation-CAM ---------------------------------------------------------------------
def test_reference_multilayer_module_is_broken():
    """Why camlib implements the evident intent instead of mirroring behaviour."""
    from pytorch_grad_cam.ablation_cam_multilayer import AblationCAM as RefMultiLayer
    from pytorch_grad_cam.ablation_cam_multilayer import AblationLayer as RefLayer

    model = TinyCNN().eval()
    with pytest.raises(TypeError):
        RefMultiLayer(model, [model.features[-1]])(_input((1, 3, 16, 16)), [ref_targets.ClassifierOutputTarget(0)])
    assert RefLayer(torch.nn.ReLU(), None, [0]).forward(torch.ones(1, 2, 2, 2)) is None
    torch.testing.assert_close(
        AblationLayer(torch.nn.ReLU(), None, [0])(torch.ones(1, 2, 2, 2)),
        RefLayer(torch.nn.ReLU(), None, [0])(torch.ones(1, 2, 2, 2)),
    )


def test_multilayer_single_layer_matches_reference_ablation_cam():
    x = _input((2, 3, 16, 16))
    ref_model = TinyCNN().eval()
    expected = ref.AblationCAM(ref_model, [ref_model.features[-1]])(x, [ref_targets.ClassifierOutputTarget(1), ref_targets.ClassifierOutputTarget(3)])
    model = TinyCNN().eval()
    cam = MultiLayerAblationCAM(model, [model.features[-1]], batch_size=5, progress=False)
    got = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert expected.std() > 0.05
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _oracle_multilayer(model, layers, x, targets):
    """Ablation of channel k in all layers, one copy at a time, with forward hooks
    (an implementation independent of the module swapping under test)."""
    from pytorch_grad_cam.utils.image import scale_cam_image as ref_scale

    captured = {}
    handles = [
        layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o.detach().clone()))
        for k, layer in enumerate(layers)
    ]
    with torch.no_grad():
        original = torch.stack([t(o) for t, o in zip(targets, model(x))])
    for handle in handles:
        handle.remove()
    channels = max(c.shape[1] for c in captured.values())
    ablated = torch.zeros(x.shape[0], channels)
    state = {}

    def ablate(module, inputs, output):
        output = output.clone()
        low = output.min()
        if state["k"] < output.shape[1]:  # a narrower layer has no channel k
            output[0, state["k"]] = 0.0 if low == 0 else low - 1e5
        return output

    handles = [layer.register_forward_hook(ablate) for layer in layers]
    try:
        with torch.no_grad():
            for b in range(x.shape[0]):
                for k in range(channels):
                    state["k"] = k
                    ablated[b, k] = targets[b](model(x[b : b + 1])[0])
    finally:
        for handle in handles:
            handle.remove()
    weights = ((original[:, None] - ablated) / original[:, None]).numpy()
    per_layer = []
    for k in range(len(layers)):
        acts = captured[k].numpy()
        cam = np.maximum((weights[:, : acts.shape[1], None, None] * acts).sum(axis=1), 0)
        per_layer.append(ref_scale(cam, (x.shape[-1], x.shape[-2])))
    return ref_scale(np.mean(per_layer, axis=0))


def test_multilayer_matches_hook_oracle_on_two_layers():
    model = TinyCNN().eval()
    x = _input((2, 3, 16, 16), seed=7)
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(4)]
    layers = [
        model.features[4],
        model.features[6],
    ]  # conv (negative values) and the last ReLU, 16 channels each
    expected = _oracle_multilayer(model, layers, x, targets)
    got = MultiLayerAblationCAM(model, layers, batch_size=9, progress=False)(x, targets)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    per_layer = MultiLayerAblationCAM(model, layers, progress=False)(x, targets, per_layer=True)
    assert per_layer.shape == (2, 2, 16, 16)


def test_multilayer_on_layers_of_different_widths_matches_hook_oracle():
    """Channel k is ablated in every layer that has one: 8 and 16 channels share the first 8 weights."""
    model = TinyCNN().eval()
    x = _input((2, 3, 16, 16), seed=5)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    layers = [model.features[3], model.features[6]]  # 8 channels at 8x8, 16 channels at 8x8
    expected = _oracle_multilayer(model, layers, x, targets)
    got = MultiLayerAblationCAM(model, layers, batch_size=7, progress=False, output_adapter=lambda out: out)(x, targets)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_multilayer_puts_the_same_layers_back():
    model = TinyCNN().train()
    before = model_snapshot(model)
    originals = list(model.features)
    layers = [model.features, model.features[-1]]  # nested: the block and its last module
    with MultiLayerAblationCAM(model, layers, batch_size=8, progress=False) as cam:
        maps = cam(_input((1, 3, 16, 16)))
        assert maps.shape == (1, 16, 16)
        assert_model_untouched(model, before)
        for n in (2, 3):  # fail in the first, then the second batch of ablated copies
            with pytest.raises(RuntimeError, match="on purpose"):
                cam(_input((1, 3, 16, 16)), [RaiseOnCall(0, n)])
            assert_model_untouched(model, before)
    assert all(a is b for a, b in zip(model.features, originals))
    assert not any(isinstance(m, AblationLayer) for m in model.modules())
    assert model.training


def test_multilayer_errors_and_with_block():
    model = TinyCNN().eval()
    before = model_snapshot(model)
    with pytest.raises(TypeError, match="output_adapter must be a function"):
        MultiLayerAblationCAM(model, [model.features[-1]], output_adapter=3)
    assert_model_untouched(model, before)
    with pytest.raises(IndexError):
        with MultiLayerAblationCAM(model, [model.features[-1]], progress=False):
            raise IndexError("must propagate")


def test_ablation_layer_wrapper():
    layer = AblationLayer(torch.nn.Identity(), None, indices=[1, 0])
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 5.0], [6.0, 7.0]]])[..., None]  # [2, 2, 2, 1]
    out = layer(x)
    assert out[0, 1].tolist() == [[1.0 - 1e5], [1.0 - 1e5]]  # row minimum 1: pushed far below
    assert out[1, 0].tolist() == [[0.0], [0.0]]  # row minimum 0: zeroed
    assert out[0, 0].tolist() == [[1.0], [2.0]] and x[0, 1, 0, 0] == 3.0  # input untouched
    tokens = AblationLayer(torch.nn.Identity(), lambda t: t, indices=[2])(torch.ones(1, 4, 3))
    assert tokens[0, :, 2].tolist() == [1.0 - 1e5] * 4  # channels last with a reshape_transform
    with pytest.raises(ValueError, match="indices"):
        AblationLayer(torch.nn.Identity(), None, indices=[0])(torch.ones(2, 3))


def test_replace_layer_recursive_is_the_shared_helper():
    from camlib.utils import find_layers

    assert replace_layer_recursive is find_layers.replace_layer_recursive
