"""camlib.training.GAIN: losses, gradients, hygiene, hand-built cases, errors; the cue data; the benchmark's smoke run."""

from __future__ import annotations

import gc
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlib import EigenCAM, GradCAM, ScoreCAM
from camlib.demo.data import (
    CUE_COLOURS,
    NUM_CLASSES,
    load_sample_image,
    make_cue_batch,
    make_cue_image,
    make_image,
    make_sample,
)
from camlib.registry import methods
from camlib.training import GAIN, GAINOutput, erase, soft_mask

ROOT = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> conv (target) -> ReLU -> GAP -> fc."""

    def __init__(self, classes: int = 3, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny()


def _batch(n=4, size=16, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(classes, (n,), generator=g)


def _hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def test_step_gives_finite_losses_and_gradients_before_and_after_the_target_layer(tiny):
    x, y = _batch()
    masks = torch.rand(4, 16, 16)
    masks[1] = float("nan")  # sample 1 has no mask
    out = GAIN(tiny, [tiny.conv2])(x, y, masks=masks)
    assert isinstance(out, GAINOutput)
    for name in ("loss", "loss_cl", "loss_am", "loss_e"):
        value = getattr(out, name)
        assert value.ndim == 0 and bool(torch.isfinite(value)), name
    assert float(out.loss_e.detach()) > 0 and float(out.loss_am.detach()) > 0
    torch.testing.assert_close(out.loss, out.loss_cl + out.loss_am + 10 * out.loss_e)
    assert out.logits.shape == (4, 3) and out.maps.shape == (4, 16, 16)
    assert float(out.maps.min()) >= 0 and float(out.maps.max()) <= 1
    out.loss.backward()
    for name in ("conv1.weight", "bn.weight", "conv2.weight", "fc.weight"):
        grad = dict(tiny.named_parameters())[name].grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, name


def test_each_term_reaches_the_parameters_before_the_target_layer(tiny):
    """L_am and L_e depend on the maps, whose graph goes back through the layers before the target layer."""
    x, y = _batch()
    out = GAIN(tiny, [tiny.conv2])(x, y, masks=torch.rand(4, 16, 16))
    for term in (out.loss_am, out.loss_e, out.maps.sum()):
        (grad,) = torch.autograd.grad(term, [tiny.conv1.weight], retain_graph=True)
        assert float(grad.abs().sum()) > 0


def test_logits_are_the_models_output_and_cross_entropy_is_the_classification_loss(tiny):
    tiny.eval()
    x, y = _batch()
    out = GAIN(tiny, [tiny.conv2])(x, y)
    with torch.no_grad():
        expected = tiny(x)
    torch.testing.assert_close(out.logits.detach(), expected)
    torch.testing.assert_close(out.loss_cl.detach(), F.cross_entropy(expected, y))
    assert float(out.loss_e) == 0.0  # no masks


def test_maps_equal_camlibs_gradcam_in_eval_mode(tiny):
    tiny.eval()
    x, y = _batch()
    out = GAIN(tiny, [tiny.conv2])(x, y)
    from camlib.utils.model_targets import ClassifierOutputTarget

    with GradCAM(tiny, [tiny.conv2]) as cam:
        reference = cam(x, [ClassifierOutputTarget(int(c)) for c in y])
    np.testing.assert_allclose(out.maps.detach().numpy(), reference, atol=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_flags_hooks_and_grads_unchanged(tiny, mode):
    getattr(tiny, mode)()
    tiny.conv1.weight.requires_grad_(True)
    flags = {name: m.training for name, m in tiny.named_modules()}
    requires = {name: p.requires_grad for name, p in tiny.named_parameters()}
    state = {k: v.clone() for k, v in tiny.state_dict().items() if "running" not in k and "num_batches" not in k}
    gain = GAIN(tiny, [tiny.conv2])
    out = gain(*_batch(), masks=torch.rand(4, 16, 16))
    assert {name: m.training for name, m in tiny.named_modules()} == flags
    assert {name: p.requires_grad for name, p in tiny.named_parameters()} == requires
    assert all(p.grad is None for p in tiny.parameters()), "GAIN wrote into .grad before backward()"
    assert _hooks(tiny) == 0
    for k, v in state.items():
        torch.testing.assert_close(tiny.state_dict()[k], v)
    out.loss.backward()
    assert _hooks(tiny) == 0


def test_no_hooks_left_after_an_error(tiny):
    x, _ = _batch()
    with pytest.raises(ValueError):
        GAIN(tiny, [tiny.conv2])(x, torch.tensor([0, 1, 2, 7]))
    assert _hooks(tiny) == 0


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor or type(obj) is nn.Parameter)


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    yield
    torch.set_num_threads(previous)


def test_no_memory_growth_over_200_steps(one_thread):
    torch.manual_seed(0)
    model = Tiny(bn=True)
    gain = GAIN(model, [model.conv2])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _batch(n=2, size=8)
    masks = torch.rand(2, 8, 8)
    counts = []
    for step in range(200):
        out = gain(x, y, masks=masks)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        del out
        if step in (19, 199):
            counts.append(_live_tensors())
    assert counts[1] <= counts[0], f"live tensors grew from {counts[0]} to {counts[1]} over 180 steps"
    assert int(gain.steps) == 200


def _object_detector():
    """A hand-built classifier: class 0's logit grows with the brightness of the red channel, anywhere."""
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = 1.0
        model[0].bias.fill_(0.0)
        model[4].weight.copy_(torch.tensor([[40.0], [0.0]]))
        model[4].bias.copy_(torch.tensor([-2.0, 0.0]))
    return model.eval()


def _object_image():
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 4:10, 5:11] = 1.0  # a red square
    obj = torch.zeros(1, 16, 16)
    obj[0, 4:10, 5:11] = 1.0
    return x, obj


def test_attention_mining_loss_is_lower_when_the_map_covers_the_object():
    model = _object_detector()
    x, obj = _object_image()

    def l_am(maps):
        with torch.no_grad():
            return float(torch.softmax(model(erase(x, maps)), dim=1)[0, 0])

    covering, elsewhere = l_am(obj), l_am(1 - obj)
    assert covering < 0.2 < 0.9 < elsewhere
    # End to end: the demo-like detector's own Grad-CAM map lands on the square, so erasing it
    # removes the evidence: the class score on I* is far below the score on I.
    out = GAIN(model, [model[1]])(x, torch.tensor([0]))
    on_image = float(torch.softmax(out.logits, dim=1)[0, 0])
    assert float(out.maps[0][obj[0] > 0].mean()) > 0.9 and float(out.maps[0][obj[0] == 0].max()) < 0.5
    assert float(out.loss_am) < 0.2 < 0.9 < on_image


def test_attention_mining_loss_decreases_when_training_on_it(one_thread):
    """A few steps on alpha * L_am alone lower L_am (the map grows over the evidence)."""
    torch.manual_seed(0)
    model = Tiny(bn=False)
    gain = GAIN(model, [model.conv2])
    x, y = _batch(n=8, size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(15):
        out = gain(x, y)
        first = float(out.loss_am) if first is None else first
        opt.zero_grad()
        out.loss_am.backward()
        opt.step()
    assert float(gain(x, y).loss_am) < first


def test_mask_loss_is_zero_for_a_map_equal_to_its_mask(tiny):
    tiny.eval()
    x, y = _batch()
    gain = GAIN(tiny, [tiny.conv2])
    maps = gain(x, y).maps.detach()
    assert float(gain(x, y, masks=maps).loss_e) < 1e-10
    other = torch.rand_like(maps)
    expected = ((maps - other) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(gain(x, y, masks=other).loss_e.detach(), expected.mean())


def test_samples_without_a_mask_contribute_nothing(tiny):
    tiny.eval()
    x, y = _batch()
    gain = GAIN(tiny, [tiny.conv2])
    maps = gain(x, y).maps.detach()
    target = torch.rand(4, 16, 16)
    per_sample = ((maps - target) ** 2).flatten(1).mean(1)
    expected = per_sample[[0, 2]].mean()
    nan_masks = target.clone()
    nan_masks[[1, 3]] = float("nan")
    valid = torch.tensor([True, False, True, False])
    as_list = [target[0], None, target[2], None]
    for kwargs in (
        {"masks": nan_masks},
        {"masks": target, "mask_valid": valid},
        {"masks": as_list},
        {"masks": target[:, None]},  # [B, 1, H, W] with validity
    ):
        if "mask_valid" not in kwargs and kwargs["masks"] is not as_list and kwargs["masks"] is not nan_masks:
            kwargs["mask_valid"] = valid
        torch.testing.assert_close(gain(x, y, **kwargs).loss_e.detach(), expected)
    no_mask = gain(x, y, masks=[None] * 4)
    assert float(no_mask.loss_e) == 0.0
    torch.testing.assert_close(no_mask.loss.detach(), (no_mask.loss_cl + no_mask.loss_am).detach())


def test_multi_hot_labels_use_bce_and_give_one_map_per_present_class():
    torch.manual_seed(0)
    model = Tiny(classes=4, bn=False).eval()
    x, _ = _batch(n=3)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    per_class = torch.rand(3, 4, 16, 16)
    out = GAIN(model, [model.conv2])(x, labels, masks=per_class)
    assert out.maps.shape == (3, 4, 16, 16)
    present = labels > 0.5
    assert float(out.maps[~present].abs().max()) == 0.0
    assert all(float(out.maps[b, c].max()) > 0 for b, c in present.nonzero().tolist())
    torch.testing.assert_close(out.loss_cl.detach(), F.binary_cross_entropy_with_logits(out.logits.detach(), labels))
    pairs = present.nonzero().tolist()
    expected = torch.stack([((out.maps[b, c] - per_class[b, c]) ** 2).mean() for b, c in pairs]).mean()
    torch.testing.assert_close(out.loss_e.detach(), expected.detach())
    # 0/1 integer multi-hot labels are accepted too.
    torch.testing.assert_close(GAIN(model, [model.conv2])(x, labels.long()).loss_cl, out.loss_cl)


def test_warmup_trains_the_classifier_only_and_counts_training_steps(tiny):
    gain = GAIN(tiny, [tiny.conv2], warmup_steps=2)
    x, y = _batch()
    tiny.eval()
    assert gain(x, y).maps is not None and int(gain.steps) == 0  # eval calls are not steps
    tiny.train()
    for _ in range(2):
        out = gain(x, y)
        assert out.maps is None and float(out.loss_am) == 0.0
        torch.testing.assert_close(out.loss, out.loss_cl)
    out = gain(x, y)
    assert out.maps is not None and float(out.loss_am) > 0 and int(gain.steps) == 3
    assert "steps" in gain.state_dict()
    # Masks are checked during warm-up too, and a failed call is not counted as a step.
    fresh = GAIN(tiny, [tiny.conv2], warmup_steps=5)
    with pytest.raises(ValueError, match="masks has shape"):
        fresh(x, y, masks=torch.rand(4, 8, 8))
    assert int(fresh.steps) == 0


def test_under_no_grad_the_outputs_are_detached(tiny):
    x, y = _batch()
    with torch.no_grad():
        out = GAIN(tiny.eval(), [tiny.conv2])(x, y)
    assert not out.loss.requires_grad and out.maps is not None and torch.isfinite(out.loss)


def test_paper_defaults_and_soft_mask():
    model = Tiny()
    gain = GAIN(model, model.conv2)
    assert (gain.sigma, gain.omega, gain.alpha, gain.ext_weight) == (0.5, 10.0, 1.0, 10.0)
    a = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(soft_mask(a), torch.sigmoid(10 * (a - 0.5)))
    assert "sigma=0.5" in repr(gain)


# -- errors ------------------------------------------------------------------------------------------


def test_labels_that_do_not_match_the_output(tiny):
    x, y = _batch()
    gain = GAIN(tiny, [tiny.conv2])
    with pytest.raises(ValueError, match=r"class 7 .* 3 logits"):
        gain(x, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"5 entries for 4 images"):
        gain(x, torch.tensor([0, 1, 2, 1, 0]))
    with pytest.raises(ValueError, match=r"integer class indices.*float"):
        gain(x, y.float())
    with pytest.raises(ValueError, match=r"logits' shape \[4, 3\].*\[4, 2\]"):
        gain(x, torch.ones(4, 2))
    with pytest.raises(ValueError, match="multi-hot"):
        gain(x, torch.full((4, 3), 2))
    with pytest.raises(ValueError, match="got shape"):
        gain(x, torch.zeros(4, 3, 1))
    with pytest.raises(TypeError, match=r"torch\.as_tensor"):
        gain(x, [0, 1, 2, 0])
    with pytest.raises(TypeError, match=r"images must be a tensor \[B, C, H, W\]"):
        gain(x[0], y)


def test_masks_of_the_wrong_shape(tiny):
    x, y = _batch()
    gain = GAIN(tiny, [tiny.conv2])
    for bad in (torch.rand(4, 8, 8), torch.rand(3, 16, 16), torch.rand(4, 2, 16, 16), torch.rand(16, 16)):
        with pytest.raises(ValueError, match=r"masks has shape .*expected \[B=4, H=16, W=16\]"):
            gain(x, y, masks=bad)
    with pytest.raises(ValueError, match=r"list of 2 entries for 4 images"):
        gain(x, y, masks=[None, None])
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \[8, 8\]"):
        gain(x, y, masks=[None, torch.rand(8, 8), None, None])
    with pytest.raises(TypeError, match=r"masks\[0\] must be a tensor"):
        gain(x, y, masks=[np.zeros((16, 16)), None, None, None])
    with pytest.raises(ValueError, match=r"mask_valid must be a bool tensor \[B=4\]"):
        gain(x, y, masks=torch.rand(4, 16, 16), mask_valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_valid was given without masks"):
        gain(x, y, mask_valid=torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("method", [EigenCAM, ScoreCAM])
def test_a_method_without_differentiable_maps_is_refused_naming_those_that_have_them(tiny, method):
    with pytest.raises(TypeError, match=rf"{method.__name__}.*GradCAM.*HiResCAM.*LayerCAM"):
        GAIN(tiny, [tiny.conv2], method=method)


def test_target_layers_outside_the_model_or_not_affecting_the_output():
    class SideBranch(Tiny):
        def __init__(self):
            super().__init__()
            self.unused = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = self.relu(self.bn(self.conv1(x)))
            self.unused(h)  # runs, but its output is thrown away
            return self.fc(self.relu(self.conv2(h)).mean(dim=(2, 3)))

    model = SideBranch()
    with pytest.raises(ValueError, match="not a submodule of the model"):
        GAIN(model, [nn.Conv2d(1, 1, 1)])
    x, y = _batch()
    with pytest.raises(ValueError, match=r"does not depend|do not affect"):
        GAIN(model, [model.unused])(x, y)
    assert _hooks(model) == 0


def test_bad_hyper_parameters():
    model = Tiny()
    for kwargs, error in (
        ({"sigma": -0.1}, ValueError),
        ({"omega": 0}, ValueError),
        ({"alpha": "1"}, TypeError),
        ({"warmup_steps": -1}, ValueError),
        ({"am_score": "softmax"}, ValueError),
        ({"method": "GradCAM"}, TypeError),
    ):
        with pytest.raises(error):
            GAIN(model, [model.conv2], **kwargs)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        GAIN(lambda x: x, [model.conv2])
    with pytest.raises(TypeError, match="non-empty list"):
        GAIN(model, [])


def test_logit_score_option(tiny):
    tiny.eval()
    x, y = _batch()
    out = GAIN(tiny, [tiny.conv2], am_score="logit")(x, y)
    prob = GAIN(tiny, [tiny.conv2])(x, y)
    assert not torch.allclose(out.loss_am, prob.loss_am) and 0 < float(prob.loss_am) < 1


# -- the spurious-cue data ------------------------------------------------------------------------------


def test_the_cue_option_leaves_the_default_images_unchanged():
    # The bundled sample.png was rendered before the cue option existed: the default path still draws it.
    rendered = np.round(make_sample()[0] * 255) / 255
    assert float(np.abs(load_sample_image() - rendered).max()) <= 1 / 255 + 1e-6
    assert float(np.abs(load_sample_image() - rendered).mean()) < 1e-3
    # A cue colour changes the background only: same class, same mask.
    plain, cued = make_image(5, 48, classes=["star"]), make_image(5, 48, classes=["star"], background=CUE_COLOURS[0])
    np.testing.assert_array_equal(plain[2], cued[2])
    assert not np.array_equal(plain[0], cued[0])


def test_cue_images_correlate_in_training_and_not_when_shuffled():
    _, labels, masks, cues = make_cue_batch("train", range(600), 32)
    assert 0.85 < float((labels == cues).mean()) < 0.95
    assert set(np.unique(labels).tolist()) == set(range(NUM_CLASSES))
    assert masks.any(axis=(1, 2)).all()
    _, labels, _, cues = make_cue_batch("test", range(600), 32, correlation=None)
    assert 0.1 < float((labels == cues).mean()) < 0.25
    image, label, mask, cue = make_cue_image(3, 64, correlation=1.0)
    background = image[~mask].mean(axis=0)
    # The background is dominated by the cue's colour: nearer to it than to any other class's.
    distances = [np.linalg.norm(background - np.array(c)) for c in CUE_COLOURS]
    assert int(np.argmin(distances)) == cue == label
    with pytest.raises(ValueError, match="correlation"):
        make_cue_image(0, correlation=1.5)
    with pytest.raises(ValueError, match="RGB colour"):
        make_image(0, 32, background=(1.0, 2.0))


# -- the benchmark ------------------------------------------------------------------------------------------


def test_benchmark_quick_run_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gain", ROOT / "benchmarks" / "gain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "gain.md").read_text()
    for variant in ("baseline", "GAIN", "GAIN_ext", "no_cue"):
        assert f"| {variant} |" in text
        stats = summary["summary"][variant]
        assert 0 <= stats["acc_shuffled"]["mean"] <= 1 and stats["acc_shuffled"]["se"] >= 0
    assert (tmp_path / "images" / "gain" / "maps.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "gain.json").read_text())
    assert len(saved["runs"]) == 4 * len(saved["config"]["seeds"]) >= 8
    assert set(saved["paired_vs_baseline"]) == {"GAIN", "GAIN_ext"}
    assert "python benchmarks/gain.py --quick" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_step_on_cuda_with_masks_and_multi_hot_labels():
    torch.manual_seed(0)
    model = Tiny(classes=4).cuda()
    x = torch.randn(3, 3, 16, 16, device="cuda")
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]], device="cuda")
    masks = [torch.rand(16, 16, device="cuda"), None, torch.rand(4, 16, 16, device="cuda")]
    out = GAIN(model, [model.conv2])(x, labels, masks=masks)
    assert out.maps.device.type == "cuda" and out.maps.shape == (3, 4, 16, 16)
    assert all(bool(torch.isfinite(t)) for t in out[3:]) and float(out.loss_e.detach()) > 0
    out.loss.backward()
    assert model.conv1.weight.grad is not None and bool(torch.isfinite(model.conv1.weight.grad).all())


@pytest.mark.parametrize(
    "method", [m.cls for m in methods() if m.capabilities.differentiable], ids=lambda cls: cls.__name__
)
def test_every_method_with_differentiable_maps_trains(method):
    torch.manual_seed(0)
    model = Tiny(bn=False)
    x, y = _batch()
    out = GAIN(model, [model.conv2], method=method)(x, y, masks=torch.rand(4, 16, 16))
    assert all(bool(torch.isfinite(t)) for t in out[3:]) and out.maps.shape == (4, 16, 16)
    out.loss.backward()
    assert float(model.conv1.weight.grad.abs().sum()) > 0
    assert _hooks(model) == 0


def test_public_names():
    import camlib.demo.data
    import camlib.training
    import camlib.training.gain

    assert set(camlib.training.__all__) == {"GAIN", "GAINOutput", "erase", "soft_mask"}
    assert set(camlib.training.gain.__all__) == set(camlib.training.__all__)
    assert {"CUE_COLOURS", "make_cue_batch", "make_cue_image"} <= set(camlib.demo.data.__all__)
    for name in camlib.training.__all__:
        assert getattr(camlib.training, name) is getattr(camlib.training.gain, name)
