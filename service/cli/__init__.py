"""The ``panns`` command: ``panns tag``, ``panns models``, ``panns serve``.

    panns tag recordings/ -r --url http://localhost:8000 --out tags.jsonl
    panns tag recordings/ -r --bundle models/cnn14 --out tags.csv --top-k 3
    panns models --url http://localhost:8000
    panns serve --models models/cnn14 --port 8000

A door like the REST API: it calls the core (in-process) or the service (over HTTP).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from service.cli import models, tag


def serve(args: argparse.Namespace) -> int:
    """``python -m service`` with the given settings (the others from ``PANNS_*``)."""
    for name in ("models", "host", "port"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"PANNS_{name.upper()}"] = str(value)
    from service.__main__ import main as serve_main

    serve_main()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panns", description=__doc__.split("\n")[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tag.add_parser(commands)
    models.add_parser(commands)
    s = commands.add_parser("serve", help="run the REST service (as `python -m service`)")
    s.add_argument("--models", help="bundle dirs, comma-separated (default: PANNS_MODELS)")
    s.add_argument("--host", help="default: PANNS_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help="default: PANNS_PORT or 8000")
    s.set_defaults(run=serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    status: int = args.run(args)
    return status
