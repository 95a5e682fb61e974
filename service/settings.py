"""Service settings, read from the environment (prefix ``PANNS_``) by ``get_settings()``.

Nothing reads the environment at import time: ``create_app`` takes a ``Settings`` object,
so tests and embedders build their own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    """Every knob of the service; the README documents each with its default."""

    model_config = SettingsConfigDict(env_prefix="PANNS_", extra="ignore", frozen=True)

    models: str = Field(
        default="models/cnn14", description="bundle dirs, comma-separated; first=default"
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    max_batch: int = Field(default=16, ge=1, le=1024, description="windows per batch")
    max_delay_ms: float = Field(default=5.0, ge=0, description="how long a batch may wait to fill")
    max_queue: int = Field(
        default=512, ge=1, description="windows waiting before requests are refused"
    )
    max_upload_mb: float = Field(default=50.0, gt=0, description="request body limit")
    max_files: int = Field(default=32, ge=1, description="files per request")
    max_audio_s: float = Field(default=600.0, gt=0, description="decoded duration limit per file")
    max_request_audio_s: float = Field(
        default=1800.0, gt=0, description="decoded duration limit per request, all files"
    )
    timeout_s: float = Field(default=60.0, gt=0, description="deadline per request, after upload")
    api_keys: str = Field(default="", description="comma-separated; empty = no authentication")
    threads: int = Field(
        default=0, ge=0, description="ORT intra-op threads on CPU (0 = ORT default)"
    )
    warmup: Literal["auto", "none", "ends", "all"] = Field(
        default="auto",
        description="batch sizes run at start-up: ends (1 and max_batch), all (1..max_batch); "
        "auto = all on CUDA, ends on CPU",
    )
    verify_bundles: bool = Field(
        default=True, description="check every bundle file's SHA-256 at start"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    graceful_timeout_s: int = Field(default=30, ge=1, description="SIGTERM drain limit")

    @property
    def model_dirs(self) -> list[Path]:
        return [Path(part) for part in _split(self.models)]

    @property
    def api_key_list(self) -> list[str]:
        return _split(self.api_keys)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached after the first call)."""
    return Settings()
