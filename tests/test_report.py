"""``camlib report``: the HTML page over ``camlib explain`` runs, its numbers, its bad input, and the page in Chromium.

The numbers are checked against the saved heatmaps and masks by hand; the page
is opened in headless Chromium (Debian's ``chromium``, driven over the
DevTools pipe by :mod:`camlib.report.chromium`): no console errors, the cards,
a filter, the detail view, keyboard navigation, and screenshots compared with
the committed ones in ``docs/images/report/`` (downscaled, with a generous
tolerance, so that font rendering does not matter). The browser tests skip,
saying why, only where no Chromium is installed. To refresh the screenshots:
``CAMLIB_UPDATE_SCREENSHOTS=1 python -m pytest tests/test_report.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from camlib.cli import main
from camlib.cli.explain import run_explain
from camlib.demo import make_image
from camlib.report import ReportError, build_report
from camlib.report.chromium import Chromium, find_chromium
from camlib.report.command import add_report_arguments, report_from_args
from camlib.report.runs import load_run, read_label_file
from camlib.report.stats import map_stats

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "images" / "report"
UPDATE = os.environ.get("CAMLIB_UPDATE_SCREENSHOTS") == "1"
IMAGES = 12


def read_data(dest: Path) -> dict:
    """The page's data (``data.js``) as Python."""
    text = (dest / "data.js").read_text()
    prefix, suffix = "window.CAMLIB_REPORT=JSON.parse(", ");\n"
    assert text.startswith(prefix) and text.endswith(suffix)
    return json.loads(json.loads(text[len(prefix):-len(suffix)]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of the demo model over 12 generated images (GradCAM and HiResCAM), masks and labels."""
    root = tmp_path_factory.mktemp("report")
    labels = {}
    for seed in range(IMAGES):
        image, label, masks = make_image(seed)
        rel = f"val/{'a' if seed % 2 else 'b'}/img{seed:02d}.png"
        (root / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "data" / rel), np.uint8(np.rint(image[..., ::-1] * 255)))
        assert cv2.imwrite(str(root / "masks" / rel), np.uint8(masks.any(0)) * 255)
        labels[rel] = [int(c) for c in np.flatnonzero(label)]
    (root / "labels.json").write_text(json.dumps(labels))
    common = dict(model="demo", batch_size=4, num_workers=0, progress=False, threads=1, device="cpu")
    for method in ("gradcam", "hirescam"):
        result = run_explain([str(root / "data")], str(root / method), method=method, **common)
        assert result.ok == IMAGES
    return root


# --------------------------------------------------------------------------- numbers


def test_public_names():
    import camlib.report
    import camlib.report.command

    assert set(camlib.report.__all__) == {"ReportError", "ReportResult", "build_report"}
    assert {"add_report_arguments", "add_report_options", "report_from_args"} <= set(camlib.report.command.__all__)
    assert issubclass(ReportError, ValueError)


def test_map_stats_by_hand():
    cam = np.zeros((10, 10), np.float32)
    cam[0, 0] = 1.0  # in the border band
    cam[5, 5] = 3.0  # inside the object
    region = np.zeros((10, 10), bool)
    region[4:7, 4:7] = True
    s = map_stats(cam, region)
    assert s["border"] == 0.25 and s["inside"] == 0.75 and s["outside"] == 0.25 and s["hit"] is True
    assert s["peak"] == [0.55, 0.55]
    cam[0, 0] = 5.0  # the peak moves outside: a miss, unless the object grows enough
    assert map_stats(cam, region)["hit"] is False
    assert map_stats(cam, region, tolerance=5)["hit"] is False  # (0, 0) is sqrt(32) = 5.66 pixels from (4, 4)
    assert map_stats(cam, region, tolerance=6)["hit"] is True
    assert map_stats(np.ones((10, 10)))["border"] == 0.36  # a uniform map: the band's area share
    assert map_stats(np.zeros((4, 4)))["border"] is None  # a blank map has no statistics


def test_report_of_a_run_matches_the_heatmaps_and_masks(runs, tmp_path):
    dest = tmp_path / "report"
    result = build_report([runs / "gradcam"], dest=dest, masks=runs / "masks", labels=runs / "labels.json")
    assert result.images == IMAGES and result.failed == 0 and result.missing_files == 0
    assert not result.unreadable_masks
    assert {p.name for p in dest.iterdir()} >= {"index.html", "report.js", "report.css", "data.js", "chunks", "classes"}
    data = read_data(dest)
    run = data["runs"][0]
    cols = run["cols"]
    assert run["method"] == "gradcam" and run["model"] == "demo" and run["ok"] == IMAGES
    assert data["masks"]["found"] == IMAGES and data["masks"]["kind"] == "masks"
    manifest = [json.loads(line) for line in (runs / "gradcam" / "manifest.jsonl").read_text().splitlines()]
    assert data["images"] == [r["rel"] for r in manifest]
    labels = read_label_file(str(runs / "labels.json"))
    for i, record in enumerate(manifest):
        cam = np.load(runs / "gradcam" / record["heatmap"]).astype(np.float64)
        mask = cv2.imread(str(runs / "masks" / record["rel"]), cv2.IMREAD_GRAYSCALE) > 0
        inside = cam[mask].sum() / cam.sum()
        assert cols["inside"][i] == pytest.approx(inside, abs=1e-4)
        assert cols["outside"][i] == pytest.approx(1 - inside, abs=1e-4)
        assert cols["hit"][i] == bool(mask.flat[np.argmax(cam)])
        border = 1 - cam[13:115, 13:115].sum() / cam.sum()  # round(0.1 * 128) = 13 pixels
        assert cols["border"][i] == pytest.approx(border, abs=1e-4)
        assert cols["correct"][i] == int(record["pred"] in labels[record["rel"]])
        assert cols["pred"][i] == record["pred"] and cols["score"][i] == pytest.approx(record["score"], abs=1e-4)
    # per class: counts and means agree with the columns; the mean maps exist
    for row in run["classes"]:
        members = [i for i in range(IMAGES) if cols["target"][i] == row["cls"]]
        assert row["count"] == len(members)
        assert row["inside"] == pytest.approx(np.mean([cols["inside"][i] for i in members]), abs=1e-3)
        assert row["pointing"] == pytest.approx(np.mean([cols["hit"][i] for i in members]), abs=1e-3)
        assert (dest / row["mean_map"]).is_file()
    assert sum(r["count"] for r in run["classes"]) == IMAGES
    assert run["shortcut_candidates"] == sum(v > 0.5 for v in cols["outside"])
    # the detail chunk holds every record and a preview of its map
    chunk = (dest / "chunks" / "chunk-00000.js").read_text()
    assert chunk.count('\\"rel\\"') == IMAGES
    # paths on the page are relative to it, so the report works from file:// and moves with the run
    assert data["runs"][0]["dir"] == os.path.relpath(runs / "gradcam", dest)
    assert all(p and not os.path.isabs(p) for p in data["image_paths"])


def test_without_masks_border_share_is_the_look_outside_score(runs, tmp_path):
    result = build_report(runs / "gradcam", dest=tmp_path / "r")
    data = read_data(tmp_path / "r")
    cols = data["runs"][0]["cols"]
    assert data["masks"] is None and result.images == IMAGES
    assert cols["outside"] == cols["border"] and all(v is None for v in cols["inside"])
    assert all(v is None for v in cols["correct"])  # no labels: correctness unknown
    assert len(data["runs"][0]["classes"]) == len(list((tmp_path / "r" / "classes").iterdir()))


def test_boxes_json_and_label_files(runs, tmp_path):
    manifest = [json.loads(line) for line in (runs / "gradcam" / "manifest.jsonl").read_text().splitlines()]
    first = manifest[0]["rel"]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"path": first, "boxes": [[0, 0, 64, 128]]}]))  # the left half
    build_report(runs / "gradcam", dest=tmp_path / "r", masks=boxes)
    data = read_data(tmp_path / "r")
    cam = np.load(runs / "gradcam" / manifest[0]["heatmap"]).astype(np.float64)
    assert data["runs"][0]["cols"]["inside"][0] == pytest.approx(cam[:, :64].sum() / cam.sum(), abs=1e-4)
    assert data["masks"]["found"] == 1 and data["masks"]["absent"] == IMAGES - 1
    assert data["runs"][0]["cols"]["inside"][1] is None
    # label files in the formats of --targets
    (tmp_path / "l.csv").write_text("path,label\nval/a/x.png,3;5\nval/b/y.png,1\n")
    (tmp_path / "l.txt").write_text("# comment\nval/a/x.png 3 5\n")
    assert read_label_file(str(tmp_path / "l.csv")) == {"val/a/x.png": (3, 5), "val/b/y.png": (1,)}
    assert read_label_file(str(tmp_path / "l.txt")) == {"val/a/x.png": (3, 5)}
    (tmp_path / "bad.csv").write_text("val/a/x.png,3\nval/b/y.png,cat\n")
    with pytest.raises(ReportError, match="not a class index"):
        read_label_file(str(tmp_path / "bad.csv"))


def test_npz_shards_and_a_run_with_its_own_labels(tmp_path):
    out = tmp_path / "run"
    (out / "heatmaps").mkdir(parents=True)
    maps = {f"x/{i}.png": np.full((2, 20, 20), i / 10, np.float16) for i in range(1, 4)}
    np.savez(out / "heatmaps" / "shard-000000.npz", **maps)
    (out / "run.json").write_text(json.dumps({"method": "gradcam", "targets": "labels:/somewhere/labels.csv"}))
    with open(out / "manifest.jsonl", "w") as handle:
        for i, key in enumerate(maps):
            record = {"index": i, "image": f"/nowhere/{key}", "rel": key, "status": "ok", "pred": 1, "score": 1.0,
                      "targets": [1, 2] if i else [2, 3], "target_scores": [1.0, 0.5], "method": "gradcam",
                      "heatmap": {"file": "heatmaps/shard-000000.npz", "key": key}, "overlays": []}  # fmt: skip
            handle.write(json.dumps(record) + "\n")
    result = build_report(out)
    data = read_data(out / "report")
    cols = data["runs"][0]["cols"]
    assert cols["correct"] == [0, 1, 1]  # a label-file run: the explained classes are the labels
    assert cols["border"] == [0.36, 0.36, 0.36] and cols["ntargets"] == [2, 2, 2]
    assert result.missing_files == 3  # the images are gone: shown as missing, never fatal
    assert cols["missing"] == [["image"]] * 3
    assert {row["cls"]: row["count"] for row in data["runs"][0]["classes"]} == {1: 2, 2: 3, 3: 1}


def test_heatmap_reader_reads_npy_and_every_kind_of_npz(tmp_path):
    from camlib.cli.outputs import npy_bytes, npz_bytes
    from camlib.report.stats import HeatmapReader

    maps = {"x/1.png": np.random.default_rng(0).random((3, 5, 7)).astype(np.float16),
            "y/2.png": np.random.default_rng(1).random((4, 4)).astype(np.float16)}  # fmt: skip
    (tmp_path / "camlib.npz").write_bytes(npz_bytes(maps))  # what camlib explain writes
    np.savez(tmp_path / "plain.npz", **maps)
    np.savez_compressed(tmp_path / "compressed.npz", **maps)
    (tmp_path / "one.npy").write_bytes(npy_bytes(maps["x/1.png"]))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(maps["x/1.png"]))
    reader = HeatmapReader(str(tmp_path))
    for file in ("camlib.npz", "plain.npz", "compressed.npz"):
        for key, value in maps.items():
            got = reader.read({"file": file, "key": key})
            assert np.array_equal(got.reshape(value.shape), value.astype(np.float32)), (file, key)
    for file in ("one.npy", "fortran.npy"):
        assert np.array_equal(reader.read(file), maps["x/1.png"].astype(np.float32))
    with pytest.raises(OSError, match="no map"):
        reader.read({"file": "camlib.npz", "key": "nope"})
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(OSError, match=r"broken\.npz"):
        reader.read({"file": "broken.npz", "key": "x"})
    reader.close()


# --------------------------------------------------------------------------- bad input


def _write(out: Path, records) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_a_manifest_mixing_runs_is_refused_unless_allowed(tmp_path):
    records = [{"rel": f"{i}.png", "status": "ok", "method": m, "layers": ["features[-1]"]}
               for i, m in enumerate(["gradcam", "gradcam", "scorecam"])]  # fmt: skip
    out = _write(tmp_path / "mixed", records)
    with pytest.raises(ReportError, match=r"mixes records of different runs: method=gradcam.*\(2 records\).*scorecam.*--allow-mixed"):
        build_report(out)
    assert not (out / "report").exists()
    result = build_report(out, allow_mixed=True)
    assert result.images == 3 and any("several runs" in n for n in result.notes)
    assert read_data(out / "report")["runs"][0]["cols"]["method"] == ["gradcam", "gradcam", "scorecam"]
    # records that disagree with run.json mix runs too
    out = _write(tmp_path / "other", records[:2])
    (out / "run.json").write_text(json.dumps({"method": "scorecam"}))
    with pytest.raises(ReportError, match=r"run\.json: method=scorecam"):
        load_run(str(out))


def test_missing_folders_manifests_and_a_foreign_destination(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no manifest\.jsonl"):
        build_report(tmp_path / "empty")
    out = _write(tmp_path / "run", [{"rel": "a.png", "status": "error", "stage": "read", "error": "truncated"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not empty"):
        build_report(out, dest=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    build_report(out)
    build_report(out)  # an earlier report is refreshed
    run = read_data(out / "report")["runs"][0]
    assert run["failures"] == [["a.png", "read: truncated"]] and run["failed"] == 1
    with pytest.raises(ReportError, match="boxes"):
        build_report(out, masks=tmp_path / "no-such-masks.json")


def test_missing_files_and_unreadable_masks_are_listed_not_fatal(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "gradcam", run)
    masks = tmp_path / "masks"
    shutil.copytree(runs / "masks", masks)
    manifest = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    (run / manifest[0]["overlays"][0]).unlink()
    (run / manifest[1]["heatmap"]).unlink()
    (masks / manifest[2]["rel"]).write_bytes(b"not a png")
    parser = add_report_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args([str(run), "--masks", str(masks), "-q"])
    assert report_from_args(args) == 1  # written, with problems
    data = read_data(run / "report")
    cols = data["runs"][0]["cols"]
    assert cols["missing"][0] == [manifest[0]["overlays"][0]]
    assert cols["missing"][1] == [manifest[1]["heatmap"]] and cols["outside"][1] is None
    assert [u[0] for u in data["masks"]["unreadable"]] == [manifest[2]["rel"]]
    assert cols["inside"][2] is None and cols["border"][2] is not None  # skipped for the mask statistics only
    args = parser.parse_args([str(tmp_path / "nope")])
    assert report_from_args(args) == 2


# --------------------------------------------------------------------------- command line


def test_camlib_report_and_explain_report_on_the_command_line(runs, tmp_path, capsys):
    dest = tmp_path / "r"
    assert main(["report", str(runs / "gradcam"), str(runs / "hirescam"), "--masks", str(runs / "masks"),
                 "--report-dir", str(dest)]) == 0  # fmt: skip
    assert f"{IMAGES} images" in capsys.readouterr().out and len(read_data(dest)["runs"]) == 2
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    mixed = _write(tmp_path / "mixed", [{"rel": "a.png", "status": "ok", "method": "gradcam"},
                                        {"rel": "b.png", "status": "ok", "method": "fem"}])  # fmt: skip
    assert main(["report", str(mixed)]) == 2
    assert "--allow-mixed" in capsys.readouterr().err
    assert main(["report", str(mixed), "--allow-mixed", "-q"]) == 0
    common = ["--device", "cpu", "--num-workers", "0", "--batch-size", "4", "--no-progress", "-q", "--threads", "1"]
    # a report option that cannot work is refused before the run, not after it
    out = tmp_path / "cams"
    assert main(["explain", str(runs / "data"), "--out", str(out), "--report", "--masks", str(tmp_path / "nope"), *common]) == 2
    assert "--masks" in capsys.readouterr().err and not out.exists()
    assert main(["explain", str(runs / "data"), "--out", str(out), "--report", "--labels", str(runs / "labels.json"), *common]) == 0
    data = read_data(out / "report")
    assert data["runs"][0]["ok"] == IMAGES and data["runs"][0]["has_truth"]
    assert str(out / "report" / "index.html") in capsys.readouterr().out


# --------------------------------------------------------------------------- in Chromium

CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (install Debian's chromium package, as .ci/run does, or set CAMLIB_CHROMIUM)"
)


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM, width=1280, height=800) as chromium:
        yield chromium


def open_page(browser, index: str) -> None:
    browser.console.clear()
    browser.navigate(Path(index).as_uri(), ready="document.body.dataset.ready === '1'")


def compare_screenshot(browser, name: str, tmp_path: Path, tolerance: float = 10.0) -> None:
    """Screenshot the viewport and compare it, shrunk 8 times, with ``docs/images/report/<name>`` (a JPEG)."""
    browser.evaluate(  # the run's folder and timings differ from run to run: fixed values in screenshots
        "document.querySelectorAll('[data-volatile]').forEach(e => { e.textContent = "
        "e.dataset.volatile === 'path' ? e.textContent.replace(/\\/[^ :]*\\//g, '/home/me/') : '(timing)'; })"
    )
    data = browser.screenshot()
    shot = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    reference_path = SHOTS / name
    if UPDATE or not reference_path.exists():
        if not UPDATE:
            pytest.fail(f"no reference screenshot {reference_path}: run with CAMLIB_UPDATE_SCREENSHOTS=1 to make it")
        cv2.imwrite(str(reference_path), shot, [cv2.IMWRITE_JPEG_QUALITY, 80])
        return
    reference = cv2.imread(str(reference_path), cv2.IMREAD_COLOR)
    assert reference.shape == shot.shape, f"{name}: screenshot {shot.shape} vs reference {reference.shape}"
    small = [cv2.resize(im, (im.shape[1] // 8, im.shape[0] // 8), interpolation=cv2.INTER_AREA).astype(np.float32)
             for im in (shot, reference)]  # fmt: skip
    diff = np.abs(small[0] - small[1])
    (tmp_path / name).with_suffix(".png").write_bytes(data)
    assert diff.mean() < tolerance and np.percentile(diff, 99) < 12 * tolerance, (
        f"{name} differs from the reference: mean {diff.mean():.1f}, 99th percentile {np.percentile(diff, 99):.1f} "
        f"(of 255); the new screenshot is {(tmp_path / name).with_suffix('.png')}"
    )


def count(browser) -> int:
    return browser.evaluate("document.querySelectorAll('#grid .card').length")


def set_control(browser, control: str, value) -> None:
    browser.evaluate(
        f"(() => {{ const c = document.getElementById({json.dumps(control)}); "
        f"if (c.type === 'checkbox') c.checked = {json.dumps(bool(value))}; else c.value = {json.dumps(str(value))}; "
        "c.dispatchEvent(new Event('change', {bubbles: true})); })()"
    )


@needs_browser
def test_page_in_chromium(runs, browser, tmp_path):
    dest = runs / "gradcam" / "report"
    build_report(runs / "gradcam", masks=runs / "masks", labels=runs / "labels.json")
    open_page(browser, str(dest / "index.html"))
    assert count(browser) == IMAGES
    assert browser.evaluate("[...document.querySelectorAll('#grid img')].every(i => i.alt.length > 0)")
    assert browser.evaluate("[...document.querySelectorAll('#controls select, #controls input')]"
                            ".every(c => c.labels && c.labels.length > 0)")  # fmt: skip
    compare_screenshot(browser, "overview.jpg", tmp_path)
    # look-outside first (masks given): the first card has the highest share outside the object
    data = read_data(dest)
    outside = data["runs"][0]["cols"]["outside"]
    first = browser.evaluate("document.querySelector('#grid .card button').dataset.index")
    assert outside[int(first)] == max(outside)
    browser.evaluate("document.getElementById('grid').scrollIntoView()")
    browser.wait_for("[...document.querySelectorAll('#grid img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)")
    compare_screenshot(browser, "grid.jpg", tmp_path)
    # a filter changes the grid: one class, then a score range
    cls = data["runs"][0]["cols"]["pred"][0]
    set_control(browser, "cls", cls)
    expected = sum(1 for p, t in zip(data["runs"][0]["cols"]["pred"], data["runs"][0]["cols"]["target"]) if cls in (p, t))
    assert count(browser) == expected < IMAGES
    set_control(browser, "cls", "")
    set_control(browser, "min-outside", 0.8)
    assert count(browser) == sum(v >= 0.8 for v in outside) < IMAGES
    set_control(browser, "min-outside", "")
    set_control(browser, "correct", "0")
    assert count(browser) == data["runs"][0]["cols"]["correct"].count(0)
    set_control(browser, "correct", "")
    assert count(browser) == IMAGES
    # keyboard: focus the first card, move right, open with Enter, next image with ArrowRight, close with Escape
    browser.evaluate("document.querySelector('#grid .card button').focus()")
    browser.press("ArrowRight")
    assert browser.evaluate("document.activeElement.dataset.position") == "1"
    browser.press("Enter")
    browser.wait_for("document.getElementById('detail').open && !!document.querySelector('#detail-body canvas')")
    rel = browser.evaluate("document.getElementById('detail-heading').textContent")
    assert rel == data["images"][int(browser.evaluate("document.querySelectorAll('#grid .card button')[1].dataset.index"))]
    assert browser.evaluate("document.querySelector('#detail-body pre').textContent").count('"rel"') == 1
    browser.wait_for("[...document.querySelectorAll('#detail-body img')].every(i => i.complete && i.naturalWidth > 0)")
    compare_screenshot(browser, "detail.jpg", tmp_path)
    browser.press("ArrowRight")
    browser.wait_for(f"document.getElementById('detail-heading').textContent !== {json.dumps(rel)}")
    browser.press("Escape")
    browser.wait_for("!document.getElementById('detail').open")
    browser.wait_for("document.activeElement.dataset.position === '2'")  # focus back on the card shown last
    assert browser.console == []


@needs_browser
def test_runs_side_by_side_in_chromium(runs, browser, tmp_path):
    dest = tmp_path / "both"
    build_report([runs / "gradcam", runs / "hirescam"], dest=dest, labels=runs / "labels.json")
    open_page(browser, str(dest / "index.html"))
    assert count(browser) == IMAGES
    assert browser.evaluate("document.querySelectorAll('#grid .card')[0].querySelectorAll('.thumb').length") == 3
    assert browser.evaluate("document.querySelectorAll('.run-summary').length") == 2
    browser.evaluate("document.getElementById('grid').scrollIntoView()")
    browser.wait_for("[...document.querySelectorAll('#grid img')].slice(0, 9).every(i => i.complete && i.naturalWidth > 0)")
    compare_screenshot(browser, "side-by-side.jpg", tmp_path)
    set_control(browser, "disagree", True)  # same model, same predictions: no image where the runs disagree
    assert count(browser) == 0
    assert browser.console == []


@needs_browser
def test_many_images_pages_and_missing_files_in_chromium(tmp_path, browser):
    """130 records, a failure, gone images and overlays, no heatmaps: pages, missing marks, no errors."""
    records = [{"index": i, "image": f"/nowhere/{i:03d}.png", "rel": f"{i:03d}.png", "status": "ok", "pred": i % 3,
                "pred_name": "abc"[i % 3], "score": i / 10, "targets": [i % 3], "target_scores": [i / 10],
                "method": "gradcam", "overlays": [f"overlays/{i:03d}.jpg"]} for i in range(130)]  # fmt: skip
    records[5] = {"index": 5, "image": "/nowhere/005.png", "rel": "005.png", "status": "error", "stage": "read",
                  "error": "cannot identify image file"}  # fmt: skip
    odd = tmp_path / "images" / "a b#1 %é.png"  # a name that needs URL escaping
    odd.parent.mkdir()
    assert cv2.imwrite(str(odd), np.full((8, 8, 3), 200, np.uint8))
    records[0]["image"] = str(odd)
    out = _write(tmp_path / "run", records)
    result = build_report(out)
    assert result.missing_files == 129 + 129 and result.failed == 1  # every other image, every overlay
    open_page(browser, str(out / "report" / "index.html"))
    assert count(browser) == 60
    assert browser.evaluate("document.querySelectorAll('#grid .missing').length") == 119
    browser.wait_for("(i => i.complete && i.naturalWidth === 8)(document.querySelector('#grid img'))")
    assert "000.png" in browser.evaluate("document.querySelector('#grid .card button').getAttribute('aria-label')")
    assert "of 3" in browser.evaluate("document.querySelector('.pager').textContent")
    browser.evaluate("document.querySelector('.pager button:last-child').click()")
    assert browser.evaluate("document.querySelector('#grid .card button').dataset.position") == "60"
    set_control(browser, "status", "failed")
    assert count(browser) == 1 and "cannot identify" in browser.evaluate("document.getElementById('grid').textContent")
    set_control(browser, "status", "ok")
    set_control(browser, "search", "12")  # 012, 112, 120-129
    assert count(browser) == 12
    assert "Failures (1)" in browser.evaluate("document.getElementById('summary').textContent")
    assert browser.console == []


def test_benchmark_script_runs_small(tmp_path, capsys):
    """benchmarks/bench_report.py end to end on 60 records (the page timings only where Chromium is installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "bench_report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--records", "60", "--rounds", "1", "--map-size", "16", "--json", str(out), "--workdir", str(tmp_path)]) == 0
    results = json.loads(out.read_text())
    assert results["records"] == 60 and results["medians"]["build_s"] > 0
    if CHROMIUM:
        assert results["medians"]["cards"] == 60 and results["medians"]["first_render_ms"] > 0
