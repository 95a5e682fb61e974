"""The Open Inference Protocol door (v2 REST): KServe and Triton clients onto the same core.

``GET /v2/health/live|ready`` and ``/v2/models/{name}/ready`` are public like /healthz; server
and model metadata and ``POST /v2/models/{name}/infer`` need the API key when keys are set.
Inference goes through the same tagger and batcher as /v1 (shared batches, same limits, 503
when the queue is full). One input per request: ``waveform``, FP32 ``[batch, samples]`` at the
model's rate (each row one clip), or ``audio``, BYTES ``[batch]`` of encoded files. Each row
is windowed as /v1 does (request parameters ``window_s``, ``hop_s``, ``pad``, same defaults);
outputs are clipwise (max over windows), embedding (mean) and framewise (stitched; rows of a
BYTES batch of different lengths are zero-padded to the longest). Errors are the protocol's
``{"error": "..."}`` with the status of ``service.errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.card import ModelCard, OutputKind
from service.core.errors import InvalidParameters, UnknownModel
from service.core.inputs import AudioInput
from service.core.models import ModelRuntime
from service.core.pipeline import WindowSpec
from service.core.results import TensorResult
from service.core.tagger import Tagger
from service.deps import settings_of, tagger_of
from service.errors import ApiError, to_api_error
from service.oip import (
    BINARY_EXTENSION,
    HEADER,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    Tensor,
    encode_response,
    header_length,
    model_version,
    parse_request,
)
from service.routes.inference import watch
from service.upload import BodyLimits, read_bytes

log = logging.getLogger("service.routes.oip")

SERVER_NAME = "panns-serve"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx"}
INPUTS = {"waveform": "FP32", "audio": "BYTES"}
# The JSON part of a request: tensors sent as JSON text cost far more memory once parsed
# than their bytes, so large ones must come as binary data.
MAX_JSON_BYTES = 16 * 1024 * 1024


def oip_error(exc: Exception) -> JSONResponse:
    """Any failure as the protocol's ``{"error": "..."}`` with the service's status."""
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        status, message, headers = exc.status, exc.message, exc.headers
    elif isinstance(exc, RequestValidationError):
        status, message = 400, "; ".join(str(e.get("msg", "invalid")) for e in exc.errors())
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, InvalidParameters):  # /v1's 422; the protocol's bad request is 400
        status, message = 400, f"parameter {exc}"
    else:
        err = to_api_error(exc)
        status, message, headers = err.status, err.message, err.headers
        if status == 500:
            log.exception("unhandled error in the OIP door", exc_info=exc)
            message = "internal server error"
    return JSONResponse({"error": message}, status, headers=headers or None)


class OipRoute(APIRoute):
    """A route whose every error, from its dependencies too, has the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return oip_error(exc)

        return run


# Left out of /docs: the protocol has its own published OpenAPI document (KServe's
# open_inference_rest.yaml) and its own error shape.
router = APIRouter(route_class=OipRoute, include_in_schema=False)  # needs the key
public = APIRouter(route_class=OipRoute, include_in_schema=False)  # health


def runtime_for(tagger: Tagger, name: str, version: str | None) -> ModelRuntime:
    runtime = tagger.models.get(name)
    if version is not None and version != model_version(runtime.card):
        raise UnknownModel(
            f"model {name!r} has no version {version!r}; it serves {model_version(runtime.card)}"
        )
    return runtime


@public.get("/v2/health/live")
async def live(request: Request) -> JSONResponse:
    failed = tagger_of(request).models.error is not None
    return JSONResponse({"live": not failed}, 503 if failed else 200)


@public.get("/v2/health/ready")
async def ready(request: Request) -> JSONResponse:
    models = tagger_of(request).models
    headers = None if models.ready else {"Retry-After": "5"}
    return JSONResponse({"ready": models.ready}, 200 if models.ready else 503, headers=headers)


@public.get("/v2/models/{name}/ready")
@public.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    models = tagger_of(request).models
    if not models.ready:
        return JSONResponse({"name": name, "ready": False}, 503, headers={"Retry-After": "5"})
    runtime = runtime_for(tagger_of(request), name, version)
    return JSONResponse({"name": runtime.name, "ready": True})


@router.get("/v2")
async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse(
        {"name": SERVER_NAME, "version": request.app.version, "extensions": [BINARY_EXTENSION]}
    )


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
    runtime = runtime_for(tagger_of(request), name, version)
    request.state.model = runtime.name
    card, backend = runtime.card, settings_of(request).backend
    return JSONResponse(
        {
            "name": card.name,
            "versions": [model_version(card)],
            "platform": PLATFORMS.get(backend, backend),
            "inputs": [
                {"name": "waveform", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "audio", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": o.name, "datatype": "FP32", "shape": o.shape}
                for o in card.outputs
                if o.name in runtime.backend.kinds
            ],
        }
    )


def _sources(req: InferRequest, card: ModelCard, max_files: int) -> list[AudioInput]:
    """The request's one input as core inputs, one per row."""
    expected = (
        f"send one input: 'waveform' (FP32 [batch, samples] at {card.sample_rate} Hz) "
        "or 'audio' (BYTES [batch] of encoded files)"
    )
    if len(req.inputs) != 1 or req.inputs[0].name not in INPUTS:
        raise ProtocolError(f"{expected}; got {[t.name for t in req.inputs]}")
    tensor = req.inputs[0]
    if tensor.datatype != INPUTS[tensor.name]:
        raise ProtocolError(
            f"input {tensor.name!r} must be {INPUTS[tensor.name]}, not {tensor.datatype}"
        )
    rank = 2 if tensor.name == "waveform" else 1
    if len(tensor.shape) != rank or 0 in tensor.shape:
        layout = "[batch, samples]" if rank == 2 else "[batch]"
        raise ProtocolError(f"input {tensor.name!r} must have shape {layout}, not {tensor.shape}")
    if tensor.shape[0] > max_files:
        raise ApiError(413, "too_many_files", f"at most {max_files} rows per request")
    if isinstance(tensor.data, np.ndarray):
        return [
            AudioInput(f"waveform[{i}]", waveform=row, sample_rate=card.sample_rate)
            for i, row in enumerate(tensor.data)
        ]
    return [AudioInput(f"audio[{i}]", data=item) for i, item in enumerate(tensor.data)]


def _outputs(
    req: InferRequest, runtime: ModelRuntime
) -> list[tuple[str, OutputKind, RequestedOutput | None]]:
    """(output name, kind, what the request asked of it) for every output to return."""
    kinds = runtime.backend.kinds
    if req.outputs is None:
        return [(name, kind, None) for name, kind in kinds.items()]
    names = [o.name for o in req.outputs]
    for name in names:
        if name not in kinds:
            have = ", ".join(kinds)
            raise ProtocolError(f"model {runtime.name!r} has no output {name!r}; it has {have}")
    if len(set(names)) != len(names):
        raise ProtocolError("an output is requested twice")
    return [(o.name, kinds[o.name], o) for o in req.outputs]


def _window(params: dict[str, Any]) -> WindowSpec:
    """The /v1 window parameters, given as request parameters (the tagger checks them for
    the model; ``oip_error`` answers its ``InvalidParameters`` with the protocol's 400)."""
    seconds = {}
    for key in ("window_s", "hop_s"):
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ProtocolError(f"parameter {key} must be a number of seconds")
        seconds[key] = None if value is None else float(value)
    pad = params.get("pad", True)
    if not isinstance(pad, bool):
        raise ProtocolError("parameter pad must be true or false")
    return WindowSpec(seconds["window_s"], seconds["hop_s"], pad)


def _raise_first_error(results: list[TensorResult]) -> None:
    """The protocol has no per-row errors: the first bad row fails the request."""
    for result in results:
        if result.error is not None:
            err = to_api_error(result.error)
            err.message = f"{result.filename}: {err.message}"
            raise err


def _batch(results: list[TensorResult], kind: OutputKind) -> np.ndarray:
    rows = [r.outputs[kind] for r in results]
    if kind != "framewise":
        return np.stack(rows)
    out = np.zeros((len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]), np.float32)
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out


async def _read(request: Request) -> InferRequest:
    settings = settings_of(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding} is refused")
    limits = BodyLimits.of(settings)
    body = await read_bytes(request, limits)
    header = header_length(request.headers.get(HEADER), len(body))
    return parse_request(body, header, min(MAX_JSON_BYTES, settings.max_upload_bytes))


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    tagger = tagger_of(request)
    with tagger.admit():  # a drain waits for this request, body and all
        runtime = runtime_for(tagger, name, version)  # 404 / 503 before reading the body
        request.state.model = runtime.name
        req = await _read(request)
        sources = _sources(req, runtime.card, settings_of(request).max_files)
        wanted = _outputs(req, runtime)
        window = _window(req.parameters)
        call = tagger.tensors_many(
            sources, model=runtime.name, kinds=[k for _, k, _ in wanted], window=window
        )
        results = await watch(request, call)
    _raise_first_error(results)
    tensors = []
    for out_name, kind, asked in wanted:
        data = _batch(results, kind)
        tensors.append((Tensor(out_name, "FP32", data.shape, data), req.binary(asked)))
    body, header = encode_response(runtime.name, model_version(runtime.card), req.id, tensors)
    if header is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER: str(header)})
