"""`histosearch index / search / stats / delete` end to end with a small real SPQ model."""

import json
import shutil
from typing import Any

import pytest
import torch

from indexer.cli import main
from indexer.index.store import ArchiveIndex
from model import ModelCard, build_model, load_checkpoint, save_checkpoint
from tests.indexer.index_helpers import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


@pytest.fixture(scope="module")
def archive_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = sorted(KATHER.rglob("*.tif"))[::20]
    if not paths:
        pytest.skip("Kather 2016 tiles are missing")
    for path in paths:
        target = root / "archive" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    torch.manual_seed(0)
    save_checkpoint(build_model(ModelCard(input_size=32)), root / "model.pt")
    return root, paths


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_index_search_stats_delete(tmp_path, capsys, archive_and_checkpoint):
    root, paths = archive_and_checkpoint
    index_dir = str(tmp_path / "index")
    common = ["--index", index_dir]
    assert (
        main(
            [
                "index",
                "--data",
                str(root / "archive"),
                "--checkpoint",
                str(root / "model.pt"),
                *common,
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"tiles added:             {len(paths)}" in capsys.readouterr().out

    stats = run_json(capsys, "stats", *common, "--json")
    assert stats["items"] == len(paths) and stats["code_bytes"] == 4

    query = str(paths[0])
    hits = run_json(capsys, "search", *common, query, "-k", "3", "--json")["hits"]
    assert len(hits) == 3 and hits[0]["rank"] == 1
    assert hits[0]["score"] >= hits[-1]["score"]
    first = hits[0]["id"]

    assert main(["delete", *common, str(first)]) == 0
    assert "removed 1 item" in capsys.readouterr().out
    hits = run_json(capsys, "search", *common, query, "-k", str(len(paths)), "--json")["hits"]
    assert first not in {hit["id"] for hit in hits} and len(hits) == len(paths) - 1

    # Re-running on the same archive resumes: nothing is encoded again.
    assert main(["index", "--data", str(root / "archive"), *common, "--no-progress"]) == 0
    assert f"finished in earlier runs: {len(paths)}" in capsys.readouterr().out


def test_index_refuses_a_missing_checkpoint_and_a_non_index(
    tmp_path, caplog, archive_and_checkpoint
):
    root, _ = archive_and_checkpoint
    assert main(["index", "--data", str(root / "archive"), "--index", str(tmp_path / "x")]) == 2
    assert "give --checkpoint" in caplog.text
    assert main(["stats", "--index", str(tmp_path)]) == 2
    assert "no manifest.json" in caplog.text


def test_index_with_shards_searches_and_counts_as_one_index(
    tmp_path, capsys, archive_and_checkpoint
):
    root, paths = archive_and_checkpoint
    built = {}
    for name, extra in (("single", []), ("sharded", ["--shards", "3"])):
        index_dir = str(tmp_path / name)
        argv = ["index", "--data", str(root / "archive"), "--checkpoint", str(root / "model.pt")]
        assert main([*argv, "--index", index_dir, "--no-progress", *extra]) == 0
        capsys.readouterr()
        built[name] = index_dir
    stats = run_json(capsys, "stats", "--index", built["sharded"], "--json")
    assert stats["items"] == len(paths) and len(stats["shards"]) == 3
    assert sum(shard["items"] for shard in stats["shards"]) == len(paths)
    found = {
        name: run_json(capsys, "search", "--index", d, str(paths[1]), "-k", "8", "--json")["hits"]
        for name, d in built.items()
    }
    assert [(h["id"], h["score"]) for h in found["sharded"]] == [
        (h["id"], h["score"]) for h in found["single"]
    ]
    # A sharded index keeps its shard count.
    again = ["index", "--data", str(root / "archive"), "--index", built["sharded"], "--shards", "2"]
    assert main([*again, "--no-progress"]) == 2


def test_index_on_an_unreachable_ray_cluster_fails_fast_naming_it(
    tmp_path, caplog, archive_and_checkpoint
):
    pytest.importorskip("ray", reason="ray is not installed: install the `ray` extra")
    root, _ = archive_and_checkpoint
    argv = ["index", "--data", str(root / "archive"), "--index", str(tmp_path / "index")]
    argv += ["--checkpoint", str(root / "model.pt"), "--ray", "127.0.0.1:9", "--no-progress"]
    assert main(argv) == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in caplog.text


def test_search_refuses_an_index_whose_model_disagrees_with_its_card(
    tmp_path, caplog, archive_and_checkpoint
):
    root, paths = archive_and_checkpoint
    model = load_checkpoint(root / "model.pt")
    card = model.card.model_copy(update={"input_size": 64})
    ArchiveIndex.create_from_codebooks(
        tmp_path / "index",
        model.codebooks().detach().numpy(),
        card=card.model_dump(mode="json"),
        checkpoint_path=root / "model.pt",
    ).close()
    assert main(["search", "--index", str(tmp_path / "index"), str(paths[0])]) == 2
    assert "input_size: expected 64, checkpoint has 32" in caplog.text
