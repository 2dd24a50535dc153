from pathlib import Path

import pytest
from PIL import Image

from indexer.ingest.manifest import ManifestError, load_entries, read_image_folder, read_manifest


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 100, 150)).save(path)


def test_manifest_paths_are_resolved_against_the_csv_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "a" / "x.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,group\na/x.png,tumour,slide-1\n")
    (entry,) = read_manifest(csv_path)
    assert entry.path == (tmp_path / "a" / "x.png").resolve()
    assert (entry.label, entry.group) == ("tumour", "slide-1")


def test_manifest_without_group_makes_each_image_its_own_group(tmp_path: Path) -> None:
    _write_image(tmp_path / "x.png")
    _write_image(tmp_path / "y.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path\nx.png\ny.png\n")
    entries = read_manifest(csv_path)
    assert [e.group for e in entries] == ["x.png", "y.png"]
    assert all(e.label is None for e in entries)


def test_manifest_names_the_line_of_a_missing_image(tmp_path: Path) -> None:
    _write_image(tmp_path / "x.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\nx.png,a\nmissing.png,b\n")
    with pytest.raises(ManifestError, match=r"list\.csv:3"):
        read_manifest(csv_path)


def test_manifest_without_path_column_is_refused(tmp_path: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("file,label\nx.png,a\n")
    with pytest.raises(ManifestError, match="'path'"):
        read_manifest(csv_path)


def test_image_folder_labels_come_from_first_sub_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "stroma" / "deep" / "b.png")
    _write_image(tmp_path / "tumour" / "a.png")
    _write_image(tmp_path / "loose.png")
    (tmp_path / "tumour" / "notes.txt").write_text("not an image")
    entries = read_image_folder(tmp_path)
    assert [(e.label, e.group) for e in entries] == [
        (None, "loose.png"),
        ("stroma", "stroma/deep/b.png"),
        ("tumour", "tumour/a.png"),
    ]


def test_load_entries_prefers_labels_csv_inside_a_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "tumour" / "a.png")
    (tmp_path / "labels.csv").write_text("path,label,group\ntumour/a.png,tumour,slide-7\n")
    (entry,) = load_entries(tmp_path)
    assert entry.group == "slide-7"


def test_load_entries_refuses_other_files(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png")
    with pytest.raises(ManifestError, match=r"expected a \.csv"):
        load_entries(tmp_path / "a.png")


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no images"):
        load_entries(tmp_path)
