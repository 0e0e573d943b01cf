"""What ``camlib explain`` reads: the list of images, the targets and the label files.

* :func:`collect_images` turns the command's INPUT arguments (image files,
  folders searched recursively, text files listing paths) into one sorted,
  de-duplicated list of :class:`InputImage`, each with the path relative to the
  inputs' common folder that the outputs mirror.
* :func:`parse_targets` reads ``--targets``: ``top1``, ``topk:K`` or a label file.
* :func:`read_label_file` reads a label file (CSV, TSV, whitespace-separated
  text or JSON) mapping image paths to one or more class indices.

Mistakes in the arguments raise :class:`UsageError`, a :class:`ValueError`
that the command line turns into a one-line message and exit status 2.

Example:
    >>> parse_targets("topk:3")
    TargetSpec(kind='topk', k=3, label_file=None)
    >>> parse_targets("top1").k
    1
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_FILE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "InputImage",
    "TargetSpec",
    "UsageError",
    "collect_images",
    "output_stems",
    "parse_targets",
    "read_label_file",
]

logger = logging.getLogger("camlib.cli")

#: File name endings taken as images when folders are searched (case-insensitive): what OpenCV reads.
IMAGE_EXTENSIONS: Tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".jpe",
    ".jp2",
    ".dib",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
    ".pxm",
    ".sr",
    ".ras",
    ".exr",
    ".hdr",
    ".pic",
)
#: File name endings of INPUT arguments read as lists of image paths, one per line.
LIST_EXTENSIONS: Tuple[str, ...] = (".txt", ".lst", ".list")
#: File name endings accepted for ``--targets`` label files.
LABEL_FILE_EXTENSIONS: Tuple[str, ...] = (".csv", ".tsv", ".txt", ".json")


class UsageError(ValueError):
    """A mistake in the arguments: the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class InputImage:
    """One image to explain.

    Attributes:
        index: Position in the sorted input list (the manifest's order).
        path: The file, as an absolute path.
        rel: Its path relative to the inputs' common folder, with ``/``
            separators; the outputs mirror it.
        stem: ``rel`` without its extension, the base of the output names (the
            whole ``rel`` when two inputs would otherwise share a stem, e.g.
            ``a.png`` and ``a.jpg``).
    """

    index: int
    path: str
    rel: str
    stem: str


@dataclass(frozen=True)
class TargetSpec:
    """What to explain in each image.

    Attributes:
        kind: ``"top1"`` (the top-scoring class), ``"topk"`` (the K top classes,
            best first) or ``"labels"`` (the classes a label file gives).
        k: K for ``"topk"``, 1 for ``"top1"``, None for ``"labels"``.
        label_file: The label file, for ``"labels"``.
    """

    kind: str
    k: Optional[int] = None
    label_file: Optional[str] = None

    def describe(self) -> str:
        """The spec as the command line writes it (a label file as an absolute path)."""
        if self.kind == "top1":
            return "top1"
        if self.kind == "topk":
            return f"topk:{self.k}"
        return f"labels:{self.label_file}"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(path: str, folder: Optional[str]) -> bool:
    if folder is None:
        return False
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(folder: str, exclude: Optional[str]) -> List[str]:
    """Image files under ``folder`` (symbolic links followed once, hidden names skipped)."""
    found: List[str] = []
    seen = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or _inside(real, exclude):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and _is_image_name(name):
                found.append(os.path.join(top, name))
    return found


def _read_list_file(path: str) -> List[str]:
    """Paths listed in a text file: one per line, ``#`` comments and blank lines skipped,
    relative paths taken relative to the list file's folder."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path!r} is not a UTF-8 text file listing image paths ({err.reason})") from err
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entries.append(os.path.normpath(os.path.join(base, os.path.expanduser(text))))
    return entries


def collect_images(
    inputs: Sequence[Union[str, os.PathLike]], exclude: Optional[Union[str, os.PathLike]] = None
) -> Tuple[List[InputImage], str]:
    """The images named by the command's INPUT arguments, sorted and de-duplicated.

    Each argument is an image file, a folder (searched recursively for files
    ending in one of :data:`IMAGE_EXTENSIONS`; hidden files and folders are
    skipped, symbolic links followed) or a text file (``.txt``, ``.lst``,
    ``.list``) listing paths, one per line, relative to the list's folder. A
    listed path that does not exist is kept: it is reported as a failed image
    when the run reaches it, and the run goes on.

    Args:
        inputs: The INPUT arguments.
        exclude: A folder whose images are skipped (the output folder, when it
            lies inside an input folder).

    Returns:
        The images, sorted by their path relative to the common folder of the
        inputs, and that folder.

    Raises:
        UsageError: If an argument does not exist, is a file of another kind,
            or no image is found.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> for name in ("b/2.png", "a/1.jpg", "a/notes.csv"):
        ...     os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        ...     open(os.path.join(root, name), "wb").close()
        >>> images, common = collect_images([root])
        >>> [image.rel for image in images], common == os.path.abspath(root)
        (['a/1.jpg', 'b/2.png'], True)
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise UsageError("no INPUT given; pass image files, folders or text files listing image paths")
    exclude_real = os.path.realpath(os.fspath(exclude)) if exclude is not None else None
    paths: List[str] = []
    anchors: List[str] = []
    for raw in inputs:
        arg = os.path.abspath(os.path.expanduser(os.fspath(raw)))
        if os.path.isdir(arg):
            anchors.append(arg)
            paths.extend(_walk(arg, exclude_real))
        elif os.path.isfile(arg):
            if _is_image_name(arg):
                anchors.append(os.path.dirname(arg))
                paths.append(arg)
            elif arg.lower().endswith(LIST_EXTENSIONS):
                for entry in _read_list_file(arg):
                    if os.path.isdir(entry):
                        anchors.append(entry)
                        paths.extend(_walk(entry, exclude_real))
                    else:
                        anchors.append(os.path.dirname(entry))
                        paths.append(entry)
            else:
                raise UsageError(
                    f"input {os.fspath(raw)!r} is neither an image ({', '.join(IMAGE_EXTENSIONS[:7])}, ...) "
                    f"nor a list of image paths ({', '.join(LIST_EXTENSIONS)}) nor a folder"
                )
        elif os.path.exists(arg):
            raise UsageError(
                f"input {os.fspath(raw)!r} is not a regular file or folder (a FIFO, socket or device); "
                "pass image files, folders or text files listing image paths"
            )
        else:
            raise UsageError(f"input {os.fspath(raw)!r} does not exist")
    unique = sorted({os.path.normpath(p) for p in paths if not _inside(os.path.realpath(p), exclude_real)})
    if not unique:
        where = ", ".join(repr(os.fspath(p)) for p in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise UsageError(
            f"no images found in {where}: folders are searched recursively for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS[:7])}, ...; list files hold one path per line"
        )
    try:
        root = os.path.commonpath(anchors)
    except ValueError as err:  # paths on different drives (Windows)
        raise UsageError(f"the inputs have no common folder to mirror under --out ({err})") from err
    rels = [PurePosixPath(*Path(os.path.relpath(p, root)).parts).as_posix() for p in unique]
    order = sorted(range(len(unique)), key=lambda i: rels[i])
    stems = output_stems([rels[i] for i in order])
    images = [
        InputImage(index=index, path=unique[i], rel=rels[i], stem=stem) for index, (i, stem) in enumerate(zip(order, stems))
    ]
    return images, root


def output_stems(rels: Sequence[str]) -> List[str]:
    """The base of each image's output names, unique by construction (ignoring case).

    An image's stem is its relative path without the extension (``a/b.png`` ->
    ``a/b``) when no other image has that stem; otherwise the whole relative
    path (``a.png`` and ``a.jpg`` -> ``a.png`` and ``a.jpg``). A name still
    taken after that (``a.png.png`` whose stem is ``a.png``) gets ``~2``,
    ``~3``, ... appended, in input order, so no two images ever share an
    output file (the outputs add an extension or a ``_top<k>``/``_class<c>``
    suffix to the stem, which keeps distinct stems distinct).

    Args:
        rels: The images' relative paths, in input order (unique).

    Returns:
        One stem per image.

    Example:
        >>> output_stems(["a.jpg", "a.png", "a.png.png", "b.png"])
        ['a.jpg', 'a.png', 'a.png~2', 'b']
    """
    stripped = [_strip_extension(rel) for rel in rels]
    counts: Dict[str, int] = {}
    for stem in stripped:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    preferred = [stem if counts[stem.lower()] == 1 else rel for stem, rel in zip(stripped, rels)]
    wanted = {stem.lower() for stem in preferred}
    taken: set = set()
    stems = []
    for stem in preferred:
        # the first image to prefer a name gets it; a later one takes the first "~k" nobody prefers
        name, k = stem, 1
        while name.lower() in taken or (k > 1 and name.lower() in wanted):
            k += 1
            name = f"{stem}~{k}"
        taken.add(name.lower())
        stems.append(name)
    return stems


def _strip_extension(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    base, dot, _ = name.rpartition(".")
    stem = base if dot and base else name
    return f"{head}/{stem}" if head else stem


# --------------------------------------------------------------------------- targets

_TOPK = re.compile(r"top(?:k)?[:=]?(\d+)$")


def parse_targets(spec: str) -> TargetSpec:
    """Read ``--targets``.

    Args:
        spec: ``"top1"``, ``"topk:K"`` (``K`` a positive int; ``"top5"`` works
            too) or the path of a label file (see :func:`read_label_file`).

    Returns:
        The :class:`TargetSpec`.

    Raises:
        UsageError: If ``spec`` is none of these.

    Example:
        >>> parse_targets("top5")
        TargetSpec(kind='topk', k=5, label_file=None)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("--targets is empty; use top1, topk:K (e.g. topk:3) or the path of a label file")
    text = spec.strip()
    if text.lower() in ("top1", "top-1", "top"):
        return TargetSpec("top1", 1)
    match = _TOPK.match(text.lower())
    if match and not os.path.isfile(text):
        k = int(match.group(1))
        if k < 1:
            raise UsageError(f"--targets {spec!r}: K must be a positive int, e.g. topk:3")
        return TargetSpec("top1", 1) if k == 1 and "k" not in text.lower() else TargetSpec("topk", k)
    if os.path.isfile(text):
        if not text.lower().endswith(LABEL_FILE_EXTENSIONS):
            raise UsageError(
                f"--targets {spec!r}: a label file must be {', '.join(LABEL_FILE_EXTENSIONS)}, "
                "mapping image paths to class indices"
            )
        return TargetSpec("labels", None, os.path.abspath(text))
    if text.lower().startswith("top"):
        raise UsageError(f"--targets {spec!r} is not understood: use top1 or topk:K with K a positive int (topk:3)")
    raise UsageError(
        f"--targets {spec!r} is neither top1, topk:K nor an existing label file "
        f"({', '.join(LABEL_FILE_EXTENSIONS)}): no such file"
    )


def _parse_labels(value: object, where: str) -> Tuple[int, ...]:
    """One or several class indices: an int, a list of ints, or a string of ints
    separated by spaces, ``;`` or ``|``."""
    if isinstance(value, bool):
        raise UsageError(f"{where}: label {value!r} is not a class index")
    if isinstance(value, int):
        items: Iterable[object] = [value]
    elif isinstance(value, str):
        items = [token for token in re.split(r"[\s;|]+", value.strip()) if token]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise UsageError(f"{where}: label {value!r} is not a class index or a list of them")
    labels: List[int] = []
    for item in items:
        if isinstance(item, bool):
            raise UsageError(f"{where}: label {item!r} is not a class index")
        if isinstance(item, int):
            number = item
        elif isinstance(item, str) and re.fullmatch(r"[+-]?\d+", item.strip()):
            number = int(item)
        else:
            raise UsageError(f"{where}: label {item!r} is not a class index (a non-negative int)")
        if number < 0:
            raise UsageError(f"{where}: label {number} is negative; class indices start at 0")
        if number not in labels:
            labels.append(number)
    if not labels:
        raise UsageError(f"{where}: no label given")
    return tuple(labels)


def _json_pairs(data: object, path: str) -> List[Tuple[str, object, str]]:
    if isinstance(data, Mapping):
        return [(str(k), v, f"{path}: entry {k!r}") for k, v in data.items()]
    if isinstance(data, list):
        pairs = []
        for i, entry in enumerate(data):
            where = f"{path}: item {i}"
            if not isinstance(entry, Mapping):
                raise UsageError(f"{where} is not an object like {{\"path\": ..., \"label\": ...}}")
            key = next((entry[k] for k in ("path", "image", "file") if k in entry), None)
            value = next((entry[k] for k in ("label", "labels", "target", "targets", "class") if k in entry), None)
            if key is None or value is None:
                raise UsageError(f"{where} needs a 'path' (or 'image') and a 'label' (or 'labels') key")
            pairs.append((str(key), value, where))
        return pairs
    raise UsageError(
        f"{path} must hold a JSON object {{\"path\": label, ...}} or a list of {{\"path\": ..., \"label\": ...}}"
    )


_HEADER_PATHS = {"path", "paths", "image", "images", "file", "filename", "file_name", "image_path", "img", "name"}
_HEADER_LABELS = {"label", "labels", "class", "classes", "target", "targets", "class_index", "category", "y"}


def _text_pairs(text: str, path: str) -> List[Tuple[str, object, str]]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    first = lines[0][1]
    if "\t" in first:
        delimiter: Optional[str] = "\t"
    elif "," in first:
        delimiter = ","
    else:
        delimiter = None  # whitespace: "path label [label ...]"
    pairs: List[Tuple[str, object, str]] = []
    for position, (number, line) in enumerate(lines):
        where = f"{path}, line {number}"
        if delimiter is None:
            fields = line.split()
        else:
            fields = next(csv.reader(io.StringIO(line), delimiter=delimiter))
        fields = [f.strip() for f in fields]
        values = [f for f in fields[1:] if f]
        if len(fields) < 2 or not values:
            raise UsageError(f"{where}: expected 'path{delimiter or ' '}label', got {line.strip()!r}")
        if position == 0 and (fields[0].lower() in _HEADER_PATHS or values[0].lower() in _HEADER_LABELS):
            continue  # a header row such as "path,label"
        pairs.append((fields[0], " ".join(values), where))
    return pairs


def read_label_file(path: Union[str, os.PathLike], images: Sequence[InputImage], root: str) -> Dict[int, Tuple[int, ...]]:
    """The classes to explain for each image, from a label file.

    Accepted formats:

    * CSV (``,``) or TSV (tab) text: ``path,label`` per line, an optional
      header row (``path,label``), ``#`` comments; the label may list several
      classes separated by spaces or ``;`` (``"3;5"``), or take several columns;
      a header row is recognised by its names (``path``/``image``/``file``,
      ``label``/``labels``/``class``/``target``);
    * whitespace-separated text: ``path label [label ...]`` per line (paths
      without spaces);
    * JSON: ``{"path": 3, "other/path": [3, 5]}`` or
      ``[{"path": ..., "label": 3}, ...]``.

    Paths are absolute or relative to the inputs' common folder ``root`` (the
    folder the outputs mirror). Every image must have a label; entries for
    images that are not among the inputs are ignored (and counted in a log
    message).

    Args:
        path: The label file.
        images: The images of the run.
        root: The inputs' common folder (see :func:`collect_images`).

    Returns:
        ``{image.index: (class, ...)}`` for every image.

    Raises:
        UsageError: If the file cannot be parsed, a label is not a non-negative
            int, or some image has no label.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> images = [InputImage(0, os.path.join(root, "a.png"), "a.png", "a")]
        >>> labels = os.path.join(root, "labels.csv")
        >>> _ = open(labels, "w").write("path,label\\na.png,3;5\\n")
        >>> read_label_file(labels, images, root)
        {0: (3, 5)}
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read the label file {path!r}: {err}") from err
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path} is not valid JSON: {err}") from err
        pairs = _json_pairs(data, path)
    else:
        pairs = _text_pairs(text, path)
    table: Dict[str, Tuple[int, ...]] = {}
    for key, value, where in pairs:
        full = os.path.normpath(key if os.path.isabs(key) else os.path.join(root, key))
        table[full] = _parse_labels(value, where)
    labels: Dict[int, Tuple[int, ...]] = {}
    missing = []
    for image in images:
        found = table.get(os.path.normpath(image.path))
        if found is None:
            missing.append(image.rel)
        else:
            labels[image.index] = found
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UsageError(
            f"{len(missing)} of {len(images)} images have no label in {path} ({shown}); label paths must be "
            f"absolute or relative to {root!r}. Add them, or explain a subset by listing its images in a .txt file"
        )
    unused = len(table) - len(labels)
    if unused > 0:
        logger.info("%d entries of %s name no input image and are ignored", unused, path)
    return labels
