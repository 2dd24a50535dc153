"""Archive sources: where the images of an archive are, with their label, group and dataset.

The one record of an archive image (`ArchiveImage`) and the one set of readers: indexing,
training and evaluation all list an archive through `load_source`, so every verb accepts every
layout below.

- ``folder``: class sub-folders (``root/<label>/.../image``; images directly in ``root`` have no
  label), or a folder holding ``labels.csv``, which is then read as the manifest.
- ``csv``: a ``path,label,group`` manifest; only ``path`` is required, paths are relative to the
  CSV's own folder, and any further columns are kept as item metadata.
- ``bracs``: BRACS RoIs,
  ``[BRACS_RoI/latest_version/]{train,val,test}/<n>_<CLASS>/BRACS_<wsi>_<CLASS>_<k>.png``;
  the label is the class code (N, PB, UDH, FEA, ADH, DCIS, IC), the group the whole-slide image
  ``BRACS_<wsi>`` the RoI was cut from, and the split is kept as metadata.
- ``crc-extended``: the Warwick extended CRC grading set, images under a grade folder
  (``Normal``, ``Low-Grade``, ``High-Grade``, or ``grade_1``/``1_normal`` style names), optionally
  inside numbered fold folders; the group is the slide id, the file name up to its first ``_``.
- ``bach``: BACH / ICIAR 2018 microscopy photos, ``[ICIAR2018_BACH_Challenge/]Photos/{Normal,
  Benign,InSitu,Invasive}/*.tif``; labels from ``microscopy_ground_truth.csv`` when present (else
  the folder). BACH publishes no patient ids, so each photo is its own group.
- ``auto``: ``csv`` for a file; for a folder, ``folder`` when it holds ``labels.csv``, else the
  public dataset whose layout every image of the tree follows (`detect_source`), else ``folder``.

A ``group`` ties together images that are not independent (same source image, patient or
near-duplicate cluster); retrieval metrics never count hits inside a query's own group. When a
source does not say, each image is its own group (its path relative to the source), which is the
only safe default: it never merges images that might be independent, it just cannot protect
against leakage it was not told about.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import HistosearchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
LABELS_CSV = "labels.csv"
BRACS_CLASSES = ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC")
BACH_CLASSES = ("Normal", "Benign", "InSitu", "Invasive")
CRC_GRADES = {
    "normal": "Normal",
    "grade1": "Normal",
    "1normal": "Normal",
    "lowgrade": "Low-Grade",
    "grade2": "Low-Grade",
    "2lowgrade": "Low-Grade",
    "highgrade": "High-Grade",
    "grade3": "High-Grade",
    "3highgrade": "High-Grade",
}
_BRACS_FOLDER = re.compile(r"^\d+_(?P<cls>[A-Z]+)$")
_BRACS_FILE = re.compile(r"^BRACS_(?P<wsi>\d+)_(?P<cls>[A-Z]+)_(?P<roi>\d+)$")
_FOLD_FOLDER = re.compile(r"^fold[\s_-]*(?P<fold>\d+)$", re.IGNORECASE)
_SPLITS = ("train", "val", "test")
BACH_GROUND_TRUTH = "microscopy_ground_truth.csv"
_MANIFEST_COLUMNS = ("path", "label", "group")


class SourceError(HistosearchError, ValueError):
    """An archive that does not have the layout its loader expects, or a manifest that cannot be
    read as a list of images (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    """One image of an archive and what is known about it."""

    path: Path
    label: str | None
    group: str
    dataset: str
    extra: dict[str, str] = field(default_factory=dict)


SourceLoader = Callable[[Path, str | None], list[ArchiveImage]]


def _images_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def load_folder(root: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """Class sub-folders (the first sub-folder names the label), or a folder with its own
    ``labels.csv``, read as the manifest so that the groups it declares are kept."""
    if (root / LABELS_CSV).is_file():
        return load_csv(root / LABELS_CSV, dataset or root.name)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    name = dataset or root.name
    images = [_folder_image(path, root, name) for path in _images_under(root)]
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SourceError(f"{root}: no images found (looked for {suffixes})")
    return images


def _folder_image(path: Path, root: Path, dataset: str) -> ArchiveImage:
    relative = path.relative_to(root)
    label = relative.parts[0] if len(relative.parts) > 1 else None
    return ArchiveImage(path.resolve(), label, relative.as_posix(), dataset)


def load_csv(path: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """A ``path,label,group`` CSV; paths are resolved against the CSV's folder, a missing group
    makes the image its own group, and other columns become metadata (``extra``).

    Raises SourceError naming the line of the first missing file or empty path.
    """
    name = dataset or path.parent.name
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise SourceError(f"{path}: the header must name a 'path' column")
        images = [
            _csv_image(row, path.parent, name, f"{path}:{line}")
            for line, row in enumerate(reader, start=2)
        ]
    if not images:
        raise SourceError(f"{path}: the manifest lists no images")
    return images


def _csv_image(row: dict[str, str | None], base: Path, dataset: str, where: str) -> ArchiveImage:
    relative = (row.get("path") or "").strip()
    if not relative:
        raise SourceError(f"{where}: empty path")
    image_path = (base / relative).resolve()
    if not image_path.is_file():
        raise SourceError(f"{where}: no such image {image_path}")
    label = (row.get("label") or "").strip() or None
    group = (row.get("group") or "").strip() or relative
    extra = {
        key: value or ""
        for key, value in row.items()
        if key is not None and key not in _MANIFEST_COLUMNS
    }
    return ArchiveImage(image_path, label, group, dataset, extra)


def load_bracs(root: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """BRACS RoIs: label from the class folder, group = the slide named in the file."""
    images = []
    for path in _images_under(root):
        folder = _BRACS_FOLDER.match(path.parent.name)
        if folder is None or folder["cls"] not in BRACS_CLASSES:
            continue
        name = _BRACS_FILE.match(path.stem)
        group = f"BRACS_{name['wsi']}" if name else path.stem
        if name is None:
            log.warning("%s: name is not BRACS_<wsi>_<class>_<n>; its own group", path)
        split = next((part for part in reversed(path.parts[:-2]) if part in _SPLITS), "")
        extra = {"split": split} if split else {}
        images.append(ArchiveImage(path, folder["cls"], group, dataset or "BRACS", extra))
    return _non_empty(images, root, "BRACS class folders such as 0_N/ or 6_IC/")


def load_crc_extended(root: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """Warwick extended CRC: label from the grade folder, group = slide id, fold kept."""
    images = []
    for path in _images_under(root):
        relative = path.relative_to(root).parts[:-1]
        grade = _crc_grade(relative)
        if grade is None:
            continue
        fold = next((m["fold"] for m in map(_FOLD_FOLDER.match, relative) if m), "")
        extra = {"fold": fold} if fold else {}
        group = path.stem.split("_", 1)[0]
        images.append(ArchiveImage(path, grade, group, dataset or "CRC-extended", extra))
    return _non_empty(images, root, "grade folders Normal/, Low-Grade/, High-Grade/")


def load_bach(root: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """BACH microscopy photos: label from the ground-truth CSV or the class folder."""
    photos = _bach_photos_folder(root)
    truth = _bach_ground_truth(photos / BACH_GROUND_TRUTH)
    images = []
    for path in _images_under(photos):
        folder_label = path.parent.name if path.parent.name in BACH_CLASSES else None
        label = truth.get(path.name, folder_label)
        if label is None:
            continue
        if folder_label is not None and label != folder_label:
            log.warning("%s: ground truth says %s, folder says %s", path, label, folder_label)
        number = re.sub(r"\D", "", path.stem)
        extra = {"image_number": number} if number else {}
        images.append(ArchiveImage(path, label, path.stem, dataset or "BACH", extra))
    return _non_empty(images, root, "Photos/{Normal,Benign,InSitu,Invasive}/")


def _bach_photos_folder(root: Path) -> Path:
    if any((root / name).is_dir() for name in BACH_CLASSES):
        return root
    for candidate in sorted(root.rglob("Photos")):
        if candidate.is_dir():
            return candidate
    raise SourceError(f"{root}: no Photos/ folder and no BACH class folders")


def _bach_ground_truth(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if len(row) >= 2]
    return {
        name.strip(): label.strip() for name, label, *_ in rows if label.strip() in BACH_CLASSES
    }


def _folded(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _non_empty(images: list[ArchiveImage], root: Path, expected: str) -> list[ArchiveImage]:
    if not images:
        raise SourceError(f"{root}: no images found in {expected}")
    return images


SOURCES: dict[str, SourceLoader] = {
    "folder": load_folder,
    "csv": load_csv,
    "bracs": load_bracs,
    "crc-extended": load_crc_extended,
    "bach": load_bach,
}


def load_source(kind: str, path: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """Load an archive with the named loader (``auto``: see `detect_source`)."""
    path = Path(path)
    if kind != "auto" and kind not in SOURCES:
        raise SourceError(f"unknown source {kind!r}; choose one of auto, {', '.join(SOURCES)}")
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if kind == "auto":
        kind = detect_source(path)
    return SOURCES[kind](path, dataset)


def detect_source(path: Path) -> str:
    """The loader for ``path``: ``csv`` for a file, ``folder`` for a folder with ``labels.csv``,
    else the public dataset whose layout every image of the tree follows, else ``folder``.

    Every image must fit, not just some: a class-folder archive that happens to have a
    ``Normal/`` folder stays a class-folder archive.
    """
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise SourceError(f"{path}: expected a .csv manifest or a folder of images")
        return "csv"
    if (path / LABELS_CSV).is_file():
        return "folder"
    images = list(_images_under(path))
    for kind, follows in (("bracs", _follows_bracs), ("bach", _follows_bach)):
        if images and all(follows(image) for image in images):
            log.info("%s: every image follows the %s layout", path, kind)
            return kind
    if images and _follows_crc_extended(path, images):
        log.info("%s: every image follows the crc-extended layout", path)
        return "crc-extended"
    return "folder"


def _follows_bracs(image: Path) -> bool:
    folder = _BRACS_FOLDER.match(image.parent.name)
    return (
        folder is not None
        and folder["cls"] in BRACS_CLASSES
        and _BRACS_FILE.match(image.stem) is not None
    )


def _follows_bach(image: Path) -> bool:
    return image.parent.name in BACH_CLASSES


def _follows_crc_extended(root: Path, images: list[Path]) -> bool:
    grades = [_crc_grade(image.relative_to(root).parts[:-1]) for image in images]
    # A lone Normal/ folder is too common a name to mean this dataset: a graded one must appear.
    return all(grades) and any(grade != "Normal" for grade in grades)


def _crc_grade(folders: tuple[str, ...]) -> str | None:
    return next((CRC_GRADES[k] for k in map(_folded, reversed(folders)) if k in CRC_GRADES), None)
