"""deploy/kubernetes/overlays/two-tier: an engine tier behind a CPU front tier.

Each tier is a Deployment with its own Service, autoscaler and disruption budget, gets only
real settings and the service's probes, and the front reaches the engine's Service with the
key the engine accepts, sized for CPU and reading the card of the engine's bundle. Rendered
as in test_kubernetes.py (skipped when neither kubectl nor kustomize is installed), which
also renders and validates this overlay with the others.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.deploy.deploy_files import COMPOSE_CPU, compose_image, image_name
from tests.deploy.kube_files import (
    COMPONENT,
    TWO_TIER,
    api_env,
    as_settings,
    container,
    container_env,
    container_port,
    deployment,
    find,
    kustomize_command,
    mounted,
    overlay,
    pod_spec,
    route_paths,
)
from tests.deploy.test_settings_env import service_variables

if kustomize_command() is None:
    pytest.skip(
        "neither kubectl nor kustomize is installed: cannot render deploy/kubernetes",
        allow_module_level=True,
    )

TIERS = ("engine", "front")


def test_two_tier_has_two_deployments_each_with_its_service_hpa_and_pdb() -> None:
    objects = overlay(TWO_TIER)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert sorted(d["metadata"]["labels"][COMPONENT] for d in deployments) == sorted(TIERS)
    for tier in TIERS:
        dep = deployment(objects, tier)
        name, labels = dep["metadata"]["name"], dep["spec"]["template"]["metadata"]["labels"]
        assert name == f"panns-{tier}" and "replicas" not in dep["spec"], tier
        hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
        (hpa,) = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == name]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] >= 2, tier
        for kind in ("PodDisruptionBudget", "Service"):
            selectors = [
                o["spec"]["selector"].get("matchLabels", o["spec"]["selector"])
                for o in objects
                if o["kind"] == kind
            ]
            assert [s for s in selectors if s.items() <= labels.items()], f"{tier}: no {kind}"
            assert all(s[COMPONENT] in TIERS for s in selectors)
    # The engine scales on its queue; the front on CPU (its queue waits on the engine).
    hpa_metrics = {
        h["spec"]["scaleTargetRef"]["name"]: [m["type"] for m in h["spec"]["metrics"]]
        for h in objects
        if h["kind"] == "HorizontalPodAutoscaler"
    }
    assert hpa_metrics == {"panns-engine": ["Pods"], "panns-front": ["Resource"]}


@pytest.mark.parametrize("tier", TIERS)
def test_two_tier_env_is_real_settings_and_probes_are_the_services(tier: str) -> None:
    objects = overlay(TWO_TIER)
    env = api_env(objects, tier)
    panns = {k: v for k, v in env.items() if k.startswith("PANNS_")}
    assert not sorted(set(panns) - service_variables()), sorted(set(panns) - service_variables())
    settings = as_settings(panns)
    assert settings.host == "0.0.0.0"
    assert settings.backend == {"engine": "onnxruntime", "front": "oip"}[tier]
    api = container(pod_spec(objects, tier), "api")
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = api[probe]["httpGet"]
        assert get["path"] == path and path in route_paths(), probe
        assert container_port(api, get["port"]) == settings.port, probe
    spec = pod_spec(objects, tier)
    assert spec["securityContext"]["runAsNonRoot"] is True
    for item in [*spec["initContainers"], *spec["containers"]]:
        assert item["securityContext"]["readOnlyRootFilesystem"] is True, (tier, item["name"])
    pre_stop = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + settings.graceful_timeout_s


def test_the_front_calls_the_engine_service_with_the_engines_key() -> None:
    objects = overlay(TWO_TIER)
    front, engine = as_settings(api_env(objects, "front")), as_settings(api_env(objects, "engine"))
    url = urlsplit(front.engine_url)
    service = find(objects, "Service", url.hostname)
    engine_pod = deployment(objects, "engine")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= engine_pod.items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    engine_api = container(pod_spec(objects, "engine"), "api")
    assert container_port(engine_api, port["targetPort"]) == engine.port
    key = front.engine_api_key.get_secret_value()
    assert key and engine.api_key_list == [key], "the engine accepts the front's key only"
    assert front.api_key_list and key not in front.api_key_list
    # A front batch must fit one engine request (README "Two tiers", Sizing).
    assert engine.max_files >= front.max_batch and engine.max_batch >= front.max_batch
    assert engine.max_upload_bytes >= front.max_batch * 10 * 32000 * 4


def test_the_front_is_cpu_sized_and_reads_the_card_of_the_engines_bundle() -> None:
    objects = overlay(TWO_TIER)
    front = pod_spec(objects, "front")
    api = container(front, "api")
    resources = api["resources"]
    assert "nvidia.com/gpu" not in resources["limits"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    assert as_settings(api_env(objects, "front")).workers == int(resources["requests"]["cpu"])
    assert image_name(api["image"]) == compose_image("api", COMPOSE_CPU)
    assert (
        int(container(pod_spec(objects, "engine"), "api")["resources"]["limits"]["nvidia.com/gpu"])
        == 1
    )
    model_env = container_env(objects, container(front, "model", init=True))
    engine_model_env = container_env(
        objects, container(pod_spec(objects, "engine"), "model", init=True)
    )
    for name in ("PANNS_MODEL", "PANNS_CHECKPOINT", "PANNS_MODELS", "PANNS_MODEL_NAME"):
        assert model_env.get(name) == engine_model_env.get(name), name
    assert model_env["PANNS_MODELS"] == api_env(objects, "front")["PANNS_MODELS"]
    for path in api_env(objects, "front")["PANNS_MODELS"].split(","):
        assert mounted(api, path, writable=False) and not mounted(api, path, writable=True)
