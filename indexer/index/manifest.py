"""``manifest.json`` of an index directory: what the other files must be for the index to open.

Written last by every snapshot, so replacing it is the moment a snapshot commits. It records the
code geometry, the codebook fingerprint, the model card and checkpoint it was built with, and the
snapshot: which generation of ``codes.<gen>.faiss`` and ``columns.<gen>.npz`` holds the codes, with
their size and SHA-256, and how far into the SQLite journal (item ids, removal sequence) it goes.

Format 1 (written before snapshots had generations) named fixed files ``codes.faiss`` and
``columns.npz`` under those keys inside ``snapshot``; it is read as generation 0.

(Not to be confused with a CSV manifest of archive images, read by `indexer.ingest.sources`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from indexer.index.errors import IndexDirectoryError
from indexer.index.pq import code_size_bytes

MANIFEST = "manifest.json"
FORMAT_VERSION: Literal[2] = 2
READABLE_VERSIONS = (1, 2)
LEGACY_CODES = "codes.faiss"
LEGACY_COLUMNS = "columns.npz"

# A SHA-256 digest as lower-case hex.
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def codes_name(generation: int) -> str:
    """File name of a generation's FAISS codes (generation 0: the format-1 fixed name)."""
    return LEGACY_CODES if generation == 0 else f"codes.{generation}.faiss"


def columns_name(generation: int) -> str:
    """File name of a generation's filter columns (generation 0: the format-1 fixed name)."""
    return LEGACY_COLUMNS if generation == 0 else f"columns.{generation}.npz"


def fine_name(generation: int) -> str:
    """File name of a generation's second-stage codes (N x D uint8, in the order of the codes)."""
    return f"fine.{generation}.npy"


def fine_ids_name(generation: int) -> str:
    """File name of the item ids of a generation's second-stage codes (N int64, increasing)."""
    return f"fine-ids.{generation}.npy"


class FileEntry(BaseModel):
    """Size and SHA-256 of one snapshot file, checked before it is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bytes: int = Field(ge=0)
    sha256: Sha256


class Snapshot(BaseModel):
    """One committed snapshot: its files and how far into the SQLite journal it reaches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: int = Field(ge=0)
    items: int = Field(ge=0)
    last_item_id: int = Field(ge=0)
    last_removal_seq: int = Field(ge=0)
    codes: FileEntry
    columns: FileEntry
    # The second stage's files, in an index created with one (`indexer.index.second_stage`).
    fine: FileEntry | None = None
    fine_ids: FileEntry | None = None

    @property
    def codes_file(self) -> str:
        return codes_name(self.generation)

    @property
    def columns_file(self) -> str:
        return columns_name(self.generation)

    @property
    def fine_files(self) -> tuple[str, str]:
        return fine_name(self.generation), fine_ids_name(self.generation)

    @property
    def files(self) -> tuple[str, ...]:
        fine = self.fine_files if self.fine is not None else ()
        return self.codes_file, self.columns_file, *fine

    @model_validator(mode="before")
    @classmethod
    def _read_format_1(cls, data: Any) -> Any:
        """Format 1 kept the entries under the file names and had no generation."""
        if isinstance(data, dict) and LEGACY_CODES in data and "generation" not in data:
            data = dict(data)
            data["codes"] = data.pop(LEGACY_CODES)
            data["columns"] = data.pop(LEGACY_COLUMNS, None)
            data["generation"] = 0
        return data


class SecondStageRecord(BaseModel):
    """The second stage an index was created with: its fine code and how it re-ranks.

    ``quantiser_sha256`` fingerprints the trained range (kept in SQLite), None until the first
    rows trained it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sq8"]
    dim: int = Field(gt=0)
    shortlist_factor: int = Field(ge=1)
    quantiser_sha256: Sha256 | None = None


class IndexManifest(BaseModel):
    """The validated contents of ``manifest.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1, 2] = FORMAT_VERSION
    num_codebooks: int = Field(gt=0)
    codebook_size: int = Field(ge=2, le=256)
    codeword_dim: int = Field(gt=0)
    code_size: int = Field(gt=0)
    codebook_fingerprint: Sha256
    card_key: dict[str, Any]
    card_sha256: Sha256
    checkpoint_sha256: Sha256 | None = None
    snapshot: Snapshot | None = None
    second_stage: SecondStageRecord | None = None

    @model_validator(mode="after")
    def _code_size_fits_the_geometry(self) -> IndexManifest:
        expected = code_size_bytes(self.num_codebooks, self.codebook_size)
        if self.code_size != expected:
            raise ValueError(
                f"code_size {self.code_size} does not fit M={self.num_codebooks} "
                f"K={self.codebook_size} ({expected} bytes)"
            )
        return self

    def committed(self) -> Snapshot:
        """The snapshot the manifest vouches for (every written manifest has one)."""
        if self.snapshot is None:
            raise IndexDirectoryError(f"{MANIFEST} names no snapshot")
        return self.snapshot

    def with_snapshot(self, snapshot: Snapshot) -> IndexManifest:
        """This manifest in the current format, vouching for ``snapshot``."""
        return self.model_copy(update={"snapshot": snapshot, "format_version": FORMAT_VERSION})

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        # An index without a second stage writes the manifest it always wrote.
        if data["second_stage"] is None:
            del data["second_stage"]
        if data["snapshot"] is not None and data["snapshot"]["fine"] is None:
            del data["snapshot"]["fine"], data["snapshot"]["fine_ids"]
        payload = json.dumps(data, indent=2, sort_keys=True)
        return payload.encode()


def read_manifest(directory: Path) -> IndexManifest:
    """The manifest of ``directory``; IndexDirectoryError if it is missing or invalid."""
    if not directory.is_dir():
        raise IndexDirectoryError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexDirectoryError(f"{directory} has no {MANIFEST}: not an index directory")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as error:
        raise IndexDirectoryError(f"{path} is unreadable: {error}") from error
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS:
        raise IndexDirectoryError(
            f"{path} has format version {version!r}; this program reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        manifest = IndexManifest.model_validate(data)
    except ValidationError as error:
        raise IndexDirectoryError(f"{path} is not a valid index manifest: {error}") from error
    manifest.committed()
    return manifest
