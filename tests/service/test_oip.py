"""The Open Inference Protocol door, called by tritonclient (a client nobody here wrote).

A real server on a real exported bundle; results are compared with /v1 on the same audio.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.core.card import ModelCard, read_card
from tests.conftest import shared_path
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    engine_held,
    files,
    metric_total,
    noise,
    parse_metrics,
    settings_for,
    wait_held_queue,
)

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "oip-secret"


def auth() -> dict[str, str]:
    """A fresh headers dict each call: tritonclient adds its own headers to the one it gets."""
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    live = LiveServer(settings_for(tagger_bundle, api_keys=KEY)).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def triton(server: LiveServer) -> Iterator[Any]:
    client = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def card(tagger_bundle: Path) -> ModelCard:
    return read_card(tagger_bundle)


def v1(server: LiveServer, path: str, uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    with server.client(headers=auth()) as c:
        r = c.post(path, files=files(*uploads))
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def raw_infer(server: LiveServer, name: str, body: bytes, **headers: str) -> httpx.Response:
    with server.client(headers=auth()) as c:
        return c.post(f"/v2/models/{name}/infer", content=body, headers=headers)


def test_health_and_metadata(triton: Any, server: LiveServer, card: ModelCard) -> None:
    assert triton.is_server_live() and triton.is_server_ready()  # public, like /healthz
    assert triton.is_model_ready(card.name) and not triton.is_model_ready("nope")
    meta = triton.get_server_metadata(headers=auth())
    assert meta["name"] == "panns-serve" and "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata(card.name, headers=auth())
    version = card.checksum[:16]
    assert model["name"] == card.name and model["versions"] == [version]
    assert model["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {
        "waveform": ("FP32", [-1, -1]),
        "audio": ("BYTES", [-1]),
    }
    assert {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"]} == {
        o.name: ("FP32", o.shape) for o in card.outputs
    }
    assert model["outputs"][0]["shape"] == [-1, 527]
    assert triton.get_model_metadata(card.name, model_version=version, headers=auth()) == model
    assert triton.is_model_ready(card.name, model_version=version)
    with pytest.raises(InferenceServerException) as no_key:
        triton.get_model_metadata(card.name)
    assert no_key.value.status() == "401" and "API key" in no_key.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("nope", headers=auth())
    assert unknown.value.status() == "404" and "no model named 'nope'" in unknown.value.message()


@pytest.mark.parametrize(("seconds", "binary"), [(4.0, False), (15.0, True)])
def test_fp32_waveforms_equal_v1(
    triton: Any, server: LiveServer, card: ModelCard, seconds: float, binary: bool
) -> None:
    waves = np.stack([noise(seconds, 11), noise(seconds, 12)])  # 15 s: two windows per row
    tensor = tritonhttp.InferInput("waveform", list(waves.shape), "FP32")
    tensor.set_data_from_numpy(waves, binary_data=binary)
    outputs = [
        tritonhttp.InferRequestedOutput(name, binary_data=binary)
        for name in ("clipwise_output", "embedding")
    ]
    result = triton.infer(card.name, [tensor], outputs=outputs, request_id="req-7", headers=auth())
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == card.checksum[:16]
    clipwise, embedding = result.as_numpy("clipwise_output"), result.as_numpy("embedding")
    assert clipwise.dtype == np.float32 and clipwise.shape == (2, 527)
    uploads = [(f"{i}.wav", encode(w, RATE)) for i, w in enumerate(waves)]
    tags, embeds = v1(server, "/v1/tag", uploads), v1(server, "/v1/embed", uploads)
    assert tags[0]["metrics"]["windows"] == (2 if seconds > 10 else 1)
    assert np.std(clipwise) > 0.01  # informative scores: the comparison can fail
    np.testing.assert_allclose(clipwise, [t["scores"] for t in tags], atol=1e-6, rtol=0)
    np.testing.assert_allclose(embedding, [e["embedding"] for e in embeds], atol=1e-6, rtol=0)


def test_bytes_of_real_recordings_equal_v1(
    triton: Any, server: LiveServer, card: ModelCard
) -> None:
    paths = [shared_path("audio", "dog_howl.ogg"), shared_path("audio", "R9_ZSCveAHg_7s.mp3")]
    data = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    tensor = tritonhttp.InferInput("audio", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=True)
    result = triton.infer(card.name, [tensor], headers=auth())  # every output, as binary
    assert [o["name"] for o in result.get_response()["outputs"]] == [o.name for o in card.outputs]
    tags = v1(server, "/v1/tag", [(p.name, p.read_bytes()) for p in paths])
    np.testing.assert_allclose(
        result.as_numpy("clipwise_output"), [t["scores"] for t in tags], atol=1e-6, rtol=0
    )


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    message: str = body["error"]
    return message


def test_errors_have_the_protocol_shape(triton: Any, server: LiveServer, card: ModelCard) -> None:
    wave = noise(1.0, 3)[None]
    fp64 = tritonhttp.InferInput("waveform", [1, wave.shape[1]], "FP64")
    fp64.set_data_from_numpy(wave.astype(np.float64), binary_data=True)
    with pytest.raises(InferenceServerException) as bad_type:
        triton.infer(card.name, [fp64], headers=auth())
    assert bad_type.value.status() == "400"
    assert "input 'waveform' must be FP32, not FP64" in bad_type.value.message()
    good = tritonhttp.InferInput("waveform", [1, wave.shape[1]], "FP32")
    good.set_data_from_numpy(wave, binary_data=True)
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("nope", [good], headers=auth())
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException) as gzipped:
        triton.infer(card.name, [good], headers=auth(), request_compression_algorithm="gzip")
    assert gzipped.value.status() == "415"

    def body(**tensor: Any) -> bytes:
        base = {"name": "waveform", "shape": [1, 100], "datatype": "FP32", "data": [0.1] * 100}
        return orjson.dumps({"inputs": [{**base, **tensor}]})

    cases = [
        (body(data=[0.1] * 50), 400, "shape [1, 100] needs 100 values, data has 50"),
        (body(shape=[100]), 400, "must have shape [batch, samples]"),
        (body(name="pcm"), 400, "send one input: 'waveform'"),
        (body(data=[0.1, None] * 50), 400, "not FP32 numbers"),  # JSON has no NaN
        (body(shape=[33, 1], data=[0.1] * 33), 413, "at most 32 rows"),
        (b"not json", 400, "not valid JSON"),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["not audio"]}
                    ]
                }
            ),
            415,
            "audio[0]: ",
        ),
    ]
    for content, status, message in cases:
        r = raw_infer(server, card.name, content)
        assert r.status_code == status and message in error_of(r), (message, r.text)
    nan = np.full((1, 100), np.nan, np.float32).tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "waveform",
                    "shape": [1, 100],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(nan)},
                }
            ]
        }
    )
    r = raw_infer(
        server, card.name, head + nan, **{"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 400 and "waveform[0]: audio contains NaN" in error_of(r)
    windows = [  # out of range: a 400 like any bad request (/v1 answers 422)
        ({"window_s": 0.001}, "parameter window_s must be at least"),
        ({"window_s": -1.0}, "parameter window_s must be in (0, 60] seconds"),
        ({"window_s": 61}, "parameter window_s must be in (0, 60] seconds"),
        ({"hop_s": -0.5}, "parameter hop_s must be in (0, 60] seconds"),
        ({"hop_s": 1e9}, "parameter hop_s must be in (0, 60] seconds"),
        ({"hop_s": 0.001}, "parameter hop_s must be at least"),
        ({"window_s": "long"}, "parameter window_s must be a number"),
    ]
    for parameters, message in windows:
        params = orjson.dumps({**orjson.loads(body()), "parameters": parameters})
        r = raw_infer(server, card.name, params)
        assert r.status_code == 400 and message in error_of(r), (parameters, r.text)
    unknown_output = orjson.dumps({**orjson.loads(body()), "outputs": [{"name": "logits"}]})
    r = raw_infer(server, card.name, unknown_output)
    assert r.status_code == 400 and "has no output 'logits'" in error_of(r)
    r = raw_infer(server, card.name, body(), **{"Inference-Header-Content-Length": "999999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in error_of(r)
    r = raw_infer(server, card.name, b"\0" * (21 * 1024 * 1024))  # PANNS_MAX_UPLOAD_MB=20
    assert r.status_code == 413 and "exceeds" in error_of(r)
    with server.client() as c:  # no key
        r = c.post(f"/v2/models/{card.name}/infer", content=body())
        wrong_version = c.get(f"/v2/models/{card.name}/versions/1/ready")
    assert r.status_code == 401 and "API key" in error_of(r)
    assert wrong_version.status_code == 404 and "no version '1'" in error_of(wrong_version)


def test_metrics_count_the_v2_routes(server: LiveServer, card: ModelCard) -> None:
    wave = orjson.dumps(
        {
            "inputs": [
                {"name": "waveform", "shape": [1, 3200], "datatype": "FP32", "data": [0.0] * 3200}
            ]
        }
    )
    assert raw_infer(server, card.name, wave).status_code == 200
    assert raw_infer(server, "nope", wave).status_code == 404
    with server.client() as c:
        m = parse_metrics(c.get("/metrics").text)
    route = "/v2/models/{name}/infer"
    assert (
        metric_total(m, "panns_requests_total", endpoint=route, model=card.name, status="200") >= 1
    )
    assert metric_total(m, "panns_requests_total", endpoint=route, status="404") >= 1
    assert metric_total(m, "panns_audio_seconds_total", model=card.name) >= 0.1


def test_overload_is_503_with_retry_after(tagger_bundle: Path) -> None:
    """A queue filled by a /v1 request refuses an OIP request: they share the batcher."""
    live = LiveServer(
        settings_for(tagger_bundle, max_batch=1, max_delay_ms=0, max_queue=12)
    ).start()
    name = read_card(tagger_bundle).name
    wave = noise(120.0, 9)[None]  # 12 windows: they fit only an empty queue of 12
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "waveform",
                    "shape": list(wave.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": wave.nbytes},
                }
            ]
        }
    )
    first: list[httpx.Response] = []

    def long_v1_request() -> None:
        with live.client() as c:  # 12 windows: the queue's whole size
            first.append(
                c.post("/v1/tag", files=files(("long.wav", encode(noise(120.0, 7), RATE))))
            )

    try:
        waiting = threading.Thread(target=long_v1_request)
        # the engine is held while the OIP request comes: the queue cannot drain first
        with engine_held(live) as batcher:
            waiting.start()
            assert wait_held_queue(batcher, 12) >= 1
            refused = raw_infer(
                live,
                name,
                head + wave.tobytes(),
                **{"Inference-Header-Content-Length": str(len(head))},
            )
        waiting.join(60)
    finally:
        live.stop()
    assert refused.status_code == 503 and "queue is full" in error_of(refused)
    assert int(refused.headers["retry-after"]) >= 1
    assert first[0].status_code == 200
