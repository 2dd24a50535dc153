import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from indexer.learn.config import TrainConfig
from indexer.learn.training import (
    Trainer,
    ValidationSet,
    archive_images,
    frozen_backbone_output,
    load_tensor_set,
    validate,
)
from indexer.learn.view_cache import PROGRESS_FILE, VIEWS_FILE, build_view_cache
from model import SPQModel, load_checkpoint
from model.card import ModelSpec
from support.data import SHARED_DATA
from tests.indexer.learn.test_training import LC25000, _tiny_config

KATHER = SHARED_DATA / "kather2016-texture-240"

FROZEN = {"input_size": 32, "num_codebooks": 4, "codeword_dim": 8, "freeze_backbone": True}


def _cached_config(tmp_path: Path, run: str, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "out": str(tmp_path / run),
        "model": FROZEN,
        "cached_views": 3,
        "view_cache_dir": str(tmp_path / "shared-cache"),
        # No validation: validation embeds through the backbone, and these tests count the
        # backbone forwards of training alone.
        "validation_groups": [],
    }
    settings.update(overrides)
    return _tiny_config(tmp_path, **settings)


class ForwardCounter:
    """Counts the trunk's forward calls; raises on call number ``fail_on`` (1-based)."""

    def __init__(self, trainer_model: torch.nn.Module, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on
        trainer_model.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, inputs: object) -> None:
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt("build killed")


def test_cached_views_without_a_frozen_backbone_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--freeze-backbone"):
        _tiny_config(tmp_path, cached_views=4)


def test_a_single_cached_view_is_refused_because_pairs_need_two(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 2"):
        _tiny_config(tmp_path, cached_views=1, model=FROZEN)


def test_view_cache_is_built_once_and_a_second_run_reuses_it_without_backbone_forwards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="indexer.learn.view_cache")
    first = Trainer(_cached_config(tmp_path, "first"))
    first_counter = ForwardCounter(first.model.trunk)
    first.run()
    images = first.train_images.shape[0]
    # One forward per view per chunk of images (all 20 training images fit in one chunk).
    assert first_counter.calls == 3
    views_file = first.view_cache_folder() / VIEWS_FILE
    assert np.load(views_file, mmap_mode="r").shape[:2] == (images, 3)
    built_mtime = views_file.stat().st_mtime_ns
    assert "view cache: built" in caplog.text
    caplog.clear()

    second = Trainer(_cached_config(tmp_path, "second"))
    second_counter = ForwardCounter(second.model.trunk)
    second.run()
    assert second.view_cache_folder() == first.view_cache_folder()
    assert second_counter.calls == 0
    assert views_file.stat().st_mtime_ns == built_mtime
    assert "view cache: reused" in caplog.text
    cost = json.loads((tmp_path / "second" / "config.json").read_text())["view_cache"]
    assert cost["reused"] is True and cost["images"] == images and cost["views"] == 3
    assert cost["forward_s"] > 0


def test_a_different_view_count_gets_its_own_cache(tmp_path: Path) -> None:
    three = Trainer(_cached_config(tmp_path, "three"))
    four = Trainer(_cached_config(tmp_path, "four", cached_views=4))
    assert three.view_cache_folder() != four.view_cache_folder()


def test_cached_training_leaves_the_frozen_backbone_unchanged_and_trains_the_head(
    tmp_path: Path,
) -> None:
    trainer = Trainer(_cached_config(tmp_path, "run", epochs=3))
    trunk_before = {k: v.clone() for k, v in trainer.model.trunk.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.model.projection.state_dict().items()}
    final = trainer.run()
    trained = load_checkpoint(final)
    for name, tensor in trained.trunk.state_dict().items():
        assert torch.equal(tensor, trunk_before[name]), name
    assert any(
        not torch.equal(tensor, head_before[name])
        for name, tensor in trained.projection.state_dict().items()
    )


def test_an_interrupted_cache_build_resumes_from_its_finished_chunks(tmp_path: Path) -> None:
    trainer = Trainer(_cached_config(tmp_path, "run", cached_views=2))
    images = trainer.train_images
    chunks = -(-images.shape[0] // 4)
    assert chunks >= 3

    def build(folder: Path) -> np.ndarray:
        cache = build_view_cache(
            trainer.model,
            images,
            trainer.augment,
            2,
            folder,
            seed=0,
            device=trainer.device,
            chunk_images=4,
        )
        return np.asarray(cache.rows)

    reference = build(tmp_path / "uninterrupted")
    # Killed on the first view of the second chunk: one chunk (two forwards) is finished.
    killer = ForwardCounter(trainer.model.trunk, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "interrupted")
    progress = json.loads((tmp_path / "interrupted" / PROGRESS_FILE).read_text())
    assert progress["chunks_done"] == 1
    killer.fail_on = None
    killer.calls = 0
    resumed = build(tmp_path / "interrupted")
    assert killer.calls == (chunks - 1) * 2  # the unfinished chunks, two views each
    np.testing.assert_array_equal(resumed, reference)


@pytest.mark.slow
@pytest.mark.skipif(not LC25000.is_dir(), reason="needs ../shared/data/lc25000-lung-224px")
def test_a_short_cached_run_beats_its_untrained_head_on_held_out_groups(tmp_path: Path) -> None:
    # Frozen random ResNet-18 at 48 px, 2 cached views of the 888 training tiles (the only
    # backbone forwards), then head-only epochs, which cost milliseconds per step.
    config = TrainConfig(
        data=str(LC25000),
        out=str(tmp_path / "run"),
        epochs=15,
        model=ModelSpec(input_size=48, freeze_backbone=True),
        preload_size=56,
        cached_views=2,
        validation_fraction=0.2,
        test_fraction=0.1,
        validate_every=100,
        threads=1,
    )
    trainer = Trainer(config)
    assert trainer.validation is not None
    untrained = validate(trainer.model, trainer.validation, trainer.device)["val_p10_codes"]
    trained_model = load_checkpoint(trainer.run())
    trained = validate(trained_model, trainer.validation, trainer.device)["val_p10_codes"]
    assert trained > untrained + 0.03, (untrained, trained)


# Kaiko's ViT-S/16 (random weights here) takes any multiple of 16 px: 32 px is a 2x2 token grid.
VIT_S = {**FROZEN, "backbone": "kaiko-vits16"}


def test_a_vit_s_cached_view_run_builds_its_cache_trains_the_head_and_resumes(
    tmp_path: Path,
) -> None:
    first = Trainer(_cached_config(tmp_path, "run", model=VIT_S, epochs=2))
    counter = ForwardCounter(first.model.trunk)
    trunk_before = {k: v.clone() for k, v in first.model.trunk.state_dict().items()}
    first.run()
    assert counter.calls == 3  # one chunk of images, three views
    cache = first.view_cache
    assert cache is not None and cache.layout.token_model and cache.layout.has_class_token
    # Class token (384) and the 2x2 grid of patch tokens, per view.
    assert cache.rows.shape[1:] == (3, 384 + 384 * 2 * 2)
    assert len(first.state.history) == 2

    resumed = Trainer(_cached_config(tmp_path, "run", model=VIT_S, epochs=4), resume=True)
    resumed_counter = ForwardCounter(resumed.model.trunk)
    assert resumed.state.epoch == 2
    final = resumed.run()
    assert resumed_counter.calls == 0  # the cache is reused: no backbone forward
    assert [record["epoch"] for record in resumed.state.history] == [1, 2, 3, 4]
    trained = load_checkpoint(final)
    assert trained.card.backbone == "kaiko-vits16" and trained.card.freeze_backbone
    for name, tensor in trained.trunk.state_dict().items():
        assert torch.equal(tensor, trunk_before[name]), name


def _held_out_codes_p10(model: SPQModel, test: ValidationSet) -> float:
    return validate(model, test, torch.device("cpu"))["val_p10_codes"]


@pytest.mark.slow
@pytest.mark.skipif(not KATHER.is_dir(), reason="needs ../shared/data/kather2016-texture-240")
def test_a_short_frozen_vit_s_run_gives_codes_that_beat_its_untrained_head_on_test_groups(
    tmp_path: Path,
) -> None:
    # A random frozen ViT-S at 64 px (a 4x4 token grid) on Kather's 8 tissue classes: the
    # pooled features point almost one way, and without the head's standardisation of them the
    # head stayed at the uniform loss and its codes were no better than an untrained head's.
    config = TrainConfig(
        data=str(KATHER),
        out=str(tmp_path / "run"),
        model=ModelSpec(backbone="kaiko-vits16", input_size=64, freeze_backbone=True),
        cached_views=4,
        view_cache_dir=str(tmp_path / "cache"),
        epochs=60,
        validate_every=20,
        threads=2,
        device="cpu",
    )
    trainer = Trainer(config)
    untrained_head = copy.deepcopy(trainer.model)  # the same frozen trunk, head as initialised
    trained = load_checkpoint(trainer.run())
    entries = trainer.split.entries(archive_images(KATHER), "test")
    images = load_tensor_set(entries, 64).float().div(255)
    test = ValidationSet(
        images,
        [str(entry.label) for entry in entries],
        [entry.group for entry in entries],
        frozen_backbone_output(trained, images, torch.device("cpu")),
    )
    assert not set(test.groups) & set(trainer.split.train)
    before = _held_out_codes_p10(untrained_head, test)
    after = _held_out_codes_p10(trained, test)
    assert after > before + 0.1, (before, after)


def test_validation_on_the_frozen_trunks_output_computed_once_matches_embedding_the_images(
    tmp_path: Path,
) -> None:
    trainer = Trainer(_cached_config(tmp_path, "run", validation_groups=["g4", "g3"]))
    assert trainer.validation is not None
    through_images = validate(trainer.model, trainer.validation, trainer.device)
    trainer.prepare_view_cache()
    assert trainer.validation.backbone_output is not None
    counter = ForwardCounter(trainer.model.trunk)
    through_cached_output = validate(trainer.model, trainer.validation, trainer.device)
    assert counter.calls == 0
    assert through_cached_output == pytest.approx(through_images, abs=1e-6)
