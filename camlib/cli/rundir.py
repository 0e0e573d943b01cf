"""The ``--out`` folder of ``camlib explain``: what it may touch there, and checking an earlier run.

``camlib explain`` only ever deletes or replaces files it wrote:

* a folder is a camlib run when its ``run.json`` says so (``"tool": "camlib explain"``);
  a run starts only in a new or empty folder, or (with ``--resume`` or
  ``--overwrite``) in a camlib run folder: any other non-empty folder is
  refused, and so is ``--resume`` without ``run.json``; a ``manifest.jsonl``
  alone does not make a folder a run;
* its temporaries are hidden files named ``.<name>.camlib-tmp-<pid>``
  (:func:`camlib.cli.outputs.temporary_name`), looked for only at the top of
  ``--out`` and under its ``heatmaps/`` and ``overlays/``;
* ``--overwrite`` deletes the outputs the earlier run's manifest records (so a
  run on fewer inputs leaves no orphans), then its manifest, summary and
  ``run.json``; other files in the folder are left alone;
* ``--resume`` checks the settings that change the outputs, and the weights
  file by content: its SHA-256 is recorded, with its size and modification
  time as a fast path (the same size and time are taken as the same file).

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_camlib_run(folder), run_config(folder) is None
    (False, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from camlib.cli.inputs import UsageError
from camlib.cli.manifest import MANIFEST_NAME, read_records, shard_files
from camlib.cli.outputs import HEATMAP_DIR, OVERLAY_DIR, atomic_write, remove_temporaries

__all__ = [
    "MUST_MATCH",
    "RUN_CONFIG_NAME",
    "RUN_TOOL",
    "SUMMARY_NAME",
    "file_fingerprint",
    "is_camlib_run",
    "prepare_out_dir",
    "run_config",
]

logger = logging.getLogger("camlib.cli")

#: The run's settings, under ``--out``; marks the folder as a camlib run, and ``--resume`` checks them.
RUN_CONFIG_NAME = "run.json"
#: Totals and failures of the last run, under ``--out``.
SUMMARY_NAME = "summary.json"
#: The value of ``run.json``'s ``"tool"`` key.
RUN_TOOL = "camlib explain"
#: Settings that change the outputs: a resumed run must use the same ones (the weights file is compared by content).
MUST_MATCH = (
    "model",
    "weights_kind",
    "num_classes",
    "method",
    "target_layers",
    "targets",
    "image_size",
    "mean",
    "std",
    "output_size",
    "save",
    "heatmap_format",
    "shard_size",
    "overlay_format",
    "jpeg_quality",
    "aug_smooth",
    "eigen_smooth",
)

_CHUNK = 1 << 20


def file_fingerprint(path: str, known: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``{"bytes", "mtime_ns", "sha256"}`` of a file.

    Args:
        path: The file.
        known: An earlier fingerprint: if the size and modification time are
            the same, its ``sha256`` is reused without reading the file.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> _ = open(path, "wb").write(b"abc")
        >>> file_fingerprint(path)["sha256"][:12]
        'ba7816bf8f01'
    """
    info = os.stat(path)
    result: Dict[str, Any] = {"bytes": int(info.st_size), "mtime_ns": int(info.st_mtime_ns)}
    if (
        known is not None
        and known.get("bytes") == result["bytes"]
        and known.get("mtime_ns") == result["mtime_ns"]
        and isinstance(known.get("sha256"), str)
    ):
        result["sha256"] = known["sha256"]
        return result
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    result["sha256"] = digest.hexdigest()
    return result


def run_config(out_dir: str) -> Optional[Dict[str, Any]]:
    """The ``run.json`` of a camlib run in ``out_dir``; None if there is no ``run.json``.

    Raises:
        UsageError: If ``run.json`` cannot be read, or was not written by camlib explain.
    """
    path = os.path.join(out_dir, RUN_CONFIG_NAME)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(
            f"--out {out_dir!r} holds a {RUN_CONFIG_NAME} that cannot be read ({err}); it is not a camlib explain "
            "run that can be resumed or overwritten: choose another --out"
        ) from err
    # runs of camlib before the "tool" key recorded camlib_version and the method
    ours = isinstance(config, dict) and (
        config.get("tool") == RUN_TOOL or ("camlib_version" in config and "method" in config)
    )
    if not ours:
        raise UsageError(
            f"--out {out_dir!r} holds a {RUN_CONFIG_NAME} that camlib explain did not write; camlib explain only "
            "writes into an empty folder or its own earlier run: choose another --out"
        )
    return config


def is_camlib_run(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a camlib explain run (a ``run.json`` it wrote)."""
    try:
        return run_config(out_dir) is not None
    except UsageError:
        return False


def _weights_mismatch(before: Mapping[str, Any], config: Dict[str, Any]) -> Optional[str]:
    """Fill ``config["weights_file"]`` (reusing the earlier hash when size and time agree);
    say how the weights differ from the earlier run's, or None."""
    old = before.get("weights_file")
    path = config.get("weights")
    if config.get("weights_kind") != "path" or not isinstance(path, str):
        return None
    config["weights_file"] = file_fingerprint(path, old if isinstance(old, Mapping) else None)
    if not isinstance(old, Mapping) or "sha256" not in old:
        return None  # a run of an older camlib: only the path was recorded (and compared)
    if old["sha256"] != config["weights_file"]["sha256"]:
        return (
            f"the weights file {path} has changed since the earlier run (SHA-256 {old['sha256'][:12]}... then, "
            f"{config['weights_file']['sha256'][:12]}... now): its maps would mix two models"
        )
    return None


def _remove_recorded_outputs(out_dir: str) -> int:
    """Delete the outputs that the earlier run's manifest records; return how many."""
    removed = 0
    real_out = os.path.realpath(out_dir)
    for record in read_records(out_dir):
        files: List[str] = list(record.files or {})
        if isinstance(record.heatmap, dict) and isinstance(record.heatmap.get("file"), str):
            files.append(record.heatmap["file"])
        for rel in files:
            if not rel.startswith((f"{HEATMAP_DIR}/", f"{OVERLAY_DIR}/")):
                continue  # never anything outside the tool's own folders
            path = os.path.join(out_dir, rel)
            if not os.path.realpath(path).startswith(real_out + os.sep) or not os.path.isfile(path):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed += 1
    for sub in (HEATMAP_DIR, OVERLAY_DIR):  # folders left empty
        for top, _, _ in sorted(os.walk(os.path.join(out_dir, sub)), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(top)
    return removed


def prepare_out_dir(
    out_dir: str, config: Dict[str, Any], *, resume: bool, overwrite: bool, extra_files: Sequence[str] = ()
) -> None:
    """Check ``--out`` against an earlier run, clean what a killed run left, write ``run.json``.

    Args:
        out_dir: The output folder (absolute).
        config: This run's settings (``run.json``); ``weights_file`` is filled in.
        resume: ``--resume``.
        overwrite: ``--overwrite``.
        extra_files: Other files of a run to delete with ``--overwrite`` (names under ``out_dir``).

    Raises:
        UsageError: If ``--out`` is a file, a non-empty folder that is not a
            camlib run, an earlier run and neither ``--resume`` nor ``--overwrite``
            is given, a run with other settings or weights (``--resume``), a
            folder without ``run.json`` (``--resume``), or cannot be written.
    """
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir!r} is a file; pass a folder (created if needed)")
    before = run_config(out_dir) if os.path.isdir(out_dir) else None
    if before is None:
        if resume:
            raise UsageError(
                f"--resume: --out {out_dir!r} holds no camlib explain run (no {RUN_CONFIG_NAME}), so there is "
                "nothing to resume and no settings to check; run without --resume into an empty folder"
            )
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            raise UsageError(
                f"--out {out_dir!r} is not empty and holds no camlib explain run (no {RUN_CONFIG_NAME}); "
                "camlib explain writes only into a new or empty folder or its own earlier run: choose another --out"
            )
        if config.get("weights_kind") == "path":
            config["weights_file"] = file_fingerprint(config["weights"])
    elif overwrite:
        removed = _remove_recorded_outputs(out_dir)
        for name in [RUN_CONFIG_NAME, MANIFEST_NAME, SUMMARY_NAME, *extra_files]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
        for path in shard_files(out_dir):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        logger.info("--overwrite: removed %d output file(s) of the earlier run", removed)
        if config.get("weights_kind") == "path":
            config["weights_file"] = file_fingerprint(config["weights"])
    elif not resume:
        raise UsageError(
            f"--out {out_dir!r} already holds a camlib explain run ({RUN_CONFIG_NAME}); "
            "pass --resume to complete it, --overwrite to start again, or choose another --out"
        )
    else:
        _check_resumable(out_dir, before, config)
    try:
        os.makedirs(out_dir, exist_ok=True)
        removed = remove_temporaries(out_dir)
        atomic_write(os.path.join(out_dir, RUN_CONFIG_NAME), (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(
            f"cannot write in --out {out_dir!r} ({reason}); choose a folder you can write to"
        ) from err
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)


def _check_resumable(out_dir: str, before: Mapping[str, Any], config: Dict[str, Any]) -> None:
    if "weights_kind" not in before:  # a run of an older camlib recorded the weights path only
        before = {**before, "weights_kind": _kind(before.get("weights"))}
        if before["weights_kind"] == "path" and before.get("weights") != config.get("weights"):
            before = {**before, "weights_kind": "another path"}
    different = [k for k in MUST_MATCH if before.get(k) != config.get(k)]
    if different:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {config.get(k)!r} now" for k in different[:4])
        raise UsageError(
            f"--resume: --out {out_dir!r} holds a run made with other settings ({details}); resume with "
            "the same settings, choose another --out, or pass --overwrite to start again"
        )
    try:
        mismatch = _weights_mismatch(before, config)
    except OSError as err:
        raise UsageError(f"--resume: cannot read the weights file {config.get('weights')!r} ({err})") from err
    if mismatch:
        raise UsageError(
            f"--resume: {mismatch}; pass --overwrite to start again with the new weights, or choose another --out"
        )
    if before.get("batch_size") != config.get("batch_size"):
        logger.warning(
            "--resume with --batch-size %s instead of %s: the images explained now are batched differently "
            "and may differ from an uninterrupted run in the last bits",
            config.get("batch_size"),
            before.get("batch_size"),
        )


def _kind(weights: Any) -> str:
    text = str(weights).strip().lower()
    return text if text in ("default", "none", "(model object)") else "path"
