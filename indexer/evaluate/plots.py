"""PNG plots of training runs and of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_history(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Loss per epoch (left) and validation P@10 of codes and float descriptors (right)."""
    plt = _pyplot()
    figure, (loss_axis, quality_axis) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(epochs, [row["loss"] for row in history], label="total")
    loss_axis.plot(epochs, [row["cqc"] for row in history], label="CQC")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="training loss")
    loss_axis.legend()
    validated = [row for row in history if "val_p10_codes" in row]
    if validated:
        val_epochs = [row["epoch"] for row in validated]
        quality_axis.plot(
            val_epochs, [row["val_p10_codes"] for row in validated], "o-", label="PQ codes (ADC)"
        )
        quality_axis.plot(
            val_epochs, [row["val_p10_float"] for row in validated], "s--", label="float descriptor"
        )
        quality_axis.legend()
    quality_axis.set(
        xlabel="epoch", ylabel="P@10", title="retrieval on validation groups", ylim=(0, 1)
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_precision_at_k(curves: Mapping[str, Mapping[int, float]], path: Path, title: str) -> None:
    """One line per method: precision@k against k."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, by_k in curves.items():
        ks = sorted(by_k)
        axis.plot(ks, [by_k[k] for k in ks], "o-", label=name)
    axis.set(xlabel="k", ylabel="precision@k", title=title, ylim=(0, 1), xscale="log")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
