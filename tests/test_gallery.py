"""The gallery in docs/images/gallery is exactly what docs/make_gallery.py makes, and covers every method."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "make_gallery.py"
COMMITTED = ROOT / "docs" / "images" / "gallery"
#: Largest mean absolute difference (out of 255) between a committed picture and a fresh one.
#: Identical maps re-encoded give 0; float differences between machines move a few pixels by a
#: few levels. A changed method, layer or layout moves whole regions and fails.
MEAN_TOLERANCE = 1.0
#: Share of pixels allowed to differ by more than 32 levels (a map boundary shifted by a pixel).
OUTLIER_SHARE = 0.005


def _load_script():
    spec = importlib.util.spec_from_file_location("make_gallery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_gallery"] = module
    spec.loader.exec_module(module)
    return module


gallery = _load_script()


def test_every_registered_method_has_a_picture():
    from camlib.demo import load_demo_model
    from camlib.registry import get_method, method_names

    entries = gallery.gallery()
    cnn_methods = [name for name in method_names() if not get_method(name).capabilities.needs_attention]
    assert [entry.method.name for entry in entries][: len(cnn_methods)] == cnn_methods
    assert len({entry.slug for entry in entries}) == len(entries), "two methods share a picture name"
    model = load_demo_model()
    for entry in entries:
        cam = entry.build(model)
        assert type(cam) is entry.method.cls
        cam.release()


def test_every_method_page_shows_its_picture():
    for slug in gallery.all_slugs():
        if slug in {"methods", "smoothing", "per_layer"}:
            continue
        page = ROOT / "docs" / "methods" / f"{slug}.md"
        assert page.is_file(), f"no page docs/methods/{slug}.md for gallery picture {slug}.jpg"
        assert f"images/gallery/{slug}.jpg" in page.read_text(encoding="utf-8"), f"{page.name} lacks its picture"


def test_gallery_is_the_scripts_output(tmp_path):
    # one test (not one per picture), so that a parallel run makes the gallery only once
    gallery.make_gallery(tmp_path)
    committed = sorted(p.name for p in COMMITTED.glob("*.jpg"))
    produced = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert committed == produced, "run `python docs/make_gallery.py` and commit docs/images/gallery"
    assert not [p.name for p in COMMITTED.iterdir() if p.suffix != ".jpg"], "only the script's JPEGs belong there"
    differing = []
    for name in committed:
        old = cv2.imread(str(COMMITTED / name)).astype(np.int16)
        new = cv2.imread(str(tmp_path / name)).astype(np.int16)
        if old.shape != new.shape:
            differing.append(f"{name}: layout {old.shape} -> {new.shape}")
            continue
        diff = np.abs(old - new)
        if diff.mean() > MEAN_TOLERANCE or (diff > 32).mean() > OUTLIER_SHARE:
            differing.append(f"{name}: mean difference {diff.mean():.2f}, {(diff > 32).mean():.2%} of pixels by > 32")
    assert not differing, "pictures differ from the script's output; run `python docs/make_gallery.py`:\n  " + "\n  ".join(
        differing
    )


def test_gallery_stays_small():
    total = sum(p.stat().st_size for p in COMMITTED.glob("*.jpg"))
    assert total < 2 * 1024 * 1024, f"the gallery weighs {total / 1024:.0f} KiB; keep it under 2 MiB"
