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
@pytest.mark.parametrize("method", sorted(m.name for m in methods() if not m.capabilities.stochastic))
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
