"""The upload routes' query parameters: one pydantic model per route, validated in one step.

FastAPI resolves each declared query parameter, and each dependency declaring some, on its
own at every request: /v1/tag's 11 parameters in three dependencies took ~0.4 ms per request
in a front (``solve_dependencies``, 16% of the event loop's time under load), more than
decoding a 10 s WAV. A route declares instead one dependency (``deps.query_params``) that
validates the query string against its model at once: the same types, bounds and defaults
(pydantic either way), the same 422 for a bad value (a ``RequestValidationError`` located
at ``query.<name>``), and the same parameters in the OpenAPI document (``openapi_parameters``
for the route's ``openapi_extra``). Unknown parameters are ignored, as FastAPI does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.inputs import PcmFormat
from service.core.pipeline import WindowSpec
from service.core.tasks import DetectOptions, TagOptions


class UploadQuery(BaseModel):
    """What every upload route reads: the model, how to cut windows, a raw PCM body's layout."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str | None = Field(
        None, max_length=200, description="model name (or a form field `model`)"
    )
    window_s: float | None = Field(None, gt=0, le=60, description="default: card's")
    hop_s: float | None = Field(None, gt=0, le=60, description="default: window_s")
    pad: bool = Field(True, description="zero-pad the last window")
    sample_rate: int | None = Field(
        None, ge=1000, le=384000, description="raw PCM body: its sample rate"
    )
    channels: int = Field(1, ge=1, le=64, description="raw PCM body: channels")
    dtype: Literal["int16", "float32"] = Field("int16", description="raw PCM body: sample type")

    def window(self) -> WindowSpec:
        return WindowSpec(self.window_s, self.hop_s, self.pad)

    def pcm(self) -> PcmFormat | None:
        """The raw PCM layout, when ``sample_rate`` names one."""
        if self.sample_rate is None:
            return None
        return PcmFormat(self.sample_rate, self.channels, self.dtype)


class TagQuery(UploadQuery):
    top_k: int = Field(10, ge=1, le=1000)
    threshold: float | None = Field(None, ge=0, le=1)
    aggregate: Literal["max", "mean"] = "max"
    scores: bool = Field(True, description="false: only `top` (smaller responses)")

    def options(self) -> TagOptions:
        return TagOptions(self.top_k, self.threshold, self.aggregate)


class DetectQuery(UploadQuery):
    top_k: int = Field(5, ge=1, le=1000, description="classes with frame scores")
    threshold: float = Field(0.5, ge=0, le=1, description="event threshold")
    min_duration_s: float = Field(0.1, ge=0, le=3600)
    frames_per_second: float | None = Field(
        None,
        gt=0,
        description="decimate frame scores (max-pool) to about this; at most the "
        "model's own frame rate",
    )

    def options(self, max_values: int) -> DetectOptions:
        return DetectOptions(
            self.top_k, self.threshold, self.min_duration_s, self.frames_per_second, max_values
        )


def openapi_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as OpenAPI query parameters, as FastAPI writes declared ones."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        param["schema"] = prop
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params
