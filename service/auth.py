"""Bearer-key checks. Writes stay closed unless a key is configured: no key never means open."""

from __future__ import annotations

import hmac

from fastapi.security import HTTPAuthorizationCredentials

from service.errors import ServiceError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="histosearch"'}

NO_KEY_CONFIGURED = (
    "this server has no API key configured, so writes are disabled; set HISTOSEARCH_API_KEY "
    "(or HISTOSEARCH_API_KEY_FILE pointing at a file holding the key) and restart the server"
)


def check_bearer_key(
    expected_key: str | None, credentials: HTTPAuthorizationCredentials | None
) -> None:
    """Raise 403 when no key is configured, 401 when the request's key is missing or wrong."""
    if expected_key is None:
        raise ServiceError(403, "writes_disabled", NO_KEY_CONFIGURED)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ServiceError(
            401,
            "missing_api_key",
            "send the API key as `Authorization: Bearer <key>`",
            headers=_CHALLENGE,
        )
    # Constant-time comparison: response timing must not reveal how much of a guess matched.
    if not hmac.compare_digest(credentials.credentials.encode(), expected_key.encode()):
        raise ServiceError(401, "invalid_api_key", "the API key is not valid", headers=_CHALLENGE)
