"""Build the report: a static HTML page over one or several ``camlib explain`` run folders.

:func:`build_report` reads each run's ``manifest.jsonl``, ``run.json`` and
``summary.json`` and the heatmaps they name, and writes ``index.html`` with
its script, style and data into a folder (``RUN/report/`` by default):

* ``data.js``: one compact table of every image (class, score, statistics,
  file paths), loaded by a ``<script>`` tag, so the page works from
  ``file://`` without a server;
* ``chunks/*.js``: the full manifest records and small previews of every
  map, a few hundred images per file, loaded when a detail view opens;
* ``classes/*.png``: the mean heatmap of each explained class.

Images and overlays are not copied: the page links them relative to its
folder, and a file that is gone shows as missing.

Example:
    >>> import json, os, tempfile
    >>> import numpy as np
    >>> out = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(out, "heatmaps"))
    >>> np.save(os.path.join(out, "heatmaps", "a.npy"), np.eye(8, dtype=np.float16))
    >>> record = {"index": 0, "image": "/nowhere/a.png", "rel": "a.png", "status": "ok", "pred": 1,
    ...           "score": 2.5, "targets": [1], "target_scores": [2.5], "method": "gradcam",
    ...           "heatmap": "heatmaps/a.npy", "overlays": ["overlays/a.jpg"]}
    >>> _ = open(os.path.join(out, "manifest.jsonl"), "w").write(json.dumps(record) + "\\n")
    >>> result = build_report([out])
    >>> os.path.basename(result.index), result.images, result.missing_files
    ('index.html', 1, 2)
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
import statistics
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from camlib.report.masks import MaskSource
from camlib.report.runs import ReportError, Run, load_run, read_label_file
from camlib.report.stats import ClassMeans, HeatmapReader, map_stats, preview

__all__ = ["ReportResult", "build_report"]

logger = logging.getLogger("camlib.report")

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
#: Files the page is made of (copied from ``camlib/report/assets``).
ASSET_FILES = ("index.html", "report.js", "report.css")
#: Images per detail chunk file.
CHUNK_SIZE = 250
_MARKER = "camlib-report.json"


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        index: The page, ``<dest>/index.html``.
        images: Images on the page (the union over the runs).
        failed: Failed records (status ``error``), over all runs.
        missing_files: Files named by the manifests that are missing (images,
            overlays, heatmaps).
        unreadable_masks: ``(image, error)`` of masks that could not be read (skipped).
        notes: Other problems met (skipped lines, mixed runs, ...).
        build_s: Seconds it took.
    """

    index: str
    images: int
    failed: int
    missing_files: int
    unreadable_masks: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    build_s: float = 0.0


def _num(value: Any, digits: int = 4) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _ints(value: Any) -> List[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _encode_preview(small: np.ndarray) -> str:
    return base64.b64encode(np.round(small * 255).astype(np.uint8).tobytes()).decode("ascii")


def _colour_png(mean: np.ndarray, path: str, size: int = 128) -> None:
    peak = float(mean.max())
    scaled = mean / peak if peak > 0 else mean
    big = cv2.resize(scaled, (size, size), interpolation=cv2.INTER_CUBIC)
    coloured = cv2.applyColorMap(np.uint8(np.clip(big, 0, 1) * 255), cv2.COLORMAP_JET)
    cv2.imwrite(path, coloured)


def _labels_for(run: Run, labels: Optional[Dict[str, Tuple[int, ...]]]):
    """A function record -> ground-truth classes (tuple) or None."""
    if labels is not None:
        def lookup(record):
            rel = record.get("rel", "")
            for key in (rel, record.get("image"), os.path.basename(rel)):
                if key in labels:
                    return labels[key]
            return None
        return lookup
    if run.label_file:
        return lambda record: tuple(_ints(record.get("targets"))) or None
    return lambda record: None


def _timing(records: Sequence[dict]) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for key in ("decode_s", "cam_s", "write_s"):
        values = [r["time"][key] for r in records if isinstance(r.get("time"), dict) and isinstance(r["time"].get(key), (int, float))]
        out[key] = round(statistics.fmean(values), 6) if values else None
    return out


def _check_dest(dest: str) -> None:
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ReportError(f"report folder {dest!r} is a file; pass a folder")
    if os.path.isdir(dest) and os.listdir(dest) and not os.path.exists(os.path.join(dest, _MARKER)):
        raise ReportError(
            f"report folder {dest!r} is not empty and holds no earlier report; pass an empty or new folder with --dest"
        )


def build_report(
    runs: Sequence[Union[str, os.PathLike]],
    dest: Optional[Union[str, os.PathLike]] = None,
    masks: Optional[Union[str, os.PathLike]] = None,
    labels: Optional[Union[str, os.PathLike]] = None,
    allow_mixed: bool = False,
    border: float = 0.1,
    tolerance: int = 0,
    shortcut_threshold: float = 0.5,
    preview_size: int = 32,
    title: Optional[str] = None,
) -> ReportResult:
    """Write the HTML report of one or several ``camlib explain`` run folders.

    A pure function of the run folders (and the masks and labels): it reads
    the manifests, settings, summaries and saved heatmaps, and recomputes
    nothing.

    Args:
        runs: Run folders (the ``--out`` of ``camlib explain``); several are
            shown side by side, matched by the images' relative paths.
        dest: The report folder (default: ``<first run>/report``); created,
            or refreshed if it holds an earlier report.
        masks: A folder of object masks named like the images, or a JSON
            file of boxes (see :mod:`camlib.report.masks`): adds energy
            inside the object, the pointing game, and shortcut candidates.
        labels: A label file giving each image's true classes, for
            correct/incorrect (by default, a run made with
            ``--targets LABEL_FILE`` uses its own labels).
        allow_mixed: Accept a manifest holding records of several runs.
        border: Width of the border band for the border share, as a fraction.
        tolerance: Pointing game: a hit when the map's maximum lies within
            this many map pixels of the object.
        shortcut_threshold: With masks, an image whose map has more than this
            share of its energy outside the object is a shortcut candidate.
        preview_size: Side of the map previews in the detail view and of the
            per-class mean maps.
        title: The page's title (default: from the run folders).

    Returns:
        A :class:`ReportResult`.

    Raises:
        ReportError: For a missing run folder or manifest, a manifest mixing
            runs (without ``allow_mixed``), bad masks or labels, or a ``dest``
            holding other files.
    """
    started = time.perf_counter()
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise ReportError("no run folder given; pass the --out folder of a camlib explain run")
    if not (0 <= border < 0.5):
        raise ReportError(f"border must be in [0, 0.5), got {border}")
    if not (4 <= int(preview_size) <= 256):
        raise ReportError(f"preview_size must be between 4 and 256, got {preview_size}")
    loaded = [load_run(os.fspath(r), allow_mixed=allow_mixed) for r in runs]
    dest = os.path.abspath(os.fspath(dest) if dest is not None else os.path.join(loaded[0].out_dir, "report"))
    _check_dest(dest)
    source = MaskSource(os.fspath(masks)) if masks is not None else None
    label_table = read_label_file(os.fspath(labels)) if labels is not None else None

    # the images: the union over the runs, in the first run's order
    order: Dict[str, int] = {}
    for run in loaded:
        for record in run.records:
            order.setdefault(record["rel"], len(order))
    rels = list(order)
    n = len(rels)

    for sub in ("chunks", "classes"):
        shutil.rmtree(os.path.join(dest, sub), ignore_errors=True)
        os.makedirs(os.path.join(dest, sub), exist_ok=True)

    names: Dict[int, str] = {}
    for run in loaded:
        for record in run.records:
            if isinstance(record.get("pred"), int) and isinstance(record.get("pred_name"), str):
                names.setdefault(record["pred"], record["pred_name"])

    image_paths: List[Optional[str]] = [None] * n
    image_missing = [False] * n
    details: List[List[Optional[dict]]] = [[None] * len(loaded) for _ in range(n)]
    unreadable: List[Tuple[str, str]] = []
    mask_found = mask_absent = 0
    missing_total = failed_total = 0
    notes: List[str] = []
    exists_cache: Dict[str, bool] = {}

    def exists(path: str) -> bool:
        hit = exists_cache.get(path)
        if hit is None:
            hit = exists_cache[path] = os.path.exists(path)
        return hit

    bases: Dict[str, str] = {}

    def relative(image: str, rel: str) -> str:
        """``image`` relative to the report (one ``relpath`` per input folder, not per image)."""
        suffix = "/" + rel
        if os.sep == "/" and image.endswith(suffix):
            base = image[: -len(suffix)]
            if base not in bases:
                bases[base] = os.path.relpath(base or "/", dest).replace(os.sep, "/")
            return f"{bases[base]}{suffix}"
        return os.path.relpath(image, dest).replace(os.sep, "/")

    runs_data = []
    for r_index, run in enumerate(loaded):
        notes.extend(f"{run.name}: {note}" for note in run.notes)
        truth_of = _labels_for(run, label_table)
        reader = HeatmapReader(run.out_dir)
        means = ClassMeans(int(preview_size))
        cols: Dict[str, List[Any]] = {k: [None] * n for k in (
            "status", "pred", "score", "target", "tscore", "ntargets", "overlay", "correct", "truth",
            "border", "inside", "hit", "outside", "missing", "error", "method",
        )}
        has_truth = False
        per_class: Dict[int, Dict[str, List[float]]] = {}
        try:
            for record in run.records:
                i = order[record["rel"]]
                rel = record["rel"]
                image = record.get("image")
                if image_paths[i] is None and isinstance(image, str):
                    image_paths[i] = relative(image, rel)
                    image_missing[i] = not exists(image)
                ok = record.get("status") == "ok"
                cols["status"][i] = 1 if ok else 0
                cols["method"][i] = record.get("method") if run.mixed else None
                cols["pred"][i] = record.get("pred") if isinstance(record.get("pred"), int) else None
                cols["score"][i] = _num(record.get("score"))
                targets = _ints(record.get("targets"))
                tscores = record.get("target_scores") if isinstance(record.get("target_scores"), list) else []
                cols["target"][i] = targets[0] if targets else None
                cols["tscore"][i] = _num(tscores[0]) if tscores else None
                cols["ntargets"][i] = len(targets)
                truth = truth_of(record)
                if truth is not None:
                    has_truth = True
                    cols["truth"][i] = list(truth)
                    if cols["pred"][i] is not None:
                        cols["correct"][i] = 1 if cols["pred"][i] in truth else 0
                overlays = [o for o in record.get("overlays") or [] if isinstance(o, str)]
                cols["overlay"][i] = overlays[0] if overlays else None
                missing: List[str] = []
                if image_missing[i] and isinstance(image, str):
                    missing.append("image")
                detail: Dict[str, Any] = {"record": record, "maps": [], "stats": [], "missing": missing}
                if not ok:
                    failed_total += 1
                    cols["error"][i] = f"{record.get('stage', '?')}: {record.get('error', '')}"
                else:
                    for o in overlays:
                        if not exists(os.path.join(run.out_dir, o)):
                            missing.append(o)
                    heatmap = record.get("heatmap")
                    maps = None
                    if heatmap is not None:
                        try:
                            maps = reader.read(heatmap)
                        except (OSError, ValueError, zipfile.BadZipFile) as err:
                            missing.append(heatmap if isinstance(heatmap, str) else f"{heatmap.get('file')}:{heatmap.get('key')}")
                            detail["heatmap_error"] = str(err)
                    if maps is not None:
                        region = None
                        if source is not None:
                            key = source.find(rel, image if isinstance(image, str) else None)
                            if key is None:
                                mask_absent += r_index == 0
                            else:
                                try:
                                    region = source.region(key, record.get("image_size"), maps.shape[1:])
                                    mask_found += r_index == 0
                                except OSError as err:
                                    if r_index == 0:
                                        unreadable.append((rel, str(err)))
                        for k, cam in enumerate(maps):
                            stats = map_stats(cam, region, border=border, tolerance=tolerance)
                            small = preview(cam, int(preview_size))
                            detail["maps"].append(_encode_preview(small))
                            detail["stats"].append(stats)
                            cls = targets[k] if k < len(targets) else None
                            if k == 0:
                                for name in ("border", "inside", "hit", "outside"):
                                    cols[name][i] = stats[name]
                            if cls is not None and stats["border"] is not None:
                                means.add(cls, small)
                                bucket = per_class.setdefault(cls, {"border": [], "inside": [], "hit": [], "score": [], "correct": []})
                                bucket["border"].append(stats["border"])
                                if stats["inside"] is not None:
                                    bucket["inside"].append(stats["inside"])
                                    bucket["hit"].append(float(stats["hit"]))
                                if k < len(tscores) and _num(tscores[k]) is not None:
                                    bucket["score"].append(float(tscores[k]))
                                if cols["correct"][i] is not None:
                                    bucket["correct"].append(float(cols["correct"][i]))
                if missing:
                    missing_total += len(missing)
                    cols["missing"][i] = missing
                details[i][r_index] = detail
        finally:
            reader.close()

        class_rows = []
        for cls in means.classes():
            bucket = per_class.get(cls, {})
            path = f"classes/run{r_index}-class{cls}.png"
            _colour_png(means.mean(cls), os.path.join(dest, path))

            def avg(key, bucket=bucket):
                values = bucket.get(key) or []
                return round(statistics.fmean(values), 4) if values else None

            class_rows.append({
                "cls": cls, "count": means.count(cls), "mean_map": path, "score": avg("score"),
                "border": avg("border"), "inside": avg("inside"), "pointing": avg("hit"), "accuracy": avg("correct"),
                "outside": round(1 - avg("inside"), 4) if avg("inside") is not None else avg("border"),
            })  # fmt: skip
        summary = run.summary
        ok_records = [r for r in run.records if r.get("status") == "ok"]
        failures = [[r["rel"], f"{r.get('stage', '?')}: {r.get('error', '')}"] for r in run.records if r.get("status") != "ok"]
        candidates = sum(1 for v in cols["outside"] if v is not None and source is not None and v > shortcut_threshold)
        runs_data.append({
            "name": run.name,
            "dir": os.path.relpath(run.out_dir, dest).replace(os.sep, "/"),
            "path": run.out_dir,
            "method": run.method,
            "model": run.config.get("model"),
            "weights": run.config.get("weights"),
            "layers": run.config.get("target_layers") or next((r.get("layers") for r in ok_records if r.get("layers")), None),
            "targets": run.config.get("targets"),
            "image_size": run.config.get("image_size"),
            "camlib_version": run.config.get("camlib_version"),
            "total": len(run.records),
            "ok": len(ok_records),
            "failed": len(failures),
            "failures": failures,
            "elapsed_s": summary.get("elapsed_s"),
            "wall_s": summary.get("wall_s"),
            "images_per_s": summary.get("images_per_s"),
            "world_size": summary.get("world_size"),
            "timing": _timing(ok_records),
            "mixed": run.mixed,
            "notes": run.notes,
            "has_truth": has_truth,
            "shortcut_candidates": candidates,
            "classes": class_rows,
            "cols": cols,
        })  # fmt: skip

    # detail chunks, then the index data, then the page
    for start in range(0, n, CHUNK_SIZE):
        chunk = details[start:start + CHUNK_SIZE]
        text = json.dumps(chunk, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
        body = f"camlibReportChunk({start // CHUNK_SIZE},JSON.parse({json.dumps(text)}));\n"
        with open(os.path.join(dest, "chunks", f"chunk-{start // CHUNK_SIZE:05d}.js"), "w", encoding="ascii") as handle:
            handle.write(body)
    masks_data = None
    if source is not None:
        masks_data = {
            "kind": source.kind, "path": source.path, "found": mask_found, "absent": mask_absent,
            "unreadable": [list(u) for u in unreadable], "threshold": shortcut_threshold, "tolerance": tolerance,
        }  # fmt: skip
    data = {
        "format": 1,
        "title": title or ("camlib report: " + " vs ".join(r.name for r in loaded)),
        "images": rels,
        "image_paths": image_paths,
        "classes": {str(k): v for k, v in sorted(names.items())},
        "runs": runs_data,
        "masks": masks_data,
        "border": border,
        "chunk_size": CHUNK_SIZE,
        "preview_size": int(preview_size),
        "notes": notes,
    }
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    with open(os.path.join(dest, "data.js"), "w", encoding="ascii") as handle:
        handle.write(f"window.CAMLIB_REPORT=JSON.parse({json.dumps(text)});\n")
    for name in ASSET_FILES:
        shutil.copyfile(os.path.join(ASSETS, name), os.path.join(dest, name))
    with open(os.path.join(dest, _MARKER), "w", encoding="utf-8") as handle:
        json.dump({"runs": [r.out_dir for r in loaded], "images": n}, handle)
    if unreadable:
        notes.append(f"{len(unreadable)} mask(s) could not be read and were skipped")
    for note in notes:
        logger.warning("%s", note)
    return ReportResult(
        index=os.path.join(dest, "index.html"), images=n, failed=failed_total, missing_files=missing_total,
        unreadable_masks=unreadable, notes=notes, build_s=round(time.perf_counter() - started, 3),
    )  # fmt: skip

