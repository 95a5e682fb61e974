"""The model bundle card (``model.json``): the one schema shared by export and serving.

A bundle is a directory holding ONNX graph(s) and this card. ``model_export`` writes it;
``service`` reads it. This module needs only pydantic and the standard library so the
service can import it without torch; ``model_export`` imports it, never the other way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
CARD_FILE = "model.json"

# The contract's names, each defined once.
Variant = Literal["fp32", "fp16", "int8"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
EXTRA_VARIANTS: tuple[Variant, ...] = ("fp16", "int8")  # made from fp32 on request
VARIANT_FILES: dict[Variant, str] = {
    "fp32": "model.onnx",
    "fp16": "model.fp16.onnx",
    "int8": "model.int8.onnx",
}
OutputKind = Literal["clipwise", "embedding", "framewise"]
TensorKind = Literal["waveform", "clipwise", "embedding", "framewise"]


def as_output_kind(kind: TensorKind) -> OutputKind | None:
    """A tensor's kind as an output's (None for ``waveform``, the input's kind)."""
    return None if kind == "waveform" else kind


# The graph's output name for each kind of output.
OUTPUT_NAMES: dict[OutputKind, str] = {
    "clipwise": "clipwise_output",
    "embedding": "embedding",
    "framewise": "framewise_output",
}


class BundleError(Exception):
    """A bundle directory that cannot be used: missing, corrupted, truncated or malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    index: int = Field(ge=0)
    mid: str  # AudioSet machine id (e.g. "/m/09x0r"), or a custom id for fine-tuned models
    display_name: str


class TensorSpec(_Strict):
    name: str
    shape: list[int]  # -1 marks a dynamic axis
    dtype: str = "float32"
    kind: TensorKind


class FileEntry(_Strict):
    path: str  # relative to the bundle directory
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Source(_Strict):
    checkpoint: str | None = None  # checkpoint file name
    sha256: str | None = None  # checkpoint SHA-256


class Parity(_Strict):
    """How one variant was verified against the PyTorch model it was exported from."""

    inputs: list[str]  # descriptions of the verification inputs, e.g. "2x10s generated"
    max_abs_diff: dict[str, float]  # output name -> max abs difference vs PyTorch
    tolerance: float | None = None  # the bound max_abs_diff on probabilities had to meet
    top10_agreement: float | None = None  # mean overlap of top-10 classes vs fp32 (int8)


class ModelCard(_Strict):
    format_version: int = FORMAT_VERSION
    name: str
    arch: str
    sample_rate: int = Field(gt=0)
    clip_samples: int = Field(gt=0)  # the training window (10 s)
    min_samples: int = Field(gt=0)  # the shortest input the graph accepts
    frames_per_second: float | None = None  # framewise_output frame rate, when present
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[Label]
    files: dict[Variant, FileEntry]
    source: Source = Source()
    parity: dict[Variant, Parity] = {}
    versions: dict[str, str] = {}  # torch / onnx / onnxruntime / panns-serve that made it
    # How model_export built the graphs (model_export.card.EXPORT_RECIPE); cards from before it
    # was recorded read as 1. `model_export.ensure` re-exports bundles of an older recipe.
    export_recipe: int = Field(default=1, ge=1)

    @property
    def checksum(self) -> str:
        """The fp32 graph's SHA-256: identifies exactly which weights serve a request."""
        return self.files["fp32"].sha256


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_card(bundle_dir: Path | str) -> ModelCard:
    """Parse ``model.json`` of a bundle; raise ``BundleError`` naming the problem."""
    path = Path(bundle_dir) / CARD_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a model bundle (no {CARD_FILE})")
    try:
        card = ModelCard.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"{path}: invalid model card: {first}") from exc
    if card.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: card format_version {card.format_version}, this code reads {FORMAT_VERSION}"
        )
    if "fp32" not in card.files:
        raise BundleError(f"{path}: the card lists no fp32 graph")
    return card


def verify_file(bundle_dir: Path | str, entry: FileEntry) -> Path:
    """Check one bundle file's size and SHA-256 against the card; return its path."""
    path = Path(bundle_dir) / entry.path
    if not path.is_file():
        raise BundleError(f"{path}: missing (listed in {CARD_FILE})")
    size = path.stat().st_size
    if size != entry.bytes:
        raise BundleError(f"{path}: {size} bytes, the card says {entry.bytes} (truncated?)")
    if sha256_file(path) != entry.sha256:
        raise BundleError(f"{path}: SHA-256 differs from the card (corrupted or replaced)")
    return path


def load_bundle(bundle_dir: Path | str, verify: bool = True) -> ModelCard:
    """Read a bundle's card and, by default, verify every file it lists."""
    card = read_card(bundle_dir)
    if verify:
        for entry in card.files.values():
            verify_file(bundle_dir, entry)
    return card


def write_card(bundle_dir: Path | str, card: ModelCard) -> Path:
    """Write ``model.json`` (stable key order, so re-exports give identical bytes)."""
    path = Path(bundle_dir) / CARD_FILE
    text = json.dumps(card.model_dump(mode="json"), indent=2, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path
