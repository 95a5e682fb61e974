"""Readers for the deployment files (Compose, Dockerfiles, .dockerignore, .env.example, PromQL).

No Docker engine is needed: these parse the files the way Docker and Compose read them, far
enough for the tests to check what each file promises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
COMPOSE_REPLICAS = REPO_ROOT / "docker-compose.replicas.yml"
COMPOSE_FILES = (COMPOSE, COMPOSE_CPU, COMPOSE_REPLICAS)
DOCKERFILES = tuple(sorted((REPO_ROOT / "docker").glob("*.Dockerfile")))
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "dashboards" / "panns.json"
PROMETHEUS = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"


@dataclass(frozen=True)
class Reset:
    """A Compose ``!reset`` / ``!override`` tag: the override replaces, not merges."""

    tag: str
    value: Any


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that understands Compose's merge tags."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        value: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Reset(suffix, value)


ComposeLoader.add_multi_constructor("!", _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=ComposeLoader)  # a SafeLoader subclass
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``$$``."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return interpolate(arg, env) if unset else str(value)
        if op in (":?", "?") and not value:
            raise ValueError(f"required variable {name}: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def compose_variables(path: Path) -> set[str]:
    """Every variable name a Compose file interpolates (``${NAME...}``)."""
    text = path.read_text(encoding="utf-8")
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}


def environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str | None]:
    """A service's ``environment`` mapping, interpolated with ``env`` (None = pass-through)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {k: None if v is None else interpolate(str(v), env) for k, v in raw.items()}


def image_name(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def compose_image(service: str, *overrides: Any) -> str:
    image = load_compose(COMPOSE)["services"][service]["image"]
    for path in overrides:
        image = load_compose(path)["services"][service].get("image", image)
    return image_name(str(image).split(":$")[0])


@dataclass
class Dockerfile:
    """The parts of a Dockerfile the tests check."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword.upper()]

    def stages(self) -> list[list[tuple[str, str]]]:
        """Instructions grouped by ``FROM`` (the instructions before the first go first)."""
        groups: list[list[tuple[str, str]]] = [[]]
        for kw, args in self.instructions:
            if kw == "FROM":
                groups.append([])
            groups[-1].append((kw, args))
        return groups

    def copy_sources(self) -> list[str]:
        """Build-context sources of COPY/ADD (not ``--from=`` copies between stages)."""
        sources: list[str] = []
        for kw, args in self.instructions:
            if kw not in ("COPY", "ADD"):
                continue
            parts = args.split()
            if any(p.startswith("--from") for p in parts):
                continue
            operands = [p for p in parts if not p.startswith("--")]
            if operands and operands[0].startswith("["):
                operands = json.loads(" ".join(operands))
            sources.extend(operands[:-1])
        return sources

    def env_names(self) -> set[str]:
        names: set[str] = set()
        for args in self.all("ENV"):
            names.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args))
        return names


def parse_dockerfile(path: Path) -> Dockerfile:
    """Join continuation lines, drop comments, split into (KEYWORD, arguments)."""
    result = Dockerfile(path)
    logical = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        result.instructions.append((keyword.upper(), args.strip()))
        logical = ""
    assert not logical, f"{path}: dangling line continuation"
    return result


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(rel_path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``rel_path`` (or a parent directory) out of the context."""
    parts = rel_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = _ignore_regex(pattern.strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def env_example_names() -> set[str]:
    """Every variable .env.example sets or documents (commented ``# NAME=value`` lines too)."""
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


_PROMQL_KEYWORDS = frozenset(
    (
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    )
)
_LABEL_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _LABEL_CLAUSE.sub(" ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every panel target of the Grafana dashboard."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = list(dash["panels"])
    for panel in list(panels):
        panels.extend(panel.get("panels", []))
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if "expr" in t]


def grafana_to_promql(expr: str, rate_interval: str = "1m") -> str:
    """Substitute the dashboard's Grafana variables with values Prometheus parses
    (every model, every API endpoint)."""
    for var, value in (
        ("$__rate_interval", rate_interval),
        ("$__range", "1h"),
        ("$model", ".*"),
        ("$endpoint", "/v1/.*"),
    ):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def dashboard_variable_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append(query["query"] if isinstance(query, dict) else str(query))
    return out


def exposed_sample_names(families: dict[str, str]) -> set[str]:
    """Sample names Prometheus stores for metric families ``{family name: type}``.

    prometheus-client's parser names a counter family without ``_total``; a histogram
    family stores ``_bucket``, ``_sum`` and ``_count`` series.
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {name + s for name, kind in families.items() for s in suffixes.get(kind, ("",))}
