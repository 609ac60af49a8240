"""Tiny copies of the benchmarks in their official layouts, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

GREY = (128, 128, 128)
RED = (220, 30, 30)
BLUE = (20, 40, 200)


def draw(path: Path, size: tuple[int, int], box: tuple[int, int, int, int], seed: int) -> Path:
    """A noisy grey JPEG with a red rectangle on ``box`` (left, top, right, bottom, 0-based)."""
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), GREY, dtype=np.float32) + rng.normal(
        0, 6, (size[1], size[0], 3)
    )
    left, top, right, bottom = box
    arr[top:bottom, left:right] = RED
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=95, subsampling=0)
    return path


def lines(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")


def edit_line(path: Path, number: int, text: str | None) -> None:
    """Replace line ``number`` (1-based) of ``path`` with ``text``, or drop it when None."""
    rows = path.read_text(encoding="utf-8").splitlines()
    if text is None:
        del rows[number - 1]
    else:
        rows[number - 1] = text
    lines(path, rows)


def mean_color(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(axis=0)


# --- CUB-200-2011 ---------------------------------------------------------------------------------

CUB_CLASSES = {
    1: "001.Black_footed_Albatross",
    2: "002.Laysan_Albatross",
    101: "101.White_Pelican",
    102: "102.Western_Wood_Pewee",
}
CUB_SIZE = (48, 40)


def cub_box(image_id: int) -> tuple[float, float, float, float]:
    """x, y, width, height as bounding_boxes.txt writes them."""
    return (4.0 + image_id, 6.0, 20.5, 16.0)


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """Four classes (ids 1, 2, 101, 102) x 2 images; the first of each class is a training image."""
    root = tmp_path / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for class_id, folder in CUB_CLASSES.items():
        for j in range(2):
            image_id += 1
            rel = f"{folder}/{folder[4:]}_{j:04d}_{image_id}.jpg"
            x, y, w, h = cub_box(image_id)
            draw(
                root / "images" / rel,
                CUB_SIZE,
                (int(x), int(y), int(x + w) + 1, int(y + h)),
                image_id,
            )
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {1 if j == 0 else 0}")
            boxes.append(f"{image_id} {x} {y} {w} {h}")
    lines(root / "images.txt", images)
    lines(root / "classes.txt", [f"{k} {v}" for k, v in CUB_CLASSES.items()])
    lines(root / "image_class_labels.txt", labels)
    lines(root / "train_test_split.txt", split)
    lines(root / "bounding_boxes.txt", boxes)
    return root


# --- Oxford Flowers-102 ---------------------------------------------------------------------------

FLOWERS_LABELS = [3, 1, 4, 2, 1, 4, 2, 3, 2, 1, 3, 4]  # image_00001 .. image_00012
FLOWERS_SETS = {"trnid": [2, 4, 1, 3], "valid": [5, 7, 6, 8], "tstid": [12, 9, 10, 11]}


@pytest.fixture
def flowers_root(tmp_path: Path) -> Path:
    """Four classes x 3 images; trnid, valid and tstid hold one image of each class."""
    root = tmp_path / "flowers"
    for i, _ in enumerate(FLOWERS_LABELS, start=1):
        draw(root / "jpg" / f"image_{i:05d}.jpg", (40, 32), (4, 4, 20, 20), i)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([FLOWERS_LABELS], np.float64)})
    scipy.io.savemat(
        root / "setid.mat", {k: np.array([v], np.float64) for k, v in FLOWERS_SETS.items()}
    )
    return root


# --- Stanford Cars --------------------------------------------------------------------------------

CARS_NAMES = {
    1: "AM General Hummer SUV 2000",
    2: "Ram C/V Cargo Van Minivan 2012",
    99: "Volvo 240 Sedan 1993",
    100: "Volvo XC90 SUV 2007",
}
CARS_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
CARS_SIZE = (64, 48)


def cars_box(n: int) -> tuple[int, int, int, int]:
    """bbox_x1, bbox_y1, bbox_x2, bbox_y2 (1-based, inclusive) of the n-th image."""
    return (5 + n, 7, 40 + n, 30)


def save_cars_meta(path: Path, names: list[str]) -> None:
    cell = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        cell[0, i] = np.array([name])
    scipy.io.savemat(path, {"class_names": cell})


def save_cars_annotations(path: Path, rows: list[tuple[int, int, int, int, int, str]]) -> None:
    """A 1 x N struct array ``annotations`` with the devkit's fields, as MATLAB stores it."""
    annotations = np.zeros((1, len(rows)), dtype=[(f, "O") for f in CARS_FIELDS])
    for i, row in enumerate(rows):
        for field, value in zip(CARS_FIELDS, row, strict=True):
            stored = np.array([value]) if field == "fname" else np.array([[value]], np.uint16)
            annotations[0, i][field] = stored
    scipy.io.savemat(path, {"annotations": annotations})


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    """100 class names; classes 1, 2, 99, 100 have one training and one test image each."""
    root = tmp_path / "cars"
    (root / "devkit").mkdir(parents=True)
    save_cars_meta(
        root / "devkit" / "cars_meta.mat", [CARS_NAMES.get(i, f"Make {i}") for i in range(1, 101)]
    )
    for folder, annos, offset in [
        ("cars_train", root / "devkit" / "cars_train_annos.mat", 0),
        ("cars_test", root / "cars_test_annos_withlabels.mat", 4),
    ]:
        rows = []
        for j, class_id in enumerate(CARS_NAMES, start=1):
            n = offset + j
            x1, y1, x2, y2 = cars_box(n)
            draw(root / folder / f"{j:05d}.jpg", CARS_SIZE, (x1 - 1, y1 - 1, x2, y2), n)
            rows.append((x1, y1, x2, y2, class_id, f"{j:05d}.jpg"))
        save_cars_annotations(annos, rows)
    return root


# --- FGVC-Aircraft --------------------------------------------------------------------------------

AIRCRAFT = [  # variant, family, manufacturer
    ("707-320", "Boeing 707", "Boeing"),
    ("A340-300", "A340", "Airbus"),
    ("F/A-18", "F/A-18", "McDonnell Douglas"),
    ("Cessna 172", "Cessna 172", "Cessna"),
]
AIRCRAFT_SIZE = (60, 50)
BANNER = 20


def aircraft_box(n: int) -> tuple[int, int, int, int]:
    """xmin, ymin, xmax, ymax (1-based, inclusive) of the n-th image: reaches into the banner."""
    return (3 + n, 5, 40 + n, 45)


@pytest.fixture
def aircraft_root(tmp_path: Path) -> Path:
    """Four variants x 2 images (one trainval, one test); a blue banner on the bottom 20 rows."""
    root = tmp_path / "fgvc-aircraft-2013b"
    data = root / "data"
    lists: dict[str, list[str]] = {}
    boxes = []
    n = 0
    for part in ("trainval", "test"):
        for names in AIRCRAFT:
            n += 1
            image_id = f"{1025790 + n:07d}"
            xmin, ymin, xmax, ymax = aircraft_box(n)
            path = draw(
                data / "images" / f"{image_id}.jpg",
                AIRCRAFT_SIZE,
                (xmin - 1, ymin - 1, xmax, ymax),
                n,
            )
            img = np.asarray(Image.open(path)).copy()
            img[-BANNER:] = BLUE
            Image.fromarray(img).save(path, quality=95, subsampling=0)
            boxes.append(f"{image_id} {xmin} {ymin} {xmax} {ymax}")
            for level, name in zip(("variant", "family", "manufacturer"), names, strict=True):
                lists.setdefault(f"images_{level}_{part}.txt", []).append(f"{image_id} {name}")
    for name, rows in lists.items():
        lines(data / name, rows)
    lines(data / "images_box.txt", boxes)
    lines(data / "variants.txt", [v for v, _, _ in AIRCRAFT])
    return root
