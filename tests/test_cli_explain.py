"""``camlib explain`` end to end, on generated images with the bundled demo model.

Most runs call ``camlib.cli.main(argv)`` in-process (the same code as the
console script, without Python's start-up cost). Three things need real
processes: the console entry point ``python -m camlib``, a run killed with
SIGKILL part-way and then resumed, and a 2-process ``torchrun`` run compared
byte for byte with a 1-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from camlib.cli import main
from camlib.cli.explain import run_explain
from camlib.cli.inputs import UsageError, collect_images, parse_targets, read_label_file
from camlib.cli.manifest import RUN_VARYING_KEYS, ManifestWriter, read_records
from camlib.cli.outputs import npz_bytes
from camlib.demo import make_image
from camlib.models import build_model, load_image, make_cam
from camlib.registry import methods
from camlib.utils.image import preprocess_image

SIZE = 64
# every run of a comparison uses the same batch size: a batch is the unit of work
COMMON = ["--image-size", str(SIZE), "--device", "cpu", "--batch-size", "4", "--no-progress", "--threads", "1", "-q"]
LAYOUT = ["a/0.png", "a/1.png", "a/2.jpg", "b/c/3.png", "b/c/4.png", "b/5.png", "6.png", "7.png", "8.png", "9.png"]


def write_images(folder: Path, names=LAYOUT, size: int = SIZE) -> Path:
    for seed, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = make_image(seed, size)[0]
        assert cv2.imwrite(str(path), np.uint8(np.rint(rgb[..., ::-1] * 255)))
    return folder


def child_env() -> dict:
    env = dict(os.environ, CAMLIB_DISABLE_PROGRESS="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


def output_files(out: Path) -> dict:
    """Every output file under ``out`` (heatmaps and overlays), by relative path, with its bytes."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for sub in ("heatmaps", "overlays")
        for p in sorted((out / sub).rglob("*"))
        if p.is_file()
    }


def manifest(out: Path, strip: bool = True) -> list:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    if strip:
        for record in records:
            for key in RUN_VARYING_KEYS:
                record.pop(key, None)
    return records


def leftovers(out: Path) -> list:
    return sorted(
        p.name for p in out.rglob("*") if "tmp-" in p.name or p.name.startswith(("manifest.rank", ".camlib"))
    )


def explain(*argv: str) -> int:
    return main(["explain", *map(str, argv)])


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory) -> Path:
    """An uninterrupted 1-process run, decoding in the main process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0") == 0
    return out


# --------------------------------------------------------------------------- outputs and manifest


def test_outputs_and_manifest_complete(dataset: Path, reference: Path):
    files = output_files(reference)
    stems = [name.rsplit(".", 1)[0] for name in sorted(LAYOUT)]
    assert sorted(files) == sorted([f"heatmaps/{s}.npy" for s in stems] + [f"overlays/{s}.jpg" for s in stems])
    assert leftovers(reference) == []

    records = manifest(reference, strip=False)
    assert [r["rel"] for r in records] == sorted(LAYOUT)  # input order: sorted relative paths
    assert [r["index"] for r in records] == list(range(len(LAYOUT)))
    model = build_model("demo", "DEFAULT")
    cam = make_cam("gradcam", model, [model.features[-1]], progress=False)
    for record in records:
        assert record["status"] == "ok"
        assert record["image"] == str(dataset / record["rel"])
        assert record["method"] == "gradcam" and record["layers"] == ["features[-1]"]
        assert record["targets"] == [record["pred"]] and record["target_scores"] == [record["score"]]
        assert record["pred_name"] in ("circle", "square", "triangle", "star", "cross", "ring")
        assert set(record["time"]) == {"decode_s", "cam_s", "write_s"} and record["rank"] == 0
        heatmap = np.load(reference / record["heatmap"])
        assert heatmap.dtype == np.float16 and heatmap.shape == (SIZE, SIZE)
        assert 0 <= heatmap.min() and heatmap.max() <= 1 and heatmap.max() > 0.99
        overlay = cv2.imread(str(reference / record["overlays"][0]))
        assert overlay.shape == (SIZE, SIZE, 3)
        assert record["files"] == {p: (reference / p).stat().st_size for p in (record["heatmap"], *record["overlays"])}
        # the same map as GradCAM on the image preprocessed like usage_examples/cam.py
        x = preprocess_image(load_image(record["image"], SIZE), mean=(0.5,) * 3, std=(0.25,) * 3)
        expected = cam(x, None)[0]
        assert int(cam.outputs[0].argmax()) == record["pred"]
        np.testing.assert_allclose(heatmap.astype(np.float32), expected, atol=2e-3)

    summary = json.loads((reference / "summary.json").read_text())
    assert (summary["total"], summary["ok"], summary["failed"], summary["computed"]) == (10, 10, 0, 10)
    run = json.loads((reference / "run.json").read_text())
    assert run["method"] == "gradcam" and run["targets"] == "top1" and run["image_size"] == [SIZE, SIZE]


# every registered method but the random-by-design ones (a random map cannot agree between two calls)
# and those explaining a transformer's attention (the demo model is a CNN)
@pytest.mark.parametrize(
    "method", sorted(m.name for m in methods() if not (m.capabilities.stochastic or m.capabilities.needs_attention))
)
def test_map_of_an_image_does_not_depend_on_its_batch(method: str):
    """Every method maps each image on its own: in a batch of 3 or of 1, the maps agree
    to float32 rounding (only the bits may differ, which is why work units are fixed batches)."""
    model = build_model("demo", "DEFAULT")
    x = torch.cat([preprocess_image(make_image(seed, 32)[0], (0.5,) * 3, (0.25,) * 3) for seed in range(3)])
    cam = make_cam(method, model, [model.features[-1]], progress=False)
    together = cam(x, None)
    alone = np.concatenate([cam(x[i : i + 1], None) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_workers_npz_shards_and_python_api(dataset: Path, reference: Path, tmp_path: Path):
    """DataLoader workers, .npz shards (whose batches line up with the reference's) and run_explain."""
    out = tmp_path / "out"
    result = run_explain(
        [dataset], out, image_size=SIZE, device="cpu", batch_size=4, num_workers=1, threads=1,
        heatmap_format="npz", shard_size=8, save="heatmap", progress=False,
    )  # fmt: skip
    assert (result.ok, result.failed, result.exit_code) == (10, 0, 0)
    shards = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert shards == ["shard-000000.npz", "shard-000001.npz"]
    assert not (out / "overlays").exists()
    for record in manifest(out):
        assert "overlays" not in record
        with np.load(out / record["heatmap"]["file"]) as archive:
            stored = archive[record["heatmap"]["key"]]
        assert stored.tobytes() == np.load(reference / f"heatmaps/{record['rel'].rsplit('.', 1)[0]}.npy").tobytes()
    # deterministic archives: identical maps give identical bytes, so a lost shard is written again
    assert npz_bytes({"k": np.ones(3, np.float16)}) == npz_bytes({"k": np.ones(3, np.float16)})
    second = (out / "heatmaps/shard-000001.npz").read_bytes()
    (out / "heatmaps/shard-000001.npz").unlink()
    result = run_explain(
        [dataset], out, image_size=SIZE, device="cpu", batch_size=4, num_workers=0, threads=1,
        heatmap_format="npz", shard_size=8, save="heatmap", progress=False, resume=True,
    )  # fmt: skip
    assert (result.reused, result.computed) == (8, 2)
    assert (out / "heatmaps/shard-000001.npz").read_bytes() == second


# --------------------------------------------------------------------------- resume


def test_resume_redoes_exactly_what_is_incomplete(dataset: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {r["rel"]: r["finished_at"] for r in manifest(out, strip=False)}
    (out / "heatmaps/a/0.npy").unlink()  # output missing
    (out / "overlays/b/5.jpg").write_bytes(b"\xff\xd8 cut")  # output cut short
    (out / "overlays/.6.jpg.camlib-tmp-12345").write_bytes(b"partial")  # a temporary file of a killed write
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(line for line in lines if '"rel": "9.png"' not in line) + "\n")
    (out / "manifest.rank0.jsonl").write_text('{"rel": "8.png", "status": "o')  # a record cut by a kill

    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0") == 2  # refuses without --resume
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--resume") == 0
    assert output_files(out) == output_files(reference)
    assert manifest(out) == manifest(reference)
    assert leftovers(out) == []
    after = {r["rel"]: r["finished_at"] for r in manifest(out, strip=False)}
    redone = sorted(rel for rel in after if after[rel] != before[rel])
    assert redone == ["9.png", "a/0.png", "b/5.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["reused"], summary["computed"]) == (7, 3)

    # a completed run resumed does nothing; an image added to the inputs is explained alone
    result = run_explain([dataset], out, image_size=SIZE, device="cpu", batch_size=4, num_workers=0, threads=1, resume=True, progress=False)
    assert (result.reused, result.computed, result.exit_code) == (10, 0, 0)
    data = shutil.copytree(dataset, tmp_path / "data")  # copy2 keeps sizes and modification times
    write_images(tmp_path / "more", ["zz.png"])
    shutil.copy(tmp_path / "more/zz.png", data / "zz.png")
    result = run_explain([data], out, image_size=SIZE, device="cpu", batch_size=4, num_workers=0, threads=1, resume=True, progress=False)
    assert (result.reused, result.computed, result.total) == (10, 1, 11)
    records = {r["rel"]: r for r in manifest(out)}
    assert list(records)[-1] == "zz.png" and records["a/0.png"]["image"] == str(data / "a/0.png")


def test_resume_a_two_process_run_with_one_process(dataset: Path, reference: Path, tmp_path: Path):
    """What a killed 2-process run leaves (a manifest shard per rank, no merged manifest), resumed alone."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").unlink()
    (out / "summary.json").unlink()
    shards = {0: [], 1: []}
    for line in lines:
        shards[(json.loads(line)["index"] // 4) % 2].append(line)  # batch k was rank k % 2's
    (out / "manifest.rank0.jsonl").write_text("\n".join(shards[0]) + "\n")
    (out / "manifest.rank1.jsonl").write_text("\n".join(shards[1][:-1]) + "\n")  # rank 1 killed before its last record
    (out / "overlays/b/c/4.jpg").unlink()  # and rank 0 killed while writing its last image
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--resume") == 0
    assert output_files(out) == output_files(reference)
    assert manifest(out) == manifest(reference)
    assert leftovers(out) == []
    assert json.loads((out / "summary.json").read_text())["computed"] == 2  # b/5.png and b/c/4.png


def test_kill_and_resume_gives_the_uninterrupted_outputs(dataset: Path, tmp_path: Path):
    """``python -m camlib explain`` killed with SIGKILL part-way, then ``--resume``."""
    args = [*COMMON, "--method", "scorecam", "--batch-size", "2"]
    uninterrupted = tmp_path / "uninterrupted"
    assert explain(dataset, "--out", uninterrupted, *args, "--num-workers", "0") == 0

    out = tmp_path / "out"
    command = [sys.executable, "-m", "camlib", "explain", str(dataset), "--out", str(out), *args, "--num-workers", "1"]
    log = tmp_path / "log.txt"
    with open(log, "wb") as handle:
        # its own process group, so that the kill takes its DataLoader worker too, as a job scheduler would
        process = subprocess.Popen(command, env=child_env(), stdout=handle, stderr=handle, start_new_session=True)
    shard = out / "manifest.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.002)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {log.read_text()[-2000:]}"
    done = len(read_records(str(out)))
    assert 2 <= done < len(LAYOUT) and not (out / "manifest.jsonl").exists()

    assert explain(dataset, "--out", out, *args, "--num-workers", "0", "--resume") == 0
    assert output_files(out) == output_files(uninterrupted)
    assert manifest(out) == manifest(uninterrupted)
    assert leftovers(out) == []


# --------------------------------------------------------------------------- failures


def test_corrupt_and_missing_images_are_reported_not_fatal(tmp_path: Path, capsys):
    data = write_images(tmp_path / "data", ["ok/0.png", "ok/1.png", "ok/2.png"])
    (data / "bad").mkdir()
    (data / "bad/junk.png").write_bytes(b"this is not a png")
    (data / "bad/empty.jpg").write_bytes(b"")
    jpeg = cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
    (data / "bad/cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    listing = tmp_path / "list.txt"
    listing.write_text("# images\ndata/ok/0.png\n\ndata/gone.png\n")
    out = tmp_path / "out"
    status = explain(data, listing, "--out", out, *COMMON, "--num-workers", "1", "--batch-size", "2")
    assert status == 1
    captured = capsys.readouterr()
    assert "3 ok, 4 failed" in captured.out
    records = {r["rel"]: r for r in manifest(out)}
    assert sorted(records) == ["bad/cut.jpg", "bad/empty.jpg", "bad/junk.png", "gone.png", "ok/0.png", "ok/1.png", "ok/2.png"]
    failed = sorted(rel for rel, r in records.items() if r["status"] == "error")
    assert failed == ["bad/cut.jpg", "bad/empty.jpg", "bad/junk.png", "gone.png"]
    for rel in failed:
        assert records[rel]["stage"] == "read" and records[rel]["error"]
        assert rel in captured.err
    assert "does not exist" in records["gone.png"]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 4 and sorted(rel for rel, _ in summary["failures"]) == failed
    # --resume retries the failed images (they may have been fixed), and keeps the others
    write_images(tmp_path / "fixed", ["junk.png"])
    shutil.copy(tmp_path / "fixed/junk.png", data / "bad/junk.png")
    assert explain(data, listing, "--out", out, *COMMON, "--num-workers", "0", "--batch-size", "2", "--resume") == 1
    assert {r["rel"]: r["status"] for r in manifest(out)}["bad/junk.png"] == "ok"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet5"], "unknown model 'resnet5'. Did you mean: resnet50"),
        (["--method", "gradcm"], "unknown method 'gradcm'. Did you mean: gradcam"),
        (["--weights", "no/such/weights.pt"], "does not exist"),
        (["--targets", "topk:x"], "--targets 'topk:x' is not understood"),
        (["--targets", "topk:9"], "more classes than the model's 6 outputs"),
        (["--targets", "labels.csv"], "neither top1, topk:K nor an existing label file"),
        (["--save", "overlay,mask"], "'mask' is not one of overlay, heatmap"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--target-layer", "features[42]"], "features"),
        (["--resume", "--overwrite"], "exclude each other"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(dataset: Path, tmp_path: Path, capsys, extra, message):
    assert explain(dataset, "--out", tmp_path / "out", *COMMON, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("camlib explain: error: ") and message in err
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_bad_inputs_and_out_folders(dataset: Path, reference: Path, tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("hello")
    for inputs, message in [
        ([tmp_path / "empty"], "no images found"),
        ([tmp_path / "missing"], "does not exist"),
        ([tmp_path / "notes.md"], "is neither an image"),
    ]:
        assert explain(*inputs, "--out", tmp_path / "out", *COMMON) == 2
        assert message in capsys.readouterr().err
    # an earlier run in --out: refused without --resume/--overwrite, or with other settings
    out = tmp_path / "earlier"
    shutil.copytree(reference, out)
    assert explain(dataset, "--out", out, *COMMON) == 2
    assert "already holds a camlib explain run" in capsys.readouterr().err
    assert explain(dataset, "--out", out, *COMMON, "--resume", "--method", "hirescam") == 2
    assert "other settings (method: 'gradcam' then, 'hirescam' now)" in capsys.readouterr().err
    # argparse's own errors, the top-level command and --help
    assert main(["explain", str(dataset)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["explain", "--help"]) == 0
    assert "torchrun" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("camlib ")


def test_out_folder_inside_the_inputs_is_not_read(tmp_path: Path, capsys):
    data = write_images(tmp_path / "data", ["0.png", "1.png", "sub/2.png"])
    assert explain(data, "--out", data / "cams", *COMMON, "--num-workers", "0") == 0
    assert explain(data, "--out", data / "cams", *COMMON, "--num-workers", "0", "--resume") == 0
    assert "3 images: 3 ok (3 already done), 0 failed" in capsys.readouterr().out
    assert [r["rel"] for r in manifest(data / "cams")] == ["0.png", "1.png", "sub/2.png"]


# --------------------------------------------------------------------------- targets


def test_topk_targets(dataset: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--targets", "topk:2") == 0
    top1 = {r["rel"]: r for r in manifest(reference)}
    for record in manifest(out):
        heatmaps = np.load(out / record["heatmap"])
        assert heatmaps.shape == (2, SIZE, SIZE)
        assert record["targets"][0] == record["pred"] == top1[record["rel"]]["pred"]
        assert record["target_scores"][0] >= record["target_scores"][1]
        assert heatmaps[0].tobytes() == np.load(reference / top1[record["rel"]]["heatmap"]).tobytes()
        assert [Path(p).name.split("_")[-1] for p in record["overlays"]] == ["top1.jpg", "top2.jpg"]


def test_label_files(dataset: Path, tmp_path: Path, capsys):
    images, root = collect_images([dataset])
    csv_file = tmp_path / "labels.csv"
    rows = [f"{image.rel},{image.index % 6}" + (";5" if image.index == 0 else "") for image in images]
    csv_file.write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--targets", csv_file, "--save", "heatmap") == 0
    for record in manifest(out):
        expected = [record["index"] % 6] + ([5] if record["index"] == 0 else [])
        expected = list(dict.fromkeys(expected))
        assert record["targets"] == expected
        assert np.load(out / record["heatmap"]).shape == (len(expected), SIZE, SIZE)

    # JSON with absolute paths, one label each: [H, W] maps; TSV and whitespace text parse alike
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({image.path: 3 for image in images}))
    out = tmp_path / "out_json"
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--targets", json_file, "--save", "heatmap") == 0
    assert {tuple(r["targets"]) for r in manifest(out)} == {(3,)}
    assert np.load(out / manifest(out)[0]["heatmap"]).shape == (SIZE, SIZE)
    # Finer-CAM needs the scores before its targets: the label path runs a forward pass first
    out = tmp_path / "out_finer"
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--targets", json_file, "--method", "finercam") == 0
    assert {tuple(r["targets"]) for r in manifest(out)} == {(3,)} and manifest(out)[0]["method"] == "finercam"
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("".join(f"{image.rel}\t{image.index % 6}\n" for image in images))
    txt = tmp_path / "labels.txt"
    txt.write_text("".join(f"{image.rel} {image.index % 6}\n" for image in images))
    assert read_label_file(tsv, images, root) == read_label_file(txt, images, root) == {i.index: (i.index % 6,) for i in images}

    # labels missing for some images, or out of range: exit 2
    csv_file.write_text("\n".join(rows[:3]) + "\n")
    assert explain(dataset, "--out", tmp_path / "o1", *COMMON, "--targets", csv_file) == 2
    assert "7 of 10 images have no label" in capsys.readouterr().err
    json_file.write_text(json.dumps({image.rel: 6 for image in images}))
    assert explain(dataset, "--out", tmp_path / "o2", *COMMON, "--targets", json_file) == 2
    assert "label(s) [6]" in capsys.readouterr().err
    with pytest.raises(UsageError, match="not a class index"):
        csv_file.write_text("a/0.png,cat\n")
        read_label_file(csv_file, images, root)
    assert parse_targets("topk:3").k == 3


def test_original_size_outputs_and_model_objects(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for seed, (h, w) in enumerate([(48, 80), (96, 64)]):
        rgb = cv2.resize(make_image(seed, 64)[0], (w, h))
        cv2.imwrite(str(data / f"{seed}.png"), np.uint8(rgb[..., ::-1] * 255))
    model = build_model("demo", "DEFAULT")
    out = tmp_path / "out"
    result = run_explain(
        [data / "0.png", data / "1.png"], out, model=model, target_layers=[model.features[-1]],
        image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3, output_size="original",
        overlay_format="png", num_workers=0, progress=False,
    )  # fmt: skip
    assert result.exit_code == 0
    for record, (h, w) in zip(manifest(out), [(48, 80), (96, 64)]):
        assert record["image_size"] == [h, w] and record["input_size"] == [SIZE, SIZE]
        assert np.load(out / record["heatmap"]).shape == (h, w)
        assert cv2.imread(str(out / record["overlays"][0])).shape == (h, w, 3)
    assert json.loads((out / "run.json").read_text())["model"] == "module:DemoNet"


def test_manifest_writer_drops_a_torn_record(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"rel": "a", "status": "ok"}\n{"rel": "b", "sta')
    with ManifestWriter(str(path)) as writer:
        writer.write([{"rel": "c", "status": "ok"}])
    assert [json.loads(line)["rel"] for line in path.read_text().splitlines()] == ["a", "c"]


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_equal_one_process(dataset: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "camlib", "explain", str(dataset), "--out", str(out), *COMMON, "--num-workers", "1",
    ]  # fmt: skip
    finished = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "10 images: 10 ok, 0 failed" in finished.stdout and "over 2 processes" in finished.stdout
    assert output_files(out) == output_files(reference)  # byte for byte
    assert manifest(out) == manifest(reference)  # every image once, in input order
    ranks = [r["rank"] for r in manifest(out, strip=False)]
    assert ranks == [(i // 4) % 2 for i in range(len(LAYOUT))]  # batch k on rank k % 2
    assert leftovers(out) == []


# --------------------------------------------------------------------------- hostile inputs and --out folders (issue 14)


class Fragile(torch.nn.Module):
    """The demo model, failing on bright images (a stand-in for any image the CAM step cannot explain)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model("demo", "DEFAULT")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.mean(dim=(1, 2, 3)) > 1.5).any()):
            raise ValueError("this image cannot be explained")
        return self.inner(x)


def fragile_run(data: Path, out: Path, batch_size: int, **options):
    model = Fragile()
    return run_explain(
        [data], out, model=model, target_layers=[model.inner.features[-1]], image_size=SIZE,
        mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=batch_size, num_workers=0, threads=1, progress=False,
        **options,
    )  # fmt: skip


@pytest.mark.parametrize("white", ["0_white.png", "3_white.png", "9_white.png"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_an_image_failing_in_the_cam_step_never_aborts_the_run(tmp_path: Path, white: str, batch_size: int):
    names = [f"{i}.png" for i in range(6)]
    data = write_images(tmp_path / "data", names)
    assert cv2.imwrite(str(data / white), np.full((SIZE, SIZE, 3), 255, np.uint8))
    result = fragile_run(data, tmp_path / "out", batch_size)
    assert (result.total, result.ok, result.failed, result.exit_code) == (7, 6, 1, 1)
    records = {r["rel"]: r for r in manifest(tmp_path / "out")}
    assert records[white]["stage"] == "cam" and "cannot be explained" in records[white]["error"]
    # --resume retries the failed image, fails again, and still completes
    result = fragile_run(data, tmp_path / "out", batch_size, resume=True)
    assert (result.reused, result.computed, result.failed) == (6, 1, 1)


def test_output_names_are_unique_by_construction(tmp_path: Path):
    data = write_images(tmp_path / "data", ["a.png", "a.jpg", "a.png.png", "A.PNG.png", "b.png"])
    out = tmp_path / "out"
    assert explain(data, "--out", out, *COMMON, "--num-workers", "0") == 0
    records = manifest(out)
    heatmaps = [r["heatmap"] for r in records]
    overlays = [o for r in records for o in r["overlays"]]
    assert len({h.lower() for h in heatmaps}) == len(records) == 5
    assert len({o.lower() for o in overlays}) == 5
    for record in records:  # every recorded size is the size of the file on disk: nothing was overwritten
        assert record["files"] == {p: (out / p).stat().st_size for p in record["files"]}
    assert len(output_files(out)) == 10


def test_only_files_of_this_tool_are_deleted_or_replaced(dataset: Path, reference: Path, tmp_path: Path, capsys):
    # a non-empty folder that is not a camlib run is refused, with or without --overwrite/--resume
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.jsonl").write_text('{"rel": "x.png", "status": "ok"}\n')
    (foreign / "data.tmp-123").write_text("mine")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert explain(dataset, "--out", foreign, *COMMON, *extra) == 2
        assert "holds no camlib explain run" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["data.tmp-123", "manifest.jsonl"]
    assert (foreign / "manifest.jsonl").read_text() == '{"rel": "x.png", "status": "ok"}\n'
    # a run folder without run.json cannot be resumed: there are no settings to check
    out = tmp_path / "no-config"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()
    assert explain(dataset, "--out", out, *COMMON, "--resume") == 2
    assert "no camlib explain run (no run.json)" in capsys.readouterr().err
    # in a camlib run, files that merely look like temporaries are the user's: kept
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    user_files = [out / "notes.tmp-123", out / "overlays" / "a" / "draft.jpg.tmp-99", out / "sub" / "x.tmp-1"]
    for path in user_files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    (out / "overlays" / ".6.jpg.camlib-tmp-4242").write_bytes(b"ours")  # a temporary of a killed run
    assert explain(dataset, "--out", out, *COMMON, "--num-workers", "0", "--resume") == 0
    assert all(path.read_text() == "the user's" for path in user_files)
    assert not (out / "overlays" / ".6.jpg.camlib-tmp-4242").exists()
    # --overwrite with fewer inputs: no orphan outputs of the earlier run, the user's files kept
    fewer = shutil.copytree(dataset / "a", tmp_path / "fewer")
    assert explain(fewer, "--out", out, *COMMON, "--num-workers", "0", "--overwrite") == 0
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert kept == sorted(
        ["heatmaps/0.npy", "heatmaps/1.npy", "heatmaps/2.npy", "overlays/0.jpg", "overlays/1.jpg", "overlays/2.jpg",
         "manifest.jsonl", "run.json", "summary.json", "notes.tmp-123", "overlays/a/draft.jpg.tmp-99", "sub/x.tmp-1"]
    )  # fmt: skip
    assert sorted(f for r in manifest(out) for f in r["files"]) == [p for p in kept if p.endswith((".npy", ".jpg"))]


def test_resume_checks_the_weights_by_content(dataset: Path, tmp_path: Path, capsys):
    weights = tmp_path / "weights.pt"
    model = build_model("demo", "DEFAULT")
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    args = [*COMMON, "--num-workers", "0", "--weights", weights, "--save", "heatmap"]
    assert explain(dataset, "--out", out, *args) == 0
    config = json.loads((out / "run.json").read_text())
    assert len(config["weights_file"]["sha256"]) == 64 and config["weights_file"]["bytes"] == weights.stat().st_size
    # the same content touched (another modification time): accepted after hashing
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert explain(dataset, "--out", out, *args, "--resume") == 0
    # retrained and saved over the same path: refused, and the folder is left as it was
    with torch.no_grad():
        model.fc.weight.add_(0.1)
    torch.save(model.state_dict(), weights)
    before = output_files(out)
    assert explain(dataset, "--out", out, *args, "--resume") == 2
    err = capsys.readouterr().err
    assert "the weights file" in err and "has changed since the earlier run" in err and "--overwrite" in err
    assert output_files(out) == before


def test_special_files_and_float_images(tmp_path: Path, capsys):
    data = write_images(tmp_path / "data", ["ok.png"])
    (data / "empty.png").write_bytes(b"")
    os.mkfifo(data / "pipe.png")  # a FIFO is never opened (reading it would block)
    rgb = np.float32(make_image(1, SIZE)[0])
    assert cv2.imwrite(str(data / "float255.tiff"), (rgb[..., ::-1] * 255).astype(np.float32))
    assert cv2.imwrite(str(data / "float01.tiff"), rgb[..., ::-1].copy())
    assert cv2.imwrite(str(data / "nan.tiff"), np.full((SIZE, SIZE, 3), np.nan, np.float32))
    assert cv2.imwrite(str(data / "huge.tiff"), np.full((SIZE, SIZE, 3), 4000.0, np.float32))
    out = tmp_path / "out"
    assert explain(data, "--out", out, *COMMON, "--num-workers", "0", "--save", "heatmap") == 1
    records = {r["rel"]: r for r in manifest(out)}
    assert records["empty.png"]["error"].endswith("is empty (0 bytes)")
    assert "is a FIFO (named pipe), not a regular file" in records["pipe.png"]["error"]
    assert "NaN or infinite" in records["nan.tiff"]["error"]
    assert "values from 4000 to 4000" in records["huge.tiff"]["error"]
    assert {rel for rel, r in records.items() if r["status"] == "ok"} == {"ok.png", "float255.tiff", "float01.tiff"}
    # a float TIFF in 0-255 reads as the same image as the one in 0-1 (not clipped to white)
    np.testing.assert_allclose(load_image(data / "float255.tiff"), load_image(data / "float01.tiff"), atol=1e-6)
    maps = [np.load(out / records[rel]["heatmap"]).astype(np.float32) for rel in ("float255.tiff", "float01.tiff")]
    np.testing.assert_allclose(maps[0], maps[1], atol=2e-3)
    # a FIFO given as an INPUT argument: a clear message, not "does not exist"
    assert explain(data / "pipe.png", "--out", tmp_path / "out2", *COMMON) == 2
    assert "is not a regular file or folder" in capsys.readouterr().err


def test_unwritable_out_is_a_clear_error(dataset: Path, tmp_path: Path, monkeypatch, capsys):
    import errno

    import camlib.cli.rundir as rundir

    def read_only(path, data, make_dirs=True):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(rundir, "atomic_write", read_only)
    assert explain(dataset, "--out", tmp_path / "out", *COMMON) == 2
    err = capsys.readouterr().err
    assert "cannot write in --out" in err and "Read-only file system" in err and "Errno" not in err
