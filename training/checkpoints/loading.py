"""Reading checkpoint files safely and loading them into zoo models.

Files are read with ``torch.load(weights_only=True)``; everything that is not a checkpoint
(an HTML error page saved as ``.pth``, a truncated download, a pickle that wants to run code)
becomes a one-line :class:`CheckpointError` that names the file and says what it looks like.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoints.registry import CheckpointError, find_official
from training.models import create_model, list_models
from training.models.common import PannsModel

log = logging.getLogger(__name__)

# Numpy arrays and scalars: training code commonly stores extra state (e.g. a sampler's index
# arrays) beside "model"; the official Cnn14_16k/Cnn14_8k files are ~34 MB larger than their
# weights, which suggests such state. Rebuilding a plain array runs no user code, so these are
# allowed, under both the numpy 1.x and 2.x module paths a pickle may name.
_NUMPY_DTYPES = (
    "?",
    "i1",
    "i2",
    "i4",
    "i8",
    "u1",
    "u2",
    "u4",
    "u8",
    "f2",
    "f4",
    "f8",
    "c8",
    "c16",
    "U1",
    "S1",
)
_NUMPY_BUILDERS: tuple[Any, ...] = (np.ndarray(0).__reduce__()[0], np.int64(0).__reduce__()[0])
_NUMPY_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    *(type(np.dtype(code)) for code in _NUMPY_DTYPES),
    *(
        (fn, f"{module}.{fn.__name__}")
        for fn in _NUMPY_BUILDERS
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    ),
]
_MAX_LISTED = 8
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def describe_file(path: Path) -> str:
    """What a file that failed to load looks like, judged from its first bytes."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with path.open("rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "looks like an HTML page (a failed download?), not a PyTorch checkpoint"
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the checkpoint itself (run `git lfs pull`)"
    if text.startswith((b"{", b"[")):
        return "looks like JSON text, not a PyTorch checkpoint"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return f"is a truncated or corrupt zip archive ({size} bytes; an incomplete download?)"
        return "is a zip archive that is not a readable PyTorch checkpoint"
    if head[:1] == b"\x80":
        return "is a pickle that cannot be read as a PyTorch checkpoint (truncated?)"
    return f"is not a PyTorch checkpoint ({size} bytes of unrecognised data)"


def _why_not_loadable(path: Path, exc: Exception) -> str:
    """A one-line reason for a failed ``torch.load``."""
    message = str(exc)
    banned = _GLOBAL_RE.search(message)
    if banned:
        name = banned.group(1) or banned.group(2)
        return (
            f"is a pickle that needs the disallowed global {name!r} "
            "(refused: checkpoints are read with weights_only=True)"
        )
    return describe_file(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict with at least ``"model"`` (a state_dict).

    A bare state_dict is wrapped as ``{"model": state_dict}``; other keys (``iteration``,
    ``arch``, ``model_args``, ``labels``) are returned as stored.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (EOF, Index, Runtime...) for a bad file
        log.debug("torch.load(%s) failed", path, exc_info=True)
        raise CheckpointError(f"{path}: {_why_not_loadable(path, exc)}") from None
    return _as_checkpoint(path, raw)


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _as_checkpoint(path: Path, raw: object) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a checkpoint dict")
    if _is_state_dict(raw):
        return {"model": dict(raw)}
    if "model" not in raw:
        keys = ", ".join(map(str, list(raw)[:_MAX_LISTED]))
        raise CheckpointError(f"{path}: a dict without tensors or a 'model' entry (keys: {keys})")
    if not _is_state_dict(raw["model"]):
        raise CheckpointError(f"{path}: its 'model' entry is not a state_dict of tensors")
    checkpoint = dict(raw)
    checkpoint["model"] = _strip_prefix(dict(raw["model"]), "module.")
    return checkpoint


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix a ``DataParallel`` wrapper puts on every key."""
    if all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def resolve_arch(path: Path, checkpoint: Mapping[str, Any], arch: str | None) -> str:
    """Explicit ``arch``, else the checkpoint's ``"arch"``, else the official file name's."""
    stored = checkpoint.get("arch")
    if arch is not None and isinstance(stored, str) and stored != arch:
        log.warning("%s: loading as %s although the checkpoint says %s", path, arch, stored)
    official = find_official(path.name)
    chosen = (
        arch
        or (stored if isinstance(stored, str) else None)
        or (official.arch if official else None)
    )
    known = list_models()
    if chosen is None:
        raise CheckpointError(
            f"{path}: cannot tell the architecture (no 'arch' entry and not an official file "
            f"name); pass arch= one of: {', '.join(known)}"
        )
    if chosen not in known:
        raise CheckpointError(f"{path}: unknown architecture {chosen!r}; valid: {', '.join(known)}")
    return chosen


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown}, ... (+{more} more)" if more > 0 else shown


def _shapes_fit(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """torch's own rule: a 1-element 1-d tensor loads into a 0-d one (e.g. BatchNorm's
    ``num_batches_tracked`` saved as shape (1,), as numpy-made state_dicts often are)."""
    if got.shape == expected.shape:
        return True
    return expected.dim() == 0 and tuple(got.shape) == (1,)


def state_dict_conflicts(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> list[str]:
    """Human-readable differences between two state_dicts (empty when they match)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: expected {tuple(v.shape)} vs got {tuple(got[k].shape)}"
        for k, v in expected.items()
        if k in got and not _shapes_fit(v, got[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape conflicts: {_listed(shapes)}")
    return problems


def load_checkpoint(path: str | Path, arch: str | None = None) -> PannsModel:
    """Build the checkpoint's model, load its weights strictly and return it in eval mode.

    The architecture is ``arch``, else the checkpoint's ``"arch"``, else inferred from an
    official file name; constructor overrides come from the checkpoint's ``"model_args"``.
    """
    path = Path(path)
    return model_from_checkpoint(path, read_checkpoint(path), arch)


def model_from_checkpoint(
    path: Path, checkpoint: Mapping[str, Any], arch: str | None = None
) -> PannsModel:
    """:func:`load_checkpoint` on a dict already read by :func:`read_checkpoint` (``path``
    names the file in errors): callers that need its other entries read the file once."""
    name = resolve_arch(path, checkpoint, arch)
    model_args = checkpoint.get("model_args") or {}
    if not isinstance(model_args, Mapping):
        raise CheckpointError(f"{path}: 'model_args' must be a dict, got {model_args!r}")
    try:
        model = create_model(name, **model_args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot build {name} with {dict(model_args)}: {exc}"
        ) from None
    state = checkpoint["model"]
    problems = state_dict_conflicts(model.state_dict(), state)
    head = state.get("fc_audioset.weight")
    if problems and head is not None and head.shape[0] != getattr(model, "classes_num", None):
        problems.append(
            f"hint: the weights have {head.shape[0]} classes; store "
            f"'model_args': {{'classes_num': {head.shape[0]}}} in the checkpoint"
        )
    if problems:
        args = f" with {dict(model_args)}" if model_args else ""
        raise CheckpointError(
            f"{path}: the weights do not fit {name}{args}:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
