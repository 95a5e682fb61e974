"""A checkpoint file (official or from our training) -> a verified model bundle."""

from __future__ import annotations

import os
from pathlib import Path

from model_export.bundle import export_bundle
from model_export.card import custom_labels
from service.core.card import ModelCard, Source

CHECKPOINT_DIR_ENV = "PANNS_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = Path("models/checkpoints")


def checkpoint_dir() -> Path:
    """Where official checkpoints are downloaded to and looked for."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or DEFAULT_CHECKPOINT_DIR)


def export_checkpoint(
    path: Path,
    out: Path,
    *,
    arch: str | None = None,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    calibration_dir: Path | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> ModelCard:
    """Load ``path`` (official or our own training's) and export it to the bundle ``out``.

    ``sha256``: the file's digest when the caller already knows it (a verified official
    download), so a checkpoint of hundreds of MB is not hashed again.
    """
    from training.checkpoints import read_checkpoint, sha256_file
    from training.checkpoints.loading import model_from_checkpoint, resolve_arch

    raw = read_checkpoint(path)
    arch_name = resolve_arch(path, raw, arch)
    names = raw.get("labels")
    labels = custom_labels([str(n) for n in names]) if isinstance(names, list) else None
    model = model_from_checkpoint(path, raw, arch=arch_name)
    del raw
    digest = sha256 or sha256_file(path, progress=progress)
    source = Source(checkpoint=path.name, sha256=digest)
    return export_bundle(
        model,
        out,
        arch=arch_name,
        name=name,
        labels=labels,
        source=source,
        fp16=fp16,
        int8=int8,
        calibration_dir=calibration_dir,
        progress=progress,
    )


def describe(card: ModelCard, out: Path) -> str:
    """A short human summary of a written bundle."""
    lines = [
        f"bundle {out}: {card.name} ({card.arch}, {card.sample_rate} Hz, {len(card.labels)} labels)"
    ]
    for variant, entry in card.files.items():
        parity = card.parity.get(variant)
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in parity.max_abs_diff.items()) if parity else ""
        extra = ""
        if parity is not None and parity.top10_agreement is not None:
            extra = f", top-10 agreement {parity.top10_agreement:.3f}"
        lines.append(
            f"  {variant:5s} {entry.path:18s} {entry.bytes / 1e6:8.1f} MB  "
            f"max abs diff vs PyTorch: {diffs}{extra}"
        )
    return "\n".join(lines)
