import numpy as np
import pytest
import torch
from PIL import Image

from model import ModelCard, UnsupportedPixelsError, select_device, to_rgb
from model.preprocess import bfloat16_trains_faster, preprocess, resized_pixels, select_precision
from support.data import SHARED_DATA

KATHER_TUMOR = SHARED_DATA / "kather2016-texture-240" / "01_TUMOR"
# Where the data set is absent, the test that opens this tile is skipped (tests/conftest.py).
KATHER_TILE = next(KATHER_TUMOR.glob("*.tif"), KATHER_TUMOR / "absent.tif")
CARD = ModelCard(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "1"])
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
    # The full 16-bit range 0..65535 maps onto 0..255 (white is 65535, not the image's own maximum).
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1)))
    batch = preprocess([ramp.convert("I;16")], CARD)
    assert float(batch.min()) == pytest.approx(-2.0) and float(batch.max()) == pytest.approx(2.0)


def test_sixteen_bit_greyscale_is_scaled_by_a_fixed_factor_not_stretched() -> None:
    # A dim image stays dim: each value v becomes round(v / 257), whatever else is in the image.
    values = np.array([[0, 257, 1000, 25_700]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 4, 100]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_floating_point_images_are_refused() -> None:
    image = Image.new("RGB", (50, 40), (200, 30, 120)).convert("F")
    with pytest.raises(UnsupportedPixelsError, match="floating-point"):
        to_rgb(image)
    with pytest.raises(UnsupportedPixelsError):
        preprocess([image], CARD)
    assert issubclass(UnsupportedPixelsError, ValueError)


def test_to_rgb_keeps_rgb_images_and_converts_other_modes() -> None:
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    assert to_rgb(rgb) is rgb
    assert np.asarray(to_rgb(rgb.convert("L"))).shape == (4, 4, 3)
    half_clear = Image.new("LA", (4, 4), (0, 0))
    assert (np.asarray(to_rgb(half_clear)) == 255).all()
    clear_palette = Image.new("P", (4, 4), 0)
    clear_palette.info["transparency"] = 0
    assert (np.asarray(to_rgb(clear_palette)) == 255).all()


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


def test_precision_is_taken_as_asked_or_chosen_by_the_device() -> None:
    cpu = torch.device("cpu")
    assert select_precision("fp32", cpu) == torch.float32
    assert select_precision("bf16", cpu) == torch.bfloat16
    native = torch.bfloat16 if bfloat16_trains_faster(cpu) else torch.float32
    assert select_precision("auto", cpu) == native
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        select_precision("fp16", cpu)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_takes_bfloat16_on_a_cpu_only_with_amx_units(
    amx: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVX512-BF16 without AMX trains slower in bfloat16 than in float32
    (benchmarks.quality.precision), so the CPU's AMX units decide, where oneDNN can run bfloat16
    at all."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    chosen = select_precision("auto", torch.device("cpu"))
    assert chosen == (torch.bfloat16 if amx else torch.float32)


@pytest.mark.parametrize("side", [150, 224, 512, 700])
def test_resizing_follows_pils_bilinear_filter_at_every_size(side: int) -> None:
    """Tiles go through torch's kernel and large images through PIL's: both must give PIL's
    antialiased bilinear pixels to within one grey level, for non-square targets too."""
    tissue = Image.open(KATHER_TILE).convert("RGB").resize((side, side))
    for size in ((64, 64), (128, 96)):
        expected = np.asarray(
            tissue.resize(size, Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.int16
        )
        resized = resized_pixels(tissue, size).astype(np.int16)
        assert resized.shape == expected.shape
        assert np.abs(resized - expected).max() <= 1
