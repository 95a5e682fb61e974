"""Container health check: exit 0 when the service answers ``GET /readyz`` with 200, else 1.

Used by the images' ``HEALTHCHECK`` and by the Compose ``healthcheck`` (curl is not in the
images). Standard library only. The port comes from ``PANNS_PORT`` (default 8000), as for
the service itself; ``/readyz`` is 503 until every model is loaded and warmed up.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def ready(port: int, timeout_s: float = 4.0) -> bool:
    """True when ``http://127.0.0.1:<port>/readyz`` answers 200 within ``timeout_s``."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    port = int(os.environ.get("PANNS_PORT", "8000"))
    return 0 if ready(port) else 1


if __name__ == "__main__":
    sys.exit(main())
