"""Reading a ``camlib explain`` run folder for the report: records, settings, summary, labels.

A run folder holds ``manifest.jsonl`` (one JSON record per image),
``run.json`` (the settings) and ``summary.json`` (totals, failures,
throughput); see ``docs/explain.md``. The report reads only these files and
the heatmaps and overlays they name: nothing is recomputed, and nothing of
the ``explain`` implementation is needed.

Example:
    >>> import json, os, tempfile
    >>> out = tempfile.mkdtemp()
    >>> record = {"index": 0, "rel": "a.png", "status": "ok", "method": "gradcam", "layers": ["x"]}
    >>> _ = open(os.path.join(out, "manifest.jsonl"), "w").write(json.dumps(record) + "\\n")
    >>> run = load_run(out)
    >>> len(run.records), run.method
    (1, 'gradcam')
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "IDENTITY_KEYS",
    "ReportError",
    "Run",
    "load_run",
    "mixed_groups",
    "read_label_file",
]

#: Record fields that must agree within one manifest (else it mixes runs; see ``--allow-mixed``).
IDENTITY_KEYS = ("method", "layers", "model", "weights", "input_size")


class ReportError(ValueError):
    """A run folder, mask source or label file the report cannot use; the message says why and what to do."""


@dataclass
class Run:
    """One run folder, as the report reads it.

    Attributes:
        out_dir: The folder (absolute).
        records: The manifest's records, in file order (one per image).
        config: ``run.json`` (empty if absent).
        summary: ``summary.json`` (empty if absent).
        mixed: ``{description: count}`` when the records come from several
            runs (only with ``allow_mixed``), else empty.
        notes: Problems met while reading (lines skipped, files unreadable).
    """

    out_dir: str
    records: List[dict]
    config: Dict[str, Any] = field(default_factory=dict)
    summary: Dict[str, Any] = field(default_factory=dict)
    mixed: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The folder's name, to tell runs apart on the page."""
        return os.path.basename(os.path.normpath(self.out_dir)) or self.out_dir

    @property
    def method(self) -> Optional[str]:
        """The CAM method (from ``run.json``, else the records)."""
        method = self.config.get("method")
        if method:
            return str(method)
        for record in self.records:
            if record.get("method"):
                return str(record["method"])
        return None

    @property
    def label_file(self) -> Optional[str]:
        """The label file the run explained (``--targets LABEL_FILE``), or None."""
        targets = self.config.get("targets")
        if isinstance(targets, str) and targets.startswith("labels:"):
            return targets[len("labels:"):]
        return None


def _read_json(path: str, notes: List[str]) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        notes.append(f"{os.path.basename(path)} is unreadable ({err}); ignored")
        return {}
    return data if isinstance(data, dict) else {}


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _describe(key: Tuple) -> str:
    def show(value: Any) -> str:
        return json.dumps(list(value)) if isinstance(value, tuple) else str(value)

    return ", ".join(f"{name}={show(value)}" for name, value in key if value is not None) or "(no method recorded)"


def mixed_groups(records: Sequence[Mapping]) -> Dict[str, int]:
    """How many ``ok`` records share each combination of :data:`IDENTITY_KEYS`.

    Example:
        >>> mixed_groups([{"status": "ok", "method": "gradcam"}, {"status": "ok", "method": "scorecam"}])
        {'method=gradcam': 1, 'method=scorecam': 1}
    """
    counts: Dict[Tuple, int] = collections.Counter()
    for record in records:
        if record.get("status") != "ok":
            continue
        key = tuple((name, _hashable(record.get(name))) for name in IDENTITY_KEYS)
        counts[key] += 1
    return {_describe(key): n for key, n in counts.items()}


def load_run(out_dir: str, allow_mixed: bool = False) -> Run:
    """Read a run folder.

    Args:
        out_dir: The ``--out`` folder of ``camlib explain``.
        allow_mixed: Accept a manifest whose records come from several runs
            (different method, layers or model); by default it is refused.

    Returns:
        The :class:`Run`.

    Raises:
        ReportError: If the folder or its ``manifest.jsonl`` is missing, or
            the manifest mixes runs and ``allow_mixed`` is False.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    manifest = os.path.join(out_dir, "manifest.jsonl")
    if not os.path.isdir(out_dir):
        raise ReportError(f"run folder {out_dir!r} does not exist; pass the --out folder of a camlib explain run")
    notes: List[str] = []
    records: List[dict] = []
    sources = [manifest] if os.path.exists(manifest) else sorted(
        os.path.join(out_dir, n) for n in os.listdir(out_dir) if n.startswith("manifest.rank") and n.endswith(".jsonl")
    )
    if not sources:
        raise ReportError(
            f"{out_dir!r} holds no manifest.jsonl; pass the --out folder of a camlib explain run "
            "(a run still going on or killed has manifest.rank<R>.jsonl files: resume it, or report those)"
        )
    if sources[0] != manifest:
        notes.append("no manifest.jsonl (the run is unfinished): read the per-process manifest.rank<R>.jsonl files")
    seen: Dict[str, int] = {}
    for path in sources:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    notes.append(f"{os.path.basename(path)} line {number} is not JSON; skipped")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("rel"), str):
                    notes.append(f"{os.path.basename(path)} line {number} is not an image record; skipped")
                    continue
                if record["rel"] in seen:  # a later record of the same image (resumed shards): keep the better
                    old = records[seen[record["rel"]]]
                    if old.get("status") == "ok" and record.get("status") != "ok":
                        continue
                    records[seen[record["rel"]]] = record
                    continue
                seen[record["rel"]] = len(records)
                records.append(record)
    if sources[0] != manifest:
        records.sort(key=lambda r: (r.get("index", 0) if isinstance(r.get("index"), int) else 0, r["rel"]))
    config = _read_json(os.path.join(out_dir, "run.json"), notes)
    summary = _read_json(os.path.join(out_dir, "summary.json"), notes)
    if not config and isinstance(summary.get("config"), dict):
        config = summary["config"]
    groups = mixed_groups(records)
    run_method = config.get("method")
    if run_method and any(r.get("method") not in (None, run_method) for r in records if r.get("status") == "ok"):
        groups[f"run.json: method={run_method}"] = 0  # the manifest was made by another run than run.json
    mixed: Dict[str, int] = {}
    if len(groups) > 1:
        listing = "; ".join(f"{name} ({n} records)" for name, n in sorted(groups.items(), key=lambda kv: -kv[1]))
        if not allow_mixed:
            raise ReportError(
                f"{manifest} mixes records of different runs: {listing}. Report each run from its own --out "
                "folder (side by side: camlib report RUN_A RUN_B), or pass --allow-mixed to report them together"
            )
        mixed = groups
        notes.append(f"records of several runs (--allow-mixed): {listing}")
    return Run(out_dir=out_dir, records=records, config=config, summary=summary, mixed=mixed, notes=notes)


def _labels(value: Any, where: str) -> Tuple[int, ...]:
    if isinstance(value, bool):
        raise ReportError(f"{where}: label {value!r} is not a class index")
    if isinstance(value, int):
        values: List[Any] = [value]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = str(value).replace(";", " ").replace(",", " ").split()
    out = []
    for item in values:
        try:
            number = int(item)
        except (TypeError, ValueError):
            raise ReportError(f"{where}: label {item!r} is not a class index (a non-negative integer)") from None
        if number < 0:
            raise ReportError(f"{where}: label {number} is negative")
        out.append(number)
    return tuple(out)


def read_label_file(path: str) -> Dict[str, Tuple[int, ...]]:
    """Ground-truth classes by image path, from a label file in ``camlib explain``'s formats.

    CSV/TSV (``path,label`` with an optional header; several classes as
    ``3;5``), whitespace-separated text (``path 3 5``) or JSON
    (``{"path": 3}`` or ``[{"path": ..., "label": ...}]``). Paths are kept as
    written (relative to the inputs' common folder, or absolute).

    Args:
        path: The file.

    Returns:
        ``{path: (class, ...)}``.

    Raises:
        ReportError: If the file cannot be read or a label is not a class index.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "labels.csv")
        >>> _ = open(p, "w").write("path,label\\nval/a.png,3;5\\n")
        >>> read_label_file(p)
        {'val/a.png': (3, 5)}
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"cannot read the label file {path!r}: {err}") from err
    table: Dict[str, Tuple[int, ...]] = {}
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ReportError(f"{path} is not valid JSON: {err}") from err
        if isinstance(data, dict):
            for key, value in data.items():
                table[str(key)] = _labels(value, f"{path}: {key!r}")
        elif isinstance(data, list):
            for i, entry in enumerate(data):
                if not isinstance(entry, dict):
                    raise ReportError(f"{path}: item {i} is not an object like {{\"path\": ..., \"label\": ...}}")
                key = next((entry[k] for k in ("path", "image", "file") if k in entry), None)
                value = next((entry[k] for k in ("label", "labels", "target", "targets", "class") if k in entry), None)
                if key is None or value is None:
                    raise ReportError(f"{path}: item {i} needs a 'path' and a 'label' key")
                table[str(key)] = _labels(value, f"{path}: item {i}")
        else:
            raise ReportError(f"{path} must hold a JSON object {{path: label}} or a list of {{path, label}} objects")
        return table
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    delimiter = "\t" if any("\t" in line for line in lines) else ("," if any("," in line for line in lines) else None)
    for number, line in enumerate(lines, 1):
        if delimiter is None:
            cells = line.split()
        else:
            cells = next(csv.reader(io.StringIO(line), delimiter=delimiter))
        cells = [c.strip() for c in cells]
        if len(cells) < 2:
            raise ReportError(f"{path} line {number}: expected 'path label', got {line!r}")
        if number == 1 and not cells[1].replace(";", "").replace(" ", "").isdigit():
            continue  # a header row
        table[cells[0]] = _labels(" ".join(cells[1:]), f"{path} line {number}")
    return table
