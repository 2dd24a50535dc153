import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from indexer.evaluate.run import evaluate_checkpoint
from indexer.learn.config import TrainConfig, recorded_config
from indexer.learn.training import Trainer, learning_rate_at, train, validate
from model import load_checkpoint
from support.data import SHARED_DATA

LC25000 = SHARED_DATA / "lc25000-lung-224px"
KATHER = SHARED_DATA / "kather2016-texture-240"


def _write_tiny_dataset(root: Path) -> Path:
    """Two colour classes over six groups, as a CSV manifest."""
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    rows = ["path,label,group"]
    for index in range(24):
        label = "pink" if index % 2 else "purple"
        base = torch.tensor([230, 150, 200] if label == "pink" else [120, 60, 160])
        noise = torch.randint(-20, 20, (40, 40, 3), generator=generator)
        pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
        name = f"img{index}.png"
        Image.fromarray(pixels).save(root / name)
        rows.append(f"{name},{label},g{index % 6}")
    manifest = root / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _tiny_config(tmp_path: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "data": str(_write_tiny_dataset(tmp_path)),
        "out": str(tmp_path / "run"),
        "epochs": 2,
        "batch_size": 8,
        "model": {"input_size": 32, "num_codebooks": 4, "codeword_dim": 8},
        "preload_size": 40,
        "validation_groups": ["g4"],
        "test_groups": ["g5"],
        "validate_every": 1,
        "threads": 1,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def test_training_writes_model_config_history_and_plot(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    final = train(config)
    run = Path(config.out)
    assert final == run / "model.pt"
    for name in ("model.pt", "last.pt", "config.json", "history.json", "training.png"):
        assert (run / name).is_file(), name
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["split"]["test"] == ["g5"] and "g5" not in resolved["split"]["train"]
    assert resolved["num_train_images"] == 16
    # The CPU that set the run's speed, so that figures from two machines can be told apart.
    cpu = resolved["cpu"]
    assert isinstance(cpu["capability"], str) and cpu["capability"]
    assert set(cpu) == {"capability", "avx512_bf16", "amx", "cores"} and cpu["cores"] >= 1
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert "val_p10_codes" in history[-1]
    card = load_checkpoint(final).card
    assert card.training["epochs"] == 2 and card.dataset_fingerprint
    assert card.flops_per_image > 0
    refit = json.loads((run / "codebook_refit.json").read_text())
    # The refitted codebooks are shipped only where validation did not fall.
    assert refit["kept"] == (refit["after"]["val_p10_codes"] >= refit["before"]["val_p10_codes"])


def test_the_run_records_its_validated_config_in_config_json_and_in_the_card(
    tmp_path: Path,
) -> None:
    config = _tiny_config(tmp_path, epochs=1, validate_every=5)
    card = load_checkpoint(train(config)).card
    written = json.loads((Path(config.out) / "config.json").read_text())
    assert TrainConfig.model_validate(written["config"]) == config
    assert recorded_config(card) == config
    assert (card.input_size, card.num_codebooks, card.codeword_dim) == (32, 4, 8)


def test_a_crash_while_writing_model_pt_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _tiny_config(tmp_path, epochs=1, validate_every=5)
    final = train(config)
    before = final.read_bytes()

    def copy_half_then_crash(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        Trainer(config, resume=True).run()
    assert final.read_bytes() == before
    assert sorted(p.name for p in final.parent.glob(".model.pt*")) == []
    load_checkpoint(final)


def test_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    train(config)
    config.epochs = 3
    trainer = Trainer(config, resume=True)
    assert trainer.state.epoch == 2
    trainer.run()
    history = json.loads((Path(config.out) / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_same_seed_gives_same_weights(tmp_path: Path) -> None:
    first = _tiny_config(tmp_path / "a", epochs=1, validate_every=5)
    second = _tiny_config(tmp_path / "b", epochs=1, validate_every=5)
    weights = [load_checkpoint(train(config)).codebooks() for config in (first, second)]
    torch.testing.assert_close(weights[0], weights[1])


def test_neighbour_pairs_fill_the_support_and_change_the_loss(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path, epochs=1, validate_every=5, neighbour_support=12)
    trainer = Trainer(config)
    batch = trainer.train_images[:8]
    trainer.optimizer.param_groups[0]["lr"] = 0.0
    torch.manual_seed(0)
    # The first step meets an empty support: each view is its own neighbour, plain CQC.
    first = trainer.train_step(batch)
    supported = trainer.neighbours.contents()
    # The first view's descriptors of the 8 images.
    assert supported is not None and supported.shape == (8, 32)
    trainer.neighbours.clear()
    trainer.config.neighbour_support = 0
    torch.manual_seed(0)
    plain = trainer.train_step(batch)
    assert first["cqc"] == pytest.approx(plain["cqc"], rel=1e-5)
    # Another batch's views as the support: the pairs change, and so does the loss.
    trainer.config.neighbour_support = 12
    trainer.neighbours.push(torch.randn(12, 32))
    torch.manual_seed(0)
    with_neighbours = trainer.train_step(batch)
    assert with_neighbours["cqc"] != pytest.approx(plain["cqc"], rel=1e-3)
    assert math.isfinite(with_neighbours["cqc"])


def test_a_negative_queue_fills_from_the_batches_and_enters_the_loss(tmp_path: Path) -> None:
    trainer = Trainer(_tiny_config(tmp_path, epochs=1, validate_every=5, negative_queue=12))
    batch = trainer.train_images[:8]
    first = trainer.train_step(batch)
    queued = trainer.negatives.contents()
    # Both views' soft-quantised descriptors of the 8 images (16 rows), capped at 12.
    assert queued is not None and queued.shape == (12, 32)
    # With 12 more negatives per row than the first step had, the same images cost more.
    trainer.optimizer.param_groups[0]["lr"] = 0.0
    torch.manual_seed(0)
    with_queue = trainer.train_step(batch)
    trainer.negatives.clear()
    torch.manual_seed(0)
    without_queue = trainer.train_step(batch)
    assert with_queue["cqc"] > without_queue["cqc"]
    assert math.isfinite(first["cqc"])


def test_learning_rate_warms_up_then_decays() -> None:
    config = TrainConfig(data="", out="", learning_rate=1.0, warmup_fraction=0.1)
    rates = [learning_rate_at(p, config) for p in (0.0, 0.05, 0.1, 0.5, 1.0)]
    assert 0 < rates[0] < rates[1] < rates[2] == pytest.approx(1.0)
    assert rates[3] < rates[2] and rates[4] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(not LC25000.is_dir(), reason="needs ../shared/data/lc25000-lung-224px")
def test_short_training_beats_random_weights_on_held_out_groups(tmp_path: Path) -> None:
    # Two epochs over the 888 training tiles (about a minute on one core). The budget is in
    # epochs, not minutes, so a busy machine makes the test slower, never weaker. LC25000 rather
    # than Kather: 96 Kather training tiles give run-to-run swings larger than the margin tested.
    config = TrainConfig(
        data=str(LC25000),
        out=str(tmp_path / "run"),
        epochs=2,
        validation_fraction=0.1,
        test_fraction=0.3,
        validate_every=100,
        threads=1,
    )
    report = evaluate_checkpoint(train(config), LC25000, part="test", ks=(10,))
    precision = {method.name: method.metrics.precision[10] for method in report.methods}
    assert precision["SPQ codes (ADC)"] > precision["random resnet18"] + 0.05, precision


def test_bfloat16_training_gives_finite_losses_and_float32_weights(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path, precision="bf16", epochs=1)
    final = train(config)
    history = json.loads((Path(config.out) / "history.json").read_text())
    assert all(math.isfinite(row["loss"]) for row in history)
    model = load_checkpoint(final)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    assert model.card.training["precision"] == "bf16"


def test_collapsed_codes_score_chance_on_validation_not_the_archive_order(tmp_path: Path) -> None:
    # Every codeword of a sub-space equal: every image gets one code and every score ties. Kather
    # is listed class by class, so ties broken in archive order would rank same-class tiles first.
    config = TrainConfig(
        data=str(KATHER),
        out=str(tmp_path / "run"),
        epochs=1,
        validation_groups=["CRC-Prim-HE-04", "CRC-Prim-HE-08", "CRC-Prim-HE-10"],
        test_groups=["CRC-Prim-HE-01"],
        threads=1,
    )
    trainer = Trainer(config)
    with torch.no_grad():
        quantizer = trainer.model.quantizer
        quantizer.raw_codewords.copy_(
            quantizer.raw_codewords[:, :1].expand_as(quantizer.raw_codewords)
        )
    assert trainer.validation is not None
    labels, groups = trainer.validation.labels, trainer.validation.groups
    assert sorted(labels) != labels  # the archive lists classes in order; validation must not
    chance = [
        sum(1 for j in range(len(labels)) if groups[j] != groups[i] and labels[j] == labels[i])
        / sum(1 for j in range(len(labels)) if groups[j] != groups[i])
        for i in range(len(labels))
    ]
    measured = validate(trainer.model, trainer.validation, torch.device("cpu"))
    assert measured["code_perplexity"] == pytest.approx(1.0)
    assert abs(measured["val_p10_codes"] - sum(chance) / len(chance)) < 0.06, measured


def _stain_branch_inputs(config: TrainConfig) -> list[torch.Tensor]:
    """The images the stain-colour branch reads in one training step (two views)."""
    trainer = Trainer(config)
    assert trainer.model.stain_branch is not None
    seen: list[torch.Tensor] = []
    trainer.model.stain_branch.register_forward_pre_hook(
        lambda _module, inputs: seen.append(inputs[0].detach().clone())
    )
    trainer.train_step(trainer.train_images[:8])
    return seen


@pytest.mark.parametrize(("view", "colours_agree"), [("geometric", True), ("augmented", False)])
def test_the_stain_branch_reads_the_crop_before_colour_jitter_when_asked(
    tmp_path: Path, view: str, colours_agree: bool
) -> None:
    # Strong stain and colour jitter, whole-image crops: the two views of an image differ in
    # colour only by the jitter, which the geometric view never sees.
    config = _tiny_config(
        tmp_path,
        model={"input_size": 32, "num_codebooks": 4, "codeword_dim": 8, "stain_descriptor": True},
        augmentation={
            "min_crop_scale": 1.0,
            "hed_scale": 0.3,
            "hed_shift": 0.1,
            "hed_p": 1.0,
            "colour_strength": 0.4,
            "colour_p": 1.0,
            "blur_p": 0.0,
            "stain_branch_view": view,
        },
    )
    first, second = _stain_branch_inputs(config)
    mean_colour_gap = float((first.mean(dim=(2, 3)) - second.mean(dim=(2, 3))).abs().max())
    assert (mean_colour_gap < 0.05) == colours_agree, mean_colour_gap
