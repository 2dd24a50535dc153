"""Feature archives from the command line: train -> index -> search -> evaluate, on a slice of
the shared TCGA region features (a few thousand rows of 192-d HIPT vectors, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from indexer.cli import main
from indexer.index.shards import open_index_directory
from model.checkpoint import read_checkpoint
from model.feature_encoder import FeatureEncoder
from model.feature_spq import load_feature_checkpoint, save_feature_checkpoint
from support.data import SHARED_DATA, missing_data_reason

TCGA = SHARED_DATA / "tcga-hipt-regions-192d"
ROWS = 3000
COLUMNS = ["--label-column", "cancer_type", "--group-column", "patient_id"]
# A short run: one epoch, no OPQ start, few k-means rounds (the test checks the plumbing; the
# quality of the defaults is `benchmarks/quality/features.py`'s to measure).
QUICK = ["--epochs", "1", "--no-opq-init", "--kmeans-iterations", "2"]

pytestmark = pytest.mark.skipif(
    missing_data_reason(TCGA) is not None, reason=str(missing_data_reason(TCGA))
)


def write_slice(folder: Path, rows: int) -> Path:
    """The first ``rows`` regions as ``regions.npy`` with their ``regions.csv`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.load(TCGA / "regions.npy", mmap_mode="r")[:rows]
    np.save(folder / "regions.npy", np.asarray(matrix))
    with (TCGA / "regions.csv").open(newline="") as source:
        lines = list(csv.reader(source))[: rows + 1]
    with (folder / "regions.csv").open("w", newline="") as target:
        csv.writer(target).writerows(lines)
    return folder / "regions.npy"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A feature model trained from the command line, with named test patients."""
    root = tmp_path_factory.mktemp("features")
    data = write_slice(root / "archive", ROWS)
    with (data.with_suffix(".csv")).open(newline="") as handle:
        patients = sorted({row["patient_id"] for row in csv.DictReader(handle)})
    test_patients = patients[::6]
    (root / "test.txt").write_text("# held-out patients\n" + "\n".join(test_patients) + "\n")
    out = root / "run"
    argv = ["train", "--source", "features", "--data", str(data), "--feature-model", "hipt"]
    argv += [*COLUMNS, "--test-groups-file", str(root / "test.txt"), "--out", str(out), *QUICK]
    assert main([*argv, "--validation-queries", "200"]) == 0
    return {"root": root, "data": data, "out": out, "test": test_patients}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def index_argv(data: Path, index: Path) -> list[str]:
    """`histosearch index` of the feature archive `data` into `index`."""
    return ["index", "--source", "features", "--data", str(data), "--index", str(index)]


def test_training_writes_the_feature_model_and_never_trains_on_the_named_test_patients(trained):
    out = trained["out"]
    for name in ("model.pt", "model_card.json", "config.json", "history.json", "training.png"):
        assert (out / name).is_file(), name
    model = load_feature_checkpoint(out / "model.pt")
    assert (model.card.input_dim, model.card.feature_model, model.card.bits) == (192, "hipt", 64)
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["split"]["test"] == trained["test"]
    held_out = set(trained["test"]) | set(resolved["split"]["validation"])
    with trained["data"].with_suffix(".csv").open(newline="") as handle:
        groups = [row["patient_id"] for row in csv.DictReader(handle)]
    assert resolved["rows"]["training"] == sum(group not in held_out for group in groups)
    recorded = read_checkpoint(out / "model.pt")["extra"]["feature_run"]["split"]
    assert recorded["test"] == trained["test"]
    history = json.loads((out / "history.json").read_text())
    assert history["loss_per_step"] and 0 < history["validation"]["codes"]["p_at_10"] <= 1


def test_an_indexed_archive_answers_vector_queries_row_by_row(trained, tmp_path, capsys):
    index = tmp_path / "index"
    checkpoint = trained["out"] / "model.pt"
    base = index_argv(trained["data"], index)
    code, printed = cli(capsys, *base, "--checkpoint", str(checkpoint), *COLUMNS, "--no-progress")
    assert code == 0 and f"rows added:               {ROWS}" in printed
    rows = np.load(trained["data"])[[10, 2500]]
    np.save(tmp_path / "queries.npy", rows)
    code, printed = cli(
        capsys,
        "search",
        "--index",
        str(index),
        "--vectors",
        str(tmp_path / "queries.npy"),
        "-k",
        "3",
        "--json",
    )
    answers = json.loads(printed)
    assert code == 0 and [answer["query"] for answer in answers] == ["row 0", "row 1"]
    # Each row is in the index: its own item comes first, with its slide, label and group.
    assert [answer["hits"][0]["extra"]["row"] for answer in answers] == [10, 2500]
    first = answers[0]["hits"][0]
    assert first["label"] == "LGG" and first["group"].startswith("TCGA-")
    vector = json.dumps(rows[0].astype(float).tolist())
    code, printed = cli(
        capsys,
        "search",
        "--index",
        str(index),
        "--vector",
        vector,
        "--exclude-group",
        first["group"],
    )
    assert code == 0 and "slide (row)" in printed and first["group"] not in printed
    code, printed = cli(capsys, *base, *COLUMNS, "--no-progress")
    assert (
        code == 0
        and "finished in earlier runs: 1" in printed
        and "rows added:               0" in printed
    )


def test_an_interrupted_run_resumes_without_encoding_stored_rows_again(
    trained, tmp_path, capsys, monkeypatch
):
    index = tmp_path / "index"
    argv = index_argv(trained["data"], index)
    argv += [
        "--checkpoint",
        str(trained["out"] / "model.pt"),
        *COLUMNS,
        "--batch-size",
        "500",
        "--no-progress",
    ]
    encode = FeatureEncoder.descriptors
    calls: list[int] = []

    def dies_after_two_chunks(self: FeatureEncoder, rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(self, rows)

    monkeypatch.setattr(FeatureEncoder, "descriptors", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(FeatureEncoder, "descriptors", encode)
    code, printed = cli(capsys, *argv)
    assert code == 0
    assert (
        "rows already indexed:     1000" in printed
        and f"rows added:               {ROWS - 1000}" in printed
    )
    with open_index_directory(index) as reopened:
        assert len(reopened) == ROWS


def test_a_file_of_another_dimension_is_refused_by_name_and_the_rest_indexed(
    trained, tmp_path, capsys
):
    folder = tmp_path / "slides"
    folder.mkdir()
    vectors = np.load(trained["data"])[:30].astype(np.float32)
    torch.save(torch.from_numpy(vectors[:20]), folder / "a.pt")
    torch.save(torch.from_numpy(vectors[20:, :100].copy()), folder / "b.pt")
    torch.save(torch.from_numpy(vectors[20:]), folder / "c.pt")
    code, printed = cli(
        capsys,
        *index_argv(folder, tmp_path / "index"),
        "--checkpoint",
        str(trained["out"] / "model.pt"),
        "--no-progress",
    )
    assert code == 0 and "rows added:               30" in printed
    assert "refused: b.pt: 100 features per row, expected 192 (the index's dimension)" in printed


def test_a_checkpoint_for_another_foundation_models_vectors_is_refused(trained, tmp_path, caplog):
    model = load_feature_checkpoint(trained["out"] / "model.pt")
    model.card = model.card.model_copy(update={"feature_model": "uni"})
    save_feature_checkpoint(model, tmp_path / "uni.pt")
    base = [*index_argv(trained["data"], tmp_path / "index"), *COLUMNS, "--no-progress"]
    assert main([*base, "--checkpoint", str(trained["out"] / "model.pt")]) == 0
    assert main([*base, "--checkpoint", str(tmp_path / "uni.pt")]) == 2
    assert "the index holds vectors of 'hipt', that model reads vectors of 'uni'" in caplog.text


def test_options_that_make_no_sense_for_features_are_refused_by_name(trained, tmp_path, caplog):
    argv = index_argv(trained["data"], tmp_path / "index")
    assert main([*argv, "--tile-size", "64", "--workers", "3"]) == 2
    assert "--tile-size does not apply to --source features" in caplog.text
    assert "--workers does not apply to --source features" in caplog.text
    assert not (tmp_path / "index").exists()


# OPQ's rotation is fitted even on 1000 rows in ~30 s of CPU: over a loaded machine's budget.
@pytest.mark.slow
def test_evaluation_writes_a_row_per_method_on_the_test_patients(trained, tmp_path, capsys):
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--source", "features", "--checkpoint", str(trained["out"] / "model.pt")]
    argv += [
        "--data",
        str(trained["data"]),
        *COLUMNS,
        "--test-groups-file",
        str(trained["root"] / "test.txt"),
    ]
    code, _ = cli(
        capsys, *argv, "--bits", "64", "--queries", "200", "--fit-rows", "1000", "--out", str(out)
    )
    assert code == 0
    report = json.loads((out / "evaluation.json").read_text())
    methods = [row["method"] for row in report["rows"]]
    assert methods == [
        "float exact",
        "FAISS PQ",
        "FAISS OPQ",
        "SPQ codes (the checkpoint)",
        "SPQ + second stage (SQ8 re-rank of 100)",
    ]
    assert report["queries"] == 200 and report["query_groups"] == len(trained["test"])
    for row in report["rows"]:
        assert {"p_at_10", "map_at_10", "mv_at_5", "float_recall_at_10"} <= set(row)
    assert report["rows"][0]["float_recall_at_10"] == 1.0
    table = (out / "evaluation.md").read_text()
    assert "| method | bits | P@10 |" in table and "| SPQ codes (the checkpoint) | 64 |" in table


def test_evaluation_refuses_test_patients_the_model_trained_on(trained, tmp_path, capsys):
    resolved = json.loads((trained["out"] / "config.json").read_text())
    held_out = set(trained["test"]) | set(resolved["split"]["validation"])
    with trained["data"].with_suffix(".csv").open(newline="") as handle:
        trained_on = next(
            row["patient_id"] for row in csv.DictReader(handle) if row["patient_id"] not in held_out
        )
    argv = ["evaluate", "--source", "features", "--checkpoint", str(trained["out"] / "model.pt")]
    argv += ["--data", str(trained["data"]), *COLUMNS, "--test-groups", trained_on, "--bits", "64"]
    assert main(argv) == 2
    assert f"was trained on test groups ['{trained_on}']" in capsys.readouterr().err


def test_a_second_stage_is_chosen_when_the_index_is_created_and_re_ranks_vector_queries(
    trained, tmp_path, capsys, caplog
):
    index = tmp_path / "two-stage"
    checkpoint = trained["out"] / "model.pt"
    base = index_argv(trained["data"], index)
    stage = ["--second-stage", "sq8", "--shortlist-factor", "3"]
    code, printed = cli(
        capsys, *base, "--checkpoint", str(checkpoint), *COLUMNS, *stage, "--no-progress"
    )
    assert code == 0 and f"rows added:               {ROWS}" in printed
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["second_stage"]["kind"] == "sq8"
    assert manifest["second_stage"]["shortlist_factor"] == 3
    assert manifest["second_stage"]["dim"] == 192
    rows = np.load(trained["data"])[[10, 2500]]
    np.save(tmp_path / "queries.npy", rows)
    search = ["search", "--index", str(index), "-k", "3", "--json"]
    code, printed = cli(capsys, *search, "--vectors", str(tmp_path / "queries.npy"))
    answers = json.loads(printed)
    assert code == 0
    # The re-rank scores are cosines of the centred rows: the row itself scores about 1.
    assert [answer["hits"][0]["extra"]["row"] for answer in answers] == [10, 2500]
    assert all(abs(answer["hits"][0]["score"] - 1.0) < 0.01 for answer in answers)
    code, printed = cli(capsys, *search, "--item", str(answers[0]["hits"][0]["id"]))
    assert code == 0 and json.loads(printed)[0]["hits"][0]["extra"]["row"] == 10
    code, printed = cli(capsys, "stats", "--index", str(index))
    assert code == 0 and "re-rank:    sq8 of 192-d vectors (192 bytes per item" in printed
    # Resuming without the option keeps the stage; another factor is refused.
    code, printed = cli(capsys, *base, *COLUMNS, "--second-stage", "sq8", "--no-progress")
    assert code == 0 and "finished in earlier runs: 1" in printed
    assert cli(capsys, *base, *COLUMNS, *stage[:2], "--shortlist-factor", "5")[0] == 2
    assert "a second stage is chosen when an index is created" in caplog.text


def test_a_second_stage_cannot_be_turned_on_for_an_index_created_without_one(
    trained, tmp_path, capsys, caplog
):
    index = tmp_path / "plain"
    checkpoint = trained["out"] / "model.pt"
    base = index_argv(trained["data"], index)
    assert cli(capsys, *base, "--checkpoint", str(checkpoint), *COLUMNS, "--no-progress")[0] == 0
    assert cli(capsys, *base, *COLUMNS, "--second-stage", "sq8", "--no-progress")[0] == 2
    assert "was created with no second stage" in caplog.text
    assert not list(index.glob("fine*"))
