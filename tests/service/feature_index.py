"""A small real feature index: a slice of tcga-hipt-regions-192d (HIPT region features of TCGA
slides, no pixels) read by the feature-archive reader and coded by a seeded feature model.

The model is not trained (a seeded head and codebooks, centred on the slice's mean): what the
service tests need is the index's behaviour (queries checked, encoded by the index's own head,
ranked by exact ADC), not retrieval quality, which the feature benchmarks measure.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from indexer.index.second_stage import SecondStageSettings
from indexer.index.store import ArchiveIndex
from indexer.ingest.features import FeatureArchive, FeatureBatch, FeatureOptions
from model.card import ModelCard
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel, save_feature_checkpoint
from support.data import SHARED_DATA, missing_data_reason

FEATURE_SET = "tcga-hipt-regions-192d"
DIM = 192
FEATURE_MODEL = "HIPT ViT-S/16 (region level)"
# Slides are contiguous in the matrix: the first 600 rows hold a few dozen slides.
ROWS = 600


@dataclass(frozen=True, slots=True)
class FeatureSample:
    """The index directory, and the float32 rows it was built from, in item order."""

    index_dir: Path
    vectors: npt.NDArray[np.float32]
    slide_ids: list[str]


def require_features() -> Path:
    reason = missing_data_reason(FEATURE_SET)
    if reason is not None:
        pytest.skip(reason)
    return SHARED_DATA / FEATURE_SET


def feature_card() -> ModelCard:
    return ModelCard(
        backbone="features:hipt",
        num_codebooks=8,
        codebook_size=16,
        codeword_dim=8,
        input_dim=DIM,
        feature_model=FEATURE_MODEL,
    )


def write_slice(source: Path, folder: Path, rows: int = ROWS) -> Path:
    """The first ``rows`` of the set as an ``.npy`` with its CSV (slide_id, label, group)."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.load(source / "regions.npy", mmap_mode="r")[:rows]
    target = folder / "regions.npy"
    np.save(target, np.asarray(matrix))
    with (source / "regions.csv").open(newline="") as handle:
        lines = list(csv.DictReader(handle))[:rows]
    with (folder / "regions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "group"])
        for line in lines:
            writer.writerow([line["slide_id"], line["cancer_type"], line["patient_id"]])
    return target


def build_feature_index(
    directory: Path,
    source: Path,
    rows: int = ROWS,
    second_stage: SecondStageSettings | None = None,
) -> FeatureSample:
    """Index the slice with a seeded feature model; the directory holds its ``model.pt``. With
    ``second_stage``, the index re-ranks by 8-bit codes of the centred rows."""
    matrix = write_slice(source, directory.parent / "archive", rows)
    torch.manual_seed(7)
    model = FeatureSPQModel(feature_card()).eval()
    vectors = np.load(matrix).astype(np.float32)
    model.feature_mean.copy_(torch.from_numpy(vectors.mean(axis=0)))
    checkpoint = directory.parent / "feature-model.pt"
    save_feature_checkpoint(model, checkpoint)
    index = ArchiveIndex.create(directory, checkpoint, second_stage)
    encoder = FeatureEncoder(model, torch.device("cpu"))
    slide_ids: list[str] = []
    with index:
        for batch in FeatureArchive.open(matrix, FeatureOptions(dim=DIM)).batches():
            assert isinstance(batch, FeatureBatch), batch
            fine = None if second_stage is None else encoder.centred(batch.vectors)
            index.add_rows(encoder.descriptors(batch.vectors), [batch.rows], fine=fine)
            slide_ids += batch.rows.slide_ids
    return FeatureSample(directory, vectors, slide_ids)
