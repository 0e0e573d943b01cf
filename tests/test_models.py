"""camlib.models: building models, loading checkpoints, target layers, images and the explain pipeline.

Offline: torchvision models are built with random weights (or on the meta
device, which allocates nothing), and the one download path is mocked.
"""

from __future__ import annotations

import re
import warnings
from urllib.error import URLError

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camlib
from camlib import models
from camlib.demo import CLASS_NAMES, DemoNet, load_demo_model, make_sample
from camlib.models import (
    CAM_METHODS,
    build_model,
    candidate_target_layer_paths,
    class_names,
    default_preprocessing,
    default_target_layer_paths,
    default_target_layers,
    explain,
    image_grid,
    load_checkpoint,
    load_image,
    make_cam,
    resolve_device,
    resolve_target_layers,
)
from camlib.utils.image import preprocess_image

TORCHVISION_NAMES = torchvision.models.list_models(module=torchvision.models)


def small_resnet(num_classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_public_names():
    for name in models.__all__:
        assert hasattr(models, name), name
    # a read-only view of the registry: every registered name, no more
    from camlib.registry import get_method, method_names

    assert list(CAM_METHODS) == method_names() and len(CAM_METHODS) == len(method_names())
    assert {"gradcam", "gradcam++", "fullgrad", "finercam", "sess", "refinecam", "randomcam"} <= set(CAM_METHODS)
    assert all(CAM_METHODS[name] is get_method(name).cls for name in CAM_METHODS)
    assert make_cam is camlib.registry.make_cam
    with pytest.raises(TypeError):
        CAM_METHODS["gradcam"] = None  # read-only


# --------------------------------------------------------------------------- build_model


def test_demo_default_weights_are_the_bundled_ones():
    model = build_model("demo", "DEFAULT")
    assert isinstance(model, DemoNet) and not model.training
    assert same_weights(model, load_demo_model())
    assert build_model("demo", "default").fc.out_features == len(CLASS_NAMES)


def test_demo_random_weights_and_num_classes():
    model = build_model("demo", "none", num_classes=3)
    assert model.fc.out_features == 3
    assert not same_weights(build_model("demo", None), load_demo_model())
    with pytest.raises(ValueError, match="bundled demo weights have 6 classes"):
        build_model("demo", "DEFAULT", num_classes=3)


def test_torchvision_model_with_random_weights():
    model = build_model("resnet18", "none", num_classes=14)
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 14)


def test_vit_is_built_for_the_image_size_and_its_zero_head_is_randomised():
    model = build_model("vit_b_16", "none", image_size=32)
    assert model.image_size == 32
    assert model.heads.head.weight.abs().max() > 0  # torchvision initialises it to zeros
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5O'.*Did you mean: .*resnet50"):
        build_model("resnet5O")
    with pytest.raises(TypeError):
        build_model(torchvision.models.resnet18)


@pytest.mark.parametrize("weights", ["pretrained", "no/such/file.pt"])
def test_bad_weights_value(weights):
    with pytest.raises(ValueError, match="'DEFAULT' \\(pretrained\\), 'none' \\(random\\) or the path"):
        build_model("resnet18", weights)


def test_bad_num_classes():
    with pytest.raises(TypeError, match="num_classes"):
        build_model("resnet18", "none", num_classes=2.5)
    with pytest.raises(ValueError, match="positive"):
        build_model("resnet18", "none", num_classes=0)


def test_default_weights_offline_raise_a_clear_runtime_error(monkeypatch, tmp_path):
    def no_network(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(RuntimeError) as info:
        build_model("resnet18", "DEFAULT")
    message = str(info.value)
    assert "internet" in message and "--weights none" in message and "--weights PATH" in message
    assert "resnet18" in message and "name resolution" in message
    assert isinstance(info.value.__cause__, URLError)  # chained, not swallowed


def test_default_weights_are_requested_from_torchvision(monkeypatch):
    requested = []

    def fake_state_dict(self, *args, **kwargs):
        requested.append(self)
        return torchvision.models.resnet18(weights=None).state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_state_dict)
    build_model("resnet18", "DEFAULT")
    assert requested == [torchvision.models.ResNet18_Weights.DEFAULT]


def test_default_weights_refuse_another_class_count_or_vit_size():
    with pytest.raises(ValueError, match="DEFAULT weights of densenet121 have 1000 classes, not 14"):
        build_model("densenet121", "DEFAULT", num_classes=14)
    with pytest.raises(ValueError, match="trained at 224x224"):
        build_model("vit_b_16", "DEFAULT", image_size=64)


def test_timm_names_need_timm():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install timm"):
            build_model("timm:deit_tiny_patch16_224")
    else:
        model = build_model("timm:resnet18", "none", num_classes=3)
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_model_names_and_class_names():
    names = models.model_names()
    assert names[0] == "demo" and "resnet50" in names and "swin_t" in names
    assert class_names("demo") == list(CLASS_NAMES)
    assert class_names("resnet50")[281] == "tabby"
    assert class_names("resnet50", num_outputs=14) is None
    assert class_names("something-else") is None


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(TypeError):
        resolve_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


# --------------------------------------------------------------------------- load_checkpoint


def test_plain_state_dict(tmp_path):
    source = small_resnet(seed=1)
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    target = small_resnet(seed=2)
    assert load_checkpoint(target, path) is target
    assert same_weights(target, source)


def test_dataparallel_prefix_is_stripped(tmp_path):
    source = small_resnet(seed=1)
    wrapped = nn.DataParallel(source)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    path = tmp_path / "dp.pt"
    torch.save(wrapped.state_dict(), path)
    target = load_checkpoint(small_resnet(seed=2), path)
    assert same_weights(target, source)


def test_ddp_compile_and_lightning_prefixes_are_stripped(tmp_path):
    source = small_resnet(seed=1)
    state = source.state_dict()
    for name, prefixed in {
        "ddp_in_dp": {f"module.module.{k}": v for k, v in state.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
    }.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(prefixed, path)
        assert same_weights(load_checkpoint(small_resnet(seed=2), path), source), name


def test_a_model_with_a_submodule_named_module_keeps_its_keys(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(3, 2)

    source = Wrapper()
    path = tmp_path / "wrapper.pt"
    torch.save(source.state_dict(), path)
    assert torch.equal(load_checkpoint(Wrapper(), path).module.weight, source.module.weight)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_training_checkpoint_dicts(tmp_path, key):
    source = small_resnet(seed=1)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    checkpoint = {
        "epoch": 12,
        "best_acc1": torch.tensor(0.7),
        "optimizer": optimizer.state_dict(),
        "arch": "resnet18",
    }
    checkpoint[key] = nn.DataParallel(source).state_dict()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    assert same_weights(load_checkpoint(small_resnet(seed=2), path), source)


def test_nested_checkpoint_dict(tmp_path):
    source = small_resnet(seed=1)
    path = tmp_path / "nested.pt"
    torch.save({"model": {"state_dict": source.state_dict(), "config": {"depth": 18}}, "step": 5}, path)
    assert same_weights(load_checkpoint(small_resnet(seed=2), path), source)


def test_old_checkpoints_without_num_batches_tracked(tmp_path):
    source = small_resnet(seed=1)
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    target = load_checkpoint(small_resnet(seed=2), path)
    assert torch.equal(target.conv1.weight, source.conv1.weight)


@pytest.mark.parametrize("content", ["text", "png", "npy", "empty"])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / f"not_a_checkpoint.{content}"
    if content == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif content == "png":
        cv2.imwrite(str(path.with_suffix(".png")), np.zeros((8, 8, 3), np.uint8))
        path = path.with_suffix(".png")
    elif content == "npy":
        np.save(path, np.zeros(3))  # the name already ends with .npy
    else:
        path.write_bytes(b"")
    model = small_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_whole_pickled_model_is_refused_with_advice(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(small_resnet(), path)
    with pytest.raises(TypeError) as info:
        load_checkpoint(small_resnet(), path)
    message = str(info.value)
    assert "torchvision.models.resnet.ResNet" in message
    assert "weights_only=True" in message and "state_dict()" in message


@pytest.mark.parametrize(
    ("obj", "received"),
    [
        ([torch.zeros(3)], "holds a list"),
        (torch.zeros(3), "holds a Tensor"),
        ({"epoch": 3, "lr": 0.1}, "holds a dict with keys 'epoch', 'lr'"),
    ],
)
def test_a_checkpoint_without_a_state_dict(tmp_path, obj, received):
    path = tmp_path / "odd.pt"
    torch.save(obj, path)
    with pytest.raises(TypeError, match=received) as info:
        load_checkpoint(small_resnet(), path)
    assert "'state_dict'" in str(info.value)


def test_mismatched_keys_are_named(tmp_path):
    path = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None, num_classes=5).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(small_resnet(), path)
    message = str(info.value)
    assert "does not match ResNet" in message and "unexpected keys: layer1.2." in message
    assert "in all" in message  # long lists are shortened, with the count

    path = tmp_path / "resnet18.pt"
    torch.save(small_resnet().state_dict(), path)
    with pytest.raises(ValueError, match=re.escape("missing keys: layer1.2.conv1.weight")):
        load_checkpoint(torchvision.models.resnet34(weights=None, num_classes=5), path)


def test_a_retrained_head_suggests_num_classes(tmp_path):
    path = tmp_path / "chexnet.pt"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None, num_classes=14).state_dict()}, path)
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match=re.escape("fc.weight (14, 512) vs (1000, 512)")) as info:
        load_checkpoint(model, path)
    assert "num_classes=14 (--num-classes 14)" in str(info.value)
    model = build_model("resnet18", path, num_classes=14)
    assert model.fc.out_features == 14


def test_checkpoint_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(small_resnet(), tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_checkpoint(small_resnet(), tmp_path)
    with pytest.raises(TypeError, match=re.escape("torch.nn.Module")):
        load_checkpoint({"fc.weight": torch.zeros(1)}, tmp_path / "missing.pt")


def test_build_model_with_a_demo_checkpoint(tmp_path):
    path = tmp_path / "demo_retrained.pt"
    source = DemoNet(num_classes=2)
    torch.save({"model_state_dict": nn.DataParallel(source).state_dict()}, path)
    assert same_weights(build_model("demo", str(path), num_classes=2), source)


# --------------------------------------------------------------------------- target layers


def _names_buildable_on_meta():
    return [n for n in TORCHVISION_NAMES if not n.startswith("regnet_")]  # regnet's init copies data


def test_every_torchvision_classifier_has_resolvable_default_and_candidate_layers():
    failures = []
    for name in [*_names_buildable_on_meta(), "regnet_x_400mf"]:
        device = "cpu" if name.startswith("regnet_") else "meta"  # meta: built without allocating weights
        with torch.device(device), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(name, weights=None)
        for path in {*default_target_layer_paths(name), *candidate_target_layer_paths(name)}:
            try:
                resolve_target_layers(model, [path])
            except ValueError as err:
                failures.append(f"{name}: {err}")
        assert candidate_target_layer_paths(name)[-1] == default_target_layer_paths(name)[-1]
    assert not failures, failures


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet50", "layer4[-1]"),
        ("wide_resnet50_2", "layer4[-1]"),
        ("resnext50_32x4d", "layer4[-1]"),
        ("vgg16", "features[-1]"),
        ("densenet121", "features[-1]"),
        ("vit_b_16", "encoder.layers[-2].ln_1"),
        ("swin_t", "features[-1][-1].norm1"),
        ("demo", "features[-1]"),
    ],
)
def test_default_layer_paths(name, expected):
    assert default_target_layer_paths(name) == [expected]


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "mobilenet_v3_small",
        "squeezenet1_1",
        "shufflenet_v2_x0_5",
        "mnasnet0_5",
        "efficientnet_b0",
    ],
)
def test_default_layers_give_maps_on_small_torchvision_models(name):
    model = build_model(name, "none", num_classes=4)
    layers = default_target_layers(model, name)
    with make_cam("gradcam", model, layers) as cam:
        maps = cam(torch.rand(1, 3, 96, 96))
    assert maps.shape == (1, 96, 96) and np.isfinite(maps).all()


def test_demo_default_layer_is_demo_target_layers():
    model = load_demo_model()
    assert default_target_layers(model, "demo") == [model.features[-1]]


def test_unknown_architecture_asks_for_a_target_layer():
    with pytest.raises(ValueError, match=r"no default target layer is known for 'mynet'.*--target-layer"):
        default_target_layer_paths("mynet")
    with pytest.raises(ValueError, match="no default target layer"):
        candidate_target_layer_paths("mynet")


def test_resolve_target_layers_errors_list_candidates():
    model = small_resnet()
    assert resolve_target_layers(model, ["layer4[-1]", "layer3.1"]) == [model.layer4[1], model.layer3[1]]
    with pytest.raises(ValueError, match="Close matches: layer4"):
        resolve_target_layers(model, ["layer5"])
    with pytest.raises(ValueError, match="Top-level modules of ResNet: conv1, bn1, relu, maxpool, layer1"):
        resolve_target_layers(model, ["qqq"])
    with pytest.raises(TypeError, match="list of layer path strings"):
        resolve_target_layers(model, "layer4")
    with pytest.raises(ValueError, match="empty"):
        resolve_target_layers(model, [])


# --------------------------------------------------------------------------- make_cam


@pytest.mark.parametrize(
    "method", [name for name in CAM_METHODS if not camlib.registry.get_method(name).capabilities.needs_attention]
)
def test_make_cam_builds_each_method(method):
    model = small_resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. FullGrad must not warn about ignored target layers
        cam = make_cam(method, model, [model.layer4[-1]], batch_size=8, progress=False)
    assert type(cam) is CAM_METHODS[method]  # batch_size and progress are accepted by every method


def test_make_cam_errors():
    model = small_resnet()
    assert type(make_cam(" GradCAM++ ", model, [model.layer4[-1]])) is camlib.GradCAMPlusPlus
    with pytest.raises(ValueError, match=re.escape("unknown method 'gradcamm'. Did you mean: gradcam")):
        make_cam("gradcamm", model, [model.layer4[-1]])
    with pytest.raises(TypeError):
        make_cam(camlib.GradCAM, model, [model.layer4[-1]])


# --------------------------------------------------------------------------- images


def test_load_image_converts_bgr_to_rgb_and_resizes(tmp_path):
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), np.full((30, 40, 3), (0, 0, 255), np.uint8))  # BGR red
    image = load_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.float32
    assert image[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert load_image(str(path), 16).shape == (16, 16, 3)
    assert load_image(path, (12, 20)).shape == (12, 20, 3)


def test_load_image_grey_and_16_bit(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((10, 10), 128, np.uint8))
    assert load_image(grey).shape == (10, 10, 3)
    deep = tmp_path / "xray16.png"
    cv2.imwrite(str(deep), np.full((10, 10), 1000, np.uint16))
    assert load_image(deep)[0, 0, 0] == pytest.approx(1000 / 65535, abs=1e-6)  # precision kept


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image OpenCV can read"):
        load_image(text)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="image_size"):
        load_image(image, image_size=(1, 2, 3))
    with pytest.raises(ValueError, match="positive"):
        load_image(image, image_size=0)


def test_default_preprocessing():
    demo = default_preprocessing("demo")
    assert demo.image_size == (128, 128) and demo.mean == (0.5, 0.5, 0.5) and demo.std == (0.25, 0.25, 0.25)
    resnet = default_preprocessing("resnet50")
    assert resnet.image_size == (224, 224) and resnet.mean == models.IMAGENET_MEAN
    assert default_preprocessing("inception_v3").image_size == (299, 299)


def test_image_grid():
    tile = np.full((20, 30, 3), 100, np.uint8)
    assert image_grid([[tile, tile], [tile, tile]]).shape == (40, 60, 3)
    captioned = image_grid([[tile, tile], [tile, tile]], row_labels=["a", "b"], column_labels=["x", "y"])
    assert captioned.shape[1] == 60 and captioned.shape[0] > 40
    assert captioned.min() < 100  # text was drawn
    with pytest.raises(ValueError, match="equal length"):
        image_grid([[tile, tile], [tile]])
    with pytest.raises(ValueError, match="same shape"):
        image_grid([[tile, np.zeros((10, 10, 3), np.uint8)]])
    with pytest.raises(ValueError, match="row_labels"):
        image_grid([[tile]], row_labels=["a", "b"])


# --------------------------------------------------------------------------- explain


@pytest.fixture(scope="module")
def demo_input():
    image, _, masks = make_sample()
    rgb = np.float32(image)
    pre = default_preprocessing("demo")
    return rgb, preprocess_image(rgb, pre.mean, pre.std), masks


def _box(mask: np.ndarray, margin: int = 8):
    ys, xs = np.nonzero(mask)
    return ys.min() - margin, ys.max() + margin, xs.min() - margin, xs.max() + margin


def test_explain_localises_each_object_of_the_sample(demo_input):
    rgb, x, masks = demo_input
    model = load_demo_model()
    categories = [CLASS_NAMES.index("star"), CLASS_NAMES.index("ring")]
    result = explain(model, x, rgb, "gradcam", default_target_layers(model, "demo"), categories=categories)
    assert result.grayscale_cams.shape == (2, 1, 128, 128)
    assert result.categories == categories and result.class_labels == ["class 3", "class 5"]
    for maps, category in zip(result.grayscale_cams, categories):
        y, x_ = np.unravel_index(maps[0].argmax(), maps[0].shape)
        top, bottom, left, right = _box(masks[category])
        assert top <= y <= bottom and left <= x_ <= right, CLASS_NAMES[category]
    assert result.cam.shape[1] == 128 and result.cam.shape[0] > 256  # two captioned rows
    assert result.gb.shape == result.cam.shape and result.cam_gb.shape == result.cam.shape


def test_explain_per_layer_grid_and_top_class(demo_input):
    rgb, x, _ = demo_input
    model = load_demo_model()
    paths = candidate_target_layer_paths("demo")
    result = explain(
        model, x, rgb, "layercam", resolve_target_layers(model, paths), per_layer=True, layer_names=paths,
        class_names=CLASS_NAMES,
    )  # fmt: skip
    assert result.grayscale_cams.shape == (1, 3, 128, 128)
    assert result.categories == [int(result.scores.argmax())]
    assert result.class_labels == [f"{result.categories[0]} {CLASS_NAMES[result.categories[0]]}"]
    assert result.cam.shape[1] == 3 * 128 and result.gb.shape == (128, 128, 3)
    assert result.layer_names == paths


def test_explain_restores_the_model_and_checks_its_arguments(demo_input):
    rgb, x, _ = demo_input
    model = DemoNet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, x, rgb, "gradcam", [model.features[-1]])
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="out of range: the model has 6 outputs"):
        explain(model, x, rgb, "gradcam", [model.features[-1]], categories=[6])
    with pytest.raises(TypeError, match="class indices must be ints"):
        explain(model, x, rgb, "gradcam", [model.features[-1]], categories=["star"])
    with pytest.raises(ValueError, match="per_layer does not apply to fullgrad"):
        explain(model, x, rgb, "fullgrad", [model.features[-1]], per_layer=True)
    with pytest.raises(TypeError, match=r"\[1, C, H, W\]"):
        explain(model, x.repeat(2, 1, 1, 1), rgb, "gradcam", [model.features[-1]])
    with pytest.raises(ValueError, match="rgb_img"):
        explain(model, x, rgb[:64], "gradcam", [model.features[-1]])
