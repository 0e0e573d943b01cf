"""The benchmark scripts run (tiny settings) and report what they claim to.

Timings are not asserted here (goals live in the benchmarks, see
docs/benchmarks.md); what is asserted is deterministic: the tables' structure,
the maps' agreement in the AblationCAM suite, and that no tensor saved by the
autograd graph outlives a camlib call while the reference keeps its last graph.
``benchmarks/gpu_check.sh`` is checked for its options, its phases' commands, and
that it goes on after a failed phase, stays in its budget and writes its four files
(its whole CPU dry run, ``--device cpu --tiny``, takes minutes: see docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
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

    args = argparse.Namespace(device="cpu", scorecam_batch=2, scorecam_size=32, scorecam_chunk=16, memory_chunk=16)
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


def test_prefault_code_maps_in_read_only_file_pages(bench_cam, tmp_path):
    """What the memory suite's "code mapped in before" row relies on: file pages mapped but
    never read are brought into the resident set, once."""
    import mmap

    path = tmp_path / "four_mib.bin"
    path.write_bytes(bytes(range(256)) * (4 * 2**20 // 256))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        first = bench_cam.prefault_code(only=str(path))
        again = bench_cam.prefault_code(only=str(path))
        assert mapped[-1] == 255
    assert 3.9 <= first <= 4.1 and again < 0.1


def test_scorecam_inputs_ab_times_both_kinds_of_chunk(bench_cam, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("scorecam_inputs_ab", BENCHMARKS / "scorecam_inputs_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--model", "resnet18", "--size", "64", "--chunk", "2", "--start", "0", "--repeats", "2"])
    assert set(result) == {"camlib", "peers"} and all(t > 0 for t in result.values())
    assert "shape [2, 3, 64, 64]" in capsys.readouterr().out


def test_memory_split_reports_peak_anonymous_and_file_backed_growth():
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_split", BENCHMARKS / "memory_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["camlib", "--batch", "1", "--size", "32", "--chunk", "8"])
    assert set(result) == {"peak_mib", "VmRSS_mib", "RssAnon_mib", "RssFile_mib"}
    assert result["peak_mib"] >= result["VmRSS_mib"] - 0.01


def test_malloc_ab_child_times_a_call_and_counts_its_faults():
    import importlib.util

    spec = importlib.util.spec_from_file_location("malloc_ab", BENCHMARKS / "malloc_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.child("ISCAM", batch=1, size=32, samples=1, chunk=8)
    assert result["seconds"] > 0 and result["minor_faults"] >= 0
    assert set(module.KEEP) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}


def test_score_methods_suite_times_camlib_against_torchcam(bench_cam):
    rows = bench_cam.main(["--suites", "score-methods", "--methods-size", "32", "--methods-samples", "1",
                           "--methods-rounds", "1"])
    assert [r["method"] for r in rows] == ["SSCAM", "ISCAM", "SmoothGradCAMpp"]
    for r in rows:
        assert r["camlib_s"] > 0
        if "torchcam_s" in r:
            assert r["torchcam_s"] > 0


def test_scorecam_large_suite_reports_each_library(bench_cam, monkeypatch):
    """The suite's plumbing and table (the real resnet50 runs take minutes: timed calls replaced)."""
    import torchvision

    monkeypatch.setattr(bench_cam, "_model", lambda name, device: torchvision.models.resnet18(weights=None).eval())
    seen = {}

    def runners(model, layer, x, classes, chunk, channels=None):
        seen.update(shape=tuple(x.shape), chunk=chunk, channels=channels)
        return {lib: (lambda: None) for lib in bench_cam.LIBRARIES}

    monkeypatch.setattr(bench_cam, "scorecam_runners", runners)
    rows = bench_cam.main(["--suites", "scorecam-large"])
    assert seen == {"shape": (1, 3, 224, 224), "chunk": 32, "channels": None}
    assert rows[0]["suite"] == "scorecam-large" and all(f"{lib}_s" in rows[0] for lib in bench_cam.LIBRARIES)
    assert rows[0]["all_channels"] and rows[0]["rounds"] == 1
    rows = bench_cam.main(["--suites", "scorecam-large", "--large-libraries", "torchcam", "--large-rounds", "2"])
    assert "grad-cam_s" not in rows[0] and "camlib_s" in rows[0] and len(rows[0]["torchcam_rounds_s"]) == 2


def test_cut_down_scorecam_runs_count_forward_passes_and_agree_with_the_reference(bench_cam, capsys):
    """The cut-down runs of the long ScoreCAM configurations (first N channels only):
    the images each library's model saw, the time outside the model, the same maps."""
    rows = bench_cam.main([
        "--suites", "scorecam-large", "scorecam-frcnn", "--large-model", "resnet18", "--large-size", "64",
        "--large-channels", "6", "--large-chunk", "4", "--large-rounds", "2",
        "--frcnn-size", "64", "--frcnn-channels", "2", "--frcnn-chunk", "2",
    ])
    large, frcnn = rows
    assert (large["suite"], large["channels"], large["all_channels"]) == ("scorecam-large", 6, False)
    assert "torchcam_s" not in large  # torchcam cannot explain a subset of the channels
    assert large["grad-cam_images"] == 1 + 6  # the capture pass, then one per channel
    assert 2 <= large["camlib_images"] <= 1 + 6  # camlib scores each distinct mask once
    for row in rows:
        for lib in ("camlib", "grad-cam"):
            assert 0 < row[f"{lib}_forward_s"] <= row[f"{lib}_s"]
            assert row[f"{lib}_outside_model_s"] == pytest.approx(row[f"{lib}_s"] - row[f"{lib}_forward_s"], abs=0.5)
        assert row["max_abs_diff_vs_grad-cam"] <= 1e-4
    assert frcnn["suite"] == "scorecam-frcnn" and frcnn["channels"] == 2
    assert frcnn["grad-cam_images"] == 1 + 2
    table = capsys.readouterr().out
    assert "Faster R-CNN tutorial configuration" in table and "the first 6 channels only" in table


def test_autocast_suite_compares_half_precision_maps_and_catches_blank_ones(bench_cam):
    args = ["--suites", "autocast", "--models", "resnet18", "--batches", "2", "--methods", "GradCAM", "--rounds", "1"]
    rows = bench_cam.main([*args, "--size", "64"])
    assert [(r["dtype"], r["ok"]) for r in rows] == [("float16", True), ("bfloat16", True)]
    for row in rows:
        assert row["dtype_out"] == "float32" and row["finite"] and not row["float32_blank"]
        assert 0.98 < row["min_correlation"] <= 1 and 0 < row["max_abs_diff"] < 0.1
    # 32x32: layer4 is 1x1, every map is blank and so is no evidence of agreement
    rows = bench_cam.main([*args, "--size", "32"])
    assert [(r["float32_blank"], r["ok"]) for r in rows] == [(True, False), (True, False)]


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


# --------------------------------------------------------------------------- gpu_check.sh

GPU_CHECK = BENCHMARKS / "gpu_check.sh"
PHASES = ["device", "install", "tests", "bench_gradient", "bench_scorecam", "bench_ablation", "autocast", "explain"]


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, env=env, timeout=300)


def _dry_run(*args: str) -> dict[str, str]:
    """Phase -> its command, from ``--dry-run``."""
    done = _gpu_check(*args, "--dry-run")
    assert done.returncode == 0, done.stderr
    parts = re.split(r"^== (\w+) \(limit \d+s\)$", done.stdout, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_gpu_check_dry_run_phases_commands_and_option_errors():
    cuda = _dry_run()
    assert list(cuda) == PHASES  # install only by default on CUDA
    assert "-m gpu -x" in cuda["tests"]
    assert "--no-index" in cuda["install"] and "grad-cam==1.5.7 torchcam==0.5.0" in cuda["install"]
    assert "--device cuda --suites gradient --models resnet50 --batches 64 --size 224" in cuda["bench_gradient"]
    assert "--images 2000" in cuda["explain"] and "--device cuda" in cuda["explain"]
    assert "--scorecam-model resnet50" in cuda["bench_scorecam"]
    cpu = _dry_run("--device", "cpu", "--tiny", "--batch", "3", "--phases", "tests,autocast,install")
    assert list(cpu) == ["tests", "autocast"]  # phase order fixed; no install on the CPU unless asked
    assert "--device cpu" in cpu["autocast"] and "--batches 3 --size 64" in cpu["autocast"]
    assert list(_dry_run("--device", "cpu", "--install", "--phases", "install")) == ["install"]
    # every option the phases pass to the benchmarks exists there
    bench_options = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', (BENCHMARKS / "bench_cam.py").read_text()))
    assert "--scorecam-model" in bench_options and "--ablation-batch" in bench_options
    for name in ("bench_gradient", "bench_scorecam", "bench_ablation", "autocast"):
        for option in re.findall(r" (--[a-z-]+)", cuda[name].split("&&")[0]):
            assert option in bench_options, (name, option)
    for bad, message in (
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--phases", "device,nope"], "unknown phase 'nope'"),
        (["--batch", "x"], "expected a whole number, got 'x'"),
        (["--out"], "--out needs a value"),
        (["--bogus"], "unknown option '--bogus'"),
    ):
        done = _gpu_check(*bad, "--dry-run")
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)


def _outputs(out: Path) -> tuple[list[str], dict, dict[str, str]]:
    summary = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "raw.tar.gz") as archive:
        logs = {Path(m.name).name: archive.extractfile(m).read().decode() for m in archive if m.isfile()}
    return sorted(p.name for p in out.iterdir()), summary, logs


def test_gpu_check_goes_on_after_a_failed_phase_and_fails_at_the_end(tmp_path):
    out = tmp_path / "check"
    done = _gpu_check("--device", "cpu", "--tiny", "--model", "no_such_model",
                      "--phases", "bench_gradient,autocast", "--out", str(out))
    assert done.returncode == 1
    files, summary, logs = _outputs(out)
    assert files == ["gpu_check.log", "raw.tar.gz", "summary.json", "summary.md"]  # a runner returning 8 files gets all
    assert [(p["phase"], p["status"]) for p in summary["phases"]] == [("bench_gradient", "failed"), ("autocast", "failed")]
    assert "no_such_model" in logs["bench_gradient.log"] and "no_such_model" in logs["autocast.log"]
    assert "FAILED: bench_gradient(failed) autocast(failed)" in done.stdout
    assert "| bench_gradient | failed |" in (out / "summary.md").read_text()
    assert (out / "gpu_check.log").read_text().count("== autocast (limit") == 1


def test_gpu_check_skips_what_its_budget_cannot_hold_and_passes_when_all_passed(tmp_path):
    done = _gpu_check("--device", "cpu", "--budget", "19", "--phases", "device,tests", "--out", str(tmp_path / "a"))
    assert done.returncode == 1
    _, summary, _ = _outputs(tmp_path / "a")
    assert [p["status"] for p in summary["phases"]] == ["skipped", "skipped"]
    assert "FAILED: device(skipped) tests(skipped)" in done.stdout
    done = _gpu_check("--device", "cpu", "--phases", "device", "--keep-raw", "--out", str(tmp_path / "b"))
    assert done.returncode == 0 and "all phases passed" in done.stdout
    assert (tmp_path / "b" / "raw" / "device.log").read_text().startswith("python ")
