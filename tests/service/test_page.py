"""The page at GET /, driven by a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.conftest import shared_path
from tests.service.conftest import LiveServer, noise, settings_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    live = LiveServer(settings_for(tagger_bundle)).start()
    yield live
    live.stop()


def browser(tmp: Path, *extra: str):  # type: ignore[no-untyped-def]
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp / 'profile'}",
        *extra,
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)


def wait_for(driver, script: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, 0.1).until(lambda d: d.execute_script(script))


def test_upload_shows_the_api_top_labels(server: LiveServer, tmp_path: Path) -> None:
    path = shared_path("audio", "speech_female_librispeech.ogg")
    want = httpx.post(
        f"{server.url}/v1/tag",
        params={"top_k": 10},
        files={"file": (path.name, path.read_bytes())},
        timeout=60,
    )
    assert want.status_code == 200, want.text
    labels = [t["label"] for t in want.json()["results"][0]["top"]]
    driver = browser(tmp_path)
    try:
        driver.get(server.url + "/")
        wait_for(driver, "return document.getElementById('model').options.length > 0")
        driver.find_element("id", "file").send_keys(str(path))
        wait_for(driver, "return document.body.dataset.tagged === 'true'")
        shown = driver.execute_script(
            "return [...document.querySelectorAll('#toptable tbody tr td:first-child')]"
            ".map(td => td.textContent)"
        )
        bars = driver.execute_script(
            "return [...document.querySelectorAll('#bars text.bar-label')].map(t => t.textContent)"
        )
        assert shown == bars == labels
        assert driver.find_element("id", "error").get_attribute("hidden") is not None
        driver.save_screenshot(str(tmp_path / "upload.png"))
    finally:
        driver.quit()


def test_microphone_streams_live_results(server: LiveServer, tmp_path: Path) -> None:
    wav = tmp_path / "mic.wav"
    sf.write(wav, noise(4.0, 5, 48000), 48000, subtype="PCM_16")
    driver = browser(
        tmp_path,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    )
    try:
        driver.get(server.url + "/")
        wait_for(driver, "return document.getElementById('model').options.length > 0")
        driver.find_element("id", "mic").click()
        wait_for(driver, "return Number(document.body.dataset.liveResults || 0) >= 2", 45)
        items = driver.execute_script(
            "return [...document.querySelectorAll('#live li')].map(li => li.textContent)"
        )
        assert len(items) == 5 and all(item.strip() for item in items)
        driver.find_element("id", "mic").click()
        driver.save_screenshot(str(tmp_path / "mic.png"))
        assert driver.find_element("id", "error").get_attribute("hidden") is not None
    finally:
        driver.quit()
