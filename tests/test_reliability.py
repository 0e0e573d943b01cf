"""Reliability under hostile use: threads, compiled models, side-effecting forwards, non-finite
values, wrong reshape transforms, out-of-range classes, meta models, re-entrant calls, degenerate scores.

Each test here failed before the fix it guards (issue 14, library items 1-7).
"""

from __future__ import annotations

import threading
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN
from methods import build as _build
from methods import capabilities, method_names

from camlib import AblationCAM, GradCAM, GuidedBackpropReLUModel, ScoreCAM
from camlib.ablation_cam_multilayer import AblationCAM as MultiLayerAblationCAM
from camlib.utils.batched import score_outputs
from camlib.utils.fx_split import split_after_layer
from camlib.utils.model_state import eval_mode, exclusive_use
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.progress import progress_enabled

# Methods whose maps are a random draw, or that choose their own layers / need attention, are
# excluded where a test compares maps with a reference or needs a plain target layer.
ALL = method_names()


def build(name, model, layers, **kwargs):
    """A CAM from the registry, or the multi-layer AblationCAM (not registered)."""
    if name == "multilayer":
        return MultiLayerAblationCAM(model, layers, progress=False, batch_size=64, **kwargs)
    return _build(name, model, layers, **kwargs)


def _flags(model):
    return [m.training for m in model.modules()]


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def _inputs(n, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, size, size, generator=g) for _ in range(n)]


def _layers(name, model):
    return [] if capabilities(name).own_layers else [model.features[-1]]


def _plain(name):
    """A method that runs on TinyCNN's last block with class targets."""
    caps = capabilities(name)
    return not (caps.needs_attention or caps.stochastic)


PLAIN = [name for name in ALL if _plain(name)]


# -- 1. threads ------------------------------------------------------------------------------------
def test_eval_mode_is_reference_counted_across_threads():
    """Two overlapping eval_mode blocks (enter A, enter B, exit A, exit B) restore train mode."""
    model = TinyCNN().train()
    entered, a_left = threading.Event(), threading.Event()

    def second():
        with eval_mode(model):
            entered.set()
            a_left.wait(5)
            assert not model.training  # still in another block's eval mode

    with eval_mode(model):
        thread = threading.Thread(target=second)
        thread.start()
        assert entered.wait(5)
    a_left.set()
    thread.join(5)
    assert all(_flags(model))


@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM", "AblationCAM", "multilayer", "EigenCAM"])
def test_threads_give_the_sequential_maps(name):
    """4 threads x several calls on one model in train() mode, each thread with its own CAM plus one
    CAM shared by all: every map equals the sequential one; flags and batch-norm statistics kept."""
    model = TinyCNN().train()
    layers = [model.features[-1]]
    inputs = _inputs(6)
    targets = [[ClassifierOutputTarget(i % 5), ClassifierOutputTarget((i + 2) % 5)] for i in range(len(inputs))]
    cam = build(name, model, layers)
    expected = [cam(x, t) for x, t in zip(inputs, targets)]
    flags, stats = _flags(model), _bn_state(model)
    shared = build(name, model, layers)
    errors, mismatches = [], []

    def work(k):
        own = build(name, model, layers)
        try:
            for rep in range(3):
                for i in range(len(inputs)):
                    c = shared if (i + k + rep) % 2 else own
                    if not np.allclose(c(inputs[i], targets[i]), expected[i], atol=1e-5):
                        mismatches.append((k, rep, i))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} maps differ from the sequential ones: {mismatches[:5]}"
    # a CAM built while another thread's call holds the model in eval mode was still built on a
    # training model: no "put in training mode after ... was built" note for it
    assert not [w for w in caught if "training mode after" in str(w.message)]
    assert _flags(model) == flags
    for key, value in _bn_state(model).items():
        torch.testing.assert_close(value, stats[key], msg=key)


def test_ablation_full_model_hook_is_not_seen_by_a_concurrent_call():
    """AblationCAM's full-model path puts a forward hook on the target layer: a concurrent GradCAM on
    the same model must not run through it."""
    model = TinyCNN().eval()
    layers = [model.features[-1]]
    x = _inputs(1, seed=3)[0]
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    ablation = AblationCAM(model, layers, progress=False, batch_size=4)
    ablation.split_model = False
    grad = GradCAM(model, layers)
    want_ablation, want_grad = ablation(x, targets), grad(x, targets)
    results, errors = {"a": [], "g": []}, []

    def run(key, cam, want):
        try:
            for _ in range(4):
                results[key].append(np.allclose(cam(x, targets), want, atol=1e-5))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=a) for a in (("a", ablation, want_ablation), ("g", grad, want_grad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(results["a"]) and all(results["g"])


# -- 2. tracing never mutates the model -------------------------------------------------------------
class _Caching(TinyCNN):
    """A forward that writes into Python containers and a plain object on the model."""

    def __init__(self):
        super().__init__()
        self.cache = {}
        self.history = []
        self.state = types.SimpleNamespace(last=None, nested={"deep": []})

    def forward(self, x):
        feats = self.features(x)
        self.cache["feat"] = feats
        self.history.append(feats)
        self.state.last = feats
        self.state.nested["deep"] = [feats]
        return self.fc(torch.flatten(self.pool(feats), 1))


def _no_proxy(value, depth=0):
    if isinstance(value, torch.fx.Proxy):
        return False
    if depth > 5:
        return True
    if isinstance(value, dict):
        return all(_no_proxy(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_no_proxy(v, depth + 1) for v in value)
    if isinstance(value, types.SimpleNamespace):
        return _no_proxy(vars(value), depth + 1)
    return True


def test_tracing_leaves_no_proxy_in_containers():
    model = _Caching().eval()
    split_after_layer(model, model.features[-1])
    assert model.cache == {} and model.history == []
    assert model.state.last is None and model.state.nested == {"deep": []}


def test_ablation_cam_leaves_containers_as_the_real_forward_wrote_them():
    model = _Caching().eval()
    x = _inputs(1, seed=5)[0]
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    with AblationCAM(model, [model.features[-1]], progress=False) as cam:
        maps = cam(x, targets)
    for value in (model.cache, model.history, model.state):
        assert _no_proxy(value)
    assert isinstance(model.cache["feat"], torch.Tensor)
    with torch.no_grad():
        torch.testing.assert_close(model.cache["feat"], model.features(x))
    plain = TinyCNN().eval()
    plain.load_state_dict(model.state_dict())
    with AblationCAM(plain, [plain.features[-1]], progress=False) as cam:
        np.testing.assert_allclose(maps, cam(x, targets), atol=1e-5)


# -- 3. compiled models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    model = TinyCNN().eval()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(torch.randn(2, 3, 16, 16))  # a no_grad run: dynamo then skips the hooks
    yield model, compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "ScoreCAM", "AblationCAM", "multilayer", "EigenCAM", "LayerCAM"])
def test_compiled_model_gives_the_eager_maps(compiled, name):
    model, compiled_model = compiled
    x = _inputs(1, seed=7)[0]
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    want = build(name, model, [model.features[-1]])(x, targets)
    got = build(name, compiled_model, [model.features[-1]])(x, targets)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ablation_full_path_after_compiled_scorecam(compiled):
    model, compiled_model = compiled
    x = _inputs(1, seed=8)[0]
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    reference = AblationCAM(model, [model.features[-1]], progress=False)
    reference.split_model = False
    want = reference(x, targets)
    ScoreCAM(compiled_model, [model.features[-1]], progress=False, batch_size=64)(x, targets)
    cam = AblationCAM(compiled_model, [model.features[-1]], progress=False)
    cam.split_model = False
    np.testing.assert_allclose(cam(x, targets), want, atol=1e-5)


# -- 4. never a NaN map ------------------------------------------------------------------------------
class _Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class _Scaled(torch.nn.Module):
    """TinyCNN whose last block's activations are multiplied by ``activation_scale`` (divided again
    before pooling, so the logits stay finite), and whose class-0 logit can be set (Inf, NaN)."""

    def __init__(self, logit=None, activation_scale=1.0):
        super().__init__()
        self.net = TinyCNN().eval()
        self.features = torch.nn.Sequential(*self.net.features, _Scale(activation_scale))
        self.logit, self.scale = logit, activation_scale

    def forward(self, x):
        feats = self.features(x) / self.scale
        out = self.net.fc(torch.flatten(self.net.pool(feats), 1))
        if self.logit is not None:
            out = out + torch.zeros_like(out).index_fill(1, torch.tensor([0], device=out.device), self.logit)
        return out


def _finite_or_clear_error(name, model):
    x = _inputs(1, seed=9)[0]
    cam = build(name, model, _layers(name, model))
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            maps = cam(x, targets)
        except ValueError as error:
            assert any(word in str(error) for word in ("not finite", "NaN", "Inf", "overflow")), str(error)
            return
    assert np.isfinite(maps).all(), f"{name} returned NaN/Inf maps silently"
    assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("logit", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_scores_never_give_nan_maps(name, logit):
    _finite_or_clear_error(name, _Scaled(logit=logit).eval())


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("scale", [1e37, 3e38])
def test_overflowing_activations_never_give_nan_maps(name, scale):
    """1e37: finite activations whose sums overflow float32 (GradCAM++ gave NaN, EigenCAM's SVD failed);
    3e38: the model's own activations overflow (NaN maps from most methods)."""
    _finite_or_clear_error(name, _Scaled(activation_scale=scale).eval())


@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM", "AblationCAM"])
def test_non_finite_target_score_is_named(name):
    model = _Scaled(logit=float("nan")).eval()
    cam = build(name, model, [model.features[-1]])
    with pytest.raises(ValueError, match="not finite"):
        cam(_inputs(1)[0], [ClassifierOutputTarget(0), ClassifierOutputTarget(0)])


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, -2.0, 3.5], True),
        ([3e38, 3e38, 3e38], True),  # finite values whose float32 sum overflows: the element-wise check decides
        ([1.0, float("nan")], False),
        ([float("inf"), float("-inf")], False),  # their sum is NaN
        ([float("-inf"), 1.0], False),
        ([], True),
    ],
)
def test_all_finite_decides_like_the_element_wise_check(values, expected):
    from camlib.utils.validation import all_finite

    tensor = torch.tensor(values, dtype=torch.float32)
    assert all_finite(tensor) is expected == bool(torch.isfinite(tensor).all())
    assert all_finite(torch.tensor(values, dtype=torch.float64) * 1e200) is all(np.isfinite(np.array(values) * 1e200))
    assert all_finite(torch.ones(3), tensor) is expected  # several tensors: one answer
    assert all_finite(torch.full((4,), 6e4, dtype=torch.float16)) is True  # the float16 sum would overflow


def test_guided_backprop_rejects_nan_input_like_basecam():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        GuidedBackpropReLUModel(model, device="cpu")(x)
    with pytest.raises(ValueError, match="NaN"):
        GradCAM(model, [model.features[-1]])(x)


# -- 5. a reshape_transform with the wrong batch --------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_reshape_transform_dropping_the_batch_is_refused(name):
    model = TinyCNN().eval()
    if capabilities(name).own_layers or capabilities(name).needs_attention:
        pytest.skip("the method takes no reshape_transform for its own layers")
    cam = build(name, model, [model.features[-1]], reshape_transform=lambda t: t[:1])
    with pytest.raises(ValueError, match="batch"):
        cam(_inputs(1)[0], [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])


@pytest.mark.parametrize("name", ["AblationCAM", "ScoreCAM", "GradCAM"])
def test_reshape_transform_swapping_batch_and_channels_is_refused(name):
    model = TinyCNN().eval()
    cam = build(name, model, [model.features[-1]], reshape_transform=lambda t: t.transpose(0, 1))
    with pytest.raises(ValueError, match="batch"):
        cam(_inputs(1)[0], [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])


# -- 6. smaller ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM", "AblationCAM", "multilayer"])
def test_out_of_range_class_says_which_and_how_many(name):
    model = TinyCNN().eval()
    cam = build(name, model, [model.features[-1]])
    with pytest.raises(IndexError, match=r"class index 7 .* 5 class"):
        cam(_inputs(1)[0], [ClassifierOutputTarget(0), ClassifierOutputTarget(7)])


def test_score_outputs_out_of_range():
    with pytest.raises(IndexError, match=r"class index -9 .* 5 class"):
        score_outputs(torch.zeros(2, 5), [ClassifierOutputTarget(1), ClassifierOutputTarget(-9)])


@pytest.mark.parametrize("name", ALL)
def test_meta_device_model_is_refused_clearly(name):
    with torch.device("meta"):
        model = TinyCNN()
    with pytest.raises(ValueError, match="meta device"):
        cam = build(name, model, _layers(name, model))
        cam(torch.randn(1, 3, 16, 16))


def test_meta_device_guided_backprop_is_refused_clearly():
    with torch.device("meta"):
        model = TinyCNN()
    with pytest.raises(ValueError, match="meta device"):
        GuidedBackpropReLUModel(model, device=None)(torch.randn(1, 3, 16, 16))


class _Exploding(TinyCNN):
    """A model whose forward raises once ``explode`` is set."""

    explode = False

    def forward(self, x):
        if self.explode:
            raise KeyError("the model failed")
        return super().forward(x)


@pytest.mark.parametrize("name", PLAIN)
def test_outputs_cleared_after_a_failed_call(name):
    model = _Exploding().eval()
    cam = build(name, model, _layers(name, model))
    x = _inputs(1)[0]
    cam(x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    assert cam.outputs is not None
    model.explode = True
    with pytest.raises(KeyError):
        cam(x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    assert cam.outputs is None


@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM", "AblationCAM", "multilayer", "FinerCAM"])
def test_reentrant_call_on_the_same_model_is_refused(name):
    model = TinyCNN().eval()
    inner = build(name, model, [model.features[-1]])
    outer = build(name, model, [model.features[-1]])
    x = _inputs(1)[0]

    def target(output):
        inner(x, [ClassifierOutputTarget(0), ClassifierOutputTarget(0)])
        return output[0]

    with pytest.raises(RuntimeError, match="cannot be nested"):
        outer(x, [target, target])
    assert not model.training
    assert not any(m._forward_hooks for m in model.modules())
    # Both objects work afterwards (the model is free again).
    assert inner(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]).shape == (2, 16, 16)
    assert outer(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]).shape == (2, 16, 16)


def test_exclusive_use_is_released_after_an_error():
    model = TinyCNN()
    with pytest.raises(KeyError), exclusive_use(model, "test"):
        raise KeyError("boom")
    with exclusive_use(model, "test"):
        pass


@pytest.mark.parametrize("variable", ["TQDM_DISABLE", "CAMLIB_DISABLE_PROGRESS"])
def test_progress_honours_environment(monkeypatch, variable):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS", raising=False)
    assert progress_enabled(None)
    monkeypatch.setenv(variable, "1")
    assert not progress_enabled(None)
    assert progress_enabled(True)


# -- 7. degenerate scores ------------------------------------------------------------------------------
def _zero_head():
    model = TinyCNN().eval()
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.zeros_(model.fc.bias)
    return model


@pytest.mark.parametrize("name", ["ScoreCAM", "AblationCAM", "GradCAM", "GradCAMPlusPlus"])
def test_zero_initialised_head_warns(name):
    model = _zero_head()
    cam = build(name, model, [model.features[-1]])
    with pytest.warns(UserWarning, match="zero-initialised"):
        cam(_inputs(1)[0], [ClassifierOutputTarget(0), ClassifierOutputTarget(3)])


def test_trained_head_does_not_warn_about_equal_scores():
    model = TinyCNN().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScoreCAM(model, [model.features[-1]], progress=False)(_inputs(1)[0], [ClassifierOutputTarget(0)] * 2)
        AblationCAM(model, [model.features[-1]], progress=False)(_inputs(1)[0], [ClassifierOutputTarget(0)] * 2)
