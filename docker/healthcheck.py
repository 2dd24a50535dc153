"""Health check of a serving container: 0 when the service answers 200 within 4 seconds, else 1.

    python healthcheck.py [PATH_OR_URL]     (default: /ready)

A path is asked of 127.0.0.1 on $HISTOSEARCH_PORT (8000 unless set), the port the container's
`serve` listens on, so a changed port needs no change here. Standard library only, so the check
works in the slim runtime image without curl.
"""

import os
import sys
import urllib.request


def target(argument: str) -> str:
    if argument.startswith(("http://", "https://")):
        return argument
    port = os.environ.get("HISTOSEARCH_PORT") or "8000"
    return f"http://127.0.0.1:{port}/{argument.lstrip('/')}"


def main() -> int:
    url = target(sys.argv[1] if len(sys.argv) > 1 else "/ready")
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
