"""One JSON error shape for every failure, so clients never have to parse HTML or guess."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.imaging import ImageRejectedError
from service.schemas import ErrorResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the client can act on: carries its HTTP status and a stable error code."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(
    status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(code=code, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _code_for_status(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _describe_validation_error(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(piece) for piece in item.get("loc", ()) if piece != "body")
        parts.append(f"{location or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers that turn every exception into :class:`ErrorResponse` JSON."""

    async def on_service_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ServiceError)
        return error_response(error.status_code, error.code, error.detail, error.headers)

    async def on_rejected_image(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ImageRejectedError)
        logger.info("upload rejected (%s): %s", error.reason.value, error.detail)
        return error_response(error.status_code, error.reason.value, error.detail)

    async def on_http_exception(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        if error.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            # Raised by the body-size limiter while the upload streams in.
            return error_response(
                413, "upload_too_large", str(error.detail), {"Connection": "close"}
            )
        code = _code_for_status(error.status_code)
        return error_response(error.status_code, code, str(error.detail), error.headers)

    async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(422, "invalid_request", _describe_validation_error(error))

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(ImageRejectedError, on_rejected_image)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
