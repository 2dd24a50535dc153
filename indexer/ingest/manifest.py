"""Lists of images to train on, evaluate or index: a CSV manifest or a folder of class sub-folders.

Both readers return the same small record, so every consumer (training, evaluation, archive
indexing) sees one shape whatever the source.

CSV manifest: a header with at least ``path``; ``label`` and ``group`` are optional columns.
Paths are relative to the CSV's own folder (absolute paths are kept as they are).

Image folder: ``root/<label>/<...>/image.ext``; the first sub-folder names the label, images lying
directly in ``root`` have no label.

A ``group`` ties together images that are not independent (same source image, patient or
near-duplicate cluster); retrieval metrics never count hits inside a query's own group. When a
source does not say, each image is its own group (its path relative to the source), which is the
only safe default: it never merges images that might be independent, it just cannot protect
against leakage it was not told about.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
MANIFEST_NAME_IN_FOLDER = "labels.csv"


class ManifestError(ValueError):
    """A manifest or image folder that cannot be read as a list of images."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One image: where it is, its class (if known) and the group it must not be split from."""

    path: Path
    label: str | None
    group: str


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Read a ``path,label,group`` CSV; paths are resolved against the CSV's folder.

    Raises ManifestError naming the line of the first missing file or empty path.
    """
    base = path.parent
    entries: list[ManifestEntry] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(f"{path}: the header must name a 'path' column")
        for line_number, row in enumerate(reader, start=2):
            entries.append(_entry_from_row(row, base, f"{path}:{line_number}"))
    if not entries:
        raise ManifestError(f"{path}: the manifest lists no images")
    return entries


def _entry_from_row(row: dict[str, str | None], base: Path, where: str) -> ManifestEntry:
    relative = (row.get("path") or "").strip()
    if not relative:
        raise ManifestError(f"{where}: empty path")
    image_path = (base / relative).resolve()
    if not image_path.is_file():
        raise ManifestError(f"{where}: no such image {image_path}")
    label = (row.get("label") or "").strip() or None
    group = (row.get("group") or "").strip() or relative
    return ManifestEntry(path=image_path, label=label, group=group)


def read_image_folder(root: Path) -> list[ManifestEntry]:
    """List the images under ``root`` (recursively, sorted); the first sub-folder is the label."""
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    entries = [
        _entry_from_folder_file(file, root)
        for file in sorted(root.rglob("*"))
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not entries:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ManifestError(f"{root}: no images found (looked for {suffixes})")
    return entries


def _entry_from_folder_file(file: Path, root: Path) -> ManifestEntry:
    relative = file.relative_to(root)
    label = relative.parts[0] if len(relative.parts) > 1 else None
    return ManifestEntry(path=file.resolve(), label=label, group=relative.as_posix())


def load_entries(path: Path) -> list[ManifestEntry]:
    """Read a ``.csv`` manifest or an image folder.

    A folder that holds a ``labels.csv`` is read through that manifest, so that the groups it
    declares are kept; any other folder is read as class sub-folders.
    """
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ManifestError(f"{path}: expected a .csv manifest or a folder of images")
        return read_manifest(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such file or folder")
    manifest_in_folder = path / MANIFEST_NAME_IN_FOLDER
    if manifest_in_folder.is_file():
        return read_manifest(manifest_in_folder)
    return read_image_folder(path)
