"""The API over real HTTP on a real exported bundle: parity, formats, endpoints, metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.core.card import read_card
from tests.conftest import REPO_ROOT, shared_path
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    files,
    metric_total,
    noise,
    parse_metrics,
    run_bundle,
    settings_for,
    sine,
)


def test_scores_equal_the_bundle_on_a_10s_clip(
    tagger_server: LiveServer, tagger_bundle: Path
) -> None:
    x = noise(10.0, seed=1)
    r = tagger_server.post_clip("/v1/tag", "ten.wav", x)
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    expected = run_bundle(tagger_bundle, x)["clipwise"]
    assert expected.std() > 0.01  # informative outputs: the comparison below can fail
    np.testing.assert_allclose(entry["scores"], expected, atol=1e-4, rtol=0)
    assert entry["duration_s"] == pytest.approx(10.0)
    assert entry["windows"] is None and entry["metrics"]["windows"] == 1
    best = int(np.argmax(expected))
    assert entry["top"][0]["index"] == best and len(entry["top"]) == 10


def test_short_clip_without_padding_is_scored_at_its_length(
    tagger_server: LiveServer, tagger_bundle: Path
) -> None:
    x = noise(1.5, seed=2)
    r = tagger_server.post_clip("/v1/tag", "short.wav", x, pad="false", top_k=3)
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    np.testing.assert_allclose(
        entry["scores"], run_bundle(tagger_bundle, x)["clipwise"], atol=1e-4, rtol=0
    )
    padded = np.zeros(10 * RATE, np.float32)
    padded[: x.shape[0]] = x
    r = tagger_server.post_clip("/v1/tag", "short.wav", x)
    np.testing.assert_allclose(
        r.json()["results"][0]["scores"],
        run_bundle(tagger_bundle, padded)["clipwise"],
        atol=1e-4,
        rtol=0,
    )


def test_long_audio_is_windowed_and_aggregated(
    tagger_server: LiveServer, tagger_bundle: Path
) -> None:
    x = noise(25.0, seed=3)
    r_max = tagger_server.post_clip("/v1/tag", "long.wav", x)
    r_mean = tagger_server.post_clip("/v1/tag", "long.wav", x, aggregate="mean", hop_s=7.5)
    entry = r_max.json()["results"][0]
    tail = np.zeros(10 * RATE, np.float32)
    tail[: 5 * RATE] = x[20 * RATE :]
    rows = [
        run_bundle(tagger_bundle, w)["clipwise"]
        for w in (x[: 10 * RATE], x[10 * RATE : 20 * RATE], tail)
    ]
    np.testing.assert_allclose(entry["scores"], np.max(rows, axis=0), atol=1e-4)
    assert [(w["start_s"], w["end_s"]) for w in entry["windows"]] == [
        (0.0, 10.0),
        (10.0, 20.0),
        (20.0, 25.0),
    ]
    assert entry["metrics"]["windows"] == 3 and len(entry["metrics"]["batch_sizes"]) == 3
    mean_entry = r_mean.json()["results"][0]
    assert [w["start_s"] for w in mean_entry["windows"]] == [0.0, 7.5, 15.0]


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_U8", 16000, 1),
        ("WAV", "PCM_16", 44100, 2),
        ("WAV", "PCM_24", 48000, 1),
        ("WAV", "PCM_32", 22050, 1),
        ("WAV", "FLOAT", 8000, 3),
        ("FLAC", "PCM_16", 96000, 2),
        ("OGG", "VORBIS", 44100, 2),
        ("OGG", "OPUS", 48000, 1),
        ("MP3", "MPEG_LAYER_III", 44100, 2),
    ],
)
def test_every_format_rate_and_channel_count_over_http(
    tagger_server: LiveServer, fmt: str, subtype: str, rate: int, channels: int
) -> None:
    x = sine(440, 2.0, rate)
    data = encode(
        np.repeat(x[:, None], channels, axis=1) if channels > 1 else x, rate, fmt, subtype
    )
    with tagger_server.client() as c:
        r = c.post("/v1/tag", params={"pad": "false"}, files=files((f"a.{fmt}", data)))
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    assert abs(entry["duration_s"] - 2.0) < 0.1 and len(entry["scores"]) == 527


def test_real_recordings_in_one_multi_file_request(tagger_server: LiveServer) -> None:
    audio = shared_path("audio")
    paths = sorted(p for p in audio.iterdir() if p.suffix in (".wav", ".mp3", ".ogg"))
    assert len(paths) >= 10
    with tagger_server.client() as c:
        r = c.post("/v1/tag", files=files(*((p.name, p.read_bytes()) for p in paths)))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [e["filename"] for e in results] == [p.name for p in paths]  # upload order
    for path, entry in zip(paths, results, strict=True):
        info = sf.info(str(path))
        assert entry["error"] is None, entry
        assert abs(entry["duration_s"] - info.frames / info.samplerate) < 0.1
        windows = int(np.ceil(entry["duration_s"] / 10 - 1e-9))
        assert entry["metrics"]["windows"] == windows


def test_one_bad_file_fails_only_its_own_entry(tagger_server: LiveServer) -> None:
    good = encode(noise(1.0, seed=4), RATE)
    with tagger_server.client() as c:
        r = c.post(
            "/v1/tag",
            files=files(
                ("a.wav", good), ("bad.bin", b"\x00" * 100), ("empty.wav", b""), ("b.wav", good)
            ),
        )
        assert r.status_code == 200
        res = r.json()["results"]
        assert [e["error"] is None for e in res] == [True, False, False, True]
        assert res[1]["error"]["code"] == "unsupported_format" and res[1]["scores"] is None
        assert res[2]["error"]["code"] == "empty_audio"
        assert res[0]["scores"] == res[3]["scores"]
        r = c.post("/v1/tag", files=files(("bad.bin", b"\x00" * 100), ("e.wav", b"")))
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_format"


def test_embed_returns_the_mean_embedding(tagger_server: LiveServer, tagger_bundle: Path) -> None:
    x = noise(12.0, seed=5)
    r = tagger_server.post_clip("/v1/embed", "e.wav", x)
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    padded = np.zeros(10 * RATE, np.float32)
    padded[: 2 * RATE] = x[10 * RATE :]
    expected = np.mean(
        [run_bundle(tagger_bundle, w)["embedding"] for w in (x[: 10 * RATE], padded)], axis=0
    )
    np.testing.assert_allclose(entry["embedding"], expected, atol=1e-4, rtol=1e-4)


def test_detect_refuses_a_model_without_framewise_output(tagger_server: LiveServer) -> None:
    r = tagger_server.post_clip("/v1/detect", "a.wav", noise(1.0, 6))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "no_framewise_output"
    assert "framewise" in r.json()["error"]["message"]


def test_models_labels_and_openapi(tagger_server: LiveServer, tagger_bundle: Path) -> None:
    card = read_card(tagger_bundle)
    with tagger_server.client() as c:
        models = c.get("/v1/models").json()["models"]
        labels = c.get("/v1/labels").json()
        unknown = c.get("/v1/labels", params={"model": "nope"})
        schema = c.get("/openapi.json").json()
        docs = c.get("/docs")
    assert len(models) == 1 and "labels" not in models[0]
    m = models[0]
    assert (m["name"], m["checksum"], m["default"]) == (card.name, card.checksum, True)
    assert m["provider"] == "CPUExecutionProvider" and m["precision"] == "fp32"
    assert m["files"]["fp32"]["sha256"] == card.checksum and "fp32" in m["parity"]
    assert m["sample_rate"] == card.sample_rate and m["min_samples"] == card.min_samples
    assert labels["model"] == card.name and len(labels["labels"]) == 527
    assert labels["labels"][0] == card.labels[0].model_dump()
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    assert docs.status_code == 200
    names = set(schema["components"]["schemas"])
    assert {
        "TagResponse",
        "EmbedResponse",
        "DetectResponse",
        "ModelsResponse",
        "ErrorResponse",
        "Readiness",
    } <= names
    tag_ok = schema["paths"]["/v1/tag"]["post"]["responses"]["200"]
    assert tag_ok["content"]["application/json"]["schema"]["$ref"].endswith("TagResponse")
    for path in ("/v1/tag", "/v1/embed", "/v1/detect"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]
        assert "file" in body["multipart/form-data"]["schema"]["properties"]


def test_request_id_is_echoed_or_generated(tagger_server: LiveServer) -> None:
    with tagger_server.client() as c:
        given = c.get("/healthz", headers={"X-Request-ID": "my-id-42"})
        made = c.get("/healthz")
    assert given.headers["x-request-id"] == "my-id-42"
    assert len(made.headers["x-request-id"]) == 32


def test_metrics_parse_and_count(tagger_server: LiveServer, tagger_bundle: Path) -> None:
    name = read_card(tagger_bundle).name
    with tagger_server.client() as c:
        c.post("/v1/tag", files=files(("a.wav", encode(noise(3.0, 7), RATE))))
        c.post("/v1/tag", files=files(("x.bin", b"garbage!" * 10)))
        c.get("/healthz")
        c.get("/readyz")
        c.get("/metrics")
        text = c.get("/metrics").text
    m = parse_metrics(text)
    assert (
        metric_total(m, "panns_requests_total", endpoint="/v1/tag", model=name, status="200") >= 1
    )
    assert metric_total(m, "panns_requests_total", endpoint="/v1/tag", status="415") >= 1
    assert metric_total(m, "panns_decode_failures_total", reason="unsupported_format") >= 1
    assert metric_total(m, "panns_audio_seconds_total", model=name) >= 3.0
    assert metric_total(m, "panns_batch_size_count", model=name) >= 1
    for hist in (
        "panns_request_duration_seconds",
        "panns_queue_wait_seconds",
        "panns_compute_seconds",
    ):
        assert metric_total(m, f"{hist}_count") >= 1, hist
    assert metric_total(m, "panns_queue_depth", model=name) == 0
    # The scrape is neither in flight nor counted, nor are the probes; latency has a status.
    assert m["panns_inflight_requests"] == {(): 0.0}
    for probe in ("/metrics", "/healthz", "/readyz"):
        assert metric_total(m, "panns_requests_total", endpoint=probe) == 0, probe
        assert metric_total(m, "panns_request_duration_seconds_count", endpoint=probe) == 0
    assert (
        metric_total(m, "panns_request_duration_seconds_count", endpoint="/v1/tag", status="415")
        >= 1
    )
    # Each inference endpoint's 5xx series exist from the start (at 0 until an error).
    for endpoint in ("/v1/tag", "/v1/embed", "/v1/detect"):
        for status in ("500", "503", "504"):
            key = (("endpoint", endpoint), ("model", name), ("status", status))
            assert m["panns_requests_total"][key] == 0, key
    assert m["process_resident_memory_bytes"][()] > 0 and "process_open_fds" in m
    assert "python_info" in m
    info = [dict(k) for k in m["panns_model_info"]]
    assert info[0]["provider"] == "CPUExecutionProvider" and info[0]["model"] == name


def test_api_keys(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, api_keys="alpha, beta")).start()
    try:
        with server.client() as c:
            wav = files(("a.wav", encode(noise(1.0, 8), RATE)))
            missing = c.post("/v1/tag", files=wav)
            wrong = c.post("/v1/tag", files=wav, headers={"Authorization": "Bearer nope"})
            bearer = c.post("/v1/tag", files=wav, headers={"Authorization": "Bearer beta"})
            header = c.get("/v1/models", headers={"X-API-Key": "alpha"})
            models = c.get("/v1/models")
            open_paths = [c.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")]
    finally:
        server.stop()
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "wrong API key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert bearer.status_code == 200 and header.status_code == 200
    assert models.status_code == 401 and open_paths == [200, 200, 200]


def test_service_never_imports_torch_or_training() -> None:
    code = (
        "import sys, service.app, service.__main__; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'training'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


@pytest.mark.slow
def test_model_as_form_field_raw_body_and_pcm(tagger_bundle: Path, sed_bundle: Path) -> None:
    sed = read_card(sed_bundle).name
    x = noise(3.0, seed=31)
    wav = encode(x, RATE)
    pcm16 = (np.clip(x, -1, 1) * 32767).astype("<i2")
    server = LiveServer(settings_for(tagger_bundle, sed_bundle)).start()
    try:
        with server.client() as c:
            form = c.post("/v1/tag", files=files(("a.wav", wav)), data={"model": sed})
            query = c.post("/v1/tag", params={"model": sed}, files=files(("a.wav", wav)))
            raw = c.post("/v1/tag", content=wav, headers={"Content-Type": "audio/wav"})
            multi = c.post("/v1/tag", files=files(("a.wav", wav)))
            pcm = c.post(
                "/v1/tag",
                params={"sample_rate": RATE, "dtype": "int16"},
                content=pcm16.tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            no_rate = c.post(
                "/v1/tag",
                content=pcm16.tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            odd = c.post(
                "/v1/tag",
                params={"sample_rate": RATE},
                content=b"\x00" * 3,
                headers={"Content-Type": "application/octet-stream"},
            )
            slim = c.post("/v1/tag", params={"scores": "false"}, files=files(("a.wav", wav)))
    finally:
        server.stop()
    assert form.status_code == 200 and form.json()["model"]["name"] == sed
    assert form.json()["results"][0]["scores"] == query.json()["results"][0]["scores"]
    assert raw.status_code == 200 and raw.json()["results"][0]["filename"] == "body"
    assert raw.json()["results"][0]["scores"] == multi.json()["results"][0]["scores"]
    assert pcm.status_code == 200, pcm.text
    np.testing.assert_allclose(
        pcm.json()["results"][0]["scores"], multi.json()["results"][0]["scores"], atol=2e-3
    )
    assert no_rate.status_code == 422 and "sample_rate" in no_rate.json()["error"]["message"]
    assert odd.status_code == 400, odd.text
    assert slim.json()["results"][0]["scores"] is None and slim.json()["results"][0]["top"]
