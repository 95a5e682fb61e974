"""The service scraped by a real Prometheus: the dashboard's queries answer what they should.

Runs the `prometheus` binary (Debian package `prometheus`; `.ci/run` installs it) with its own
config, port and storage in a temporary directory, scraping a live server every second.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.deploy_files import dashboard_exprs, grafana_to_promql
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    files,
    free_port,
    noise,
    settings_for,
    stop_process,
    wait_until_200,
)

JOB = "panns-api"  # the job name of docker/prometheus/prometheus.yml: the dashboard filters on it


class Prometheus:
    """A real Prometheus process scraping ``target`` (host:port) every second."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = free_port()
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        wait_until_200(
            f"{self.url}/-/ready",
            deadline,
            "prometheus",
            request_timeout=2,
            pause=0.1,
            alive=self._running,
        )

    def _running(self) -> None:
        assert self.proc.poll() is None, f"prometheus exited: {self.proc.returncode}"

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, evaluated now or at ``at`` (Unix time)."""
        params: dict[str, str | float] = {"query": promql}
        if at is not None:
            params["time"] = at
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        assert r.status_code == 200, r.text
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of an instant query, None when it returns no series."""
        result = self.query(promql, at)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, promql: str, check: Callable[[float | None], bool], timeout: float = 30
    ) -> float | None:
        deadline = time.monotonic() + timeout
        while not check(value := self.value(promql)):
            assert time.monotonic() < deadline, f"{promql} stayed at {value}"
            time.sleep(0.25)
        return value

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self.log.close()


def _panel_exprs(title: str) -> list[str]:
    exprs = [grafana_to_promql(e, "30s") for t, e in dashboard_exprs() if t == title]
    assert exprs, f"no dashboard panel titled {title!r}"
    return exprs


@pytest.fixture()
def scraped(tagger_bundle: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, Prometheus]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package `prometheus`)")
    # Every inference request misses its deadline: a real 504 on demand.
    server = LiveServer(settings_for(tagger_bundle, timeout_s=0.001)).start()
    prom = Prometheus(binary, f"127.0.0.1:{server.port}", tmp_path)
    try:
        prom.wait_ready()
        yield server, prom
    finally:
        prom.stop()
        server.stop()


def test_dashboard_queries_on_a_live_prometheus(scraped: tuple[LiveServer, Prometheus]) -> None:
    server, prom = scraped
    (errors_expr,) = _panel_exprs("Server errors")
    pre = f'panns_requests_total{{job="{JOB}", endpoint="/v1/tag", status="504"}}'
    # The model's 5xx series exist at 0 from the start, seen by at least two scrapes.
    prom.wait_for(f"count_over_time({pre}[1m])", lambda v: v is not None and v >= 2)
    assert prom.value(errors_expr) == 0  # no errors yet: 0, not an empty panel
    assert prom.value(f"sum({pre})") == 0

    inflight = f'panns_inflight_requests{{job="{JOB}"}}'
    with server.client() as c:
        for _ in range(3):
            assert c.get("/v1/models").status_code == 200
            assert c.get("/healthz").status_code == 200
        # The scrapes up to ``before`` (two at least, waited for above) all ended before the
        # inference request below starts: a target's scrapes never overlap, and a later one
        # has been stored. In flight in them, a scrape could only have counted itself.
        before = time.time()
        prom.wait_for(f"timestamp({inflight})", lambda t: t is not None and t > before)
        timed_out = c.post("/v1/tag", files=files(("a.wav", encode(noise(1.0, 1), RATE))))
    assert timed_out.status_code == 504, timed_out.text

    # The series' first error shows in increase() and in the dashboard's panel.
    prom.wait_for(f"sum(increase({pre}[1m]))", lambda v: v is not None and v > 0.5)
    assert (prom.value(errors_expr) or 0) > 0
    latency = f'panns_request_duration_seconds_count{{job="{JOB}", status="504"}}'
    assert prom.value(f"sum({latency})") == 1
    models = f'panns_requests_total{{job="{JOB}", endpoint="/v1/models", status="200"}}'
    assert prom.value(f"sum({models})") == 3
    # Scrapes and probes are not API traffic; the scrape is not an in-flight request.
    probes = f'panns_requests_total{{job="{JOB}", endpoint=~"/metrics|/healthz|/readyz"}}'
    assert prom.query(probes) == []
    assert prom.query('panns_request_duration_seconds_count{endpoint="/metrics"}') == []
    assert prom.value(f"max_over_time({inflight}[1m])", at=before) == 0
    # Process metrics, and the dashboard's panels that show them.
    assert (prom.value(f'process_resident_memory_bytes{{job="{JOB}"}}') or 0) > 10e6
    for title in ("Process CPU", "Process memory and open files"):
        for expr in _panel_exprs(title):
            assert prom.query(expr), f"{title}: {expr} returned nothing"
