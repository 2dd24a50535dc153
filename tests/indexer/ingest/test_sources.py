"""Each loader on a small tree laid out like the public dataset, built from real images; the CSV
and folder readers; how ``auto`` picks a loader."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from indexer.ingest.sources import (
    SourceError,
    detect_source,
    load_csv,
    load_folder,
    load_source,
)
from tests.indexer.index_helpers import SHARED_DATA

BREAKHIS = SHARED_DATA / "breakhis-400x-8"
KATHER = SHARED_DATA / "kather2016-texture-240"
LUNG = SHARED_DATA / "lc25000-lung-224px"


def real_images(folder: Path, pattern: str, count: int) -> list[Path]:
    found = sorted(folder.rglob(pattern))[:count]
    if len(found) < count:
        pytest.skip(f"not enough {pattern} images in {folder}")
    return found


def place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


def test_bracs_layout_gives_class_slide_group_and_split(tmp_path):
    pngs = real_images(BREAKHIS, "*.png", 4)
    root = tmp_path / "BRACS_RoI" / "latest_version"
    place(pngs[0], root / "train" / "0_N" / "BRACS_1003_N_1.png")
    place(pngs[1], root / "train" / "0_N" / "BRACS_1003_N_2.png")
    place(pngs[2], root / "val" / "5_DCIS" / "BRACS_1486_DCIS_3.png")
    place(pngs[3], root / "test" / "6_IC" / "BRACS_745_IC_12.png")
    images = load_source("bracs", tmp_path)
    assert [(i.label, i.group, i.extra["split"]) for i in images] == [
        ("IC", "BRACS_745", "test"),
        ("N", "BRACS_1003", "train"),
        ("N", "BRACS_1003", "train"),
        ("DCIS", "BRACS_1486", "val"),
    ]
    assert {i.dataset for i in images} == {"BRACS"}


def test_crc_extended_layout_gives_grade_slide_and_fold(tmp_path):
    pngs = real_images(BREAKHIS, "*.png", 3)
    place(pngs[0], tmp_path / "Fold 1" / "Normal" / "H06-00174_A1H_E_1_1_grade_1_0001.png")
    place(pngs[1], tmp_path / "Fold 1" / "Low-Grade" / "H09-00622_A2H_E_1_4_grade_2_0003.png")
    place(pngs[2], tmp_path / "Fold 2" / "High-Grade" / "H10-01423_A1H_E_1_3_grade_3_0007.png")
    images = load_source("crc-extended", tmp_path)
    assert sorted((i.label, i.group, i.extra["fold"]) for i in images) == [
        ("High-Grade", "H10-01423", "2"),
        ("Low-Grade", "H09-00622", "1"),
        ("Normal", "H06-00174", "1"),
    ]


def test_bach_layout_prefers_the_ground_truth_file(tmp_path):
    tifs = real_images(KATHER, "*.tif", 3)
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    place(tifs[0], photos / "Normal" / "n001.tif")
    place(tifs[1], photos / "InSitu" / "is012.tif")
    place(tifs[2], photos / "Invasive" / "iv100.tif")
    (photos / "microscopy_ground_truth.csv").write_text(
        "n001.tif,Normal\nis012.tif,InSitu\niv100.tif,Benign\n"
    )
    images = {i.path.name: i for i in load_source("bach", tmp_path)}
    assert images["n001.tif"].label == "Normal"
    assert images["iv100.tif"].label == "Benign"  # the ground truth wins over the folder
    assert images["is012.tif"].group == "is012"
    assert images["is012.tif"].extra == {"image_number": "012"}


def test_csv_manifest_keeps_extra_columns_as_metadata(tmp_path):
    jpegs = real_images(LUNG, "*.jpeg", 2)
    for number, jpeg in enumerate(jpegs):
        shutil.copyfile(jpeg, tmp_path / f"tile{number}.jpeg")
    (tmp_path / "archive.csv").write_text(
        "path,label,group,stain_lab,year\ntile0.jpeg,aca,p1,lab-a,2019\ntile1.jpeg,scc,p2,lab-b,2020\n"
    )
    images = load_source("auto", tmp_path / "archive.csv", dataset="lung")
    assert [(i.label, i.group, i.extra) for i in images] == [
        ("aca", "p1", {"stain_lab": "lab-a", "year": "2019"}),
        ("scc", "p2", {"stain_lab": "lab-b", "year": "2020"}),
    ]
    assert {i.dataset for i in images} == {"lung"}


def test_image_folder_labels_come_from_class_subfolders(tmp_path):
    tifs = real_images(KATHER, "*.tif", 2)
    place(tifs[0], tmp_path / "tumour" / "a.tif")
    place(tifs[1], tmp_path / "stroma" / "b.tif")
    images = load_source("folder", tmp_path)
    assert sorted((i.label, i.dataset) for i in images) == [
        ("stroma", tmp_path.name),
        ("tumour", tmp_path.name),
    ]


def test_a_tree_without_the_expected_layout_is_refused(tmp_path):
    place(real_images(KATHER, "*.tif", 1)[0], tmp_path / "misc" / "x.tif")
    with pytest.raises(SourceError, match="BRACS class folders"):
        load_source("bracs", tmp_path)
    with pytest.raises(SourceError, match="unknown source"):
        load_source("tcga", tmp_path)


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 100, 150)).save(path)


def test_manifest_paths_are_resolved_against_the_csv_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "a" / "x.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,group\na/x.png,tumour,slide-1\n")
    (image,) = load_csv(csv_path)
    assert image.path == (tmp_path / "a" / "x.png").resolve()
    assert (image.label, image.group, image.dataset, image.extra) == (
        "tumour",
        "slide-1",
        tmp_path.name,
        {},
    )


def test_manifest_without_group_makes_each_image_its_own_group(tmp_path: Path) -> None:
    _write_image(tmp_path / "x.png")
    _write_image(tmp_path / "y.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path\nx.png\ny.png\n")
    images = load_csv(csv_path)
    assert [i.group for i in images] == ["x.png", "y.png"]
    assert all(i.label is None for i in images)


def test_manifest_names_the_line_of_a_missing_image(tmp_path: Path) -> None:
    _write_image(tmp_path / "x.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\nx.png,a\nmissing.png,b\n")
    with pytest.raises(SourceError, match=r"list\.csv:3"):
        load_csv(csv_path)


def test_manifest_without_path_column_is_refused(tmp_path: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("file,label\nx.png,a\n")
    with pytest.raises(SourceError, match="'path'"):
        load_csv(csv_path)


def test_image_folder_labels_come_from_the_first_sub_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "stroma" / "deep" / "b.png")
    _write_image(tmp_path / "tumour" / "a.png")
    _write_image(tmp_path / "loose.png")
    (tmp_path / "tumour" / "notes.txt").write_text("not an image")
    images = load_folder(tmp_path)
    assert [(i.label, i.group) for i in images] == [
        (None, "loose.png"),
        ("stroma", "stroma/deep/b.png"),
        ("tumour", "tumour/a.png"),
    ]


def test_a_folder_with_labels_csv_is_read_through_that_manifest(tmp_path: Path) -> None:
    _write_image(tmp_path / "tumour" / "a.png")
    (tmp_path / "labels.csv").write_text("path,label,group\ntumour/a.png,tumour,slide-7\n")
    (image,) = load_source("auto", tmp_path)
    assert image.group == "slide-7"


def test_auto_refuses_a_file_that_is_not_a_csv(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png")
    with pytest.raises(SourceError, match=r"expected a \.csv"):
        load_source("auto", tmp_path / "a.png")


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        load_source("auto", tmp_path)


def test_auto_recognises_each_public_dataset_layout(tmp_path: Path) -> None:
    bracs = tmp_path / "bracs" / "BRACS_RoI" / "latest_version"
    _write_image(bracs / "train" / "0_N" / "BRACS_1003_N_1.png")
    _write_image(bracs / "test" / "6_IC" / "BRACS_745_IC_12.png")
    crc = tmp_path / "crc"
    _write_image(crc / "Fold 1" / "Normal" / "H06-00174_A1H_E_1_1_grade_1_0001.png")
    _write_image(crc / "Fold 2" / "High-Grade" / "H10-01423_A1H_E_1_3_grade_3_0007.png")
    bach = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos"
    _write_image(bach / "Benign" / "b001.tif")
    _write_image(bach / "Invasive" / "iv002.tif")
    assert detect_source(tmp_path / "bracs") == "bracs"
    assert detect_source(crc) == "crc-extended"
    assert detect_source(tmp_path / "bach") == "bach"
    assert {i.group for i in load_source("auto", tmp_path / "bracs")} == {
        "BRACS_1003",
        "BRACS_745",
    }
    assert {i.group for i in load_source("auto", crc)} == {"H06-00174", "H10-01423"}


def test_auto_keeps_class_folders_unless_every_image_fits_a_dataset_layout(tmp_path):
    _write_image(tmp_path / "Normal" / "img_1.png")  # a CRC grade name...
    _write_image(tmp_path / "Tumour" / "img_2.png")  # ...but not every image is under one
    _write_image(tmp_path / "Benign" / "img_3.png")
    assert detect_source(tmp_path) == "folder"
    assert sorted(i.group for i in load_source("auto", tmp_path)) == [
        "Benign/img_3.png",
        "Normal/img_1.png",
        "Tumour/img_2.png",
    ]


def test_training_lists_a_bracs_archive_as_indexing_does(tmp_path: Path) -> None:
    from indexer.learn.training import archive_images

    root = tmp_path / "BRACS_RoI"
    _write_image(root / "train" / "0_N" / "BRACS_1003_N_1.png")
    _write_image(root / "val" / "5_DCIS" / "BRACS_1486_DCIS_3.png")
    assert archive_images(str(tmp_path)) == load_source("bracs", tmp_path)
