"""The OpenAPI document (linted, security, error schemas) and the offline, key-guarded docs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from service.app import create_app
from service.metrics import INFERENCE_ENDPOINTS
from service.schemas import ErrorResponse
from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.service.conftest import RATE, LiveServer, encode, files, noise, settings_for

PUBLIC = {"/healthz", "/readyz", "/metrics"}
KEY_SCHEMES = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def document(api_keys: str = "") -> dict[str, Any]:
    """The app's OpenAPI document (no model is loaded: the document needs none)."""
    doc: dict[str, Any] = create_app(Settings(models="unused", api_keys=api_keys)).openapi()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
    ]


@pytest.mark.parametrize("keys", ["", "k1"])
def test_openapi_spec_validator_accepts_the_document(keys: str) -> None:
    validate(document(keys))


def redocly() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "redocly"
    found = str(local) if local.is_file() else shutil.which("redocly")
    if found is None:
        pytest.skip("redocly is not installed (`npm ci` installs it from package-lock.json)")
    return found


@pytest.mark.parametrize("keys", ["", "k1"])
def test_redocly_lint_passes_without_warnings(keys: str, tmp_path: Path) -> None:
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document(keys)))
    env = {**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}
    run = subprocess.run(
        [
            redocly(),
            "lint",
            "--config",
            str(REPO_ROOT / "redocly.yaml"),
            "--format=json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert run.returncode == 0 and report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, (
        report["problems"]
    )


def test_protected_operations_declare_the_key_schemes() -> None:
    doc = document("k1")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    assert (schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == (
        "header",
        "X-API-Key",
    )
    for path, method, op in operations(doc):
        public = path in PUBLIC
        assert op["security"] == ([] if public else KEY_SCHEMES), (path, method)
        assert ("401" in op["responses"]) != public, (path, method)
    keyless = document("")
    assert "securitySchemes" not in keyless["components"]
    assert all(
        op["security"] == [] and "401" not in op["responses"] for _, _, op in operations(keyless)
    )


def test_every_error_status_uses_the_error_schema_with_an_example() -> None:
    doc = document("k1")
    assert "HTTPValidationError" not in json.dumps(doc)  # 422 is ours too
    health = {"/healthz": "Health", "/readyz": "Readiness"}
    for path, _, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]["application/json"]
            ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
            assert ref == health.get(path, "ErrorResponse"), (path, status)
            if ref == "ErrorResponse":
                ErrorResponse.model_validate(content["example"])
                assert response["description"] != "Validation Error", (path, status)
    for path in INFERENCE_ENDPOINTS:
        assert {"400", "401", "404", "413", "415", "422", "500", "503", "504"} <= set(
            doc["paths"][path]["post"]["responses"]
        ), path


def test_inference_endpoints_are_the_routes_tagged_inference() -> None:
    doc = document()
    tagged = {path for path, _, op in operations(doc) if "inference" in op.get("tags", [])}
    assert tagged == set(INFERENCE_ENDPOINTS)


def test_real_errors_match_their_documented_schema(tagger_server: LiveServer) -> None:
    with tagger_server.client() as c:
        doc = c.get("/openapi.json").json()
        wav = files(("a.wav", encode(noise(1.0, 1), RATE)))
        answers = {
            ("/v1/tag", "422"): c.post("/v1/tag", params={"top_k": 0}, files=wav),
            ("/v1/tag", "415"): c.post("/v1/tag", files=files(("x.bin", b"\x01" * 64))),
            ("/v1/tag", "404"): c.post("/v1/tag", params={"model": "nope"}, files=wav),
            ("/v1/labels", "422"): c.get("/v1/labels", params={"model": "x" * 300}),
        }
    for (path, status), r in answers.items():
        assert str(r.status_code) == status, r.text
        op = doc["paths"][path]["post" if path == "/v1/tag" else "get"]
        schema = op["responses"][status]["content"]["application/json"]["schema"]
        OAS31Validator({**schema, "components": doc["components"]}).validate(r.json())
    assert answers[("/v1/tag", "422")].json()["error"]["code"] == "invalid_parameters"
    assert "top_k" in answers[("/v1/tag", "422")].json()["error"]["message"]


def _local_refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_docs_need_a_key_and_load_offline(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, api_keys="alpha")).start()
    key = {"X-API-Key": "alpha"}
    try:
        with server.client() as c:
            closed = {p: c.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")}
            wrong = c.get("/docs", headers={"X-API-Key": "nope"}).status_code
            opened = {p: c.get(p, headers=key) for p in ("/docs", "/redoc", "/openapi.json")}
            bearer = c.get("/openapi.json", headers={"Authorization": "Bearer alpha"})
            refs = {p: _local_refs(opened[p].text) for p in ("/docs", "/redoc")}
            assets = {ref: c.get(f"/{ref}") for page in refs.values() for ref in page}
            unknown = c.get("/docs/static/..%2f..%2fsettings.py")
    finally:
        server.stop()
    assert closed == {"/docs": 401, "/redoc": 401, "/openapi.json": 401} and wrong == 401
    assert all(r.status_code == 200 for r in opened.values())
    assert bearer.json() == opened["/openapi.json"].json()
    assert opened["/openapi.json"].json()["paths"]["/v1/tag"]["post"]["security"] == KEY_SCHEMES
    for page, found in refs.items():
        assert found and all(ref.startswith("docs/static/") for ref in found), (page, found)
    assert "swagger-ui-bundle.js" in str(refs["/docs"]) and "redoc" in str(refs["/redoc"])
    for ref, r in assets.items():  # served without a key: stock Swagger UI / ReDoc files
        assert r.status_code == 200 and len(r.content) > 1000, ref
    assert assets["docs/static/swagger-ui.css"].headers["content-type"].startswith("text/css")
    assert unknown.status_code == 404
    # The spec is embedded: the page needs no second (key-less) request for it.
    assert '"/v1/tag"' in opened["/docs"].text and "SwaggerUIBundle({spec:" in opened["/docs"].text


def test_public_docs_open_the_docs_only(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, api_keys="alpha", public_docs=True)).start()
    try:
        with server.client() as c:
            pages = [c.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")]
            models = c.get("/v1/models").status_code
    finally:
        server.stop()
    assert pages == [200, 200, 200] and models == 401


def test_docs_pages_are_rendered_once_per_app(tagger_server: LiveServer) -> None:
    """Every hit answers the same page, rendered once from the app's own document."""
    app, paths = tagger_server.app, ("/docs", "/redoc")
    with tagger_server.client() as c:
        first = {p: c.get(p) for p in paths}
        rendered = dict(app.state.doc_pages)
        second = {p: c.get(p) for p in paths}
    assert all(r.status_code == 200 for r in [*first.values(), *second.values()])
    for p in paths:
        assert second[p].content == first[p].content, p
        assert second[p].headers["cache-control"] == "no-store"
        assert second[p].headers["content-type"].startswith("text/html")
    assert len(rendered) == 2 and all(app.state.doc_pages[t] is rendered[t] for t in rendered)
    assert f"<title>{app.title} - Swagger UI</title>" in second["/docs"].text
    assert f"<title>{app.title} - ReDoc</title>" in second["/redoc"].text
    spec = re.search(r"SwaggerUIBundle\(\{spec: (.*), dom_id:", second["/docs"].text, re.S)
    assert spec is not None and json.loads(spec.group(1)) == app.openapi()


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no headless Chromium here (Debian package `chromium`)")


@pytest.mark.parametrize(
    ("page", "rendered"), [("/docs", 'data-path="/v1/tag"'), ("/redoc", "Response samples")]
)
def test_docs_pages_render_in_a_browser_without_internet(
    tagger_server: LiveServer, page: str, rendered: str, tmp_path: Path
) -> None:
    """Every host but 127.0.0.1 unreachable: the page still renders the operations."""
    run = subprocess.run(
        [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{tagger_server.url}{page}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered in run.stdout, run.stderr[-2000:]
