#!/usr/bin/env python3
"""Container health check for danet-serve: exit 0 when ``/readyz`` answers 200, 1 otherwise.

Used by the Dockerfile's HEALTHCHECK and by docker-compose.yml. Standard library only, so the runtime images
need no curl. The port comes from ``DANET_HTTP_PORT`` (the server's own setting), the path may be given as
the first argument (``/healthz`` for liveness instead of readiness).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_PATH = "/readyz"
TIMEOUT_S = 4.0


def probe(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, reason) for one GET of ``url``; only a 200 is healthy."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 while warming up or draining
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url} unreachable: {exc}"
    return status == 200, f"{url} answered {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else DEFAULT_PATH
    port = os.environ.get("DANET_HTTP_PORT", "8000")
    healthy, reason = probe(f"http://127.0.0.1:{port}{path}")
    if not healthy:
        sys.stderr.write(f"unhealthy: {reason}\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
