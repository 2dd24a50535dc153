"""Each loader on a small tree laid out like the public dataset, built from real images."""

import shutil
from pathlib import Path

import pytest

from indexer.ingest.sources import SourceError, load_source
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
