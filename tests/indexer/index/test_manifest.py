"""`IndexManifest`: manifest.json validated on read, format 1 read as generation 0."""

import json
from pathlib import Path
from typing import Any

import pytest

from indexer.index.errors import IndexDirectoryError
from indexer.index.manifest import IndexManifest, read_manifest

FORMAT_1 = Path(__file__).parent / "fixtures" / "format1-index" / "manifest.json"


def format_1() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(FORMAT_1.read_text())
    return manifest


def written(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_format_1_manifest_reads_as_generation_0_with_the_fixed_file_names(tmp_path):
    manifest = read_manifest(written(tmp_path, format_1()))
    snapshot = manifest.committed()
    assert (snapshot.generation, snapshot.files) == (0, ("codes.faiss", "columns.npz"))
    assert snapshot.codes.bytes == format_1()["snapshot"]["codes.faiss"]["bytes"]
    assert (snapshot.items, snapshot.last_item_id, snapshot.last_removal_seq) == (28, 30, 2)


def test_a_manifest_written_now_reads_back_equal_in_format_2(tmp_path):
    manifest = read_manifest(written(tmp_path, format_1()))
    again = manifest.with_snapshot(manifest.committed().model_copy(update={"generation": 3}))
    (tmp_path / "manifest.json").write_bytes(again.to_bytes())
    reread = read_manifest(tmp_path)
    assert reread == again and reread.format_version == 2
    assert reread.committed().files == ("codes.3.faiss", "columns.3.npz")
    assert "codes" in json.loads(again.to_bytes())["snapshot"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m.update(format_version=3),
            "format version 3; this program reads versions 1, 2",
        ),
        (lambda m: m.update(codebook_fingerprint="abc"), "codebook_fingerprint"),
        (lambda m: m.update(code_size=8), "code_size 8 does not fit M=8 K=16"),
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m["snapshot"].update(items=-1), "items"),
        (lambda m: m.pop("snapshot"), "names no snapshot"),
    ],
)
def test_a_manifest_that_breaks_a_rule_is_refused_naming_it(tmp_path, change, message):
    manifest = format_1()
    change(manifest)
    with pytest.raises(IndexDirectoryError, match=message):
        read_manifest(written(tmp_path, manifest))


def test_a_manifest_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexDirectoryError, match="is unreadable"):
        read_manifest(tmp_path)


def test_the_model_is_frozen():
    manifest = IndexManifest.model_validate(format_1())
    with pytest.raises(ValueError, match="frozen"):
        manifest.code_size = 8
