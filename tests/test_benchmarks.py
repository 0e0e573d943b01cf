"""The benchmark scripts run (tiny settings) and report what they claim to.

Timings are not asserted here (goals live in the benchmarks, see
docs/benchmarks.md); what is asserted is deterministic: the tables' structure,
the maps' agreement in the AblationCAM suite, and that no tensor saved by the
autograd graph outlives a camlib call while the reference keeps its last graph.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_cam():
    return _load("bench_cam")


def test_gradient_and_ablation_suites_report_medians_ratios_and_parity(bench_cam, tmp_path, capsys):
    out = tmp_path / "bench"
    results = bench_cam.main([
        "--suites", "gradient", "ablation", "--models", "resnet18", "--batches", "2",
        "--methods", "GradCAM", "HiResCAM", "--size", "32", "--rounds", "1", "--ablation-rounds", "1",
        "--out", str(out),
    ])
    gradient = [r for r in results if r["suite"] == "gradient"]
    assert [(r["method"], r["model"], r["batch"]) for r in gradient] == [
        ("GradCAM", "resnet18", 2), ("HiResCAM", "resnet18", 2)
    ]
    for row in gradient:
        assert row["floor_s"] > 0 and row["camlib_s"] > 0
        assert row["camlib_x_floor"] == pytest.approx(row["camlib_s"] / row["floor_s"])
        assert "grad-cam_s" in row  # the oracle is in the test extra
    assert "torchcam_s" not in gradient[1]  # torchcam has no HiResCAM
    (ablation,) = [r for r in results if r["suite"] == "ablation"]
    assert ablation["floor"] == "1 forward + 512 ablated passes"
    assert ablation["max_abs_diff"] <= 1e-4
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert saved["machine"]["cpu_count"] >= 1 and saved["machine"]["loadavg_end"] is not None
    table = out.with_suffix(".md").read_text()
    assert "| GradCAM | resnet18 | 2 |" in table and "### AblationCAM" in table
    assert table in capsys.readouterr().out


def test_leak_suite_finds_no_graph_left_by_camlib_and_the_references_last_graph(bench_cam):
    rows = bench_cam.main([
        "--suites", "leak", "--size", "32", "--leak-calls", "20", "--leak-warmup", "2", "--leak-reference",
    ])
    by_library = {row["library"]: row for row in rows}
    assert by_library["camlib"]["saved_tensors_alive_after_call"] == 0
    assert by_library["grad-cam"]["saved_tensors_alive_after_call"] > 0
    assert by_library["camlib"]["calls"] == 20


def test_scorecam_floor_scores_exactly_camlibs_distinct_masks(bench_cam):
    import torch
    import torchvision

    import camlib

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    masked = bench_cam.scorecam_masked_inputs(model, model.layer4[-1], x)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        with camlib.ScoreCAM(model, [model.layer4[-1]], batch_size=64, progress=False) as cam:
            cam(x)
    finally:
        handle.remove()
    assert seen[0] == 2  # the capture forward
    assert sum(seen[1:]) == masked.shape[0]  # then one forward per distinct mask, no more
    assert max(seen[1:]) <= 64


def test_memory_measurement_sees_a_large_allocation(bench_cam, monkeypatch):
    """The peak-memory probe the memory suite runs in each fresh subprocess."""
    import argparse

    import torch

    args = argparse.Namespace(device="cpu", scorecam_batch=2, scorecam_size=32, scorecam_chunk=16)
    cold, warm = bench_cam.measure_scorecam_memory("camlib", args)
    assert cold >= 0 and warm >= 0
    real = bench_cam.scorecam_runners

    def with_a_256_mib_buffer(*a, **k):
        runners = real(*a, **k)
        run = runners["camlib"]

        def bigger():
            buffer = torch.ones(64, 2**20)  # 256 MiB, touched, freed before returning
            del buffer
            return run()

        return {**runners, "camlib": bigger}

    monkeypatch.setattr(bench_cam, "scorecam_runners", with_a_256_mib_buffer)
    cold, warm = bench_cam.measure_scorecam_memory("camlib", args)
    assert cold >= 250 and warm >= 250


def test_class_score_fast_path_equals_calling_each_target():
    """score_outputs gathers plain ClassifierOutputTarget scores in one op (ScoreCAM,
    AblationCAM and the metrics score thousands of inputs); same values as the calls."""
    import torch

    from camlib.utils.batched import score_outputs, split_outputs
    from camlib.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    outputs = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    for targets in (
        [ClassifierOutputTarget(c) for c in (0, 6, -1, 3, 3)],
        [ClassifierOutputTarget(1), ClassifierOutputSoftmaxTarget(2), ClassifierOutputTarget(0),
         ClassifierOutputTarget(4), ClassifierOutputTarget(5)],
    ):
        expected = torch.stack([t(o) for t, o in zip(targets, split_outputs(outputs, 5))]).float()
        assert torch.equal(score_outputs(outputs, targets), expected)
    with pytest.raises(IndexError):
        score_outputs(outputs, [ClassifierOutputTarget(7)] * 5)
