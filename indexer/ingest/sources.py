"""Archive sources: where the images of an archive are, with their label, group and dataset.

Every loader returns `ArchiveImage` records, whatever the layout:

- ``folder``: class sub-folders (``root/<label>/.../image``), or a folder holding ``labels.csv``.
- ``csv``: a ``path,label,group`` manifest; any further columns are kept as item metadata.
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
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.ingest.manifest import IMAGE_SUFFIXES, ManifestError, load_entries, read_manifest

log = logging.getLogger(__name__)

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


class SourceError(ValueError):
    """An archive that does not have the layout its loader expects."""


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
    """Class sub-folders, or a folder with its own ``labels.csv``."""
    if (root / "labels.csv").is_file():
        return load_csv(root / "labels.csv", dataset or root.name)
    try:
        entries = load_entries(root)
    except ManifestError as error:
        raise SourceError(str(error)) from error
    name = dataset or root.name
    return [ArchiveImage(entry.path, entry.label, entry.group, name) for entry in entries]


def load_csv(path: Path, dataset: str | None = None) -> list[ArchiveImage]:
    """A ``path,label,group`` CSV; other columns become metadata (``extra``)."""
    try:
        entries = read_manifest(path)
    except ManifestError as error:
        raise SourceError(str(error)) from error
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    name = dataset or path.parent.name
    images = []
    for entry, row in zip(entries, rows, strict=True):
        extra = {
            key: value or ""
            for key, value in row.items()
            if key not in ("path", "label", "group") and key is not None
        }
        images.append(ArchiveImage(entry.path, entry.label, entry.group, name, extra))
    return images


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
        grade = next(
            (CRC_GRADES[k] for k in map(_folded, reversed(relative)) if k in CRC_GRADES), None
        )
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
    """Load an archive with the named loader; ``auto`` picks ``csv`` for a file, else ``folder``."""
    if kind == "auto":
        kind = "csv" if path.is_file() else "folder"
    loader = SOURCES.get(kind)
    if loader is None:
        raise SourceError(f"unknown source {kind!r}; choose one of auto, {', '.join(SOURCES)}")
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    return loader(path, dataset)
