"""Official PANNs checkpoints: the registry, safe loading into zoo models, and downloads.

``python -m training.checkpoints list`` shows the official files and which are present;
``python -m training.checkpoints download NAME`` fetches one (see ``download.py``).
"""

from __future__ import annotations

from training.checkpoints.download import DEFAULT_DIR, download, sha256_file, verify
from training.checkpoints.loading import (
    describe_file,
    load_checkpoint,
    read_checkpoint,
    state_dict_conflicts,
)
from training.checkpoints.registry import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    OFFICIAL,
    CheckpointError,
    OfficialCheckpoint,
    checkpoint_url,
    find_official,
    get_official,
)

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_DIR",
    "OFFICIAL",
    "CheckpointError",
    "OfficialCheckpoint",
    "checkpoint_url",
    "describe_file",
    "download",
    "find_official",
    "get_official",
    "load_checkpoint",
    "read_checkpoint",
    "sha256_file",
    "state_dict_conflicts",
    "verify",
]
