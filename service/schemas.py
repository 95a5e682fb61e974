"""Response models: what every endpoint returns (so /docs shows the schemas)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.core.card import FileEntry, Label, Parity, Source, TensorSpec


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelRef(BaseModel):
    name: str
    arch: str
    checksum: str = Field(description="SHA-256 of the fp32 graph")
    provider: str
    precision: str


class Top(BaseModel):
    index: int
    mid: str
    label: str
    score: float


class WindowTop(BaseModel):
    start_s: float
    end_s: float
    top: list[Top]


class FileMetrics(BaseModel):
    decode_ms: float
    queue_ms: float = Field(description="longest wait of the file's windows before their batch")
    inference_ms: float = Field(description="compute time of the batches the windows ran in")
    total_ms: float
    windows: int
    batch_sizes: list[int] = Field(description="size of the batch each window ran in")


class FileResult(BaseModel):
    filename: str
    duration_s: float | None = None
    metrics: FileMetrics | None = None
    error: ErrorInfo | None = None


class TagResult(FileResult):
    scores: list[float] | None = Field(
        default=None, description="one score per label, in label order"
    )
    top: list[Top] | None = None
    windows: list[WindowTop] | None = Field(
        default=None, description="present with more than 1 window"
    )


class TagResponse(BaseModel):
    model: ModelRef
    results: list[TagResult]


class EmbedResult(FileResult):
    embedding: list[float] | None = Field(default=None, description="mean over windows")


class EmbedResponse(BaseModel):
    model: ModelRef
    results: list[EmbedResult]


class FrameTrack(BaseModel):
    index: int
    mid: str
    label: str
    scores: list[float] = Field(description="one score per frame at frames_per_second")


class Event(BaseModel):
    index: int
    mid: str
    label: str
    start_s: float
    end_s: float
    peak: float


class DetectResult(FileResult):
    frames_per_second: float | None = None
    tracks: list[FrameTrack] | None = Field(
        default=None, description="frame scores of the top classes"
    )
    events: list[Event] | None = None


class DetectResponse(BaseModel):
    model: ModelRef
    results: list[DetectResult]


class ServedModel(BaseModel):
    """A served model: its card (without labels) and how it runs."""

    name: str
    arch: str
    checksum: str
    default: bool
    provider: str
    precision: str
    variants: list[str]
    sample_rate: int
    clip_samples: int
    min_samples: int
    frames_per_second: float | None
    classes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    format_version: int
    files: dict[str, FileEntry]
    parity: dict[str, Parity]
    source: Source
    versions: dict[str, str]


class ModelsResponse(BaseModel):
    models: list[ServedModel]


class LabelsResponse(BaseModel):
    model: str
    labels: list[Label]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: list[str]
    error: str | None = None
