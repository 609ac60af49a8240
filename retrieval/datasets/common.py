"""What the dataset readers share: option checks, metadata files, labels, splits, records."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from retrieval.datasets.folders import Record, validate_label
from retrieval.engine.images import Box
from retrieval.errors import GalleryError, InputError

BOX_NAMES = ("xmin", "ymin", "xmax", "ymax")
SPLITS = ("all", "train", "test", "retrieval-train", "retrieval-test")
CROPS = ("none", "bbox")
LEVELS = ("variant", "family", "manufacturer")


@dataclass(frozen=True)
class Origin:
    """Where an entry was read: a file, a place in it ("line 12", "annotations[4]") and its text."""

    file: Path
    place: str
    text: str

    def error(self, problem: str) -> GalleryError:
        return GalleryError(f"{self.file} {self.place}: {problem}: {self.text!r}")


Rows = dict[str, tuple[Origin, list[str]]]  # per-image rows by image id


@dataclass(frozen=True)
class Entry:
    """One image of a dataset before the split is chosen."""

    path: Path
    label: str
    class_key: int | str  # orders the classes for the retrieval split
    train: bool | None  # the official classification split; None where it was not read
    origin: Origin
    box: Box | None = None


def check_options(
    dataset: str, split: str, crop: str, level: str, *, boxes: bool, levels: bool
) -> None:
    """InputError for an option value that does not exist or that ``dataset`` cannot honour."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if crop not in CROPS:
        raise InputError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if level not in LEVELS:
        raise InputError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if crop == "bbox" and not boxes:
        raise InputError(f"crop 'bbox' needs bounding boxes, and {dataset} has none")
    if level != "variant" and not levels:
        raise InputError(f"level {level!r} exists only for aircraft, not for {dataset}")


def find_data_root(root: Path, markers: Iterable[str], places: Iterable[str]) -> Path | None:
    """The first of ``root / place`` holding any of the ``markers`` files, if any does."""
    for place in places:
        candidate = root / place
        if any((candidate / m).is_file() for m in markers):
            return candidate
    return None


def looked_for(root: Path, markers: Iterable[str], places: Iterable[str]) -> str:
    folders = " or ".join(str(root / p) for p in places)
    return f"none of {', '.join(markers)} in {folders}"


def require(root: Path, name: str, dataset: str) -> Path:
    """``root / name``, or GalleryError naming the missing metadata file."""
    path = root / name
    if not path.is_file():
        raise GalleryError(f"{dataset} folder {root} lacks {name}")
    return path


def first_present(root: Path, names: list[str], dataset: str) -> Path:
    """The first of ``names`` found below ``root``, or GalleryError naming the file looked for."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise GalleryError(
        f"{dataset} folder {root} lacks {Path(names[0]).name} (looked for {' and '.join(names)})"
    )


def read_table(path: Path, fields: int, *, rest: bool = False) -> list[tuple[Origin, list[str]]]:
    """Non-blank lines of a whitespace-separated table, each split into ``fields`` fields; with
    ``rest`` the last field is the remainder of the line (names with spaces)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GalleryError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise GalleryError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        origin = Origin(path, f"line {number}", line)
        parts = line.split(maxsplit=fields - 1) if rest else line.split()
        if len(parts) != fields:
            raise origin.error(f"expected {fields} fields, found {len(parts)}")
        rows.append((origin, parts))
    return rows


def to_int(origin: Origin, value: Any, what: str) -> int:
    """``value`` as an integer (an integral float too), or GalleryError quoting ``origin``."""
    shown = repr(value) if isinstance(value, str) else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise origin.error(f"{what} {shown} is not a number") from None
    if not number.is_integer():
        raise origin.error(f"{what} {shown} is not a whole number")
    return int(number)


def to_float(origin: Origin, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise origin.error(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise origin.error(f"{what} {value!r} is not a finite number")
    return number


def relative_path(origin: Origin, value: str) -> PurePosixPath:
    """A path inside the dataset folder: relative and without '..'."""
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise origin.error(f"image path {value!r} leads out of the dataset folder")
    return rel


def index_rows(rows: list[tuple[Origin, list[str]]]) -> Rows:
    """Rows by their first field (the image id), in file order; GalleryError on an id given
    twice."""
    by_id: Rows = {}
    for origin, parts in rows:
        if parts[0] in by_id:
            first = by_id[parts[0]][0]
            raise origin.error(f"image id {parts[0]} was already given on {first.place}")
        by_id[parts[0]] = (origin, parts)
    return by_id


def lookup(table: Rows, key: str, asked_by: Origin, table_file: str) -> list[str]:
    """The fields of ``key`` in ``table``, or GalleryError quoting the line that asked for it."""
    if key not in table:
        raise asked_by.error(f"image id {key} has no line in {table_file}")
    return table[key][1]


class Labels:
    """Class names made into labels: '/' becomes '-', then the label rules of retrieval.datasets.folders apply;
    two classes that end up with the same label are refused."""

    def __init__(self) -> None:
        self._classes: dict[str, tuple[int | str, str]] = {}  # label -> (class key, name)

    def __call__(self, origin: Origin, name: str, key: int | str | None = None) -> str:
        """The label of class ``key`` (its ``name`` when not given) named ``name``."""
        label = name.strip().replace("/", "-")
        try:
            validate_label(label)
        except InputError as exc:
            raise origin.error(f"class name cannot be a label ({exc})") from exc
        key = name if key is None else key
        known_key, known_name = self._classes.setdefault(label, (key, name))
        if known_key != key:
            raise origin.error(
                f"class name {name!r} becomes label {label!r}, as {known_name!r} did already"
            )
        return label


def box_1based(origin: Origin, x1: Any, y1: Any, x2: Any, y2: Any) -> Box:
    """A box of 1-based inclusive pixel coordinates as (left, top, right, bottom), 0-based, right
    and bottom exclusive."""
    left, top, right, bottom = (
        to_int(origin, v, name) for v, name in zip((x1, y1, x2, y2), BOX_NAMES, strict=True)
    )
    return checked_box(origin, (left - 1, top - 1, right, bottom))


def checked_box(origin: Origin, box: Box) -> Box:
    if box[2] <= box[0] or box[3] <= box[1]:
        raise origin.error(f"bounding box {box} (left, top, right, bottom) is empty")
    return box


def first_half(keys: Iterable[int | str]) -> Callable[[int | str], bool]:
    """Whether a class key is in the first half of the sorted keys (the larger half when odd)."""
    ordered = sorted(set(keys))
    first = set(ordered[: (len(ordered) + 1) // 2])
    return first.__contains__


def select(
    entries: list[Entry],
    split: str,
    retrieval_train: Callable[[int | str], bool],
    dataset: str,
    root: Path,
) -> list[Entry]:
    """The entries of ``split``, each checked to exist on disk."""
    if split == "all":
        chosen = entries
    elif split in ("train", "test"):
        chosen = [e for e in entries if e.train is (split == "train")]
    else:
        chosen = [
            e for e in entries if retrieval_train(e.class_key) is (split == "retrieval-train")
        ]
    if not chosen:
        raise GalleryError(f"{dataset} folder {root} has no image in split {split!r}")
    for entry in chosen:
        if not entry.path.is_file():
            raise entry.origin.error(f"image {entry.path} is missing on disk")
    return chosen


def records(entries: list[Entry], crop: str) -> list[Record]:
    return [Record(e.path, e.label, e.box if crop == "bbox" else None) for e in entries]


def load_mat(path: Path) -> dict[str, Any]:
    """The variables of a MATLAB file, or GalleryError naming it."""
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # a damaged or v7.3 file: scipy raises many kinds
        raise GalleryError(f"{path} is not a readable MATLAB file ({exc})") from exc


def mat_var(mat: dict[str, Any], path: Path, name: str) -> np.ndarray:
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise GalleryError(
            f"{path} has no variable {name!r} (it holds {', '.join(found) or 'none'})"
        )
    return np.asarray(mat[name])


def mat_scalar(origin: Origin, value: Any, what: str) -> Any:
    """The one value inside the nested arrays loadmat returns for a MATLAB scalar or string."""
    flat = np.asarray(value).ravel()
    if flat.size != 1:
        raise origin.error(f"{what} holds {flat.size} values instead of one")
    return flat[0]


def mat_text(origin: Origin, value: Any, what: str) -> str:
    item = mat_scalar(origin, value, what)
    if not isinstance(item, str):
        raise origin.error(f"{what} is not text")
    return str(item)


def mat_int(origin: Origin, value: Any, what: str) -> int:
    item = mat_scalar(origin, value, what)
    if isinstance(item, str) or not np.isscalar(item):
        raise origin.error(f"{what} is not a number")
    return to_int(origin, item, what)
