"""Response models: what every endpoint returns (so /docs shows the schemas)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.core.card import FileEntry, Label, Parity, Source, TensorSpec


class FileError(BaseModel):
    filename: str = Field(examples=["a.wav"])
    code: str = Field(examples=["empty_audio"])
    message: str = Field(examples=["the file holds no samples"])


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable reason", examples=["invalid_parameters"])
    message: str = Field(description="what is wrong, for a person", examples=["top_k: ..."])
    files: list[FileError] | None = Field(
        default=None, description="when no uploaded file could be used: each file's reason"
    )


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorInfo


class ModelRef(BaseModel):
    name: str = Field(examples=["cnn14"])
    arch: str = Field(examples=["Cnn14"])
    checksum: str = Field(description="SHA-256 of the fp32 graph", examples=["9f2c…"])
    provider: str = Field(examples=["CPUExecutionProvider"])
    precision: str = Field(examples=["fp32"])


class Top(BaseModel):
    index: int = Field(description="class index in the label list", examples=[0])
    mid: str = Field(description="AudioSet id", examples=["/m/09x0r"])
    label: str = Field(examples=["Speech"])
    score: float = Field(examples=[0.91])


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
    status: str = Field(description="ok | failed (the models cannot load)", examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready | loading | failed", examples=["ready"])
    models: list[str] = Field(examples=[["cnn14"]])
    error: str | None = Field(
        default=None, description="why loading failed (details for authenticated callers)"
    )
