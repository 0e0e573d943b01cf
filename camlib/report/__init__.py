"""An HTML page to review the explanations of a whole data set: ``camlib report``.

``camlib explain ... --report`` (or ``camlib report OUT_DIR`` on an earlier
or resumed run) writes ``OUT_DIR/report/index.html``: a static page, with no
server, no network and no recomputation, built from the run's
``manifest.jsonl``, ``summary.json``, ``run.json`` and saved heatmaps. It
shows a grid of the images and their overlays (paged, thumbnails loaded
lazily, fast at 50,000 images), sorts and filters them (class, score,
correct or not, a *look-outside* score), opens a detail view per image, and
sums the run up: counts, classes, method, model, timings, failures. With
object masks or boxes it adds energy inside the object and the pointing
game, and lists the likely shortcuts first; several runs are shown side by
side. See ``docs/explain.md``.

Example:
    >>> import json, os, tempfile
    >>> out = tempfile.mkdtemp()
    >>> record = {"index": 0, "image": os.path.join(out, "a.png"), "rel": "a.png", "status": "error",
    ...           "stage": "read", "error": "not an image"}
    >>> _ = open(os.path.join(out, "manifest.jsonl"), "w").write(json.dumps(record) + "\\n")
    >>> result = build_report(out)
    >>> result.failed, os.path.exists(result.index)
    (1, True)
"""

from __future__ import annotations

from camlib.report.runs import ReportError
from camlib.report.site import ReportResult, build_report

__all__ = ["ReportError", "ReportResult", "build_report"]
