"""Build time and time to first render of ``camlib report`` at 50,000 images.

Usage::

    python benchmarks/bench_report.py                          # 50,000 records, 3 rounds
    python benchmarks/bench_report.py --records 5000 --rounds 5 --json bench.json --markdown bench.md

A synthetic run folder is written first (not timed): ``--records`` manifest
records over 100 classes, with float16 heatmaps of ``--map-size`` pixels in
``.npz`` shards of 1024 (as ``camlib explain --heatmap-format npz`` writes
them), and, for every record, an image and an overlay file (hard links to a
pool of 64 generated demo images and overlays, so that every path exists and
is distinct without writing 100,000 files' worth of bytes); one record in a
thousand is a failure. Each round then measures:

* **build**: :func:`camlib.report.build_report` over the folder (reading every
  heatmap, statistics, previews, per-class means, writing the page);
* **first render**: headless Chromium opens ``index.html`` from ``file://``;
  the time from navigation start to the end of the first page's rendering
  (``window.camlibReportFirstRender``, set by the page), and to the load event;
* **first thumbnails**: until the first 8 cards' images are decoded;
* **sort** and **filter**: re-sorting all records by score, and filtering one
  class, in the page (JavaScript time).

Medians over the rounds are printed and written to ``--json``/``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from camlib.demo import make_image
from camlib.report import build_report
from camlib.report.chromium import Chromium, find_chromium

__all__ = ["main", "measure_page", "synthetic_run"]


def synthetic_run(out: Path, records: int, map_size: int, classes: int = 100, seed: int = 0) -> None:
    """Write a ``camlib explain``-like run folder with ``records`` images to ``out``."""
    rng = np.random.default_rng(seed)
    pool = out.parent / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    pool_size = min(64, records)
    for k in range(pool_size):
        rgb = np.uint8(np.rint(make_image(k, 128)[0][..., ::-1] * 255))
        cv2.imwrite(str(pool / f"{k}.png"), rgb)
        cam = cv2.GaussianBlur(np.float32(rng.random((128, 128)) > 0.995), (0, 0), 12)
        cam = cam / max(float(cam.max()), 1e-6)
        overlay = cv2.addWeighted(rgb, 0.5, cv2.applyColorMap(np.uint8(cam * 255), cv2.COLORMAP_JET), 0.5, 0)
        cv2.imwrite(str(pool / f"{k}.jpg"), overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])
    yy, xx = np.mgrid[0:map_size, 0:map_size] / map_size
    lines = []
    shard: Dict[str, np.ndarray] = {}
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    for i in range(records):
        folder = f"class{i % classes:03d}"
        rel = f"{folder}/{i:06d}.png"
        stem = f"{folder}/{i:06d}"
        for ext, base in ((".png", out.parent / "images"), (".jpg", out / "overlays")):
            target = base / f"{stem}{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(pool / f"{i % pool_size}{ext}", target)
        unit = i // 1024
        if i % 1024 == 0 and shard:
            np.savez(out / "heatmaps" / f"shard-{unit - 1:06d}.npz", **shard)
            shard = {}
        if i % 1000 == 999:
            lines.append({"index": i, "image": str(out.parent / "images" / rel), "rel": rel, "status": "error",
                          "stage": "read", "error": "cannot identify image file", "finished_at": 0.0})  # fmt: skip
            continue
        cy, cx = rng.random(2)
        cam = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02).astype(np.float16)
        shard[rel] = cam
        pred = int(rng.integers(classes))
        score = float(rng.normal(5, 2))
        lines.append({
            "index": i, "image": str(out.parent / "images" / rel), "rel": rel, "status": "ok", "pred": pred,
            "pred_name": f"class {pred}", "score": score, "targets": [pred], "target_scores": [score],
            "method": "gradcam", "layers": ["layer4"], "input_size": [map_size, map_size], "image_size": [128, 128],
            "heatmap": {"file": f"heatmaps/shard-{unit:06d}.npz", "key": rel}, "overlays": [f"overlays/{stem}.jpg"],
            "time": {"decode_s": 0.001, "cam_s": 0.004, "write_s": 0.001}, "finished_at": 0.0,
        })  # fmt: skip
    if shard:
        np.savez(out / "heatmaps" / f"shard-{(records - 1) // 1024:06d}.npz", **shard)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in lines)
    (out / "run.json").write_text(json.dumps({"model": "synthetic", "method": "gradcam", "targets": "top1"}))


def measure_page(browser: Chromium, index: str) -> Dict[str, float]:
    """Open the report once; the page's timings in milliseconds."""
    browser.navigate("about:blank")
    started = time.perf_counter()
    browser.navigate(Path(index).as_uri(), ready="document.body.dataset.ready === '1'")
    load_ms = (time.perf_counter() - started) * 1000
    first = browser.evaluate("window.camlibReportFirstRender")
    cards = browser.evaluate("document.querySelectorAll('#grid .card').length")
    browser.wait_for("[...document.querySelectorAll('#grid img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)")
    thumbs = browser.evaluate("performance.now()")
    sort = browser.evaluate(
        "(() => { const t = performance.now(); const s = document.getElementById('sort'); s.value = 'score-desc'; "
        "s.dispatchEvent(new Event('change', {bubbles: true})); return performance.now() - t; })()"
    )
    filt = browser.evaluate(
        "(() => { const t = performance.now(); const s = document.getElementById('cls'); s.value = '7'; "
        "s.dispatchEvent(new Event('change', {bubbles: true})); return performance.now() - t; })()"
    )
    if browser.console:
        raise RuntimeError(f"console errors: {browser.console[:3]}")
    return {"first_render_ms": first, "ready_wall_ms": load_ms, "thumbnails_ms": thumbs, "sort_ms": sort,
            "filter_ms": filt, "cards": cards}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--map-size", type=int, default=56, help="heatmap side in pixels (default 56)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", help="where to write the synthetic run (default: a temporary folder)")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--markdown", help="write the results as a markdown table")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-report-", dir=args.workdir))
    try:
        started = time.perf_counter()
        run = work / "run"
        run.mkdir()
        synthetic_run(run, args.records, args.map_size)
        print(f"synthetic run of {args.records} records written in {time.perf_counter() - started:.1f} s", flush=True)
        builds, pages = [], []
        chromium = find_chromium()
        browser = Chromium(chromium) if chromium else None
        try:
            for round_ in range(args.rounds):
                result = build_report(run)
                builds.append(result.build_s)
                page = measure_page(browser, result.index) if browser else {}
                pages.append(page)
                print(f"round {round_ + 1}: build {result.build_s:.2f} s; " + ", ".join(f"{k} {v:.0f}" for k, v in page.items()), flush=True)
        finally:
            if browser:
                browser.close()
        report_dir = run / "report"
        sizes = {
            "data_js_mb": round(os.path.getsize(report_dir / "data.js") / 1e6, 2),
            "chunks_mb": round(sum(p.stat().st_size for p in (report_dir / "chunks").iterdir()) / 1e6, 1),
        }
        medians = {"build_s": round(statistics.median(builds), 2)}
        for key in (pages[0] if pages and pages[0] else {}):
            medians[key] = round(statistics.median(p[key] for p in pages), 1)
        results = {
            "records": args.records, "map_size": args.map_size, "rounds": args.rounds, "medians": medians,
            "builds_s": builds, "pages": pages, "sizes": sizes, "chromium": chromium,
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "load_average": os.getloadavg()},
        }  # fmt: skip
        print(json.dumps({"medians": medians, "sizes": sizes}, indent=2))
        if not chromium:
            print("no Chromium found: page timings skipped", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if args.markdown:
            rows = [f"| {k} | {v} |" for k, v in {**medians, **sizes}.items()]
            Path(args.markdown).write_text(
                f"{args.records} records, {args.map_size}x{args.map_size} maps, medians of {args.rounds} rounds\n\n"
                "| measure | median |\n| --- | ---: |\n" + "\n".join(rows) + "\n"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
