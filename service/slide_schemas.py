"""Response bodies about whole-slide images: a slide's metadata, and slides ranked by a search."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True)


class SlideLevel(_Schema):
    width: int
    height: int
    downsample: float


class SlideMetadata(_Schema):
    """What the index knows about one whole-slide image (sizes in level-0 pixels)."""

    slide_id: str
    source: str = Field(description="`<archive>/<path in the archive>` (text only).")
    width: int
    height: int
    mpp_x: float = Field(description="Micrometres per level-0 pixel, horizontally.")
    mpp_y: float
    vendor: str | None = Field(description="OpenSlide's name for the format, e.g. `aperio`.")
    levels: list[SlideLevel]
    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    tile_mpp: float | None = Field(default=None, description="Resolution tiles were cut at.")
    tile_size: int | None = Field(default=None, description="Tile edge in pixels at tile_mpp.")
    tiles: int | None = Field(description="Tiles indexed; null while the slide is unfinished.")
    dzi_url: str


class SlideTileHit(_Schema):
    """One of a slide's hits among the search's top results."""

    id: int
    rank: int = Field(ge=1, description="Rank among the top results the slides are drawn from.")
    score: float
    x: int = Field(description="Level-0 x of the tile.")
    y: int
    width: int = Field(description="Tile size in level-0 pixels.")
    height: int


class SlideResult(_Schema):
    """A slide ranked by its best hit's score, then its hit count (see `indexer.index.slides`)."""

    slide_id: str
    rank: int = Field(ge=1)
    best_score: float
    hit_count: int = Field(description="How many of the top results come from this slide.")
    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    url: str
    dzi_url: str
    hits: list[SlideTileHit]
