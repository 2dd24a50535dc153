"""Service settings, read once from the environment (prefix ``HISTOSEARCH_``), checked at start."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
DevicePreference = Literal["auto", "cpu", "cuda"]


def _default_workers() -> int:
    # Each CNN forward already spreads over cores (torch intra-op threads, set to cores / workers):
    # a few concurrent requests keep every core busy; more would only contend for them.
    return max(1, min(4, (os.cpu_count() or 1) // 2))


class Settings(BaseSettings):
    """Everything the service can be told; each field is env var ``HISTOSEARCH_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="HISTOSEARCH_", env_file=None, extra="ignore", frozen=True
    )

    index_dir: Path = Field(
        description="Index directory written by `histosearch index` (manifest, codes, metadata)."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key that writes (and optionally searches) must send."
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the API key (docker secrets), if HISTOSEARCH_API_KEY is unset.",
    )
    require_key_for_search: bool = Field(
        default=False, description="Also require the API key for /search and image reads."
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="Largest accepted upload, per file, in bytes."
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest accepted image (width x height), checked before decoding.",
    )
    max_files_per_request: int = Field(
        default=32, gt=0, le=1000, description="Most files one POST /index may carry."
    )
    max_k: int = Field(default=100, gt=0, le=10_000, description="Largest k a search may ask for.")
    max_query_tiles: int = Field(
        default=64,
        gt=0,
        le=4096,
        description="Most tiles of one region query searched (an evenly spaced subset beyond).",
    )
    max_query_vectors: int = Field(
        default=256,
        gt=0,
        le=100_000,
        description="Most rows one search by vectors (an .npy) may carry; each is answered on "
        "its own. Its bytes are capped by HISTOSEARCH_MAX_UPLOAD_BYTES, as any file's.",
    )
    device: DevicePreference = Field(
        default="auto", description="Where the CNN runs (auto/cpu/cuda)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from browsers (CORS).",
    )
    archive_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated folders holding the archive folders (or being one) whose "
        "files the service reads: slides for /slides, sources for a search by item_id.",
    )
    workers: int = Field(
        default_factory=_default_workers,
        gt=0,
        le=64,
        description="Threads for decoding, embedding and searching.",
    )
    max_pending: int = Field(
        default=64,
        gt=0,
        description="Requests that may wait for a worker thread; more are answered 503 at once.",
    )
    max_requests_per_client: int = Field(
        default=16,
        gt=0,
        description="Requests one client address may have in flight (waiting or running); "
        "more are answered 429 with Retry-After.",
    )
    max_connections: int = Field(
        default=2048,
        gt=0,
        description="Open connections the server keeps; past it, the connection that has "
        "waited longest for its request headers is closed first (408), and when none is waiting "
        "the new one is refused (503).",
    )
    max_connections_per_client: int = Field(
        default=256,
        gt=0,
        description="Open connections one client address may hold; more are refused (503).",
    )
    header_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Time a client has to send a request's headers, from its first byte (or "
        "from connecting); slower ones are answered 408 and closed.",
    )
    body_min_bytes_per_second: int = Field(
        default=16 * 1024,
        ge=0,
        description="Slowest average rate a request body may arrive at, checked once "
        "HISTOSEARCH_BODY_GRACE_SECONDS have passed; slower ones get 408 and are closed. "
        "0 turns the check off.",
    )
    body_grace_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a body may take before its rate is checked.",
    )
    keep_alive_seconds: int = Field(
        default=5,
        gt=0,
        description="How long an idle keep-alive connection stays open between requests.",
    )
    snapshot_every_changes: int = Field(
        default=1000,
        ge=0,
        description="Write the index's FAISS snapshot once this many adds and removals are "
        "unsaved, so a restart replays at most about this many from SQLite; 0 turns it off.",
    )
    snapshot_every_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Also write the snapshot this many seconds after the last one when anything "
        "changed meanwhile; 0 turns it off.",
    )
    log_level: LogLevel = Field(default="INFO", description="Log verbosity.")

    @field_validator("index_dir")
    @classmethod
    def _index_dir_must_exist(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(
                f"index directory {value} does not exist; build it with `histosearch index`"
            )
        return value

    @field_validator("archive_roots", mode="before")
    @classmethod
    def _split_comma_separated_folders(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_comma_separated_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key_must_not_be_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("HISTOSEARCH_API_KEY is set but blank")
        return value

    @model_validator(mode="after")
    def _key_file_must_be_readable(self) -> Settings:
        if self.api_key is None and self.api_key_file is not None:
            self._read_key_file()
        if self.require_key_for_search and self.api_key is None and self.api_key_file is None:
            raise ValueError(
                "HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH is set but no key is configured; "
                "set HISTOSEARCH_API_KEY or HISTOSEARCH_API_KEY_FILE"
            )
        return self

    def _read_key_file(self) -> str:
        assert self.api_key_file is not None
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            message = f"cannot read HISTOSEARCH_API_KEY_FILE {self.api_key_file}: {error}"
            raise ValueError(message) from error
        if not key:
            raise ValueError(f"HISTOSEARCH_API_KEY_FILE {self.api_key_file} is empty")
        return key

    @cached_property
    def resolved_api_key(self) -> str | None:
        """The key clients must present, or None when none is configured (writes are refused)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value().strip()
        if self.api_key_file is not None:
            return self._read_key_file()
        return None
