"""Tests for the image/display helpers in camlib.utils._display (re-exported by camlib.utils.image)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import cv2
import numpy as np
import pytest
import torch

from camlib.utils._display import (
    create_labels_legend,
    deprocess_image,
    gist_rainbow_colors,
    preprocess_image,
    show_cam_on_image,
    show_factorization_on_image,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _reference_image_module():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils import image

    return image


# --------------------------------------------------------------------------- preprocess / deprocess


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize(
    ("mean", "std"), [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
)
def test_preprocess_matches_reference(rng, dtype, mean, std):
    ref = _reference_image_module()
    img = (rng.random((7, 9, 3)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    before = img.copy()
    ours = preprocess_image(img, mean=mean, std=std)
    theirs = ref.preprocess_image(img, mean=list(mean), std=list(std))
    assert ours.shape == (1, 3, 7, 9)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    np.testing.assert_array_equal(img, before)


def test_preprocess_default_and_golden():
    img = np.full((2, 2, 3), 255, dtype=np.uint8)
    out = preprocess_image(img)
    torch.testing.assert_close(out, torch.ones(1, 3, 2, 2))  # (1 - 0.5) / 0.5


def test_preprocess_accepts_pil():
    from PIL import Image

    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    torch.testing.assert_close(preprocess_image(Image.fromarray(img)), preprocess_image(img))


def test_preprocess_errors():
    with pytest.raises(TypeError, match="torch tensor"):
        preprocess_image(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="list"):
        preprocess_image([[0, 1]])
    with pytest.raises(ValueError, match="one value per channel"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((1, 4, 4, 3), np.uint8))


def test_deprocess_matches_reference(rng):
    ref = _reference_image_module()
    for arr in (rng.standard_normal((6, 5, 3)), rng.standard_normal((6, 5, 3)).astype(np.float32) * 1e-3):
        np.testing.assert_array_equal(deprocess_image(arr), ref.deprocess_image(arr))
        out_tensor = deprocess_image(torch.from_numpy(arr))
        np.testing.assert_array_equal(out_tensor, ref.deprocess_image(arr))
        assert out_tensor.dtype == np.uint8


def test_deprocess_golden():
    # mean 0, std sqrt(2/3): standardised values -+1.2247 -> 0.5 -+ 0.12247 -> *255, truncated.
    np.testing.assert_array_equal(deprocess_image(np.array([-1.0, 0.0, 1.0])), [96, 127, 158])


# --------------------------------------------------------------------------- show_cam_on_image


@pytest.mark.parametrize("img_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_rgb", [False, True])
@pytest.mark.parametrize("colormap", [cv2.COLORMAP_JET, cv2.COLORMAP_VIRIDIS])
@pytest.mark.parametrize("image_weight", [0.0, 0.3, 0.5, 1.0])
def test_show_cam_matches_reference(rng, img_dtype, use_rgb, colormap, image_weight):
    ref = _reference_image_module()
    img = rng.random((8, 11, 3)).astype(img_dtype)
    mask = rng.random((8, 11)).astype(np.float32)
    ours = show_cam_on_image(img, mask, use_rgb=use_rgb, colormap=colormap, image_weight=image_weight)
    theirs = ref.show_cam_on_image(img, mask, use_rgb=use_rgb, colormap=colormap, image_weight=image_weight)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


def test_show_cam_accepts_tensor_mask(rng):
    img = rng.random((8, 11, 3)).astype(np.float32)
    mask = rng.random((8, 11)).astype(np.float32)
    expected = show_cam_on_image(img, mask, use_rgb=True)
    np.testing.assert_array_equal(show_cam_on_image(img, torch.from_numpy(mask), use_rgb=True), expected)
    np.testing.assert_array_equal(
        show_cam_on_image(img, torch.from_numpy(mask)[None], use_rgb=True), expected
    )
    mask_with_grad = torch.from_numpy(mask).requires_grad_(True)
    np.testing.assert_array_equal(show_cam_on_image(img, mask_with_grad, use_rgb=True), expected)


def test_show_cam_golden():
    # A zero mask through JET is pure dark blue, BGR (128, 0, 0); with a black image and
    # image_weight 0 the blend is rescaled by its maximum, so it becomes (255, 0, 0).
    out = show_cam_on_image(np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.float32), image_weight=0.0)
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([255, 0, 0], np.uint8), (2, 2, 3)))
    out_rgb = show_cam_on_image(
        np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.float32), use_rgb=True, image_weight=0.0
    )
    np.testing.assert_array_equal(out_rgb[0, 0], [0, 0, 255])


def test_show_cam_errors(rng):
    img = rng.random((8, 11, 3)).astype(np.float32)
    mask = rng.random((8, 11)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        show_cam_on_image(img * 255, mask)
    with pytest.raises(ValueError, match=r"image_weight.*1\.5"):
        show_cam_on_image(img, mask, image_weight=1.5)
    with pytest.raises(ValueError, match=r"\(11, 8\).*\(8, 11\)"):
        show_cam_on_image(img, mask.T)
    with pytest.raises(ValueError, match="mask has shape"):
        show_cam_on_image(img, mask[None].repeat(2, axis=0))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        show_cam_on_image(img[..., 0], mask)
    with pytest.raises(TypeError, match="list"):
        show_cam_on_image(img, mask.tolist())


def test_show_cam_warns_and_clips_out_of_range_mask(rng):
    img = rng.random((4, 4, 3)).astype(np.float32)
    mask = np.linspace(-0.5, 1.5, 16, dtype=np.float32).reshape(4, 4)
    with pytest.warns(UserWarning, match="outside"):
        out = show_cam_on_image(img, mask)
    np.testing.assert_array_equal(out, show_cam_on_image(img, np.clip(mask, 0, 1)))


# --------------------------------------------------------------------------- labels legend


def test_create_labels_legend_matches_reference(rng):
    ref = _reference_image_module()
    scores = rng.random((4, 6))
    labels = {i: f"name{i}, syn a, syn b, syn c" for i in range(6)}
    for top_k in (1, 2, 3):
        assert create_labels_legend(scores, labels, top_k=top_k) == ref.create_labels_legend(
            scores, labels, top_k
        )


def test_create_labels_legend_golden_and_inputs():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    labels = ["cat", "dog, puppy, hound, mutt", "bird"]
    assert create_labels_legend(scores, labels) == [
        "dog, puppy, hound:0.70\nbird:0.20",
        "cat:0.50\ndog, puppy, hound:0.30",
    ]
    assert create_labels_legend(torch.from_numpy(scores), labels, top_k=1) == [
        "dog, puppy, hound:0.70",
        "cat:0.50",
    ]


def test_create_labels_legend_errors():
    with pytest.raises(ValueError, match="no name for category 2"):
        create_labels_legend(np.array([[0.0, 0.1, 0.9]]), {0: "a", 1: "b"})
    with pytest.raises(ValueError, match="n_concepts, n_categories"):
        create_labels_legend(np.zeros(3), {0: "a"})
    with pytest.raises(ValueError, match="top_k"):
        create_labels_legend(np.zeros((1, 3)), ["a", "b", "c"], top_k=0)


# --------------------------------------------------------------------------- factorisation display


def test_gist_rainbow_matches_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    cmap = matplotlib.colormaps["gist_rainbow"]
    for n in (1, 2, 3, 5, 7, 12, 16, 49, 100):
        ours = gist_rainbow_colors(n)
        theirs = [np.array(cmap(x)) for x in np.arange(0, 1, 1.0 / n)][:n]
        assert len(ours) == n
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


def test_gist_rainbow_golden():
    colors = gist_rainbow_colors(2)
    np.testing.assert_allclose(colors[0], [1.0, 0.0, 0.16, 1.0])  # the ramp's first anchor
    assert colors[1][1] == 1.0 and colors[1][3] == 1.0  # the middle of the ramp is in the green band


@pytest.mark.parametrize("image_weight", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_show_factorization_matches_reference_with_colors(rng, image_weight, dtype):
    ref = _reference_image_module()
    img = rng.random((9, 13, 3)).astype(dtype)
    maps = rng.random((4, 9, 13)).astype(dtype)
    colors = [np.array(c) for c in rng.random((4, 3))]
    ours = show_factorization_on_image(img, maps, colors=colors, image_weight=image_weight)
    theirs = ref.show_factorization_on_image(img, maps.copy(), colors=colors, image_weight=image_weight)
    np.testing.assert_array_equal(ours, theirs)


def test_show_factorization_default_colors_match_reference(rng, monkeypatch):
    ref = _reference_image_module()
    matplotlib = pytest.importorskip("matplotlib")
    # The reference calls plt.cm.get_cmap, which newer matplotlib removed; put it back for the oracle.
    monkeypatch.setattr(matplotlib.cm, "get_cmap", matplotlib.colormaps.get_cmap, raising=False)
    img = rng.random((9, 13, 3))
    maps = rng.random((5, 9, 13))
    np.testing.assert_array_equal(
        show_factorization_on_image(img, maps), ref.show_factorization_on_image(img, maps)
    )


def test_show_factorization_does_not_mutate_explanations(rng):
    maps = rng.random((3, 6, 6))
    before = maps.copy()
    show_factorization_on_image(rng.random((6, 6, 3)), maps)
    np.testing.assert_array_equal(maps, before)


def test_show_factorization_golden():
    # Component 0 (pure red) wins the left column at full strength, component 1 (pure blue)
    # the right column at half strength; with image_weight 0 the pixels are the colours.
    maps = np.array([[[1.0, 0.0]], [[0.0, 0.5]]])
    out = show_factorization_on_image(
        np.zeros((1, 2, 3)), maps, colors=[np.array([1.0, 0, 0]), np.array([0, 0, 1.0])], image_weight=0.0
    )
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 127])


def test_show_factorization_legend(rng):
    img = rng.random((64, 48, 3))
    maps = rng.random((3, 64, 48))
    colors = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])]
    plain = show_factorization_on_image(img, maps, colors=colors)
    with_legend = show_factorization_on_image(
        img, maps, colors=colors, concept_labels=["a:0.5\nb:0.2", "c", "d"]
    )
    assert with_legend.shape == (64, 96, 3)
    assert with_legend.dtype == np.uint8
    np.testing.assert_array_equal(with_legend[:, :48], plain)
    legend = with_legend[:, 48:].reshape(-1, 3)
    for color in ([255, 0, 0], [0, 255, 0], [0, 0, 255]):
        assert (legend == color).all(axis=1).any(), f"legend has no swatch of colour {color}"
    inside = with_legend[2:-2, 50:-2].reshape(-1, 3)  # away from the grey (128) frame
    grey = (inside[:, 0] == inside[:, 1]) & (inside[:, 1] == inside[:, 2])
    assert (grey & (inside[:, 0] < 120)).any(), "legend has no text"


def test_show_factorization_errors(rng):
    img = rng.random((6, 6, 3))
    with pytest.raises(ValueError, match=r"\[n_components, 6, 6\].*\(2, 5, 6\)"):
        show_factorization_on_image(img, rng.random((2, 5, 6)))
    with pytest.raises(ValueError, match="one colour per component"):
        show_factorization_on_image(img, rng.random((3, 6, 6)), colors=[np.ones(3)])
    with pytest.raises(ValueError, match="one label per component"):
        show_factorization_on_image(img, rng.random((3, 6, 6)), concept_labels=["a"])
    with pytest.raises(ValueError, match="image_weight"):
        show_factorization_on_image(img, rng.random((3, 6, 6)), image_weight=-0.1)


@pytest.mark.parametrize(
    "module",
    [
        "camlib.utils._display",
        "camlib.guided_backprop",
        "camlib.feature_factorization.deep_feature_factorization",
    ],
)
def test_no_plotting_or_scipy_imports(module):
    """The reference needs matplotlib and scipy at runtime; camlib must not."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"matplotlib", "scipy", "pytorch_grad_cam", "PIL"}, imported


def test_show_factorization_rejects_0_255_colors(rng):
    with pytest.raises(ValueError, match="divide 0-255 colours by 255"):
        show_factorization_on_image(
            rng.random((4, 4, 3)), rng.random((2, 4, 4)), colors=[(255, 0, 0), (0, 0, 255)]
        )
