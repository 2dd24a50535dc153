"""What an item record shows of its source: never a path of the machine that indexed it."""

import pytest

from indexer.index.records import ItemRecord


def record(source: str, archive: str | None) -> ItemRecord:
    return ItemRecord(
        id=1,
        added_at=0.0,
        source=source,
        content_hash="h",
        label=None,
        group=None,
        dataset=None,
        tile=None,
        source_size=None,
        thumbnail=None,
        extra={},
        archive=archive,
    )


@pytest.mark.parametrize(
    ("source", "archive", "shown"),
    [
        ("01_TUMOR/a.tif", "kather", "kather/01_TUMOR/a.tif"),
        ("upload.png", None, "upload.png"),
        ("/home/someone/archives/kather/01_TUMOR/a.tif", None, "a.tif"),
        ("C:\\Users\\someone\\slides\\b.svs", None, "b.svs"),
        ("D:/slides/c.svs", None, "c.svs"),
        ("\\\\server\\share\\d.tif", None, "d.tif"),
    ],
)
def test_display_source_names_the_archive_and_never_an_absolute_path(source, archive, shown):
    assert record(source, archive).display_source == shown
