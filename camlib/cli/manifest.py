"""The manifest of ``camlib explain``: one JSON line per image, written only once its outputs exist.

While a run goes on, each process (rank) appends to its own shard,
``manifest.rank<R>.jsonl``, flushing and ``fsync``-ing after every batch, and
only after every output of the batch's images has been renamed into place. At
the end, rank 0 merges the shards (and any earlier ``manifest.jsonl``) into
``manifest.jsonl``, one record per input image in input order, and deletes the
shards.

``--resume`` reads every manifest file it finds (:func:`read_records`) and
keeps, for each image, the best record (:func:`best_records`); an image is
done when :func:`record_complete` says so: its record says ``"ok"``, the image
file has not changed since, and every output file listed in the record exists
with the recorded size.

Example:
    >>> records = [ImageRecord(0, "/data/a.png", "a.png", "error", finished_at=2.0),
    ...            ImageRecord(0, "/data/a.png", "a.png", "ok", finished_at=1.0)]
    >>> best_records(records)["a.png"].status
    'ok'
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from camlib.cli.outputs import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "RUN_VARYING_KEYS",
    "ImageRecord",
    "ManifestWriter",
    "best_records",
    "dumps",
    "read_records",
    "record_complete",
    "shard_files",
    "shard_path",
    "write_manifest",
]

#: The merged manifest, under ``--out``.
MANIFEST_NAME = "manifest.jsonl"
#: Record fields that differ between runs producing the same outputs (timings, which process did it).
RUN_VARYING_KEYS = ("time", "rank", "finished_at")

_SHARD = re.compile(r"^manifest\.rank(\d+)\.jsonl$")


@dataclass
class ImageRecord:
    """One image's manifest record (a JSON line; fields that are None are left out).

    Attributes:
        index: Position in the run's sorted input list.
        image: The image file (absolute path).
        rel: Its path relative to the inputs' common folder (the record's key).
        status: ``"ok"`` or ``"error"``.
        stage: Where an error happened: ``"read"``, ``"cam"`` or ``"merge"``.
        error: The error, in one line.
        pred: The top class.
        pred_name: Its name, when the model's class names are known.
        score: Its score.
        targets: The explained classes, one map each.
        target_scores: Their scores.
        method: The CAM method.
        layers: The target layers' paths.
        input_size: ``[H, W]`` of the model input.
        image_size: ``[H, W]`` of the image file.
        heatmap: The ``.npy`` file, or ``{"file": shard, "key": rel}`` in ``.npz`` mode.
        overlays: The overlay files, one per target.
        files: Every output file of the image (relative to ``--out``) -> its size in bytes.
        source: ``{"bytes", "mtime_ns"}`` of the image file when it was read.
        rank: The process that wrote it.
        time: Seconds spent decoding, computing and writing.
        finished_at: When the record was written (Unix time).
    """

    index: int
    image: str
    rel: str
    status: str
    stage: Optional[str] = None
    error: Optional[str] = None
    pred: Optional[int] = None
    pred_name: Optional[str] = None
    score: Optional[float] = None
    targets: Optional[List[int]] = None
    target_scores: Optional[List[float]] = None
    method: Optional[str] = None
    layers: Optional[List[str]] = None
    input_size: Optional[List[int]] = None
    image_size: Optional[List[int]] = None
    heatmap: Union[str, Dict[str, str], None] = None
    overlays: Optional[List[str]] = None
    files: Optional[Dict[str, int]] = None
    source: Optional[Dict[str, int]] = None
    rank: Optional[int] = None
    time: Optional[Dict[str, float]] = None
    finished_at: Optional[float] = None

    @property
    def ok(self) -> bool:
        """Whether the image was explained."""
        return self.status == "ok"

    def to_json(self) -> Dict[str, Any]:
        """The record as the JSON object of its line (None fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Optional[ImageRecord]:
        """A record read back from a line; None if it is not one (unknown fields are ignored)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data.get("rel"), str) or not isinstance(data.get("status"), str):
            return None
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("index", -1)
        values.setdefault("image", "")
        try:
            return cls(**values)
        except TypeError:
            return None


def shard_path(out_dir: str, rank: int) -> str:
    """The manifest shard of process ``rank``."""
    return os.path.join(out_dir, f"manifest.rank{rank}.jsonl")


def shard_files(out_dir: str) -> List[str]:
    """The manifest shards under ``out_dir``, by rank."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := _SHARD.match(name))]
    return [os.path.join(out_dir, name) for _, name in sorted(found)]


def dumps(record: Union[ImageRecord, Mapping]) -> str:
    """One record as a JSON line (without the newline)."""
    data = record.to_json() if isinstance(record, ImageRecord) else record
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


class ManifestWriter:
    """Appends records to a JSON Lines file, durably, from several threads.

    A record cut short by a kill (a last line without its newline) is removed
    when the file is opened again.

    Args:
        path: The file; created if needed.
        fsync: ``os.fsync`` after each :meth:`write`, so that a record survives
            a power cut, not only a killed process.
    """

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()
        _drop_torn_tail(path)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, records: Sequence[ImageRecord]) -> None:
        """Append ``records``, flush, and fsync."""
        if not records:
            return
        text = "".join(dumps(r) + "\n" for r in records)
        with self._lock:
            self._handle.write(text)
            self._handle.flush()
            if self.fsync:
                os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file (harmless twice)."""
        with self._lock:
            if not self._handle.closed:
                self._handle.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.close()


def _drop_torn_tail(path: str) -> None:
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _parse_lines(path: str) -> List[ImageRecord]:
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # cut short by a kill
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                parsed = ImageRecord.from_json(record) if isinstance(record, dict) else None
                if parsed is not None:
                    records.append(parsed)
    except FileNotFoundError:
        pass
    return records


def read_records(out_dir: str) -> List[ImageRecord]:
    """Every record of ``manifest.jsonl`` and of the shards under ``out_dir``, in file order."""
    records = _parse_lines(os.path.join(out_dir, MANIFEST_NAME))
    for path in shard_files(out_dir):
        records.extend(_parse_lines(path))
    return records


def best_records(records: Iterable[ImageRecord]) -> Dict[str, ImageRecord]:
    """The record to keep for each image (by ``rel``): a success over a failure, then the latest."""
    best: Dict[str, ImageRecord] = {}
    for record in records:
        current = best.get(record.rel)
        if current is None or _rank(record) >= _rank(current):
            best[record.rel] = record
    return best


def _rank(record: ImageRecord) -> tuple:
    finished = record.finished_at
    return (record.ok, finished if isinstance(finished, (int, float)) else 0.0)


def record_complete(record: Optional[ImageRecord], out_dir: str, source: Optional[Mapping]) -> bool:
    """Whether an image's outputs are complete, so that ``--resume`` can skip it.

    Args:
        record: The image's best record, or None.
        out_dir: The output folder.
        source: ``{"bytes": ..., "mtime_ns": ...}`` of the image file now, or None.

    Returns:
        True if the record says ``"ok"``, the image file has the size and
        modification time it had when it was explained, and every file in the
        record's ``"files"`` exists with its recorded size.
    """
    if record is None or not record.ok:
        return False
    if source is not None and record.source != dict(source):
        return False
    files = record.files
    if not isinstance(files, Mapping) or not files:
        return False
    for rel, size in files.items():
        try:
            if os.stat(os.path.join(out_dir, rel)).st_size != size:
                return False
        except OSError:
            return False
    return True


def write_manifest(out_dir: str, records: Sequence[ImageRecord]) -> str:
    """Write ``manifest.jsonl`` atomically; return its path."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    atomic_write(path, "".join(dumps(r) + "\n" for r in records).encode("utf-8"))
    return path
