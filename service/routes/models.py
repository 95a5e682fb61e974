"""GET /v1/models (the cards without label lists) and GET /v1/labels."""

from __future__ import annotations

from fastapi import APIRouter

from service.core.models import ModelRuntime
from service.deps import ModelParam, TaggerDep
from service.routes.docs import error_responses
from service.schemas import LabelsResponse, ModelsResponse, ServedModel

router = APIRouter(tags=["models"])


def served_model(runtime: ModelRuntime) -> ServedModel:
    card, backend = runtime.card, runtime.backend
    return ServedModel(
        name=card.name,
        arch=card.arch,
        checksum=card.checksum,
        default=runtime.default,
        provider=backend.provider,
        precision=backend.precision,
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
async def list_models(tagger: TaggerDep) -> ModelsResponse:
    return ModelsResponse(models=[served_model(r) for r in tagger.models.models.values()])


@router.get("/v1/labels", response_model=LabelsResponse, responses=error_responses(404, 422, 503))
async def labels(tagger: TaggerDep, model: ModelParam = None) -> LabelsResponse:
    runtime = tagger.model(model)
    return LabelsResponse(model=runtime.name, labels=runtime.card.labels)
