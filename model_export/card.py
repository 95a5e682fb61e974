"""Building the bundle card (``service.core.card.ModelCard``) for an exported model."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import onnx
import torch
from torch import nn

from model_export.graph import INPUT_NAME, OPSET, GraphSpec
from service.core.card import (
    OUTPUT_NAMES,
    FileEntry,
    Label,
    ModelCard,
    Parity,
    Source,
    TensorSpec,
    sha256_file,
)

# The export recipe, recorded in each card; raise it when a change to model_export makes
# graphs worth re-exporting (``ensure`` then rebuilds older bundles it can rebuild).
# 1: first release. 2: STFT cut to the mel band; int8 folds ReLUs, pools as depthwise convs.
EXPORT_RECIPE = 2

OUTPUT_KINDS = {name: kind for kind, name in OUTPUT_NAMES.items()}


def default_labels(classes_num: int) -> list[Label]:
    """The AudioSet table for 527-class models; other class counts must bring their labels."""
    from training.audioset import audioset_labels

    table = audioset_labels()
    if classes_num != len(table):
        raise ValueError(
            f"the model has {classes_num} classes: give its labels (the AudioSet table has "
            f"{len(table)}); fine-tuned checkpoints carry them under 'labels'"
        )
    return [Label(index=row.index, mid=row.mid, display_name=row.display_name) for row in table]


def custom_labels(names: Sequence[str]) -> list[Label]:
    """Labels for a fine-tuned model: AudioSet ids where the name is an AudioSet class."""
    from training.audioset import audioset_labels

    mids = {row.display_name: row.mid for row in audioset_labels()}
    return [
        Label(index=i, mid=mids.get(name, name), display_name=name) for i, name in enumerate(names)
    ]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """The software that made the bundle (part of the card, so part of its identity)."""
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "panns-serve": _version("panns-serve"),
        "opset": str(OPSET),
    }


def _output_spec(name: str, shape: list[int]) -> TensorSpec:
    dynamic = [-1, *shape[1:]]
    if name == "framewise_output":
        dynamic[1] = -1  # frames follow the input length
    return TensorSpec(name=name, shape=dynamic, kind=OUTPUT_KINDS[name])


def build_card(
    model: nn.Module,
    work: Path,
    *,
    arch: str,
    name: str,
    labels: list[Label],
    source: Source,
    files: dict[str, str],
    parity: dict[str, Parity],
    shapes: dict[str, list[int]],
) -> ModelCard:
    """The card for the graphs in ``work`` (``files``: variant -> file name)."""
    info = GraphSpec.of(model)
    sample_rate = info.sample_rate
    return ModelCard(
        name=name,
        arch=arch,
        sample_rate=sample_rate,
        clip_samples=10 * sample_rate,
        min_samples=info.min_samples,
        frames_per_second=info.frames_per_second,
        inputs=[TensorSpec(name=INPUT_NAME, shape=[-1, -1], kind="waveform")],
        outputs=[_output_spec(out, shapes[out]) for out in info.output_names],
        labels=labels,
        files={
            variant: FileEntry(  # type: ignore[misc]
                path=file,
                bytes=(work / file).stat().st_size,
                sha256=sha256_file(work / file),
            )
            for variant, file in files.items()
        },
        source=source,
        parity=parity,  # type: ignore[arg-type]
        versions=versions(),
        export_recipe=EXPORT_RECIPE,
    )
