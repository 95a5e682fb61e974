"""Readers for deploy/kubernetes: render with kustomize, validate, resolve what a pod sees
(and read its settings and probe paths the way the service does).

Rendering runs the real ``kubectl kustomize`` (or a standalone ``kustomize build``);
validation uses kubernetes-validate's schemas of the Kubernetes API for built-in kinds and
the small CRD schemas in ``tests/deploy/schemas/`` (written from the public CRDs) for the
Prometheus operator's and KServe's kinds, both offline.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO_ROOT

KUBE_DIR = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")  # one Deployment each (component api)
TWO_TIER = "two-tier"  # two Deployments: components engine and front
ALL_OVERLAYS = (*OVERLAYS, TWO_TIER)
COMPONENT = "app.kubernetes.io/component"
KSERVE_DIR = KUBE_DIR / "kserve"
ADAPTER_VALUES = KUBE_DIR / "prometheus-adapter" / "values.yaml"
SCHEMA_DIR = Path(__file__).parent / "schemas"
# kubernetes-validate's definitions, which the CRD schemas refer to for core types.
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-serving.kserve.io-v1alpha1",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving.kserve.io-v1beta1",
}

Obj = dict[str, Any]


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` or ``kustomize build``, whichever is installed."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


@cache
def render(directory: Path) -> tuple[Obj, ...]:
    """Every object ``kustomize`` renders from ``directory`` (a kustomization root)."""
    command = kustomize_command()
    assert command is not None, "neither kubectl nor kustomize is installed"
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kustomize {directory}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def overlay(name: str) -> tuple[Obj, ...]:
    return render(KUBE_DIR / "overlays" / name)


def find(objects: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    """The one object of ``kind`` (named ``name``, or a generated ``name-<hash>``)."""
    hits = [
        o
        for o in objects
        if o["kind"] == kind
        and (
            name is None
            or re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
        )
    ]
    assert len(hits) == 1, f"{len(hits)} {kind} named {name!r}"
    return hits[0]


def deployment(objects: tuple[Obj, ...], component: str | None = None) -> Obj:
    """The one Deployment (of ``component``, when an overlay has several)."""
    if component is None:
        return find(objects, "Deployment")
    hits = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get(COMPONENT) == component
    ]
    assert len(hits) == 1, f"{len(hits)} Deployments of component {component!r}"
    return hits[0]


def pod_spec(objects: tuple[Obj, ...], component: str | None = None) -> Obj:
    spec: Obj = deployment(objects, component)["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str, init: bool = False) -> Obj:
    items = spec.get("initContainers" if init else "containers", [])
    hits = [c for c in items if c["name"] == name]
    assert len(hits) == 1, f"no {'init ' if init else ''}container {name!r}"
    return hits[0]


def _data(obj: Obj) -> dict[str, str]:
    values = dict(obj.get("data") or {})
    if obj["kind"] == "Secret":
        values = {k: base64.b64decode(v).decode() for k, v in values.items()}
        values.update(obj.get("stringData") or {})
    return {k: str(v) for k, v in values.items()}


def container_env(objects: tuple[Obj, ...], spec: Obj) -> dict[str, str]:
    """The environment a container starts with: envFrom in order, then env (which wins).

    Only what the manifests can resolve offline: ConfigMaps and Secrets of ``objects``
    (a reference to one that is not there fails) and literal values.
    """
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source["secretRef"])
        )
        hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == ref["name"]]
        assert hits, f"envFrom: no {kind} {ref['name']}"
        env.update({source.get("prefix", "") + k: v for k, v in _data(hits[0]).items()})
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]
            ((kind, key),) = ref.items()
            kind = {"configMapKeyRef": "ConfigMap", "secretKeyRef": "Secret"}[kind]
            hits = [
                o for o in objects if o["kind"] == kind and o["metadata"]["name"] == key["name"]
            ]
            assert hits, f"env {item['name']}: no {kind} {key['name']}"
            env[item["name"]] = _data(hits[0])[key["key"]]
    return env


def api_env(objects: tuple[Obj, ...], component: str | None = None) -> dict[str, str]:
    return container_env(objects, container(pod_spec(objects, component), "api"))


def container_port(spec: Obj, port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    hits = [p["containerPort"] for p in spec.get("ports", []) if p.get("name") == port]
    assert hits, f"no container port named {port!r}"
    return int(hits[0])


def mounted(spec: Obj, path: str, writable: bool) -> bool:
    """Whether ``path`` lies under one of the container's volume mounts (a writable one)."""
    for mount in spec.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and not (
            writable and mount.get("readOnly")
        ):
            return True
    return False


def as_settings(env: dict[str, str]) -> Settings:
    """``Settings`` from the PANNS_ variables of ``env``: the service's own parsing."""
    return Settings(
        **{k.removeprefix("PANNS_").lower(): v for k, v in env.items() if k.startswith("PANNS_")}
    )


@cache
def route_paths() -> set[str]:
    """The paths the app serves (its OpenAPI route list; nothing is loaded to build it)."""
    return set(create_app(Settings(models="unused")).openapi()["paths"])


@cache
def _k8s_definitions(version: str) -> Obj:
    major_minor = ".".join(version.split(".")[:2])
    package = importlib.resources.files("kubernetes_validate")
    path = (
        package / "kubernetes-json-schema" / f"v{major_minor}.0-local-strict" / "_definitions.json"
    )
    definitions: Obj = json.loads(path.read_text(encoding="utf-8"))
    assert definitions.get("$id") == K8S_DEFINITIONS, "kubernetes-validate's layout changed"
    return definitions


def crd_schema_errors(obj: Obj, version: str) -> list[str]:
    """Validation errors of a custom resource against its schema in tests/deploy/schemas."""
    import jsonschema
    from referencing import Registry, Resource

    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in CRD_SCHEMAS:
        return [f"no schema for {key[1]} {key[0]} in {SCHEMA_DIR}"]
    schema = json.loads((SCHEMA_DIR / f"{CRD_SCHEMAS[key]}.json").read_text(encoding="utf-8"))
    registry: Registry = Registry().with_resource(
        K8S_DEFINITIONS, Resource.from_contents(_k8s_definitions(version))
    )
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def schema_errors(obj: Obj, version: str) -> list[str]:
    """Errors of any rendered object: built-in kinds by kubernetes-validate (strict), the
    Prometheus operator's and KServe's kinds by our CRD schemas."""
    import kubernetes_validate

    if (obj.get("apiVersion"), obj.get("kind")) in CRD_SCHEMAS:
        return crd_schema_errors(obj, version)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []
