"""Self-supervised SPQ on a backbone's precomputed feature vectors (no pixels)."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from indexer.learn.splits import GroupSplit, SplitError
from model.card import ModelCard, code_geometry
from model.feature_spq import FeatureSPQModel
from model.loss import CrossQuantizedContrastiveLoss

FloatArray = npt.NDArray[np.float32]


def patient_split(
    groups: Sequence[str], validation_fraction: float, test_fraction: float, seed: int
) -> GroupSplit:
    """Shuffle the distinct groups (patients) with ``seed`` and cut them by fraction: made once,
    so every variant is chosen on the same validation patients and reported on the same test
    patients."""
    if validation_fraction <= 0 or test_fraction <= 0 or validation_fraction + test_fraction >= 1:
        raise SplitError("fractions must be > 0 and leave some groups for training")
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    n_test = max(1, round(len(distinct) * test_fraction))
    n_validation = max(1, round(len(distinct) * validation_fraction))
    if n_test + n_validation >= len(distinct):
        raise SplitError(f"{len(distinct)} groups are too few for three parts")
    return GroupSplit(
        train=tuple(sorted(distinct[n_test + n_validation :])),
        validation=tuple(sorted(distinct[n_test : n_test + n_validation])),
        test=tuple(sorted(distinct[:n_test])),
    )


Signal = Literal["neighbours", "slide", "views", "slide+neighbours"]


class FeatureTrainConfig(BaseModel):
    """How to learn the head and codebooks on a feature archive (labels never read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=64, description="code length: 32, 64 or 128 bits")
    codebook_size: int = Field(default=256, description="K: 16 (4-bit codes) or 256 (8-bit)")
    descriptor_dim: int = Field(default=0, ge=0, description="M*d; 0: the input dim")
    head_hidden: int = Field(default=0, ge=0, description="hidden width of the head; 0: linear")
    signal: Signal = Field(
        default="slide+neighbours",
        description="label-free training signal: the float vectors' own neighbour ranking "
        "(neighbours), another region of the same slide (slide), both (slide+neighbours), or "
        "noisy views (views)",
    )
    epochs: int = Field(default=2, ge=0)
    batch_size: int = Field(default=1024, ge=4)
    learning_rate: float = Field(default=1e-3, gt=0)
    temperature: float = Field(default=0.2, gt=0, description="temperature of the CQC loss")
    distillation_temperature: float = Field(
        default=0.05, gt=0, description="softmax temperature of the neighbour distillation"
    )
    neighbours: int = Field(default=10, ge=1, description="float neighbours a batch draws from")
    kmeans_iterations: int = Field(default=20, ge=0, description="final codebook refit")
    opq_init: bool = Field(
        default=True, description="start the linear head at FAISS's OPQ rotation"
    )
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    feature_model: str = Field(default="", description="the model that produced the vectors")

    @property
    def num_codebooks(self) -> int:
        return code_geometry(self.bits, self.codebook_size)


@dataclass(frozen=True)
class FeatureTrainingResult:
    model: FeatureSPQModel
    seconds: float
    losses: list[float]


def feature_card(config: FeatureTrainConfig, input_dim: int) -> ModelCard:
    """The card of a feature model for ``input_dim``-long vectors."""
    descriptor_dim = config.descriptor_dim or input_dim
    if descriptor_dim % config.num_codebooks:
        raise ValueError(
            f"descriptor_dim {descriptor_dim} is not a multiple of M={config.num_codebooks}"
        )
    return ModelCard(
        backbone=f"features:{config.feature_model or 'unknown'}",
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        codeword_dim=descriptor_dim // config.num_codebooks,
        input_dim=input_dim,
        feature_model=config.feature_model,
        feature_head_hidden=config.head_hidden,
        training=config.model_dump(mode="json"),
    )


def train_on_features(
    vectors: FloatArray, slides: Sequence[str], config: FeatureTrainConfig
) -> FeatureTrainingResult:
    """Learn the head and codebooks on training vectors (N, D); ``slides`` names each row's
    slide (the ``slide`` signal's positives; other signals ignore it). Labels are never read."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    faiss.omp_set_num_threads(config.threads)
    generator = np.random.default_rng(config.seed)
    model = FeatureSPQModel(feature_card(config, vectors.shape[1]))
    features = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    model.feature_mean.copy_(features.mean(dim=0))
    unit = model.centred(features)
    initialise_head(model, unit.numpy(), config, generator)
    with torch.no_grad():
        model.quantizer.fit_codewords(model.encode(features), config.kmeans_iterations)
    pairs = partner_rows(unit.numpy(), slides, config, generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    losses: list[float] = []
    model.train()
    for _ in range(config.epochs):
        order = generator.permutation(len(features))
        for start in range(0, len(order) - config.batch_size // 2 + 1, config.batch_size // 2):
            anchors = order[start : start + config.batch_size // 2]
            loss = batch_loss(model, features, unit, anchors, pairs, config, generator)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        model.quantizer.fit_codewords(model.encode(features), config.kmeans_iterations)
    return FeatureTrainingResult(model, time.perf_counter() - started, losses)


def initialise_head(
    model: FeatureSPQModel,
    unit: FloatArray,
    config: FeatureTrainConfig,
    generator: np.random.Generator,
) -> None:
    """A linear head of input width starts at the identity, or at FAISS's OPQ rotation (which
    balances the sub-spaces for PQ): training then starts from the float vectors' geometry."""
    head = model.head
    if not isinstance(head, torch.nn.Linear) or head.weight.shape[0] != head.weight.shape[1]:
        return
    rotation = np.eye(unit.shape[1], dtype=np.float32)
    if config.opq_init:
        sample = unit[generator.choice(len(unit), min(len(unit), 10_000), replace=False)]
        opq = faiss.OPQMatrix(unit.shape[1], config.num_codebooks)
        opq.niter = 10
        opq.train(np.ascontiguousarray(sample))
        rotation = faiss.vector_to_array(opq.A).reshape(unit.shape[1], unit.shape[1])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(rotation.astype(np.float32)))


def partner_rows(
    unit: FloatArray,
    slides: Sequence[str],
    config: FeatureTrainConfig,
    generator: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """(N, P) candidate partners of each row: its ``neighbours`` nearest float vectors (by exact
    cosine) for the neighbour signal, rows of its own slide for the slide signal (itself when
    alone), nothing for views."""
    if config.signal == "neighbours":
        return float_neighbours(unit, config.neighbours)
    if config.signal in ("slide", "slide+neighbours"):
        names = np.asarray(slides)
        partners = np.empty((len(names), config.neighbours), dtype=np.int64)
        boundaries = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True])
        for begin, end in itertools.pairwise(boundaries):
            partners[begin:end] = generator.integers(begin, end, (end - begin, config.neighbours))
        return partners
    return np.arange(len(unit), dtype=np.int64)[:, None]


def float_neighbours(unit: FloatArray, count: int) -> npt.NDArray[np.int64]:
    """(N, count) each row's nearest other rows by cosine. Exact up to 20k rows; above, an
    inverted file searching 8 of sqrt(N) cells, which finds most of the top 10 at a small
    fraction of the exact search's cost (O(N^2 D): minutes for 100k rows on 2 cores)."""
    dim = unit.shape[1]
    if len(unit) <= 20_000:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        cells = int(np.sqrt(len(unit)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(unit)
        index.nprobe = 8
    index.add(unit)
    _, found = index.search(unit, count + 1)
    # Row 0 is the row itself (or, for an exact duplicate, its twin: either is a fair partner).
    return found[:, 1:].astype(np.int64)


def batch_loss(
    model: FeatureSPQModel,
    features: torch.Tensor,
    unit: torch.Tensor,
    anchors: npt.NDArray[np.int64],
    pairs: npt.NDArray[np.int64],
    config: FeatureTrainConfig,
    generator: np.random.Generator,
) -> torch.Tensor:
    partners = pairs[anchors, generator.integers(0, pairs.shape[1], len(anchors))]
    rows = torch.from_numpy(np.concatenate([anchors, partners]))
    if config.signal == "neighbours":
        return neighbour_distillation(
            model, features[rows], unit[rows], config.distillation_temperature
        )
    left, right = features[anchors], features[partners]
    if config.signal == "views":
        left, right = feature_view(left, unit.std(dim=0)), feature_view(right, unit.std(dim=0))
    x_a, z_a = model(left)
    x_b, z_b = model(right)
    loss: torch.Tensor = CrossQuantizedContrastiveLoss(config.temperature)(x_a, z_a, x_b, z_b)
    if config.signal == "slide+neighbours":
        loss = loss + neighbour_distillation(
            model, features[rows], unit[rows], config.distillation_temperature
        )
    return loss


def feature_view(features: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """A view made in feature space: 20% of the dimensions dropped, Gaussian noise of half each
    dimension's spread added (the pixels' augmentations have no counterpart here)."""
    kept = (torch.rand_like(features) > 0.2).float() / 0.8
    return features * kept + 0.5 * spread * torch.randn_like(features)


def neighbour_distillation(
    model: FeatureSPQModel, features: torch.Tensor, unit: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL from the float vectors' neighbour distribution to the codes' over the batch.

    Teacher: softmax over the other rows of cos(x_i, x_j) / T on the centred float vectors.
    Student: the same softmax of the search score, the query's descriptor against the other
    rows' soft-quantised descriptors (ADC / M, in [-1, 1]), and of the continuous descriptors
    against each other (the query side). The batch holds each anchor's float neighbour, so the
    ranking at the top, where P@10 and recall live, is in every batch.
    """
    num_codebooks = model.card.num_codebooks
    descriptors, quantised = model(features)
    diagonal = torch.eye(len(features), dtype=torch.bool)
    teacher = (unit @ unit.T / temperature).masked_fill(diagonal, float("-inf"))
    target = torch.softmax(teacher, dim=1)
    loss = torch.zeros(())
    for keys in (quantised, descriptors):
        scores = (descriptors @ keys.T / num_codebooks / temperature).masked_fill(
            diagonal, float("-inf")
        )
        log_student = torch.log_softmax(scores, dim=1).masked_fill(diagonal, 0.0)
        loss = loss + F.kl_div(log_student, target, reduction="sum") / len(features)
    return loss
