"""A feature archive read whole into arrays: what training and evaluation on features read.

Indexing streams a feature archive batch by batch (`indexer.ingest.features.FeatureArchive`);
training and evaluation need the rows at once, with each row's slide, group (patient) and label.
`read_feature_table` gives them through that same reader, so every program reads every layout
(``.npy`` + CSV, folders of ``.h5`` / ``.pt``) alike, with the same checks: a file of another
dimension, with NaN/Inf rows or unreadable is refused by name (`FeatureTable.refused`) and the
rest is read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.ingest.features import (
    FeatureArchive,
    FeatureBatch,
    FeatureColumns,
    FeatureOptions,
    RefusedFile,
)
from indexer.ingest.sources import SourceError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
LabelArray = npt.NDArray[np.str_]

DEFAULT_COLUMNS = FeatureColumns()
# The columns of the shared ``tcga-hipt-regions-192d`` (regions.csv, slides.csv).
TCGA_COLUMNS = FeatureColumns(slide_id="slide_id", label="cancer_type", group="patient_id")


@dataclass(frozen=True)
class FeatureTable:
    """Vectors of one backbone with the slide, patient (group) and label of every row (an
    unlabelled row has the label ``""``), and the files or rows the reader refused."""

    vectors: FloatArray
    slides: LabelArray
    groups: LabelArray
    labels: LabelArray
    refused: tuple[RefusedFile, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        rows = len(self.vectors)
        if self.vectors.ndim != 2 or not (
            len(self.slides) == len(self.groups) == len(self.labels) == rows
        ):
            raise ValueError("vectors must be (N, D) with one slide, group and label per row")

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows_of(self, groups: Sequence[str]) -> IntArray:
        """Positions of the rows whose group is one of ``groups``, in archive order."""
        wanted = np.isin(self.groups, np.asarray(list(groups)))
        return np.flatnonzero(wanted).astype(np.int64)

    def subset(self, rows: IntArray) -> FeatureTable:
        return FeatureTable(
            self.vectors[rows], self.slides[rows], self.groups[rows], self.labels[rows]
        )


def read_feature_table(
    data: Path,
    columns: FeatureColumns = DEFAULT_COLUMNS,
    limit: int | None = None,
    dim: int | None = None,
) -> FeatureTable:
    """Every row of the feature archive at ``data`` (a ``.npy`` with its CSV, or a folder of
    ``.h5`` / ``.pt`` files), in file order; ``limit`` keeps the first rows (a slide's rows are
    contiguous, so only the last slide may be cut); ``dim`` holds every file to that length.

    Raises SourceError when the archive cannot be read at all or no row is readable.
    """
    archive = FeatureArchive.open(Path(data), FeatureOptions(columns=columns, dim=dim))
    vectors: list[FloatArray] = []
    slides: list[str] = []
    groups: list[str] = []
    labels: list[str] = []
    refused: list[RefusedFile] = []
    for batch in archive.batches():
        if isinstance(batch, RefusedFile):
            log.warning("%s", batch.error)
            refused.append(batch)
            continue
        taken = _take(batch, None if limit is None else limit - len(slides))
        vectors.append(batch.vectors[:taken])
        rows = batch.rows
        slides.extend(rows.slide_ids[:taken])
        groups.extend(rows.groups[:taken])
        labels.extend(label or "" for label in rows.labels[:taken])
        if limit is not None and len(slides) >= limit:
            break
    if not slides:
        reasons = "; ".join(str(refusal.error) for refusal in refused) or "no rows"
        raise SourceError(f"{data}: no readable feature rows ({reasons})")
    return FeatureTable(
        vectors=np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32),
        slides=np.array(slides),
        groups=np.array(groups),
        labels=np.array(labels),
        refused=tuple(refused),
    )


def _take(batch: FeatureBatch, room: int | None) -> int:
    return len(batch.rows) if room is None else max(0, min(room, len(batch.rows)))
