"""Feature archives: the embeddings a foundation model already produced, read as index items.

Three layouts (`detect_layout`):

- ``h5``: a folder of per-slide HDF5 files in the CLAM / TRIDENT layout: a ``features`` dataset
  (N x D), optionally ``coords`` (N x 2, level-0 pixels) whose attributes (or the file's) may say
  ``patch_size``, ``patch_level``, ``downsample`` or ``patch_size_level0``.
- ``pt``: a folder of per-slide ``.pt`` files each holding one N x D tensor (CLAM's ``pt_files``),
  read with ``torch.load(weights_only=True)``: no pickled objects are ever unpickled.
- ``npy``: one ``.npy`` matrix (rows x D) with a CSV of the same stem beside it, one line per row,
  naming at least the slide id, label and group columns (`FeatureColumns`); further columns are
  kept as item metadata. The matrix is memory-mapped and read in chunks.

For ``h5`` and ``pt`` an optional ``manifest.csv`` in the folder gives each slide (by its slide
id, the file's stem, or by its ``path`` relative to the folder) a label and a group; a slide it
does not list has no label and is its own group.

Each batch carries its rows as columns (`indexer.index.row_blocks.FeatureRows`), the form the
index stores them in: each row's item has the file's path relative to the archive folder as its
``source``, that folder's name as ``archive``, and its slide id and row number in ``extra``.
Coordinates become the item's ``tile`` when the level-0 patch size is known, else they are kept
in ``extra``.

A bad file is refused with a `FeatureFileError` naming it (other dimension, NaN/Inf rows, empty,
truncated or unreadable, non-numeric dtype) and reading goes on with the rest of the archive. A
per-slide file with non-finite rows is refused whole (a slide half extracted is not worth
indexing); in the ``npy`` matrix, which holds many slides, only those rows are refused.

Resuming: every file has a `FeatureFile.fingerprint()` (SHA-256 of its bytes, and of the CSV for
``npy``), recorded in the index's journal once its last batch is written, so a re-run skips it;
the rows of a file an interrupted run began are known by their row numbers, so a resumed run
writes only the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from indexer.index.row_blocks import FeatureRows
from indexer.ingest.archive_root import journal_key
from indexer.ingest.sources import SourceError

log = logging.getLogger(__name__)

Layout = Literal["h5", "pt", "npy"]
LAYOUT_SUFFIXES: dict[Layout, tuple[str, ...]] = {
    "h5": (".h5", ".hdf5"),
    "pt": (".pt", ".pth"),
    "npy": (".npy",),
}
MANIFEST_CSV = "manifest.csv"
FEATURES_DATASET = "features"
COORDS_DATASET = "coords"
# 16,384 rows of 192 float16 are 6 MB: big enough that per-chunk overhead is negligible, small
# enough that a 147k-row archive is never read into memory at once.
DEFAULT_CHUNK_ROWS = 16_384
_NUMERIC_KINDS = frozenset("fiu")
_SHOWN_ROWS = 10
_Value = TypeVar("_Value")


class FeatureFileError(SourceError):
    """A feature file that cannot be indexed; the message names the file and what is wrong."""

    def __init__(self, source: str, problem: str, rows: Sequence[int] = ()) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
        self.rows = tuple(rows)


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """Which CSV columns (of the ``npy`` CSV or a ``manifest.csv``) hold what."""

    slide_id: str = "slide_id"
    label: str = "label"
    group: str = "group"


@dataclass(frozen=True, slots=True)
class SlideInfo:
    """What a manifest says about one slide."""

    label: str | None
    group: str | None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeatureFile:
    """One file of a feature archive: the unit the resume journal records as finished."""

    path: Path
    source: str
    layout: Layout
    size: int

    def fingerprint(self) -> str:
        """SHA-256 of the file's bytes, hex; for ``npy``, SHA-256 of the matrix's and its CSV's
        digests (a label edited in the CSV makes it another archive). Reads the files whole."""
        if self.layout != "npy":
            return _sha256(self.path).hex()
        both = _sha256(self.path) + _sha256(_csv_beside(self.path))
        return hashlib.sha256(both).hexdigest()


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Rows of one file: float32 vectors and their `FeatureRows` columns, in the same order.

    ``last`` marks a file's final batch: once it is written the file may be journalled as
    finished under ``journal_key`` with ``fingerprint``.
    """

    file: FeatureFile
    journal_key: str
    fingerprint: str
    vectors: npt.NDArray[np.float32]
    rows: FeatureRows
    last: bool


@dataclass(frozen=True, slots=True)
class RefusedFile:
    """A file (or some rows of it) that was not read, and why."""

    file: FeatureFile
    error: FeatureFileError


@dataclass(frozen=True, slots=True)
class FeatureOptions:
    """How to read an archive: column names, the expected dimension, batch size, dataset name.

    ``dim`` None takes the dimension of the first readable file and holds every other to it.
    """

    columns: FeatureColumns = FeatureColumns()
    dim: int | None = None
    dataset: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS


def detect_layout(data: Path) -> Layout:
    """``npy`` for a ``.npy`` file; for a folder, the layout whose files it holds (h5 or pt).

    Raises SourceError when the path is neither, or a folder holds both kinds or none.
    """
    if data.is_file():
        if data.suffix.lower() == ".npy":
            return "npy"
        raise SourceError(
            f"{data}: a feature archive is a .npy file or a folder of .h5 / .pt files"
        )
    if not data.is_dir():
        raise SourceError(f"{data}: no such file or folder")
    found: list[Layout] = [
        layout for layout in ("h5", "pt") if _files_with(data, LAYOUT_SUFFIXES[layout])
    ]
    if len(found) != 1:
        what = "both .h5 and .pt files" if found else "no .h5 or .pt files"
        raise SourceError(f"{data}: holds {what}; a feature folder holds one kind")
    return found[0]


def _files_with(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in suffixes
    )


def _sha256(path: Path) -> bytes:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _csv_beside(matrix: Path) -> Path:
    return matrix.with_suffix(".csv")


class FeatureArchive:
    """A feature archive opened for reading: its files, manifest and layout.

    `open` reads only the listing and the manifest (or the ``npy`` CSV): it raises SourceError
    for an archive that cannot be read at all; per-file problems surface in `batches`.
    """

    def __init__(
        self,
        folder: Path,
        layout: Layout,
        files: list[FeatureFile],
        options: FeatureOptions,
        slides: dict[str, SlideInfo],
    ) -> None:
        self.folder = folder
        self.layout = layout
        self.files = files
        self.options = options
        self.slides = slides
        self.dim = options.dim
        self.archive = folder.name or None
        self.dataset = options.dataset or self.archive

    @classmethod
    def open(cls, data: Path, options: FeatureOptions | None = None) -> FeatureArchive:
        """The archive at ``data``: a folder of .h5 / .pt files, or a ``.npy`` with its CSV."""
        options = options or FeatureOptions()
        layout = detect_layout(data)
        folder = Path(os.path.abspath(data if layout != "npy" else data.parent))
        if layout == "npy":
            if not _csv_beside(data).is_file():
                raise SourceError(f"{data}: no {_csv_beside(data).name} beside it (one line a row)")
            paths = [Path(os.path.abspath(data))]
            slides: dict[str, SlideInfo] = {}
        else:
            paths = [Path(os.path.abspath(p)) for p in _files_with(data, LAYOUT_SUFFIXES[layout])]
            slides = read_manifest(folder / MANIFEST_CSV, options.columns)
        files = [
            FeatureFile(path, path.relative_to(folder).as_posix(), layout, path.stat().st_size)
            for path in paths
        ]
        return cls(folder, layout, files, options, slides)

    def journal_key(self, file: FeatureFile) -> str:
        """The resume journal's name for ``file`` (``<archive>/<source>``)."""
        return journal_key(self.archive, file.source)

    def batches(
        self, finished: Callable[[str], str | None] | None = None
    ) -> Iterator[FeatureBatch | RefusedFile]:
        """Every file's rows in batches, a `RefusedFile` for each bad one, in file order.

        ``finished(journal_key)`` gives the fingerprint a previous run recorded (e.g.
        ``ArchiveIndex.finished_source``); files whose fingerprint matches are skipped.
        """
        for file in self.files:
            try:
                fingerprint = file.fingerprint()
            except OSError as error:
                yield RefusedFile(file, FeatureFileError(file.source, f"unreadable ({error})"))
                continue
            key = self.journal_key(file)
            if finished is not None and finished(key) == fingerprint:
                log.info("%s: indexed before, skipped", file.source)
                continue
            yield from self._read_file(file, key, fingerprint)

    def _read_file(
        self, file: FeatureFile, key: str, fingerprint: str
    ) -> Iterator[FeatureBatch | RefusedFile]:
        try:
            if file.layout == "npy":
                yield from self._npy_batches(file, key, fingerprint)
                return
            slide = self._slide_rows(file)
        except FeatureFileError as error:
            yield RefusedFile(file, error)
            return
        vectors, rows = slide
        yield FeatureBatch(file, key, fingerprint, vectors, rows, last=True)

    def _slide_rows(self, file: FeatureFile) -> tuple[npt.NDArray[np.float32], FeatureRows]:
        if file.size == 0:
            raise FeatureFileError(file.source, "empty file (0 bytes)")
        reader = _read_h5 if file.layout == "h5" else _read_pt
        raw, geometry = reader(file)
        vectors = self._checked_matrix(file, raw)
        bad = non_finite_rows(vectors)
        if bad.size:
            raise FeatureFileError(
                file.source, _non_finite_problem(bad, len(vectors)), bad.tolist()
            )
        slide_id = Path(file.source).stem
        info = self.slides.get(slide_id) or self.slides.get(file.source) or SlideInfo(None, None)
        count = len(vectors)
        rows = FeatureRows(
            source=file.source,
            archive=self.archive,
            dataset=self.dataset,
            rows=np.arange(count, dtype=np.int64),
            slide_ids=[slide_id] * count,
            labels=[info.label] * count,
            groups=[info.group or slide_id] * count,
            constants=geometry.constants(info.extra),
            coords=geometry.coords,
            tile_size=geometry.size_level0,
        )
        return vectors, rows

    def _checked_matrix(self, file: FeatureFile, raw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        matrix = _as_matrix(file.source, raw)
        self._check_dim(file, matrix.shape[1])
        return np.ascontiguousarray(matrix, dtype=np.float32)

    def _check_dim(self, file: FeatureFile, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise FeatureFileError(
                file.source, f"{dim} features per row, expected {self.dim} (the index's dimension)"
            )

    def _npy_batches(
        self, file: FeatureFile, key: str, fingerprint: str
    ) -> Iterator[FeatureBatch | RefusedFile]:
        matrix = open_npy(file)
        self._check_dim(file, matrix.shape[1])
        table = read_row_table(_csv_beside(file.path), self.options.columns, len(matrix))
        step = max(1, self.options.chunk_rows)
        for start in range(0, len(matrix), step):
            stop = min(start + step, len(matrix))
            vectors = np.ascontiguousarray(matrix[start:stop], dtype=np.float32)
            bad = non_finite_rows(vectors)
            keep = np.ones(len(vectors), dtype=bool)
            if bad.size:
                keep[bad] = False
                rows = (bad + start).tolist()
                problem = _non_finite_problem(bad + start, len(matrix)) + " (those rows skipped)"
                yield RefusedFile(file, FeatureFileError(file.source, problem, rows))
            rows = np.arange(start, stop, dtype=np.int64)
            if bad.size:
                rows = rows[keep]
                vectors = vectors[keep]
            block = table.block(file.source, self.archive, self.dataset, rows)
            yield FeatureBatch(file, key, fingerprint, vectors, block, stop == len(matrix))


def non_finite_rows(vectors: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.intp]:
    """Indices of the rows holding NaN or +-Inf."""
    return np.flatnonzero(~np.isfinite(vectors).all(axis=1))


def _non_finite_problem(bad: npt.NDArray[np.intp], rows: int) -> str:
    shown = ", ".join(str(int(row)) for row in bad[:_SHOWN_ROWS])
    more = f" and {bad.size - _SHOWN_ROWS} more" if bad.size > _SHOWN_ROWS else ""
    return f"{bad.size} of {rows} rows hold NaN or Inf (rows {shown}{more})"


def _as_matrix(source: str, raw: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``raw`` as a non-empty numeric N x D matrix (a leading axis of 1 is dropped)."""
    if raw.dtype.kind not in _NUMERIC_KINDS:
        raise FeatureFileError(source, f"dtype {raw.dtype} is not numeric (need float or int)")
    if raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 2:
        raise FeatureFileError(source, f"features of shape {raw.shape}, expected N x D")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise FeatureFileError(source, f"empty: features of shape {raw.shape}")
    return raw


@dataclass(frozen=True, slots=True)
class PatchGeometry:
    """Coordinates of a slide's patches and what the file says of their size."""

    coords: npt.NDArray[np.int64] | None = None
    patch_size: int | None = None
    patch_level: int | None = None
    size_level0: int | None = None

    def constants(self, base: dict[str, str]) -> dict[str, Any]:
        """What every row of the slide keeps in its metadata: ``base`` (a manifest's other
        columns) with the patch size and level the file gives."""
        constants: dict[str, Any] = dict(base)
        if self.patch_size is not None:
            constants["patch_size"] = self.patch_size
        if self.patch_level is not None:
            constants["patch_level"] = self.patch_level
        return constants


def _read_h5(file: FeatureFile) -> tuple[npt.NDArray[Any], PatchGeometry]:
    import h5py

    try:
        with h5py.File(file.path, "r") as handle:
            if FEATURES_DATASET not in handle:
                found = ", ".join(sorted(handle.keys())) or "nothing"
                raise FeatureFileError(file.source, f"no '{FEATURES_DATASET}' dataset ({found})")
            features = handle[FEATURES_DATASET]
            if not isinstance(features, h5py.Dataset):
                raise FeatureFileError(file.source, f"'{FEATURES_DATASET}' is not a dataset")
            raw = _as_matrix(file.source, np.asarray(features[()]))
            geometry = _h5_geometry(file, handle, len(raw))
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as error:
        if isinstance(error, FeatureFileError):
            raise
        raise FeatureFileError(
            file.source, f"unreadable or truncated HDF5 file ({error})"
        ) from error
    return raw, geometry


def _h5_geometry(file: FeatureFile, handle: Any, rows: int) -> PatchGeometry:
    if COORDS_DATASET not in handle:
        return PatchGeometry()
    dataset = handle[COORDS_DATASET]
    coords = np.asarray(dataset[()])
    if coords.shape != (rows, 2) or coords.dtype.kind not in _NUMERIC_KINDS:
        raise FeatureFileError(
            file.source, f"coords of shape {coords.shape} ({coords.dtype}), expected {rows} x 2"
        )
    attrs = {**dict(handle.attrs), **dict(dataset.attrs)}
    patch_size = _int_attr(attrs, "patch_size")
    level = _int_attr(attrs, "patch_level")
    size_level0 = _int_attr(attrs, "patch_size_level0")
    downsample = attrs.get("downsample")
    if size_level0 is None and patch_size is not None:
        if downsample is not None and np.size(downsample) >= 1:
            size_level0 = round(patch_size * float(np.ravel(downsample)[0]))
        elif level == 0:
            size_level0 = patch_size
    return PatchGeometry(coords.astype(np.int64), patch_size, level, size_level0)


def _int_attr(attrs: dict[str, Any], name: str) -> int | None:
    value = attrs.get(name)
    if value is None or np.size(value) != 1:
        return None
    try:
        return int(np.ravel(value)[0])
    except (TypeError, ValueError):
        return None


def _read_pt(file: FeatureFile) -> tuple[npt.NDArray[Any], PatchGeometry]:
    import pickle

    import torch

    try:
        loaded = torch.load(file.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise FeatureFileError(
            file.source, f"unreadable or truncated .pt file ({error})"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get(FEATURES_DATASET), torch.Tensor):
        loaded = loaded[FEATURES_DATASET]
    if not isinstance(loaded, torch.Tensor):
        raise FeatureFileError(file.source, f"holds a {type(loaded).__name__}, not a tensor")
    if loaded.is_complex() or loaded.dtype == torch.bool:
        raise FeatureFileError(file.source, f"dtype {loaded.dtype} is not numeric (need float)")
    if loaded.dtype == torch.bfloat16:  # numpy has no bfloat16
        loaded = loaded.float()
    return loaded.detach().numpy(), PatchGeometry()


def open_npy(file: FeatureFile) -> npt.NDArray[Any]:
    """The ``.npy`` matrix memory-mapped, after checking its header against the file's size."""
    try:
        with file.path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError, SyntaxError) as error:
        raise FeatureFileError(file.source, f"not a readable .npy file ({error})") from error
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS:
        raise FeatureFileError(file.source, f"dtype {dtype} is not numeric (need float or int)")
    if len(shape) != 2:
        raise FeatureFileError(file.source, f"a matrix of shape {shape}, expected rows x D")
    if 0 in shape:
        raise FeatureFileError(file.source, f"empty: a matrix of shape {shape}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if file.size < expected:
        raise FeatureFileError(
            file.source, f"truncated: {file.size} bytes, its header promises {expected}"
        )
    try:
        return np.memmap(
            file.path,
            dtype=dtype,
            mode="r",
            offset=offset,
            shape=shape,
            order="F" if fortran else "C",
        )
    except (OSError, ValueError) as error:
        raise FeatureFileError(file.source, f"unreadable ({error})") from error


@dataclass(frozen=True, slots=True)
class RowTable:
    """The ``npy`` CSV as columns: slide id, label, group and the other columns per row."""

    slide_ids: list[str]
    labels: list[str | None]
    groups: list[str]
    others: dict[str, list[str]]

    def block(
        self, source: str, archive: str | None, dataset: str | None, rows: npt.NDArray[np.int64]
    ) -> FeatureRows:
        """The rows ``rows`` (increasing) of the matrix ``source``, as one block."""
        first, last = int(rows[0]), int(rows[-1]) + 1
        # No row left out: slices, not a lookup per row.
        at = slice(first, last) if last - first == len(rows) else rows.tolist()
        return FeatureRows(
            source=source,
            archive=archive,
            dataset=dataset,
            rows=rows,
            slide_ids=_taken(self.slide_ids, at),
            labels=_taken(self.labels, at),
            groups=_taken(self.groups, at),
            columns={name: _taken(values, at) for name, values in self.others.items()},
        )


def _taken(values: list[_Value], at: slice | list[int]) -> list[_Value]:
    return values[at] if isinstance(at, slice) else [values[n] for n in at]


def read_row_table(path: Path, columns: FeatureColumns, rows: int) -> RowTable:
    """The per-row CSV of a ``npy`` matrix; refuses (naming the CSV) missing columns, a line
    count other than the matrix's rows, or a line of another field count than the header."""
    source = path.name
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            text = handle.read()
        header, table, lines = _plain_csv_columns(text) or _csv_columns(text, source)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FeatureFileError(source, f"unreadable CSV ({error})") from error
    wanted = (columns.slide_id, columns.label, columns.group)
    missing = [name for name in wanted if header is None or name not in header]
    if header is None or missing:
        raise FeatureFileError(
            source, f"no column {', '.join(map(repr, missing))} (header: {header})"
        )
    if lines != rows:
        raise FeatureFileError(source, f"{lines} lines for {rows} rows of the matrix")
    slide_ids = table[columns.slide_id]
    groups = [group or slide for group, slide in zip(table[columns.group], slide_ids, strict=True)]
    return RowTable(
        slide_ids=slide_ids,
        labels=[label or None for label in table[columns.label]],
        groups=groups,
        others={name: values for name, values in table.items() if name not in wanted},
    )


_CsvColumns = tuple[list[str] | None, dict[str, list[str]], int]


def _plain_csv_columns(text: str) -> _CsvColumns | None:
    """(header, columns, lines) of a CSV without quotes whose lines all end alike (``\\n`` or
    ``\\r\\n``, Python's `csv` default) and all have the header's field count, split by ``str``
    methods: 2.3x less CPU than `csv.reader` on the shared set's 147k lines. None for any other
    CSV (`_csv_columns` reads it)."""
    if '"' in text or not text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    header = lines[0].split(",")
    width = len(header)
    if set(map(str.count, lines, itertools.repeat(","))) != {width - 1}:
        return None
    fields = body.replace("\n", ",").split(",")
    table = {name: fields[width + i :: width] for i, name in enumerate(header)}
    return header, table, len(lines) - 1


def _csv_columns(text: str, source: str) -> _CsvColumns:
    """(header, columns, lines) of any CSV `csv.reader` reads; a ragged line is refused."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    lines = list(reader)
    width = 0 if header is None else len(header)
    ragged = next((n for n, line in enumerate(lines, start=2) if len(line) != width), None)
    if header is not None and ragged is not None:
        raise FeatureFileError(
            f"{source}:{ragged}", f"{len(lines[ragged - 2])} fields, the header has {width}"
        )
    # Column by column (not zip(*lines)): half the CPU time on the 147k-line shared set.
    table = {name: [line[i] for line in lines] for i, name in enumerate(header or [])}
    return header, table, len(lines)


def read_manifest(path: Path, columns: FeatureColumns) -> dict[str, SlideInfo]:
    """``manifest.csv`` of a per-slide folder: slide id (or ``path``) -> label, group, extra.

    An absent manifest is an empty mapping; one without a slide-id or ``path`` column is refused.
    """
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        keys = [name for name in (columns.slide_id, "path") if name in header]
        if not keys:
            raise SourceError(f"{path}: needs a '{columns.slide_id}' or 'path' column")
        slides: dict[str, SlideInfo] = {}
        for row in reader:
            known = (columns.slide_id, "path", columns.label, columns.group)
            info = SlideInfo(
                label=(row.get(columns.label) or "").strip() or None,
                group=(row.get(columns.group) or "").strip() or None,
                extra={k: v or "" for k, v in row.items() if k is not None and k not in known},
            )
            for key in keys:
                name = (row.get(key) or "").strip()
                if name:
                    slides[name] = info
    return slides
