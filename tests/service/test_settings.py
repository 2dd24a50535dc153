"""Settings come from HISTOSEARCH_* variables and are refused at start-up when they cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service.settings import Settings


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("API_KEY", "API_KEY_FILE", "REQUIRE_KEY_FOR_SEARCH", "CORS_ORIGINS", "INDEX_DIR"):
        monkeypatch.delenv(f"HISTOSEARCH_{name}", raising=False)
    return monkeypatch


def test_settings_read_the_prefixed_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("HISTOSEARCH_INDEX_DIR", str(tmp_path))
    clean_env.setenv("HISTOSEARCH_MAX_K", "7")
    clean_env.setenv("HISTOSEARCH_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.index_dir == tmp_path
    assert settings.max_k == 7
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.resolved_api_key is None


def test_settings_refuse_a_missing_index_directory(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(index_dir=tmp_path / "nowhere")


def test_settings_read_the_key_from_a_secret_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "api_key"
    key_file.write_text("s3cret-from-file\n")
    settings = Settings(index_dir=tmp_path, api_key_file=key_file)
    assert settings.resolved_api_key == "s3cret-from-file"


def test_settings_refuse_an_empty_or_missing_key_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ValidationError, match="is empty"):
        Settings(index_dir=tmp_path, api_key_file=empty)
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(index_dir=tmp_path, api_key_file=tmp_path / "absent")


def test_settings_refuse_a_blank_key(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="blank"):
        Settings(index_dir=tmp_path, api_key=SecretStr("   "))


def test_settings_refuse_key_for_search_without_a_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="no key is configured"):
        Settings(index_dir=tmp_path, require_key_for_search=True)


def test_settings_refuse_out_of_range_limits(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(index_dir=tmp_path, max_k=0)
    with pytest.raises(ValidationError):
        Settings(index_dir=tmp_path, device="tpu")  # type: ignore[arg-type]


def test_snapshot_policy_defaults_and_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("SNAPSHOT_EVERY_CHANGES", "SNAPSHOT_EVERY_SECONDS"):
        clean_env.delenv(f"HISTOSEARCH_{name}", raising=False)
    defaults = Settings(index_dir=tmp_path)
    assert defaults.snapshot_every_changes == 1000
    assert defaults.snapshot_every_seconds == 300
    clean_env.setenv("HISTOSEARCH_SNAPSHOT_EVERY_CHANGES", "2")
    clean_env.setenv("HISTOSEARCH_SNAPSHOT_EVERY_SECONDS", "0")
    settings = Settings(index_dir=tmp_path)
    assert settings.snapshot_every_changes == 2 and settings.snapshot_every_seconds == 0
    with pytest.raises(ValidationError):
        Settings(index_dir=tmp_path, snapshot_every_changes=-1)


def test_every_setting_is_described_and_documented() -> None:
    table = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`HISTOSEARCH_{name.upper()}`" in table, name
