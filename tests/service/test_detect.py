"""/v1/detect on a framewise (decision-level) model: frames, tracks and events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.core.card import read_card
from tests.service.conftest import RATE, LiveServer, encode, files, noise, run_bundle, settings_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(tagger_bundle: Path, sed_bundle: Path) -> Iterator[LiveServer]:
    server = LiveServer(settings_for(tagger_bundle, sed_bundle)).start()
    yield server
    server.stop()


def test_detect_matches_the_framewise_output(two_models: LiveServer, sed_bundle: Path) -> None:
    card = read_card(sed_bundle)
    x = noise(3.0, seed=11)
    with two_models.client() as c:
        r = c.post(
            "/v1/detect",
            params={
                "model": card.name,
                "pad": "false",
                "top_k": 3,
                "threshold": 0.2,
                "min_duration_s": 0.0,
            },
            files=files(("d.wav", encode(x, RATE))),
        )
        slow = c.post(
            "/v1/detect",
            params={"model": card.name, "pad": "false", "frames_per_second": 10},
            files=files(("d.wav", encode(x, RATE))),
        )
        embed = c.post(
            "/v1/embed", params={"model": card.name}, files=files(("d.wav", encode(x, RATE)))
        )
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    fps = card.frames_per_second
    assert entry["frames_per_second"] == fps
    frames = run_bundle(sed_bundle, x)["framewise"][: int(np.ceil(3.0 * fps))]
    peaks = frames.max(axis=0)
    track = entry["tracks"][0]
    assert track["index"] == int(np.argmax(peaks))
    np.testing.assert_allclose(track["scores"], frames[:, track["index"]], atol=1e-4)
    for event in entry["events"]:
        start, end = round(event["start_s"] * fps), round(event["end_s"] * fps)
        column = frames[start:end, event["index"]]
        assert (column >= 0.2 - 1e-4).all() and event["peak"] == pytest.approx(
            column.max(), abs=1e-4
        )
    assert len(entry["events"]) == sum(
        int(np.sum(np.diff(np.concatenate(([0], (frames[:, k] >= 0.2).astype(int), [0]))) == 1))
        for k in range(frames.shape[1])
    )
    low = slow.json()["results"][0]
    assert low["frames_per_second"] == pytest.approx(fps / round(fps / 10))
    assert len(low["tracks"][0]["scores"]) == pytest.approx(3.0 * low["frames_per_second"], abs=1)
    assert embed.status_code in (200, 422)


def test_detect_on_the_default_tagging_model_is_refused(two_models: LiveServer) -> None:
    with two_models.client() as c:
        r = c.post("/v1/detect", files=files(("d.wav", encode(noise(1.0, 12), RATE))))
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_framewise_output"
