import pytest
from PIL import Image

from indexer.index.tiling import TilingConfig, tile_boxes, tile_starts, tissue_fraction
from tests.indexer.index_helpers import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


def test_tiles_cover_the_image_with_the_last_one_flush_with_the_edge():
    assert tile_starts(1000, 512, 512) == [0, 488]
    assert tile_starts(1024, 512, 512) == [0, 512]
    assert tile_starts(1000, 512, 256) == [0, 256, 488]


def test_an_image_smaller_than_a_tile_is_one_tile():
    assert tile_boxes(150, 120, TilingConfig(tile_size=224)) == [(0, 0, 150, 120)]


def test_boxes_run_row_by_row_with_the_configured_stride():
    boxes = tile_boxes(2048, 1536, TilingConfig(tile_size=512, stride=512))
    assert len(boxes) == 12
    assert boxes[:2] == [(0, 0, 512, 512), (512, 0, 512, 512)]
    assert boxes[-1] == (1536, 1024, 512, 512)


def test_bad_tiling_settings_are_rejected():
    with pytest.raises(ValueError, match="min_tissue"):
        TilingConfig(min_tissue=1.5)
    with pytest.raises(ValueError, match="stride"):
        TilingConfig(stride=0)


def test_glass_and_black_are_background_and_stained_tissue_is_not():
    assert tissue_fraction(Image.new("RGB", (300, 300), (242, 242, 244))) == 0.0
    assert tissue_fraction(Image.new("RGB", (64, 64), (5, 5, 5))) == 0.0
    assert tissue_fraction(Image.new("RGB", (64, 64), (200, 120, 190))) == 1.0


def test_real_tumour_tiles_have_tissue_and_empty_tiles_do_not():
    tumour = sorted((KATHER / "01_TUMOR").glob("*.tif"))[:10]
    empty = sorted((KATHER / "08_EMPTY").glob("*.tif"))[:10]
    if not tumour or not empty:
        pytest.skip("Kather 2016 tiles are missing")
    assert min(tissue_fraction(Image.open(path)) for path in tumour) > 0.5
    assert max(tissue_fraction(Image.open(path)) for path in empty) < 0.25
