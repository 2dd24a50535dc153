"""Self-supervised SPQ training: two augmented views per image, CQC loss, no labels.

Labels are read only for the validation groups, to draw the retrieval curve and to choose the
checkpoint; test groups are never touched here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.evaluate.metrics import near_duplicate_top1, retrieval_metrics
from indexer.ingest.sources import ArchiveImage, load_source
from indexer.learn.config import TrainConfig
from indexer.learn.splits import GroupSplit, explicit_group_split, random_group_split
from indexer.learn.view_cache import (
    BackboneOutput,
    OutputLayout,
    ViewCache,
    build_view_cache,
    distinct_view_pairs,
    flatten_backbone_output,
    view_cache_key,
)
from model import (
    CodewordUsageRegularizer,
    CrossQuantizedContrastiveLoss,
    Embedder,
    NegativeQueue,
    NeighbourSupport,
    SPQModel,
    adc_scores,
    build_model,
    codeword_usage,
    normalize,
    read_checkpoint,
    save_checkpoint,
    select_device,
)
from model.atomic import atomic_write, atomic_write_bytes
from model.augment.pipeline import build_geometric_augmentation, build_photometric_augmentation
from model.preprocess import (
    cpu_features,
    image_to_tensor,
    open_upright_rgb,
    resize_batch,
    select_precision,
)

logger = logging.getLogger(__name__)

FINAL_CHECKPOINT = "model.pt"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
REFIT_CHECKPOINT = "refit.pt"


@dataclass
class TrainingState:
    """What a resumed run needs besides the weights."""

    epoch: int = 0
    elapsed_s: float = 0.0
    best_validation: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def archive_images(data: str | Path) -> list[ArchiveImage]:
    """The images of the archive at ``data``, in any layout `histosearch index` accepts (a CSV
    manifest, class sub-folders, BRACS, extended CRC, BACH: `load_source` recognises them).
    Evaluation lists them the same way, so that it recomputes the same split."""
    return load_source("auto", Path(data))


def make_split(config: TrainConfig, entries: Sequence[ArchiveImage]) -> GroupSplit:
    if config.validation_groups is not None or config.test_groups is not None:
        return explicit_group_split(
            entries, config.validation_groups or [], config.test_groups or []
        )
    return random_group_split(
        entries, config.validation_fraction, config.test_fraction, config.seed
    )


def dataset_fingerprint(entries: Sequence[ArchiveImage], split: GroupSplit) -> str:
    """SHA-256 over the training images' bytes and the split: same data, same fingerprint."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path.name):
        digest.update(entry.path.name.encode())
        digest.update(hashlib.sha256(entry.path.read_bytes()).digest())
    digest.update(json.dumps(asdict(split), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def load_tensor_set(entries: Sequence[ArchiveImage], size: int) -> torch.Tensor:
    """All images as one (N, 3, size, size) uint8 tensor: the sets are small and decoding every
    epoch would cost more than the network on a CPU."""
    tensors = []
    for entry in entries:
        # Decoded by the project's one rule (EXIF orientation, then RGB), as indexing decodes.
        image = open_upright_rgb(entry.path)
        tensors.append(image_to_tensor(image, size).mul(255).round().to(torch.uint8))
    return torch.stack(tensors)


def learning_rate_at(progress: float, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay over the run's progress in [0, 1] (epochs or time)."""
    if progress < config.warmup_fraction:
        # Never exactly zero: a step at learning rate 0 would be wasted compute.
        return (
            config.learning_rate
            * max(progress, 0.01 * config.warmup_fraction)
            / config.warmup_fraction
        )
    remaining = (progress - config.warmup_fraction) / (1 - config.warmup_fraction)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, remaining)))


@dataclass
class ValidationSet:
    images: torch.Tensor  # (N, 3, S, S) float in [0, 1], resized as preprocess() would
    labels: list[str]
    groups: list[str]
    # A frozen backbone gives the same output at every validation: computed once, on the CPU.
    backbone_output: BackboneOutput | None = None


def validation_in_tie_neutral_order(entries: Sequence[ArchiveImage]) -> list[ArchiveImage]:
    """The validation images in a seeded shuffled order.

    32-bit codes tie often, and a ranking breaks ties by position. Archives are listed class by
    class, so in archive order a tied neighbour is most often of the query's class: collapsed
    codes (every image one code) then read far above chance, and the checkpoint chosen on
    validation was the collapsed one. Shuffled positions carry no label (the test evaluation
    shuffles index ids for the same reason, `indexer.evaluate.run`)."""
    shuffled = list(entries)
    random.Random(0).shuffle(shuffled)
    return shuffled


def frozen_backbone_output(
    model: SPQModel, images: torch.Tensor, device: torch.device, batch_size: int = 32
) -> BackboneOutput:
    """The trunk's output for (N, 3, S, S) images in [0, 1], in float32 on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = normalize(images[start : start + batch_size].float(), model.card)
            output: BackboneOutput = model.trunk(batch.to(device))
            chunks.append(flatten_backbone_output(output).float().cpu())
    model.train(was_training)
    layout = OutputLayout.of(output)
    return layout.unflatten(torch.cat(chunks))


def embed_validation(
    model: SPQModel, validation: ValidationSet, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """(N, M*d) descriptors of the validation images, in eval mode; the model's mode is kept."""
    if validation.backbone_output is None:
        # Embedded as every caller embeds (eval mode, no gradients).
        return torch.from_numpy(Embedder(model, device).embed_tensors(validation.images))
    was_training = model.training
    model.eval()
    rows = flatten_backbone_output(validation.backbone_output)
    layout = OutputLayout.of(validation.backbone_output)
    chunks = []
    with torch.inference_mode():
        for start in range(0, rows.shape[0], batch_size):
            output = layout.unflatten(rows[start : start + batch_size].to(device))
            chunks.append(model.encode_backbone_output(output).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def validate(model: SPQModel, validation: ValidationSet, device: torch.device) -> dict[str, float]:
    """P@10 of codes (ADC) and of the float descriptor on held-out validation groups."""
    descriptors = embed_validation(model, validation, device)
    with torch.no_grad():
        codes = model.codes_from_descriptors(descriptors.to(device)).cpu()
        code_scores = adc_scores(descriptors, codes, model.codebooks().detach().cpu())
    float_scores = descriptors @ descriptors.T
    code_metrics = retrieval_metrics(code_scores, validation.labels, validation.groups, (10,))
    float_metrics = retrieval_metrics(float_scores, validation.labels, validation.groups, (10,))
    usage = codeword_usage(codes, model.card.codebook_size)
    return {
        "val_p10_codes": code_metrics.precision[10],
        "val_p10_float": float_metrics.precision[10],
        "val_near_duplicate_top1": near_duplicate_top1(code_scores, validation.groups),
        "codewords_used": usage["codewords_used"],
        "code_perplexity": usage["perplexity"],
    }


class Trainer:
    """One training run: owns the model, optimiser, augmentation and the run folder."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.device = select_device(config.device)
        self.compute_dtype = select_precision(config.precision, self.device)
        entries = archive_images(config.data)
        self.split = make_split(config, entries)
        train_entries = self.split.entries(entries, "train")
        validation_entries = validation_in_tie_neutral_order(
            [e for e in self.split.entries(entries, "validation") if e.label]
        )
        self.dataset_fingerprint = dataset_fingerprint(train_entries, self.split)
        card = config.model_card(self.dataset_fingerprint)
        self.model = build_model(card, config.backbone_weights).to(self.device)
        self.train_images = load_tensor_set(train_entries, config.preload_side())
        self.validation = (
            ValidationSet(
                load_tensor_set(validation_entries, config.model.input_size).float().div(255),
                [str(e.label) for e in validation_entries],
                [e.group for e in validation_entries],
            )
            if validation_entries
            else None
        )
        # The augmentation in its two halves, so that a stain-colour branch can read the crop
        # before its jitter; `augment` is the two in a row (the view cache's views).
        size = config.model.input_size
        self.crop = build_geometric_augmentation(config.augmentation, size).to(self.device)
        self.jitter = build_photometric_augmentation(config.augmentation, size).to(self.device)
        self.augment = torch.nn.Sequential(self.crop, self.jitter)
        self.loss = CrossQuantizedContrastiveLoss(config.temperature)
        # Not saved with a resumable checkpoint: a resumed run refills it within a few steps.
        self.negatives = NegativeQueue(config.negative_queue)
        self.neighbours = NeighbourSupport(config.neighbour_support)
        self.regularizer = CodewordUsageRegularizer()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.codeword_used = torch.zeros(
            card.num_codebooks, card.codebook_size, dtype=torch.bool, device=self.device
        )
        self.last_descriptors: torch.Tensor | None = None
        self.view_cache: ViewCache | None = None
        self.state = TrainingState()
        if resume and (self.out / LAST_CHECKPOINT).exists():
            self._restore(self.out / LAST_CHECKPOINT)
        self._write_config()

    def _write_config(self) -> None:
        resolved = {
            "config": self.config.model_dump(mode="json"),
            "split": asdict(self.split),
            "num_train_images": int(self.train_images.shape[0]),
            "num_validation_images": 0 if self.validation is None else len(self.validation.labels),
            "device": str(self.device),
            "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
            "cpu": cpu_features(),
            "model_card": self.model.card.model_dump(mode="json"),
        }
        if self.view_cache is not None:
            resolved["view_cache"] = asdict(self.view_cache.cost)
        atomic_write_bytes(self.out / "config.json", json.dumps(resolved, indent=2).encode())

    def _restore(self, path: Path) -> None:
        payload = read_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(payload["state_dict"])
        extra = payload["extra"]
        self.optimizer.load_state_dict(extra["optimizer"])
        self.state = TrainingState(**extra["state"])
        torch.set_rng_state(extra["torch_rng"])
        logger.info("resumed from %s at epoch %d", path, self.state.epoch)

    def _save(self, name: str, resumable: bool = False) -> None:
        """Save the weights; ``resumable`` adds the optimiser and run state (3x the size)."""
        extra: dict[str, Any] = {"state": asdict(self.state)}
        if resumable:
            extra.update(optimizer=self.optimizer.state_dict(), torch_rng=torch.get_rng_state())
        save_checkpoint(self.model, self.out / name, extra=extra)

    def progress(self) -> float:
        by_epochs = self.state.epoch / self.config.epochs
        if self.config.minutes is None:
            return by_epochs
        return max(by_epochs, self.state.elapsed_s / (60 * self.config.minutes))

    def view_cache_folder(self) -> Path:
        root = (
            Path(self.config.view_cache_dir) if self.config.view_cache_dir else self.out / "cache"
        )
        key = view_cache_key(
            self.model, self.dataset_fingerprint, self.config.augmentation, self.config.cached_views
        )
        return root / key

    def prepare_view_cache(self) -> ViewCache:
        """Build (or reuse) the cache of backbone outputs that a cached-views run trains on, and
        the validation images' backbone output, which validation then reuses."""
        if self.validation is not None and self.validation.backbone_output is None:
            self.validation.backbone_output = frozen_backbone_output(
                self.model, self.validation.images, self.device
            )
        if self.view_cache is None:
            self.view_cache = build_view_cache(
                self.model,
                self.train_images,
                self.augment,
                self.config.cached_views,
                self.view_cache_folder(),
                seed=self.config.seed,
                device=self.device,
                compute_dtype=self.compute_dtype,
            )
            self._write_config()
        return self.view_cache

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        images = batch.to(self.device).float().div_(255)
        return self._learn_from(
            self._descriptors(*self.augmented_view(images)),
            self._descriptors(*self.augmented_view(images)),
        )

    @torch.no_grad()
    def augmented_view(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One augmented view of a batch, normalised, and, where the stain-colour branch reads
        the crop before its colour jitter (the config allows that only with the branch), that
        crop."""
        card = self.model.card
        crops = self.crop(images)
        view = normalize(self.jitter(crops), card)
        if self.config.augmentation.stain_branch_view == "geometric":
            return view, normalize(crops, card)
        return view, None

    def cached_train_step(self, indices: torch.Tensor) -> dict[str, float]:
        """One step on two distinct cached views of each image: no backbone forward."""
        cache = self.prepare_view_cache()
        first, second = distinct_view_pairs(indices.shape[0], cache.views)
        mixed = self.compute_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=mixed):
            x_a = self.model.encode_backbone_output(
                cache.backbone_output(indices, first, self.device)
            )
            x_b = self.model.encode_backbone_output(
                cache.backbone_output(indices, second, self.device)
            )
        return self._learn_from(x_a, x_b)

    def _learn_from(self, x_a: torch.Tensor, x_b: torch.Tensor) -> dict[str, float]:
        """CQC loss and codeword regulariser on the descriptors of two views; one Adam step."""
        z_a = self.model.quantizer.soft_quantize(x_a)
        z_b = self.model.quantizer.soft_quantize(x_b)
        self._note_codeword_use(x_a)
        contrastive = self._contrastive(x_a, z_a, x_b, z_b)
        self.negatives.push(torch.cat([z_a, z_b]))
        assignment = self.model.quantizer.soft_assignment(torch.cat([x_a, x_b]))
        regularizer = self.regularizer(assignment)
        total = contrastive + self.config.codeword_regularizer * regularizer
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {
            "loss": total.item(),
            "cqc": contrastive.item(),
            "regularizer": regularizer.item(),
        }

    def _contrastive(
        self, x_a: torch.Tensor, z_a: torch.Tensor, x_b: torch.Tensor, z_b: torch.Tensor
    ) -> torch.Tensor:
        """CQC on the two views' own pairs and, with a neighbour support, on each view's codes
        paired with its nearest earlier view instead, weighted by ``neighbour_weight``."""
        negatives = self.negatives.contents()
        own: torch.Tensor = self.loss(x_a, z_a, x_b, z_b, negatives)
        if self.config.neighbour_support == 0:
            return own
        near_a, near_b = self.neighbours.nearest(x_a), self.neighbours.nearest(x_b)
        self.neighbours.push(x_a)
        neighbours: torch.Tensor = self.loss(near_a, z_a, near_b, z_b, negatives)
        weight = self.config.neighbour_weight
        return (1 - weight) * own + weight * neighbours

    def _descriptors(
        self, views: torch.Tensor, stain_views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network in the run's precision; `encode` returns float32 unit sub-vectors, and
        quantisation and losses then run in float32, where the soft assignment's exponentials and
        the contrastive logits keep their detail."""
        mixed = self.compute_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=mixed):
            return self.model.encode(views, stain_views)

    def _note_codeword_use(self, descriptors: torch.Tensor) -> None:
        codes = self.model.quantizer.assign(descriptors.detach())
        card = self.model.card
        self.codeword_used |= torch.nn.functional.one_hot(codes, card.codebook_size).any(dim=0)
        self.last_descriptors = descriptors.detach()

    def _reset_dead_codewords(self) -> int:
        # Resets stop half-way so that the codebooks settle before the final checkpoints.
        moved = 0
        resetting = self.config.reset_dead_codewords and self.progress() < 0.5
        if resetting and self.last_descriptors is not None:
            moved = self.model.quantizer.reset_unused(self.last_descriptors, self.codeword_used)
        self.codeword_used.zero_()
        return moved

    def run_epoch(self) -> dict[str, float]:
        count = self.train_images.shape[0]
        batch_size = min(self.config.batch_size, count)
        order = torch.randperm(count)
        # Drop the ragged tail: a batch of one has no negatives.
        starts = range(0, count - batch_size + 1, batch_size)
        sums = {"loss": 0.0, "cqc": 0.0, "regularizer": 0.0}
        started = time.perf_counter()
        for start in starts:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate_at(self.progress(), self.config)
            indices = order[start : start + batch_size]
            step = (
                self.cached_train_step(indices)
                if self.config.cached_views
                else self.train_step(self.train_images[indices])
            )
            for key in sums:
                sums[key] += step[key]
        codewords_reset = self._reset_dead_codewords()
        seconds = time.perf_counter() - started
        self.state.elapsed_s += seconds
        self.state.epoch += 1
        steps = max(1, len(starts))
        record = {key: value / steps for key, value in sums.items()}
        record["images_per_s"] = len(starts) * batch_size / seconds
        record["codewords_reset"] = codewords_reset
        return record

    def finished(self) -> bool:
        if self.state.epoch >= self.config.epochs:
            return True
        return self.config.minutes is not None and self.state.elapsed_s >= 60 * self.config.minutes

    def run(self) -> Path:
        """Train until the epoch or time budget is spent; return the final checkpoint's path."""
        from tqdm import tqdm

        if self.config.cached_views:
            self.prepare_view_cache()
        last_checkpoint_s = self.state.elapsed_s
        with tqdm(total=self.config.epochs, initial=self.state.epoch, unit="epoch") as bar:
            while not self.finished():
                record: dict[str, Any] = {"epoch": self.state.epoch + 1, **self.run_epoch()}
                record["elapsed_s"] = self.state.elapsed_s
                record["learning_rate"] = self.optimizer.param_groups[0]["lr"]
                if self._validation_due():
                    record.update(self._validate_and_keep_best())
                self.state.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", ips=f"{record['images_per_s']:.0f}")
                if (
                    self.state.elapsed_s - last_checkpoint_s
                    >= 60 * self.config.checkpoint_every_minutes
                ):
                    self._save(LAST_CHECKPOINT, resumable=True)
                    last_checkpoint_s = self.state.elapsed_s
        return self._finish()

    def _validation_due(self) -> bool:
        if self.validation is None:
            return False
        every = self.config.validate_every
        return self.state.epoch % every == 0 or self.finished()

    def _validate_and_keep_best(self) -> dict[str, float]:
        assert self.validation is not None
        metrics = validate(self.model, self.validation, self.device)
        if metrics["val_p10_codes"] > self.state.best_validation:
            self.state.best_validation = metrics["val_p10_codes"]
            self._save(BEST_CHECKPOINT)
        logger.info("epoch %d validation %s", self.state.epoch, metrics)
        return metrics

    def _finish(self) -> Path:
        self._save(LAST_CHECKPOINT, resumable=True)
        chosen = self.out / (
            BEST_CHECKPOINT if (self.out / BEST_CHECKPOINT).exists() else LAST_CHECKPOINT
        )
        chosen = self._refit_codebooks_if_better(chosen)
        final = self.out / FINAL_CHECKPOINT
        # `prepare` reuses any model.pt it finds, so it must never see half of one.
        atomic_write(final, lambda temporary: shutil.copyfile(chosen, temporary))
        history = json.dumps(self.state.history, indent=2).encode()
        atomic_write_bytes(self.out / "history.json", history)
        from indexer.evaluate.plots import plot_training_history

        plot_training_history(self.state.history, self.out / "training.png")
        return final

    def training_descriptors(self, batch_size: int = 256) -> torch.Tensor:
        """Descriptors of the training images as they are (no augmentation), at the input size."""
        embedder = Embedder(self.model, self.device, batch_size)
        size = self.config.model.input_size
        chunks = [
            torch.from_numpy(
                embedder.embed_tensors(
                    resize_batch(self.train_images[start : start + batch_size].float() / 255, size)
                )
            )
            for start in range(0, self.train_images.shape[0], batch_size)
        ]
        return torch.cat(chunks)

    def _refit_codebooks_if_better(self, chosen: Path) -> Path:
        """The chosen checkpoint with its codebooks refitted by k-means (`REFIT_CHECKPOINT`) when
        that keeps or raises the codes' validation P@10; else ``chosen`` unchanged."""
        if not self.config.refit_codebooks or self.validation is None:
            return chosen
        self.model.load_state_dict(read_checkpoint(chosen, self.device)["state_dict"])
        before = validate(self.model, self.validation, self.device)
        self.model.quantizer.fit_codewords(self.training_descriptors().to(self.device))
        after = validate(self.model, self.validation, self.device)
        kept = after["val_p10_codes"] >= before["val_p10_codes"]
        outcome = {"before": before, "after": after, "kept": kept}
        atomic_write_bytes(self.out / "codebook_refit.json", json.dumps(outcome, indent=2).encode())
        logger.info("codebook refit %s: %s", "kept" if kept else "discarded", outcome)
        if not kept:
            return chosen
        self._save(REFIT_CHECKPOINT)
        return self.out / REFIT_CHECKPOINT


def train(config: TrainConfig, resume: bool = False) -> Path:
    return Trainer(config, resume).run()
