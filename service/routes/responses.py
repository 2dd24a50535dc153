"""The error answers each operation documents in OpenAPI: every status it can really give."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorResponse

Responses = dict[int | str, dict[str, Any]]

_DESCRIPTIONS = {
    400: "Empty or corrupt upload, or a malformed multipart body.",
    401: "The bearer key is missing or wrong.",
    403: "The server has no API key configured, so writes are disabled.",
    404: "No such item.",
    408: "The request's headers or body did not arrive in time.",
    413: "Too many bytes, pixels or files.",
    415: "Not a JPEG, PNG, TIFF, BMP, GIF or WebP image.",
    422: "A field is malformed, out of range or holds control characters.",
    429: "This client already has the most requests in flight that one client may have.",
    503: "Still loading, stopping, or too many requests waiting.",
}


def error_responses(*statuses: int) -> Responses:
    """OpenAPI ``responses`` entries: each status with the one error body and what it means."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


# What any request that reaches the engine can meet besides its own errors.
SERVER_LIMITS = (408, 429, 503)
# Every multipart upload: parsing, byte limits, image checks and text checks.
UPLOAD_ERRORS = (400, 413, 415, 422)


def image_parts(field: str) -> dict[str, Any]:
    """``openapi_extra`` saying which media types the multipart ``field`` takes (images only)."""
    from service.imaging import ACCEPTED_MEDIA_TYPES

    encoding = {field: {"contentType": ", ".join(ACCEPTED_MEDIA_TYPES)}}
    return {"requestBody": {"content": {"multipart/form-data": {"encoding": encoding}}}}
