"""deploy/kubernetes: the overlays render, validate, and agree with the service and docker/.

Offline: ``kubectl kustomize`` renders (skipped with the reason when neither kubectl nor
kustomize is installed), kubernetes-validate's bundled API schemas and the CRD schemas in
tests/deploy/schemas validate. test_kubernetes_two_tier.py checks how the two-tier overlay's
tiers agree; test_kubernetes_pod.py runs the rendered pod's commands.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from service.metrics import Metrics
from tests.deploy.deploy_files import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILES,
    compose_image,
    image_name,
    load_compose,
    parse_dockerfile,
    promql_metric_names,
)
from tests.deploy.kube_files import (
    ADAPTER_VALUES,
    ALL_OVERLAYS,
    KSERVE_DIR,
    KUBE_DIR,
    OVERLAYS,
    Obj,
    api_env,
    as_settings,
    container,
    container_env,
    container_port,
    find,
    kustomize_command,
    mounted,
    overlay,
    pod_spec,
    render,
    route_paths,
    schema_errors,
)
from tests.deploy.test_settings_env import model_step_variables, service_variables

if kustomize_command() is None:
    pytest.skip(
        "neither kubectl nor kustomize is installed: cannot render deploy/kubernetes",
        allow_module_level=True,
    )

OLDEST_K8S = "1.29"  # the oldest Kubernetes the README promises

EXPECTED_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
}


def k8s_versions() -> list[str]:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the `dev` extra) is not installed"
    )
    shipped = [".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()]
    assert OLDEST_K8S in shipped, f"this kubernetes-validate lacks the {OLDEST_K8S} schemas"
    return [OLDEST_K8S, shipped[-1]]


def kserve_runtime() -> Obj:
    spec: Obj = find(render(KSERVE_DIR), "ServingRuntime")["spec"]
    return spec


def kserve_env() -> dict[str, str]:
    return container_env(render(KSERVE_DIR), container(kserve_runtime(), "kserve-container"))


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OVERLAYS)
def test_overlay_renders_every_part(name: str) -> None:
    objects = overlay(name)
    assert {o["kind"] for o in objects} == EXPECTED_KINDS
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        find(objects, "Namespace")["metadata"]["name"]
    }


def test_kserve_renders() -> None:
    assert sorted(o["kind"] for o in render(KSERVE_DIR)) == ["InferenceService", "ServingRuntime"]


@pytest.mark.parametrize("target", [*ALL_OVERLAYS, "kserve"])
def test_every_object_validates_against_its_schema(target: str) -> None:
    objects = render(KSERVE_DIR) if target == "kserve" else overlay(target)
    for version in k8s_versions():
        errors = {
            f"{o['kind']}/{o['metadata']['name']}": schema_errors(o, version) for o in objects
        }
        assert not {k: v for k, v in errors.items() if v}, (version, errors)


def test_the_schemas_reject_mistakes() -> None:
    """A misspelt field or an unknown protocol fails: the validation can fail."""
    version = k8s_versions()[0]
    deployment = copy.deepcopy(find(overlay("cpu"), "Deployment"))
    api = container(deployment["spec"]["template"]["spec"], "api")
    api["readinesProbe"] = api.pop("readinessProbe")
    assert schema_errors(deployment, version)
    monitor = copy.deepcopy(find(overlay("cpu"), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert schema_errors(monitor, version)
    runtime = copy.deepcopy(find(render(KSERVE_DIR), "ServingRuntime"))
    runtime["spec"]["protocolVersions"] = ["v3"]
    assert schema_errors(runtime, version)
    isvc = copy.deepcopy(find(render(KSERVE_DIR), "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    assert schema_errors(isvc, version)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_api_gets_only_real_settings_and_they_parse(name: str) -> None:
    env = api_env(overlay(name))
    panns = {k: v for k, v in env.items() if k.startswith("PANNS_")}
    unknown = sorted(set(panns) - service_variables())
    assert not unknown, f"not service settings: {unknown}"
    settings = as_settings(panns)
    assert settings.host == "0.0.0.0", "the probes and the Service reach the pod's IP"
    assert settings.device == {"cpu": "cpu", "gpu": "cuda"}[name]


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_model_step_gets_its_variables_and_agrees_on_the_bundle(name: str) -> None:
    objects = overlay(name)
    spec = pod_spec(objects)
    env = container_env(objects, container(spec, "model", init=True))
    unknown = sorted(
        k
        for k in env
        if k.startswith("PANNS_") and k not in service_variables() | model_step_variables()
    )
    assert not unknown, f"neither settings nor model-step variables: {unknown}"
    assert env["PANNS_MODELS"] == api_env(objects)["PANNS_MODELS"]
    assert {"PANNS_MODEL", "PANNS_CHECKPOINT_DIR"} <= set(env)


def test_api_keys_come_from_a_secret_only() -> None:
    objects = overlay("cpu")
    assert api_env(objects)["PANNS_API_KEYS"], "the placeholder key is missing"
    assert "PANNS_API_KEYS" in find(objects, "Secret", "panns-api-keys")["data"]
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        assert "PANNS_API_KEYS" not in config["data"], config["metadata"]["name"]


def test_kserve_runtime_env_is_real_settings() -> None:
    env = kserve_env()
    assert set(env) <= service_variables(), sorted(set(env) - service_variables())
    settings = as_settings(env)
    assert settings.models == "/mnt/models" and settings.host == "0.0.0.0"


# --- probes, ports, drain --------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_and_ports_are_the_services(name: str) -> None:
    objects = overlay(name)
    api = container(pod_spec(objects), "api")
    port = int(api_env(objects)["PANNS_PORT"])
    routes = route_paths()
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = api[probe]["httpGet"]
        assert get["path"] == path and path in routes, probe
        assert container_port(api, get["port"]) == port, probe
    service = find(objects, "Service", "panns-api")
    (service_port,) = service["spec"]["ports"]
    assert container_port(api, service_port["targetPort"]) == port
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = find(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] in routes
    pdb = find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= pod_labels.items()


def test_kserve_probes_and_port_are_the_services() -> None:
    runtime = container(kserve_runtime(), "kserve-container")
    port = int(kserve_env()["PANNS_PORT"])
    assert runtime["ports"][0]["containerPort"] == port  # KServe routes to the first port
    assert runtime["ports"][0]["name"] in ("http1", "h2c")  # the names Knative accepts
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container_port(runtime, runtime[probe]["httpGet"]["port"]) == port
        assert runtime[probe]["httpGet"]["path"] in route_paths()
    annotations = kserve_runtime()["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(port)
    assert annotations["prometheus.kserve.io/path"] in route_paths()


@pytest.mark.parametrize("name", OVERLAYS)
def test_termination_grace_covers_the_drain(name: str) -> None:
    objects = overlay(name)
    spec = pod_spec(objects)
    drain = as_settings(api_env(objects))
    pre_stop = container(spec, "api")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain.graceful_timeout_s


# --- images ----------------------------------------------------------------------------------


def test_images_are_the_compose_images_with_the_compose_commands() -> None:
    compose = load_compose(COMPOSE)["services"]
    want = {"cpu": compose_image("api", COMPOSE_CPU), "gpu": compose_image("api")}
    for name, api_image in want.items():
        spec = pod_spec(overlay(name))
        api, model = container(spec, "api"), container(spec, "model", init=True)
        assert image_name(api["image"]) == api_image, name
        assert image_name(model["image"]) == compose_image("model"), name
        assert api["command"] == compose["api"]["command"]
        assert model["command"] == compose["model"]["command"]
    runtime = container(kserve_runtime(), "kserve-container")
    assert image_name(runtime["image"]) == compose_image("api")
    assert runtime["command"] == compose["api"]["command"]


def _dockerfile_uid(stem: str) -> int:
    """The uid of the final stage's USER in docker/<stem>.Dockerfile."""
    path = next(p for p in DOCKERFILES if p.stem == stem)
    users = [args for kw, args in parse_dockerfile(path).stages()[-1] if kw == "USER"]
    assert len(users) == 1, f"{path.name}: one USER in the final stage"
    return int(users[0].split(":")[0])


@pytest.mark.parametrize("name", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_profile(name: str) -> None:
    spec = pod_spec(overlay(name))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    images = {"api": "service-cpu" if name == "cpu" else "service-gpu", "model": "model-builder"}
    assert {pod["runAsUser"]} == {_dockerfile_uid(stem) for stem in images.values()}
    assert spec["automountServiceAccountToken"] is False
    for item in [*spec["initContainers"], *spec["containers"]]:
        ctx = item["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, item["name"]
        assert ctx["readOnlyRootFilesystem"] is True, item["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], item["name"]
        assert "resources" in item and item["resources"]["limits"]["memory"], item["name"]
    namespace = find(overlay(name), "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kserve_container_is_non_root_with_a_read_only_root() -> None:
    ctx = container(kserve_runtime(), "kserve-container")["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == _dockerfile_uid("service-gpu")
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert mounted(container(kserve_runtime(), "kserve-container"), "/tmp", writable=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_path_written_is_a_volume(name: str) -> None:
    """The root filesystem is read-only: the bundle, checkpoints, /tmp and the image's
    cache directories must be mounted volumes (the bundle read-only in the API)."""
    objects = overlay(name)
    spec = pod_spec(objects)
    model, api = container(spec, "model", init=True), container(spec, "api")
    model_env = container_env(objects, model)
    builder = parse_dockerfile(next(p for p in DOCKERFILES if p.stem == "model-builder"))
    numba = re.search(r"NUMBA_CACHE_DIR=(\S+)", " ".join(builder.all("ENV")))
    assert numba, "the model-builder image no longer sets NUMBA_CACHE_DIR"
    bundle = model_env["PANNS_MODELS"].split(",")[0]
    for path in (bundle, model_env["PANNS_CHECKPOINT_DIR"], "/tmp", numba.group(1)):
        assert mounted(model, path, writable=True), f"model step cannot write {path}"
    assert mounted(api, "/tmp", writable=True)
    for path in api_env(objects)["PANNS_MODELS"].split(","):
        assert mounted(api, path, writable=False) and not mounted(api, path, writable=True)
    shared = {m["name"] for m in model["volumeMounts"]} & {m["name"] for m in api["volumeMounts"]}
    assert "models" in shared


def test_gpu_overlay_takes_one_gpu_and_cpu_none() -> None:
    gpu = container(pod_spec(overlay("gpu")), "api")["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) == 1
    cpu = container(pod_spec(overlay("cpu")), "api")["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]
    assert cpu["requests"]["cpu"] == cpu["limits"]["cpu"]
    assert int(api_env(overlay("cpu"))["PANNS_THREADS"]) == int(cpu["limits"]["cpu"])


# --- autoscaling -----------------------------------------------------------------------------


def adapter_rules() -> list[Obj]:
    rules: list[Obj] = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))["rules"]["custom"]
    return rules


@pytest.mark.parametrize("name", OVERLAYS)
def test_hpa_scales_the_deployment_on_queue_depth(name: str) -> None:
    objects = overlay(name)
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == find(objects, "Deployment")["metadata"]["name"]
    assert hpa["minReplicas"] >= 2, "one pod would leave nothing serving during a drain"
    pods = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["panns_queue_depth"]
    target = float(pods[0]["target"]["averageValue"])
    assert 0 < target < as_settings(api_env(objects)).max_queue
    cpu = [m for m in hpa["metrics"] if m["type"] == "Resource"]
    assert [m["resource"]["name"] for m in cpu] == (["cpu"] if name == "cpu" else [])
    assert "replicas" not in find(objects, "Deployment")["spec"], "the HPA owns the count"


def test_adapter_rule_serves_the_metric_the_hpa_asks_for() -> None:
    (rule,) = adapter_rules()
    assert promql_metric_names(rule["seriesQuery"]) == {"panns_queue_depth"}
    assert "# TYPE panns_queue_depth gauge" in Metrics().render().decode()
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert re.fullmatch(rule["name"]["matches"], "panns_queue_depth")
    assert rule["name"]["as"] == "panns_queue_depth"
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


# --- KServe ----------------------------------------------------------------------------------


def test_kserve_runtime_and_inference_service_agree() -> None:
    runtime = find(render(KSERVE_DIR), "ServingRuntime")
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (fmt,) = spec["supportedModelFormats"]
    assert fmt["name"] == "panns-bundle"
    model = find(render(KSERVE_DIR), "InferenceService")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == {"name": fmt["name"], "version": fmt["version"]}
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert model["storageUri"]
    assert as_settings(container_env(render(KSERVE_DIR), model)).device == "cuda"


def test_kubernetes_files_are_all_checked() -> None:
    """Every YAML file under deploy/kubernetes is rendered by a kustomization or read here."""
    used = {ADAPTER_VALUES}
    for root in [KUBE_DIR / "overlays" / n for n in ALL_OVERLAYS] + [KSERVE_DIR, KUBE_DIR / "base"]:
        kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
        used.add(root / "kustomization.yaml")
        used.update(root / r for r in kustomization.get("resources", []) if r.endswith(".yaml"))
        used.update(root / p["path"] for p in kustomization.get("patches", []) if "path" in p)
    assert sorted(KUBE_DIR.rglob("*.yaml")) == sorted(used)
