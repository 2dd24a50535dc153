import os
from pathlib import Path

import pytest
import torch

from model import (
    CheckpointMismatchError,
    ModelCard,
    UnknownBackboneError,
    build_model,
    load_checkpoint,
    read_card,
    read_checkpoint,
    save_checkpoint,
)
from model.backbones import ResNetTrunk
from model.checkpoint import UnsafeCheckpointError
from model.errors import HistosearchError

# The whole ResNet-18 (stage 4 only feeds the head), so its FLOPs have a closed form below.
SMALL_CARD = ModelCard(
    backbone="resnet18",
    small_input_stem=False,
    stages=[4],
    input_size=32,
    num_codebooks=4,
    codeword_dim=8,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL_CARD).eval()


def test_card_geometry_follows_m_k_d() -> None:
    card = ModelCard()
    assert (card.num_codebooks, card.codebook_size, card.codeword_dim) == (8, 16, 16)
    assert card.bits == 32 and card.code_bytes == 4 and card.descriptor_dim == 128
    assert ModelCard(codebook_size=256, num_codebooks=4).bits == 32


def test_card_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ModelCard(codebook_size=12)
    with pytest.raises(ValueError, match="pooling"):
        ModelCard(pooling=[])
    with pytest.raises(ValueError):
        ModelCard(pooling=["avg"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="stages"):
        ModelCard(stages=[5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="shallowest first"):
        ModelCard(stages=[3, 2])


def test_shallow_stages_feed_the_descriptor_and_deeper_ones_are_not_built() -> None:
    torch.manual_seed(0)
    card = SMALL_CARD.model_copy(update={"stages": [2, 3]})
    shallow = build_model(card).eval()
    assert isinstance(shallow.trunk, ResNetTrunk)
    names = {name.split(".")[2] for name, _ in shallow.trunk.stages.named_parameters(prefix="x.y")}
    assert names == {"0", "1", "2"}  # layer1..layer3, no layer4
    assert shallow.card.parameter_count < build_model(SMALL_CARD).card.parameter_count / 2
    assert shallow.encode(torch.randn(2, 3, 32, 32)).shape == (2, card.descriptor_dim)


def test_card_round_trips_through_json() -> None:
    card = SMALL_CARD.model_copy(update={"training": {"epochs": 3, "pooling": ["gem"]}})
    assert ModelCard.model_validate_json(card.model_dump_json()) == card


def test_unknown_backbone_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownBackboneError, match=r"resnet18.*resnet50"):
        build_model(ModelCard(backbone="vgg11"))


def test_build_fills_parameter_count_and_flops(model) -> None:
    assert model.card.parameter_count == sum(p.numel() for p in model.parameters())
    # ResNet-18 costs 3.6 GFLOPs at 224 px; FLOPs scale with area, (32/224)^2 = 1/49.
    assert 6e7 < model.card.flops_per_image < 1e8


def test_named_views_have_documented_shapes(model) -> None:
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        descriptors = model.encode(images)
        codes = model.assign_codes(images)
        soft = model.quantize(images)
    assert descriptors.shape == soft.shape == (3, 32) and descriptors.dtype == torch.float32
    torch.testing.assert_close(descriptors.reshape(3, 4, 8).norm(dim=-1), torch.ones(3, 4))
    assert codes.shape == (3, 4) and codes.dtype == torch.int64
    assert torch.equal(codes, model.codes_from_descriptors(descriptors))
    assert model.codebooks().shape == (4, 16, 8)
    assert model.decode(codes).shape == (3, 32)


def test_checkpoint_round_trip_gives_identical_codes(model, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, extra={"note": "kept"})
    loaded = load_checkpoint(path, expected_card=model.card)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.assign_codes(images), model.assign_codes(images))
        torch.testing.assert_close(loaded.encode(images), model.encode(images))
    assert read_card(path) == model.card
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_loading_refuses_a_card_that_disagrees(model, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    other = model.card.model_copy(update={"input_size": 64, "codebook_size": 256})
    with pytest.raises(CheckpointMismatchError, match=r"codebook_size.*input_size|input_size"):
        load_checkpoint(path, expected_card=other)


def test_loading_refuses_weights_that_do_not_fit_the_card(model, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    payload = torch.load(path, weights_only=True)
    payload["card"]["codeword_dim"] = 4
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatchError, match="do not fit"):
        load_checkpoint(path)


def test_loading_refuses_a_file_without_card(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError, match="no model card"):
        load_checkpoint(path)


class _WritesAFileWhenUnpickled:
    """What a hostile checkpoint could carry: unpickling it calls a function of its choice."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (os.rename, (str(self.marker), str(self.marker) + ".moved"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_not_executed(
    model, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    marker.write_text("untouched")
    path = tmp_path / "model.pt"
    torch.save(
        {
            "format": 1,
            "card": model.card.model_dump(mode="json"),
            "state_dict": model.state_dict(),
            "extra": {"hook": _WritesAFileWhenUnpickled(marker)},
        },
        path,
    )
    for read in (load_checkpoint, read_card):
        with pytest.raises(UnsafeCheckpointError, match=r"refused.*could run code.*rename"):
            read(path)
    assert marker.read_text() == "untouched"


def test_an_earlier_checkpoint_with_optimiser_state_and_a_flat_record_still_loads(
    model, tmp_path: Path
) -> None:
    # Written as checkpoints were before weights-only loading: plain torch.save of plain data.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.encode(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    card = model.card.model_dump(mode="json")
    card["training"] = {"data": "archive", "out": "run", "epochs": 2, "num_codebooks": 4}
    path = tmp_path / "last.pt"
    torch.save(
        {
            "format": 1,
            "card": card,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "extra": {
                "state": {"epoch": 2, "elapsed_s": 1.5, "best_validation": 0.3, "history": []},
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
        },
        path,
    )
    loaded = load_checkpoint(path, expected_card=model.card)
    torch.testing.assert_close(loaded.codebooks(), model.codebooks())
    extra = read_checkpoint(path)["extra"]
    optimizer.load_state_dict(extra["optimizer"])
    assert extra["state"]["epoch"] == 2


def test_saving_refuses_what_weights_only_loading_could_not_read(model, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"\['extra'\]\['when'\] is a PosixPath"):
        save_checkpoint(model, tmp_path / "model.pt", extra={"when": tmp_path})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_errors_are_project_errors_and_value_errors() -> None:
    assert issubclass(CheckpointMismatchError, HistosearchError)
    assert issubclass(CheckpointMismatchError, ValueError)
    assert issubclass(UnsafeCheckpointError, CheckpointMismatchError)
