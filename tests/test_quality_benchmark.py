"""benchmarks/quality.py measures every registered method, each on a model it applies to."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from camlib.attention_rollout import AttentionRollout
from camlib.demo import load_demo_vit
from camlib.registry import methods, registered

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    name = "quality_coverage"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def samples(quality):
    return quality.load_samples(1)


def _rows(quality, samples) -> dict:
    rows = quality.methods(samples)
    return {key: {row.key for row in rows if row.model == key and not row.baseline} for key in quality.MODELS}


def test_every_registered_method_is_measured(quality, samples):
    rows = _rows(quality, samples)
    registry = list(methods())
    assert len(registry) > 20
    for info in registry:
        if info.capabilities.needs_attention:
            assert info.name in rows["vit"] and info.name not in rows["cnn"], info.name
        else:
            assert info.name in rows["cnn"], info.name
    assert {"attentionrollout", "transformerattribution", "legrad"} <= rows["vit"]
    assert set(quality.VIT_CNN_STYLE) <= rows["vit"]  # the comparison rows exist under these names
    assert rows["cnn"] | rows["vit"] == {info.name for info in registry}


class ToyAttention(AttentionRollout):
    """A throw-away attention method: rollout under another name."""


def test_a_new_attention_method_gets_a_vit_row(quality, samples):
    with registered("toyattention", ToyAttention):
        rows = quality.methods(samples, ["toyattention"])
        assert [(row.key, row.model) for row in rows] == [("toyattention", "vit")]
        assert rows[0].row == f"ViT: {rows[0].name}"
        vit = load_demo_vit()
        maps, _ = quality.compute_maps(rows[0], vit, quality.MODELS["vit"].target_layers(vit), samples, 4)
    assert maps.shape == (len(samples), 128, 128) and maps.max() > 0.99 and np.ptp(maps) > 0.5
    assert "toyattention" not in _rows(quality, samples)["vit"]


def test_merge_scores_only_the_new_rows(quality, tmp_path):
    first, other = tmp_path / "first", tmp_path / "other"
    quick = ["--quick", "--threads", "1"]
    assert quality.main([*quick, "--docs", str(first), "--methods", "cam", "ground-truth mask"]) == 0
    assert quality.main([*quick, "--docs", str(other), "--methods", "attentionrollout"]) == 0
    figure = (first / quality.FIGURES["grid"]).read_bytes()
    before = json.loads((first / quality.FIGURES["json"]).read_text(encoding="utf-8"))
    merge = ["--merge", "--merge-from", str(other / quality.FIGURES["json"])]
    assert quality.main([*quick, "--docs", str(first), *merge, "--methods", "cam", "random map", "attentionrollout"]) == 0
    after = json.loads((first / quality.FIGURES["json"]).read_text(encoding="utf-8"))
    assert list(after["results"]) == [
        "CAM (Zhou et al.)", "ground-truth mask", "random map", "ViT: Attention rollout", "ViT: ground-truth mask",
        "ViT: random map",
    ]
    for row in ("CAM (Zhou et al.)", "ground-truth mask", "ViT: ground-truth mask"):
        assert after["results"][row] == before["results"][row]  # kept, not recomputed
    assert set(after["info"]["merged_rows"]) == {"random map", "ViT: random map", "ViT: Attention rollout"}
    assert after["info"]["runs"] == 2 and after["info"]["command"].count("benchmarks/quality.py") == 3
    assert (first / quality.FIGURES["grid"]).read_bytes() == figure  # the first run's figures stay
    report = (first / "quality.md").read_text(encoding="utf-8")
    assert "| Attention rollout |" in report and "figures: random map, ViT: Attention rollout, ViT: random map." in report
    assert quality.main([*quick, "--docs", str(first), "--merge", "--redraw", "--methods", "cam"]) == 0  # all drawn
    redrawn = json.loads((first / quality.FIGURES["json"]).read_text(encoding="utf-8"))
    assert redrawn["results"] == after["results"] and redrawn["info"]["merged_rows"] == []
    assert (first / quality.FIGURES["grid"]).read_bytes() != figure
    assert "not drawn" not in (first / "quality.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(["--quick", "--steps", "5", "--docs", str(first), "--merge"])
