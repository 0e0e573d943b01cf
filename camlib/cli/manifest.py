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
    >>> best_records([{"rel": "a.png", "status": "error", "finished_at": 2.0},
    ...               {"rel": "a.png", "status": "ok", "finished_at": 1.0}])["a.png"]["status"]
    'ok'
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from camlib.cli.outputs import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "RUN_VARYING_KEYS",
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


def shard_path(out_dir: str, rank: int) -> str:
    """The manifest shard of process ``rank``."""
    return os.path.join(out_dir, f"manifest.rank{rank}.jsonl")


def shard_files(out_dir: str) -> List[str]:
    """The manifest shards under ``out_dir``, by rank."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := _SHARD.match(name))]
    return [os.path.join(out_dir, name) for _, name in sorted(found)]


def dumps(record: Mapping) -> str:
    """One record as a JSON line (without the newline)."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


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

    def write(self, records: Sequence[Mapping]) -> None:
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


def _parse_lines(path: str) -> List[dict]:
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
                if isinstance(record, dict) and isinstance(record.get("rel"), str):
                    records.append(record)
    except FileNotFoundError:
        pass
    return records


def read_records(out_dir: str) -> List[dict]:
    """Every record of ``manifest.jsonl`` and of the shards under ``out_dir``, in file order."""
    records = _parse_lines(os.path.join(out_dir, MANIFEST_NAME))
    for path in shard_files(out_dir):
        records.extend(_parse_lines(path))
    return records


def best_records(records: Iterable[Mapping]) -> Dict[str, dict]:
    """The record to keep for each image (by ``rel``): a success over a failure, then the latest."""
    best: Dict[str, dict] = {}
    for record in records:
        key = record["rel"]
        current = best.get(key)
        if current is None or _rank(record) >= _rank(current):
            best[key] = dict(record)
    return best


def _rank(record: Mapping) -> tuple:
    finished = record.get("finished_at")
    return (record.get("status") == "ok", finished if isinstance(finished, (int, float)) else 0.0)


def record_complete(record: Optional[Mapping], out_dir: str, source: Optional[Mapping]) -> bool:
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
    if record is None or record.get("status") != "ok":
        return False
    if source is not None and record.get("source") != dict(source):
        return False
    files = record.get("files")
    if not isinstance(files, Mapping) or not files:
        return False
    for rel, size in files.items():
        try:
            if os.stat(os.path.join(out_dir, rel)).st_size != size:
                return False
        except OSError:
            return False
    return True


def write_manifest(out_dir: str, records: Sequence[Mapping]) -> str:
    """Write ``manifest.jsonl`` atomically; return its path."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    atomic_write(path, "".join(dumps(r) + "\n" for r in records).encode("utf-8"))
    return path
