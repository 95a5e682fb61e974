"""Prometheus scrape config, Grafana provisioning and the dashboard's PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.deploy_files import (
    COMPOSE,
    DASHBOARD,
    PROMETHEUS,
    dashboard_exprs,
    dashboard_variable_queries,
    environment,
    exposed_sample_names,
    grafana_to_promql,
    load_compose,
    promql_metric_names,
)

PROVISIONING = REPO_ROOT / "docker" / "grafana" / "provisioning"

# What the issue asks the dashboard to show, as (title words, metric the panel must use).
REQUIRED_PANELS = (
    ("rate by status", "panns_requests_total"),
    ("latency", "panns_request_duration_seconds_bucket"),
    ("queue wait", "panns_queue_wait_seconds_bucket"),
    ("compute", "panns_compute_seconds_bucket"),
    ("batch size distribution", "panns_batch_size_bucket"),
    ("queue depth", "panns_queue_depth"),
    ("audio seconds per second", "panns_audio_seconds_total"),
    ("errors", "panns_requests_total"),
)


def _yaml(path: Any) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def api_scrape_job() -> dict[str, Any]:
    jobs = [j for j in _yaml(PROMETHEUS)["scrape_configs"] if j["job_name"] == "panns-api"]
    assert len(jobs) == 1
    return jobs[0]


def api_scrape_targets() -> list[str]:
    """host:port of the api job, from static or DNS service discovery."""
    job = api_scrape_job()
    targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    targets += [
        f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]
    ]
    return targets


def test_prometheus_scrapes_the_api_service_on_its_port_and_path() -> None:
    compose = load_compose(COMPOSE)
    api_port = environment(compose["services"]["api"], {})["PANNS_PORT"]
    assert api_scrape_targets() == [f"api:{api_port}"]
    assert api_scrape_job().get("metrics_path", "/metrics") == "/metrics"
    assert api_scrape_job().get("scheme", "http") == "http"


def test_grafana_datasource_points_at_the_prometheus_service() -> None:
    sources = _yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {
        t["datasource"]["uid"]
        for p in json.loads(DASHBOARD.read_text())["panels"]
        for t in p["targets"]
    }
    assert uids == {source["uid"]}


def test_grafana_dashboard_provider_loads_the_mounted_dashboards() -> None:
    providers = _yaml(PROVISIONING / "dashboards" / "panns.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    grafana = load_compose(COMPOSE)["services"]["grafana"]
    mount = f"./{DASHBOARD.parent.relative_to(REPO_ROOT).as_posix()}:/etc/grafana/dashboards:ro"
    assert mount in grafana["volumes"]


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    exprs = dashboard_exprs()
    for words, metric in REQUIRED_PANELS:
        hits = [e for title, e in exprs if words in title.lower()]
        assert hits, f"no panel titled like {words!r}"
        assert any(metric in promql_metric_names(e) for e in hits), (words, hits)
    latency = [e for title, e in exprs if "latency" in title.lower()]
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q},") for e in latency), q


def test_request_panels_leave_out_probes() -> None:
    """/readyz (Docker's health check) and /metrics (Prometheus) are not API traffic."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    endpoint = next(v for v in dash["templating"]["list"] if v["name"] == "endpoint")
    assert endpoint["allValue"] == "/v1/.*"
    for title, expr in dashboard_exprs():
        if "panns_requests_total" in promql_metric_names(expr):
            assert 'endpoint=~"$endpoint"' in expr, title


def test_dashboard_json_is_unique_and_laid_out() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_promql_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{model=~"$model", '
        'x="by (y)"}[$__rate_interval]))) / on (model) group_left b_total + sum(c)'
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}


def registered_metric_samples() -> set[str]:
    """Sample names of every metric the service registers (service.metrics.Metrics)."""
    from service.metrics import Metrics

    families = {m.name: m.type for m in Metrics().registry.collect()}
    return exposed_sample_names(families)


@pytest.mark.parametrize("title,expr", dashboard_exprs())
def test_dashboard_uses_only_metrics_the_service_registers(title: str, expr: str) -> None:
    names = promql_metric_names(expr)
    assert names, f"{title}: no metric in {expr}"
    missing = names - registered_metric_samples()
    assert not missing, f"{title}: {sorted(missing)} are not exported by the service"


def test_dashboard_variables_use_service_metrics() -> None:
    for query in dashboard_variable_queries():
        match = re.fullmatch(r"label_values\((\w+)(?:\{[^{}]*\})?,\s*(\w+)\)", query)
        assert match, query
        assert match.group(1) in registered_metric_samples(), query


def test_promtool_accepts_the_config_and_the_dashboard_queries(tmp_path: Any) -> None:
    """`promtool check config` and, as recording rules, every panel's PromQL (when installed)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    config = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = [
        {"record": f"panns:dashboard:{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
