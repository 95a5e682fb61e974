"""JSON log lines: ISO 8601 timestamps with milliseconds and zone; the access log's levels."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime

import pytest

from service.logs import JsonFormatter
from tests.service.conftest import LiveServer

ISO_MS_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def test_json_time_has_milliseconds_and_zone() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.created = 1_796_166_373.1239  # 2026-12-01T23:06:13.123 UTC
    record.fields = {"request_id": "r1"}  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "2026-12-01T23:06:13.123+00:00"
    assert entry["message"] == "hello x" and entry["request_id"] == "r1"


def test_json_time_matches_the_record(caplog: pytest.LogCaptureFixture) -> None:
    before = datetime.now(UTC)
    with caplog.at_level(logging.INFO, logger="service.test"):
        logging.getLogger("service.test").info("now")
    line = JsonFormatter().format(caplog.records[-1])
    stamp = json.loads(line)["time"]
    assert ISO_MS_ZONE.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None
    assert abs((parsed - before).total_seconds()) < 5


def _access_levels(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    """The level of each path's access record so far."""
    access = [r for r in caplog.records if r.name == "service.access"]
    return {getattr(r, "fields", {})["path"]: r.levelno for r in access}


def test_probes_are_logged_at_debug_api_calls_at_info(
    tagger_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    paths = ("/metrics", "/healthz", "/readyz", "/v1/models")
    with caplog.at_level(logging.DEBUG, logger="service.access"), tagger_server.client() as c:
        for path in paths:
            assert c.get(path).status_code == 200, path
        # the server thread writes a request's record once the response has gone out
        deadline = time.monotonic() + 5
        while len(levels := _access_levels(caplog)) < len(paths):
            assert time.monotonic() < deadline, f"access records only for {sorted(levels)}"
            time.sleep(0.01)
    assert levels == {
        "/metrics": logging.DEBUG,
        "/healthz": logging.DEBUG,
        "/readyz": logging.DEBUG,
        "/v1/models": logging.INFO,
    }
