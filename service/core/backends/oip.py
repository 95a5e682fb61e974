"""The ``oip`` backend: batches run on a remote engine tier over the Open Inference Protocol.

A front replica (``PANNS_BACKEND=oip``, ``PANNS_ENGINE_URL=http://engine:8000``) accepts
uploads, decodes, windows and batches as usual; each batch then goes as one FP32 ``waveform``
``[B, L]`` with binary data to the engine replica's ``/v2/models/{name}/versions/{v}/infer``,
with the parameters ``window_s = L / rate`` and ``pad = false``, so that the engine runs every
row as it is (one window per row, never re-cut or padded) and the scores are those one
process would give. Every output comes back as binary FP32.

The front needs the bundle's ``model.json`` only, not its graphs: the card names the model,
and its checksum is the version asked of the engine, so an engine serving other weights is
refused at start-up (404) instead of silently answering for them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from service.core.backends import BackendOptions, BatchInput
from service.core.card import BundleError, ModelCard, OutputKind, read_card
from service.core.errors import EngineUnavailable
from service.oip import (
    HEADER,
    ProtocolError,
    RequestedOutput,
    Tensor,
    decode_response,
    encode_request,
    header_length,
    model_version,
)

log = logging.getLogger("service.core.backends.oip")

ENGINE_WAIT_S = 300.0  # how long start-up waits for the engine tier to become ready
RETRY_S = 2.0


class OipBackend:
    """A bundle served by a remote engine replica (a ``Backend``)."""

    def __init__(self, bundle_dir: Path | str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        if not options.url:
            raise BundleError("PANNS_BACKEND=oip needs PANNS_ENGINE_URL (the engine tier's URL)")
        self.card: ModelCard = read_card(bundle_dir)
        self.url = options.url.rstrip("/")
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=5.0),
        )
        self.path = f"/v2/models/{quote(self.card.name)}/versions/{model_version(self.card)}"
        served = {o["name"] for o in self._wait_for_engine()["outputs"]}
        self.kinds: dict[str, OutputKind] = {
            o.name: o.kind for o in self.card.outputs if o.name in served and o.kind != "waveform"
        }
        if "clipwise" not in self.kinds.values():
            raise BundleError(f"the engine at {self.url} serves no clipwise output")
        self.outputs = [RequestedOutput(name, binary=True) for name in self.kinds]
        self.provider, self.precision = self._engine_runtime()
        self.device = "remote"
        # batches in flight to the engine at once: the engine batches again, and two keep
        # its queue fed while one travels
        self.inflight = max(1, options.inflight or 2)
        self.stages = False  # the batcher stacks; the stacked batch is encoded into the body
        log.info(
            "model %s served by the engine at %s (%s)", self.card.name, self.url, self.provider
        )

    def _wait_for_engine(self) -> dict[str, Any]:
        """The engine's metadata of this model and version; waits while it starts up."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        while True:
            try:
                response = self.client.get(self.path)
            except httpx.TransportError as exc:
                reason = f"cannot connect: {exc}"
            else:
                if response.status_code == 200:
                    meta: dict[str, Any] = response.json()
                    return meta
                reason = f"{response.status_code}: {_error_text(response)}"
                if response.status_code != 503:
                    raise BundleError(self._refused(response.status_code, reason))
            if time.monotonic() > deadline:
                raise BundleError(f"the engine at {self.url} is not ready ({reason})")
            log.info("waiting for the engine at %s (%s)", self.url, reason)
            time.sleep(RETRY_S)

    def _refused(self, status: int, reason: str) -> str:
        if status == 401:
            return f"the engine at {self.url} refused the key (PANNS_ENGINE_API_KEY): {reason}"
        if status == 404:
            return (
                f"the engine at {self.url} does not serve model {self.card.name!r} version "
                f"{model_version(self.card)} (the weights of this model.json): {reason}"
            )
        return f"the engine at {self.url} answered {reason}"

    def _engine_runtime(self) -> tuple[str, str]:
        """(provider, precision) the engine reports in /v1/models, for metrics and /v1."""
        try:
            response = self.client.get("/v1/models")
            models = response.json()["models"] if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            models = []
        for model in models:
            if isinstance(model, dict) and model.get("name") == self.card.name:
                return f"oip:{model.get('provider', '?')}", str(model.get("precision", "?"))
        return "oip", "unknown"

    def run(self, batch: BatchInput) -> dict[str, np.ndarray]:
        """Run a (B, L) float32 batch on the engine; float32 outputs keyed by kind."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        rows, length = batch.shape
        body, header = encode_request(
            [Tensor("waveform", "FP32", batch.shape, batch)],
            self.outputs,
            {"window_s": length / self.card.sample_rate, "pad": False},
        )
        headers = {HEADER: str(header), "Content-Type": "application/octet-stream"}
        try:
            response = self.client.post(f"{self.path}/infer", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the engine at {self.url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineUnavailable(
                f"the engine at {self.url} answered {response.status_code}: {_error_text(response)}"
            )
        return self._outputs(response, rows)

    def _outputs(self, response: httpx.Response, rows: int) -> dict[str, np.ndarray]:
        content = response.content
        try:
            header = header_length(response.headers.get(HEADER), len(content))
            tensors = decode_response(content, header)
        except ProtocolError as exc:
            raise EngineUnavailable(f"the engine at {self.url} sent a bad answer: {exc}") from exc
        out: dict[str, np.ndarray] = {}
        for name, kind in self.kinds.items():
            tensor = tensors.get(name)
            if tensor is None or not isinstance(tensor.data, np.ndarray):
                raise EngineUnavailable(f"the engine at {self.url} sent no {name}")
            if tensor.data.shape[0] != rows:
                raise EngineUnavailable(f"the engine at {self.url} sent {name} of {tensor.shape}")
            out[kind] = np.asarray(tensor.data, dtype=np.float32)
        return out

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        """Send each batch shape once: the connection and the engine's kernels are warm."""
        for size in batch_sizes:
            self.run(np.zeros((size, length), np.float32))


def _error_text(response: httpx.Response) -> str:
    """The protocol's ``{"error": "..."}`` message, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the /v1 shape
        error = error.get("message")
    return str(error if error is not None else body)[:500]
