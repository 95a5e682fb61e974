"""GET /v1/models (the cards without label lists) and GET /v1/labels."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.core.models import ModelRuntime
from service.routes.common import RuntimeDep, runtimes_of
from service.schemas import LabelsResponse, ModelInfo, ModelsResponse

router = APIRouter(tags=["models"])


def model_info(runtime: ModelRuntime) -> ModelInfo:
    card = runtime.card
    return ModelInfo(
        name=card.name,
        arch=card.arch,
        checksum=card.checksum,
        default=runtime.default,
        provider=runtime.engine.provider,
        precision=runtime.engine.precision,
        variants=list(card.files),
        sample_rate=card.sample_rate,
        clip_samples=card.clip_samples,
        min_samples=card.min_samples,
        frames_per_second=card.frames_per_second,
        classes=len(card.labels),
        inputs=card.inputs,
        outputs=card.outputs,
        format_version=card.format_version,
        files={str(k): v for k, v in card.files.items()},
        parity={str(k): v for k, v in card.parity.items()},
        source=card.source,
        versions=card.versions,
    )


@router.get("/v1/models", response_model=ModelsResponse)
async def list_models(request: Request) -> ModelsResponse:
    runtimes = runtimes_of(request)
    return ModelsResponse(models=[model_info(r) for r in runtimes.models.values()])


@router.get("/v1/labels", response_model=LabelsResponse)
async def labels(runtime: RuntimeDep) -> LabelsResponse:
    return LabelsResponse(model=runtime.name, labels=runtime.card.labels)
