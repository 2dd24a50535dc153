"""One JSON error shape for every failure, so clients never have to parse HTML or guess.

Every code string the service answers with is a member of :class:`ErrorCode` (service.schemas),
so OpenAPI lists them and no handler invents its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from model.errors import HistosearchError
from service.schemas import ErrorCode, ErrorResponse

logger = logging.getLogger(__name__)

__all__ = ["ErrorCode", "ServiceError", "error_response", "install_error_handlers"]


class ServiceError(StarletteHTTPException, HistosearchError):
    """A failure the client can act on: carries its HTTP status and a stable error code.

    An HTTP exception too, so one raised while FastAPI parses a form body (the strict multipart
    parser's refusals) reaches the handlers as it is instead of becoming a generic 400.
    """

    def __init__(
        self,
        status_code: int,
        code: ErrorCode,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail, dict(headers) if headers else None)
        self.code = code
        self.detail = detail


def error_response(
    status_code: int, code: ErrorCode, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(code=code, detail=detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


# Statuses Starlette or FastAPI raise on their own (routing, body parsing), by their codes.
_CODE_BY_STATUS: dict[int, ErrorCode] = {
    HTTPStatus.BAD_REQUEST: ErrorCode.BAD_REQUEST,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    HTTPStatus.METHOD_NOT_ALLOWED: ErrorCode.METHOD_NOT_ALLOWED,
    HTTPStatus.NOT_ACCEPTABLE: ErrorCode.NOT_ACCEPTABLE,
    HTTPStatus.REQUEST_TIMEOUT: ErrorCode.REQUEST_TIMEOUT,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ErrorCode.UPLOAD_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    HTTPStatus.UNPROCESSABLE_ENTITY: ErrorCode.INVALID_REQUEST,
    HTTPStatus.TOO_MANY_REQUESTS: ErrorCode.TOO_MANY_REQUESTS,
    HTTPStatus.SERVICE_UNAVAILABLE: ErrorCode.SERVER_BUSY,
}


def code_for_status(status_code: int) -> ErrorCode:
    """The code of an HTTP exception raised without one (by the framework, not by us)."""
    fallback = ErrorCode.INTERNAL_ERROR if status_code >= 500 else ErrorCode.BAD_REQUEST
    return _CODE_BY_STATUS.get(status_code, fallback)


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
        if error.status_code < 500 and error.status_code not in (401, 403):
            logger.info("request refused (%s): %s", error.code.value, error.detail)
        return error_response(error.status_code, error.code, error.detail, error.headers)

    async def on_http_exception(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        headers = dict(error.headers or {})
        if error.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            # Raised by the body-size limiter while the upload streams in.
            headers["Connection"] = "close"
        code = code_for_status(error.status_code)
        return error_response(error.status_code, code, str(error.detail), headers)

    async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        detail = _describe_validation_error(error)
        return error_response(422, ErrorCode.INVALID_REQUEST, detail)

    async def on_client_gone(request: Request, error: Exception) -> JSONResponse:
        # The client left mid-body (or was dropped for stalling): nobody reads this answer.
        logger.info("client left during %s %s", request.method, request.url.path)
        return error_response(400, ErrorCode.BAD_REQUEST, "the client disconnected")

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        detail = "internal server error; see the server log"
        return error_response(500, ErrorCode.INTERNAL_ERROR, detail)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
