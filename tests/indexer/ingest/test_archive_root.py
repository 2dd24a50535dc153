"""Sources are stored relative to the archive folder, by its name: no machine path in an index."""

import shutil
import sqlite3
from pathlib import Path

from indexer.index.store import ArchiveIndex
from indexer.ingest.archive_root import ArchiveRoot, journal_key
from indexer.ingest.pipeline import index_archive
from indexer.ingest.sources import ArchiveImage, load_folder
from tests.indexer.index_helpers import new_index
from tests.indexer.ingest.test_pipeline import CountingEncoder, kather_archive, quiet


def stored_rows(index_dir: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(index_dir / "metadata.sqlite") as database:
        return database.execute("SELECT source, archive FROM items ORDER BY id").fetchall()


def test_sources_are_relative_to_the_archive_folder_named_at_index_time(tmp_path):
    archive = kather_archive(tmp_path, 6)
    with new_index(tmp_path / "index") as index:
        index_archive(archive, index, CountingEncoder(), quiet(), tmp_path / "archive")
        record = index.get(1)
    expected = [
        (image.path.relative_to(tmp_path / "archive").as_posix(), "archive") for image in archive
    ]
    assert stored_rows(tmp_path / "index") == expected
    assert record is not None and record.display_source == f"archive/{expected[0][0]}"
    # No row, and no journal entry, holds a path of this machine.
    with sqlite3.connect(tmp_path / "index" / "metadata.sqlite") as database:
        journal = [row[0] for row in database.execute("SELECT source FROM sources")]
    assert sorted(journal) == sorted(f"archive/{source}" for source, _ in expected)
    assert not any(str(tmp_path) in text for text in journal + [s for s, _ in expected])


def test_a_re_run_over_the_moved_archive_skips_every_finished_file(tmp_path):
    archive = kather_archive(tmp_path, 8)
    with new_index(tmp_path / "index") as index:
        index_archive(archive, index, CountingEncoder(), quiet(), tmp_path / "archive")
    moved = tmp_path / "elsewhere" / "archive"
    shutil.copytree(tmp_path / "archive", moved)
    shutil.rmtree(tmp_path / "archive")
    again = CountingEncoder()
    with ArchiveIndex.open(tmp_path / "index") as index:
        summary = index_archive(load_folder(moved, "kather"), index, again, quiet(), moved)
        assert len(index) == 8
    assert again.tiles == 0 and summary.images_finished_before == 8


def test_journals_of_absolute_sources_still_skip_finished_files(tmp_path):
    """Indexes written before sources were relative journalled each file by its absolute path."""
    archive = kather_archive(tmp_path, 5)
    with new_index(tmp_path / "index") as index:
        index_archive(archive, index, CountingEncoder(), quiet(), tmp_path / "archive")
    with sqlite3.connect(tmp_path / "index" / "metadata.sqlite") as database:
        for image in archive:
            relative = image.path.relative_to(tmp_path / "archive").as_posix()
            database.execute(
                "UPDATE sources SET source = ? WHERE source = ?",
                (str(image.path), journal_key("archive", relative)),
            )
            database.execute(
                "UPDATE items SET source = ?, archive = NULL WHERE source = ?",
                (str(image.path), relative),
            )
    again = CountingEncoder()
    with ArchiveIndex.open(tmp_path / "index") as index:
        summary = index_archive(archive, index, again, quiet(), tmp_path / "archive")
        old = index.get(1)
    assert again.tiles == 0 and summary.images_finished_before == 5
    # The old row keeps its stored path, but shows only the file name.
    assert old is not None and old.source == str(archive[0].path)
    assert old.display_source == archive[0].path.name


def test_images_outside_the_named_folder_are_stored_relative_to_their_common_folder(tmp_path):
    inside = tmp_path / "data" / "archive" / "a.png"
    outside = tmp_path / "data" / "other" / "b.png"
    root = ArchiveRoot.of([inside, outside], tmp_path / "data" / "archive")
    assert root.name == "data"
    assert [root.source_of(path) for path in (inside, outside)] == ["archive/a.png", "other/b.png"]


def test_without_a_named_folder_the_common_folder_of_the_images_is_the_archive(tmp_path):
    images = [
        ArchiveImage(tmp_path / "slides" / label / "x.png", label, "g", "d") for label in "ab"
    ]
    root = ArchiveRoot.of([image.path for image in images])
    assert root.name == "slides"
    assert root.source_of(images[1].path) == "b/x.png"
