"""``panns tag --url``: a client of a running service (one instance, replicas, a k8s Service).

Each file is one ``POST /v1/tag``. A 503 (queue full, models loading, draining) is answered
by waiting its ``Retry-After`` and sending again; connection errors and 502s are retried with
exponential backoff a bounded number of times; each attempt has a time limit. Whatever
happens, every file ends with a result record or an error record. Only answers that no later
file could escape (401, 403, unknown model, bad parameters) stop the run.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.cli.common import FatalError, Json, TagParams, error_record, record

FATAL_STATUS = {401, 403, 404, 405, 422}
RETRY_STATUS = {502}
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class ClientOptions:
    url: str
    api_key: str | None = None
    timeout_s: float = 300.0  # one attempt: upload, queue, inference, answer
    retries: int = 5  # connection errors and 502s, per file
    max_wait_s: float = 600.0  # time one file may spend waiting on 503 answers
    connections: int = 8


class Retry(Exception):
    """This attempt failed in a way another attempt may not: wait ``delay_s`` and resend."""

    def __init__(self, delay_s: float | None, reason: str, overloaded: bool = False) -> None:
        super().__init__(reason)
        self.delay_s, self.reason, self.overloaded = delay_s, reason, overloaded


def backoff_s(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 30 s, with jitter so replicas are not hit in step."""
    return float(min(30.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2))


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The service's ``{"error": {"code", "message"}}``, or the bare status."""
    try:
        error = orjson.loads(response.content)["error"]
        return str(error["code"]), str(error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"http_{response.status_code}", response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float:
    try:
        value = float(response.headers.get("retry-after", "1"))
    except ValueError:
        value = 1.0
    return min(max(value, 0.1), MAX_RETRY_AFTER_S)


class RemoteTagger:
    """An ``httpx.AsyncClient`` on the service, with the retry policy of the module doc."""

    def __init__(self, options: ClientOptions, params: TagParams) -> None:
        self.options, self.params = options, params
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=options.url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=min(10.0, options.timeout_s)),
            limits=httpx.Limits(max_connections=options.connections),
        )

    async def __aenter__(self) -> RemoteTagger:
        await self.check()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    async def check(self) -> None:
        """Reach the service and pass its API key check before sending any file."""
        for attempt in range(self.options.retries + 1):
            try:
                response = await self.client.get("/v1/models")
            except httpx.TransportError as exc:
                if attempt == self.options.retries:
                    raise FatalError(f"cannot reach {self.options.url}: {exc!r}") from exc
                await asyncio.sleep(backoff_s(attempt))
                continue
            if response.status_code in FATAL_STATUS:
                code, message = _error_of(response)
                raise FatalError(f"{self.options.url}/v1/models answered {code}: {message}")
            return

    async def tag(self, path: Path, data: bytes) -> Json:
        failures, waited = 0, 0.0
        while True:
            try:
                return await self._attempt(path, data)
            except Retry as retry:
                delay = retry.delay_s if retry.delay_s is not None else backoff_s(failures)
                if retry.overloaded:
                    waited += delay
                    if waited > self.options.max_wait_s:
                        return error_record(path, "overloaded", _gave_up(retry, waited))
                else:
                    failures += 1
                    if failures > self.options.retries:
                        return error_record(path, "unreachable", _gave_up(retry, failures))
                await asyncio.sleep(delay)

    async def _attempt(self, path: Path, data: bytes) -> Json:
        try:
            async with asyncio.timeout(self.options.timeout_s):
                response = await self._post(path, data)
        except TimeoutError:
            return error_record(path, "timeout", f"no answer within {self.options.timeout_s:g} s")
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise Retry(None, f"connect timeout: {exc!r}") from exc
            return error_record(path, "timeout", f"no answer in time: {exc!r}")
        except httpx.TransportError as exc:
            raise Retry(None, f"connection error: {exc!r}") from exc
        return self._outcome(path, response)

    async def _post(self, path: Path, data: bytes) -> httpx.Response:
        files: Any = {"file": (path.name, data)}
        return await self.client.post("/v1/tag", params=self.params.query(), files=files)

    def _outcome(self, path: Path, response: httpx.Response) -> Json:
        status = response.status_code
        if status == 200:
            try:
                return record(path, orjson.loads(response.content)["results"][0])
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                return error_record(path, "bad_response", _not_the_service(response))
        code, message = _error_of(response)
        if status == 503:
            raise Retry(_retry_after(response), f"{code}: {message}", overloaded=True)
        if status in RETRY_STATUS:
            raise Retry(None, f"HTTP {status}: {message}")
        if status in FATAL_STATUS:
            raise FatalError(f"the service answered {status} {code}: {message}")
        return error_record(path, code, message)


def _not_the_service(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "no content type")
    return f"a 200 answer that is not the service's JSON ({kind}): {response.text[:200]!r}"


def _gave_up(retry: Retry, after: float) -> str:
    if retry.overloaded:
        return f"still overloaded after waiting {after:.0f} s: {retry.reason}"
    return f"gave up after {after:.0f} retries: {retry.reason}"
