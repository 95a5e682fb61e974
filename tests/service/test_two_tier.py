"""Two tiers: a front replica (``PANNS_BACKEND=oip``) sends its batches to an engine replica.

Both are real servers; the engine alone is the one-process service the front must match.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.core.backends import BackendOptions
from service.core.backends.oip import OipBackend
from service.core.card import BundleError, read_card
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

KEY = "engine-key"


@pytest.fixture(scope="module")
def tiers(tagger_bundle: Path, sed_bundle: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    engine = LiveServer(settings_for(tagger_bundle, sed_bundle, api_keys=KEY)).start()
    front = LiveServer(
        settings_for(
            tagger_bundle, sed_bundle, backend="oip", engine_url=engine.url, engine_api_key=KEY
        )
    ).start()
    yield engine, front
    front.stop()
    engine.stop()


def post(server: LiveServer, path: str, audio: bytes, **params: Any) -> dict[str, Any]:
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.post(path, params=params, files=files(("a.wav", audio)))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


@pytest.mark.parametrize("params", [{}, {"window_s": 4, "hop_s": 3, "pad": "false"}])
def test_front_tags_and_embeds_like_one_process(
    tiers: tuple[LiveServer, LiveServer], tagger_bundle: Path, params: dict[str, Any]
) -> None:
    engine, front = tiers
    name = read_card(tagger_bundle).name
    audio = encode(noise(25.0, 21), RATE)  # 3 windows; with a 4 s window, a short last one
    for path in ("/v1/tag", "/v1/embed"):
        one = post(engine, path, audio, model=name, **params)
        two = post(front, path, audio, model=name, **params)
        key = "scores" if path == "/v1/tag" else "embedding"
        assert np.std(one[key]) > 0.01
        np.testing.assert_allclose(two[key], one[key], atol=1e-6, rtol=0)
        assert two["metrics"]["windows"] == one["metrics"]["windows"] >= 3
    with front.client() as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert models[name]["provider"] == "oip:CPUExecutionProvider"
    with engine.client() as c:
        m = parse_metrics(c.get("/metrics").text)
    assert (
        metric_total(
            m,
            "panns_requests_total",
            model=name,
            status="200",
            endpoint="/v2/models/{name}/versions/{version}/infer",
        )
        >= 1
    )


def test_front_detects_like_one_process(
    tiers: tuple[LiveServer, LiveServer], sed_bundle: Path
) -> None:
    engine, front = tiers
    name = read_card(sed_bundle).name
    x = noise(12.0, 22) + sine(440.0, 12.0, RATE, 0.3)
    one = post(engine, "/v1/detect", encode(x, RATE), model=name, threshold=0.2)
    two = post(front, "/v1/detect", encode(x, RATE), model=name, threshold=0.2)
    assert [t["index"] for t in two["tracks"]] == [t["index"] for t in one["tracks"]]
    for a, b in zip(two["tracks"], one["tracks"], strict=True):
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6, rtol=0)
    assert two["events"] == one["events"]


def test_engine_framewise_is_the_graphs(
    tiers: tuple[LiveServer, LiveServer], sed_bundle: Path
) -> None:
    """OIP framewise_output of a 10 s row: the graph's frames, cut to the clip's 10 s."""
    engine, _ = tiers
    card = read_card(sed_bundle)
    x = noise(10.0, 23)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "waveform",
                    "shape": [1, x.size],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "framewise_output"}],
        }
    )
    with engine.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.post(
            f"/v2/models/{card.name}/infer",
            content=head + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    frames = np.asarray(out["data"], np.float32).reshape(out["shape"])
    expected = run_bundle(sed_bundle, x)["framewise"]
    assert frames.shape == (1, 1000, 527) and expected.shape[0] >= 1000
    np.testing.assert_allclose(frames[0], expected[:1000], atol=1e-5, rtol=0)


def test_front_refuses_an_engine_with_other_weights_or_key(
    tiers: tuple[LiveServer, LiveServer], tagger_bundle: Path, tmp_path: Path
) -> None:
    engine, _ = tiers
    card = json.loads((tagger_bundle / "model.json").read_text())
    card["files"]["fp32"]["sha256"] = "0" * 64  # a model.json of other weights
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="does not serve model"):
        OipBackend(tmp_path, BackendOptions(url=engine.url, api_key=KEY))
    with pytest.raises(BundleError, match="refused the key"):
        OipBackend(tagger_bundle, BackendOptions(url=engine.url, api_key="wrong"))
    with pytest.raises(BundleError, match="PANNS_ENGINE_URL"):
        OipBackend(tagger_bundle, BackendOptions())


def test_front_answers_503_when_the_engine_is_gone(tagger_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "card-only"  # the front needs model.json, not the graphs
    bundle.mkdir()
    shutil.copy(tagger_bundle / "model.json", bundle)
    engine = LiveServer(settings_for(tagger_bundle)).start()
    front = LiveServer(settings_for(bundle, backend="oip", engine_url=engine.url)).start()
    try:
        audio = encode(noise(2.0, 24), RATE)
        assert np.std(post(front, "/v1/tag", audio)["scores"]) > 0.01
        engine.stop()
        with front.client() as c:
            r = c.post("/v1/tag", files=files(("a.wav", audio)))
    finally:
        front.stop()
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    assert engine.url in r.json()["error"]["message"] and r.headers["retry-after"] == "5"
