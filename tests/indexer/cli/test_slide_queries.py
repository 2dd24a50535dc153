"""`histosearch search --slide/--group` and `histosearch evaluate --level slide|group`."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.cli import main
from tests.indexer.index.test_slide_archive import slide_records
from tests.indexer.index_helpers import descriptors_near_codewords, new_index


@pytest.fixture
def slide_index_dir(tmp_path: Path) -> Path:
    records, _ = slide_records()
    with new_index(tmp_path / "index") as index:
        index.add(descriptors_near_codewords(len(records), index.codebooks, seed=3), records)
    return tmp_path / "index"


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv) == 0
    body: dict[str, Any] = json.loads(capsys.readouterr().out)
    return body


def test_search_with_a_slide_ranks_other_patients_slides_with_evidence(slide_index_dir, capsys):
    argv = ["search", "--index", str(slide_index_dir), "--slide", "slide-03", "-k", "4", "--json"]
    body = run_json(argv, capsys)
    assert body["query"]["excluded_group"] == "patient-3" and body["aggregation"] == "mean-max"
    assert len(body["results"]) == 4
    for result in body["results"]:
        assert result["group"] != "patient-3" and result["evidence"]
        assert all(item["source"] for item in result["evidence"])


def test_search_with_a_group_answers_cases(slide_index_dir, capsys):
    argv = ["search", "--index", str(slide_index_dir), "--group", "patient-2"]
    argv += ["--group-by", "group", "--aggregation", "vote", "--json"]
    body = run_json(argv, capsys)
    assert body["group_by"] == "group" and body["aggregation"] == "vote"
    assert "patient-2" not in {result["id"] for result in body["results"]}


def test_search_prints_a_table_of_ranked_slides(slide_index_dir, capsys):
    argv = ["search", "--index", str(slide_index_dir), "--slide", "slide-03", "-k", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query slide-03: 5 items") and "patient-3" in lines[0]
    assert len(lines) == 4


def test_slide_and_case_answers_carry_the_label_of_their_items(slide_index_dir, capsys):
    # Items of slide-s carry class-(s % 3); a patient's two slides share that label.
    argv = ["search", "--index", str(slide_index_dir), "--slide", "slide-03", "-k", "4", "--json"]
    for result in run_json(argv, capsys)["results"]:
        assert result["label"] == f"class-{int(result['id'][-2:]) % 3}"
    argv = ["search", "--index", str(slide_index_dir), "--group", "patient-2"]
    argv += ["--group-by", "group", "--json"]
    for result in run_json(argv, capsys)["results"]:
        assert result["label"] == f"class-{int(result['id'][-1]) % 3}"
    argv = ["search", "--index", str(slide_index_dir), "--group", "patient-2", "--group-by"]
    assert main([*argv, "group", "-k", "3"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()[1:]
    assert header.split()[:5] == ["rank", "score", "group", "group", "label"]
    for row in rows:
        _, _, case, _, label, *_ = row.split()
        assert label == f"class-{int(case[-1]) % 3}"


def test_an_unknown_slide_or_an_image_with_a_slide_is_refused(slide_index_dir, caplog, tmp_path):
    caplog.set_level(logging.ERROR)
    assert main(["search", "--index", str(slide_index_dir), "--slide", "slide-99"]) == 2
    assert "slide-99" in caplog.text
    image = tmp_path / "q.png"
    argv = ["search", "--index", str(slide_index_dir), str(image), "--group", "patient-1"]
    assert main(argv) == 2
    assert "no IMAGE" in caplog.text


def test_evaluate_at_slide_level_on_an_index_writes_every_aggregation(slide_index_dir, tmp_path):
    test_groups = tmp_path / "test.txt"
    test_groups.write_text("patient-0\npatient-1\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--level", "slide", "--index", str(slide_index_dir)]
    assert main([*argv, "--test-groups-file", str(test_groups), "--out", str(out)]) == 0
    report = json.loads((out / "slide_evaluation_slide.json").read_text())
    assert report["test_groups"] == 2
    codes = report["results"]["codes"]
    assert set(codes) == {"mean", "median-min", "mean-max", "vote"}
    # Two patients of two slides each: four slide queries.
    assert all(row["queries"] == 4 for row in codes.values())
    assert "| codes | mean-max |" in (out / "slide_evaluation_slide.md").read_text()


def write_feature_folder(directory: Path, patients: int = 200) -> None:
    """tcga-hipt-regions-192d's layout: two classes apart in a 32-d space, 2 slides a patient."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    centres = {"A": rng.standard_normal(32), "B": rng.standard_normal(32)}
    regions, region_rows, means, slide_rows = [], [], [], []
    for patient in range(patients):
        label = "A" if patient % 2 else "B"
        for slide in range(2):
            name = f"s{patient}-{slide}"
            vectors = centres[label] + 0.8 * rng.standard_normal((8, 32))
            regions.append(vectors)
            row = {"slide_id": name, "patient_id": f"p{patient}", "cancer_type": label}
            region_rows += [row] * 8
            means.append(vectors.mean(axis=0))
            slide_rows.append({"slide_id": name, "patient_id": f"p{patient}", "cancer_type": label})
    np.save(directory / "regions.npy", np.concatenate(regions).astype(np.float16))
    np.save(directory / "slides.npy", np.array(means, dtype=np.float16))
    for name, rows in (("regions.csv", region_rows), ("slides.csv", slide_rows)):
        with (directory / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def test_evaluate_at_case_level_on_a_feature_folder_compares_floats_and_codes(tmp_path):
    write_feature_folder(tmp_path / "features")
    out = tmp_path / "out"
    argv = ["evaluate", "--level", "group", "--data", str(tmp_path / "features")]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "slide_evaluation_group.json").read_text())
    assert set(report["results"]) == {"float", "PQ4x8", "PQ8x8", "PQ16x8"}  # --bits: 32 64 128
    assert report["test_groups"] == 40  # 20% of 200 patients
    # Two well separated classes: the float vectors' nearest case has the query's class.
    assert report["results"]["float"]["mean"]["top1"] == 1.0


def test_a_feature_folder_too_small_for_its_codes_is_refused_by_name(tmp_path, caplog):
    write_feature_folder(tmp_path / "features", patients=20)
    argv = ["evaluate", "--level", "slide", "--data", str(tmp_path / "features")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "training slides" in caplog.text


def test_evaluate_without_level_still_needs_a_checkpoint(capsys):
    assert main(["evaluate", "--data", "x"]) == 2
    assert "--checkpoint" in capsys.readouterr().out
