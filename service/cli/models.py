"""``panns models``: the models a service serves (``--url``) or bundles hold (``--bundle``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import orjson

from service.cli.common import FatalError, Json

COLUMNS = ("name", "arch", "classes", "sample_rate", "outputs", "variants", "provider", "default")


def _outputs(entry: Json) -> str:
    return ",".join(str(o.get("kind") or o.get("name")) for o in entry.get("outputs") or [])


def served(url: str, api_key: str | None, timeout_s: float) -> list[Json]:
    """``GET /v1/models`` of the service at ``url``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise FatalError(f"cannot reach {url}: {exc!r}") from exc
    if response.status_code != 200:
        raise FatalError(f"{url}/v1/models answered {response.status_code}: {response.text[:300]}")
    try:
        models: list[Json] = orjson.loads(response.content)["models"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        body = response.text[:300]
        raise FatalError(f"{url}/v1/models is not the service's JSON: {body!r}") from exc
    return models


def bundled(bundles: str | None) -> list[Json]:
    """The cards of ``bundles`` (comma-separated; default ``PANNS_MODELS``), nothing loaded."""
    from service.core.card import BundleError, read_card
    from service.settings import Settings

    dirs = Settings(models=bundles).model_dirs if bundles else Settings().model_dirs
    out = []
    for index, path in enumerate(dirs):
        try:
            card = read_card(path)
        except BundleError as exc:
            raise FatalError(str(exc)) from exc
        entry = card.model_dump(mode="json", exclude={"labels"})
        entry.update(classes=len(card.labels), variants=list(card.files), default=index == 0)
        entry["bundle"] = str(path)
        out.append(entry)
    return out


def table(models: list[Json]) -> str:
    def cell(entry: Json, column: str) -> str:
        if column == "outputs":
            return _outputs(entry)
        value = entry.get(column)
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return "" if value is None else str(value)

    rows = [list(COLUMNS)] + [[cell(m, c) for c in COLUMNS] for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def command(args: argparse.Namespace) -> int:
    try:
        if args.url:
            key = args.api_key or os.environ.get("PANNS_API_KEY") or None
            models = served(args.url, key, args.timeout)
        else:
            models = bundled(args.bundle)
    except FatalError as exc:
        print(f"panns models: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(models).decode() if args.json else table(models))
    return 0


def add_parser(commands: Any) -> None:
    p = commands.add_parser("models", help="list the models of a service or of bundles")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running service")
    where.add_argument("--bundle", help="bundle dir(s), comma-separated (default: PANNS_MODELS)")
    p.add_argument("--api-key", help="--url: the service's key (default: $PANNS_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--json", action="store_true", help="the full entries as JSON")
    p.set_defaults(run=command)
