"""One `histosearch train --source features` run: read, split by patient, train, write.

The archive is read whole (`indexer.ingest.feature_table.read_feature_table`), cut into
train / validation / test groups (`indexer.learn.splits.named_group_split`: named test groups
are never trained on), and `indexer.learn.feature_training.train_on_features` learns the head
and codebooks on the training groups' rows only. Written to the run folder:

- ``model.pt``: the feature checkpoint (card with ``input_dim`` and ``feature_model``; the run
  settings and the split in its ``extra``), what `histosearch index --source features` takes;
- ``model_card.json``: the card;
- ``config.json``: the resolved settings, the split and the row counts;
- ``history.json`` and ``training.png``: loss per step and per epoch, and the validation
  patients' P@10 (codes and float vectors, queries against the training rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.ingest.feature_table import FeatureTable, read_feature_table
from indexer.ingest.features import FeatureColumns
from indexer.learn.feature_config import FeatureRunConfig
from indexer.learn.splits import GroupSplit, named_group_split, read_group_file
from model.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from model.feature_spq import FeatureSPQModel

log = logging.getLogger(__name__)

RUN_EXTRA = "feature_run"


def feature_columns(config: FeatureRunConfig) -> FeatureColumns:
    return FeatureColumns(config.slide_column, config.label_column, config.group_column)


def feature_run_split(config: FeatureRunConfig, table: FeatureTable) -> GroupSplit:
    """The run's patient split: named groups (--test-groups, --test-groups-file,
    --validation-groups) held out, the rest drawn by fraction with the seed."""
    test = list(config.test_groups or [])
    if config.test_groups_file is not None:
        test += read_group_file(config.test_groups_file)
    return named_group_split(
        table.groups.tolist(),
        config.validation_groups,
        sorted(set(test)) or None,
        config.validation_fraction,
        config.test_fraction,
        config.training.seed,
    )


def train_feature_run(config: FeatureRunConfig, progress: bool = True) -> Path:
    """Train on the archive's training groups and write the run folder; the path of model.pt."""
    from indexer.learn.feature_training import train_on_features
    from model.feature_spq import save_feature_checkpoint

    out = Path(config.out)
    table = read_feature_table(Path(config.data), feature_columns(config), config.limit)
    split = feature_run_split(config, table)
    training = table.subset(table.rows_of(split.train))
    log.info(
        "%d rows of %d groups: %d training rows (%d groups), %d validation and %d test groups",
        len(table),
        len(set(table.groups.tolist())),
        len(training),
        len(split.train),
        len(split.validation),
        len(split.test),
    )
    steps = config.training.epochs * _steps_per_epoch(len(training), config.training.batch_size)
    bar = _step_bar(steps, progress)
    try:
        result = train_on_features(
            training.vectors,
            training.slides.tolist(),
            config.training,
            on_step=None if bar is None else lambda step, loss: bar.update(1),
        )
    finally:
        if bar is not None:
            bar.close()
    model = result.model
    model.card = model.card.model_copy(
        update={"dataset_fingerprint": _fingerprint(table, split, config)}
    )
    validation = validation_quality(model, table, split, config)
    history = {
        "seconds": result.seconds,
        "steps_per_epoch": _steps_per_epoch(len(training), config.training.batch_size),
        "loss_per_step": result.losses,
        "loss_per_epoch": _per_epoch(result.losses, config.training.epochs),
        "validation": validation,
    }
    resolved = {
        "config": config.model_dump(mode="json"),
        "rows": {"read": len(table), "training": len(training), "input_dim": table.dim},
        "refused": [str(refusal.error) for refusal in table.refused],
        "split": {
            "train_groups": len(split.train),
            "validation": list(split.validation),
            "test": list(split.test),
        },
        "model_card": model.card.model_dump(mode="json"),
    }
    out.mkdir(parents=True, exist_ok=True)
    extra = {RUN_EXTRA: {"config": resolved["config"], "split": resolved["split"]}}
    save_feature_checkpoint(model, out / "model.pt", extra=extra)
    _write_json(out / "model_card.json", resolved["model_card"])
    _write_json(out / "config.json", resolved)
    _write_json(out / "history.json", history)
    plot_feature_training(history, out / "training.png")
    return out / "model.pt"


def validation_quality(
    model: FeatureSPQModel, table: FeatureTable, split: GroupSplit, config: FeatureRunConfig
) -> dict[str, Any]:
    """P@10 and the other `ranking_quality` figures of validation rows querying the training
    rows, for the float vectors and the codes (no figure when the rows carry no labels)."""
    from indexer.evaluate.features import (
        centre_and_normalise,
        exact_ranking,
        query_archive_split,
        ranking_quality,
        spq_ranking,
    )

    if not split.validation or not any(table.labels.tolist()):
        return {}
    rows = query_archive_split(
        table, split, "validation", config.validation_queries, config.training.seed
    )
    if len(rows.queries) == 0 or len(rows.archive) < 10:
        return {}
    mean = table.vectors[rows.archive].mean(axis=0)
    archive, queries = table.vectors[rows.archive], table.vectors[rows.queries]
    truth = exact_ranking(
        centre_and_normalise(queries, mean), centre_and_normalise(archive, mean), 10
    )
    labels, archive_labels = table.labels[rows.queries], table.labels[rows.archive]
    codes = spq_ranking(model, archive, queries, 10)
    return {
        "queries": len(rows.queries),
        "archive_rows": len(rows.archive),
        "float": ranking_quality(truth, labels, archive_labels, truth).as_dict(),
        "codes": ranking_quality(codes, labels, archive_labels, truth).as_dict(),
    }


def plot_feature_training(history: dict[str, Any], path: Path) -> None:
    """Loss per step with its per-epoch mean, titled with the validation P@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    losses = history["loss_per_step"]
    axis.plot(np.arange(1, len(losses) + 1), losses, alpha=0.4, label="loss per step")
    per_step = history["steps_per_epoch"]
    epochs = history["loss_per_epoch"]
    axis.plot(
        [per_step * (epoch + 1) for epoch in range(len(epochs))], epochs, "o-", label="epoch mean"
    )
    validation = history["validation"]
    title = "training loss"
    if validation:
        title += (
            f" - validation P@10: codes {validation['codes']['p_at_10']:.3f}, "
            f"float {validation['float']['p_at_10']:.3f}"
        )
    axis.set(xlabel="step", ylabel="loss", title=title)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _steps_per_epoch(rows: int, batch_size: int) -> int:
    # train_on_features steps by half a batch of anchors (the other half are their partners).
    half = batch_size // 2
    return max(0, len(range(0, rows - half + 1, half)))


def _per_epoch(losses: list[float], epochs: int) -> list[float]:
    if not losses or epochs == 0:
        return []
    size = math.ceil(len(losses) / epochs)
    return [float(np.mean(losses[start : start + size])) for start in range(0, len(losses), size)]


def _step_bar(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", desc="training on features")


def _fingerprint(table: FeatureTable, split: GroupSplit, config: FeatureRunConfig) -> str:
    """What the model was trained on: the training rows' bytes and the split."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(table.vectors[table.rows_of(split.train)]).tobytes())
    digest.update(json.dumps([split.train, split.validation, split.test]).encode())
    digest.update(str(config.limit).encode())
    return digest.hexdigest()[:16]


def _write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2).encode())
