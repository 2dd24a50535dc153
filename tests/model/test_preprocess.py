import numpy as np
import pytest
import torch
from PIL import Image

from model import ModelCard, preprocess, select_device

CARD = ModelCard(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_pil_mode_becomes_a_normalised_rgb_tensor(mode: str) -> None:
    image = Image.new("RGB", (50, 40), (200, 30, 120)).convert(mode)
    batch = preprocess([image], CARD)
    assert batch.shape == (1, 3, 32, 32)
    assert batch.dtype == torch.float32
    assert torch.isfinite(batch).all()


def test_normalisation_uses_the_card() -> None:
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    black = Image.new("RGB", (32, 32), (0, 0, 0))
    batch = preprocess([white, black], CARD)
    torch.testing.assert_close(batch[0], torch.full((3, 32, 32), 2.0))
    torch.testing.assert_close(batch[1], torch.full((3, 32, 32), -2.0))


def test_transparent_pixels_are_laid_on_white() -> None:
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    torch.testing.assert_close(preprocess([clear], CARD), torch.full((1, 3, 32, 32), 2.0))


def test_sixteen_bit_greyscale_is_rescaled_not_clipped() -> None:
    ramp = Image.fromarray(np.tile(np.arange(0, 64000, 2000, dtype=np.uint16), (32, 1)))
    batch = preprocess([ramp.convert("I;16")], CARD)
    assert float(batch.min()) == pytest.approx(-2.0) and float(batch.max()) == pytest.approx(2.0)


def test_channel_order_is_rgb() -> None:
    red = preprocess([Image.new("RGB", (32, 32), (255, 0, 0))], CARD)
    assert float(red[0, 0].mean()) == pytest.approx(2.0)
    assert float(red[0, 2].mean()) == pytest.approx(-2.0)


def test_empty_input_gives_an_empty_batch() -> None:
    assert preprocess([], CARD).shape == (0, 3, 32, 32)


def test_select_device_prefers_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            select_device("cuda")
