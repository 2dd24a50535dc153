"""Multipart parsing that refuses what Starlette would let through quietly.

Starlette decodes a form field or file name that is not valid UTF-8 as Latin-1 instead of saying
so, and answers too many files with a generic 400. The parser here refuses both precisely (422
``invalid_text``, 413 ``too_many_files``), and also refuses text carrying control characters or
bidirectional overrides: a label with a NUL or a right-to-left override would be stored as sent
and shown to every later user of the archive.

Routes get it through :class:`StrictFormRoute` (FastAPI's documented way of giving a route its
own :class:`~starlette.requests.Request` class).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser, MultipartPart
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from service.errors import ErrorCode, ServiceError

# Characters that change how surrounding text is displayed without being visible themselves:
# bidirectional embeddings, overrides and isolates, and the directional marks.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


# The same rule as a regular expression, for the OpenAPI description of text fields (the
# pattern syntax both JSON Schema and pydantic's validator read).
TEXT_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"


def text_problem(value: str) -> str | None:
    """Why ``value`` may not be stored as text, or None when it may.

    Refused: C0 and C1 control characters (NUL, escape, newline, ...), DEL, and the bidirectional
    controls; every other character, in any script, is kept as sent.
    """
    for position, character in enumerate(value):
        if unicodedata.category(character) == "Cc":
            return f"control character U+{ord(character):04X} at position {position}"
        if character in _BIDI_CONTROLS:
            return f"bidirectional control U+{ord(character):04X} at position {position}"
    return None


def checked_text(raw: bytes, what: str) -> str:
    """``raw`` decoded as UTF-8, or a 422 ``invalid_text`` saying what is wrong with it."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ServiceError(
            422,
            ErrorCode.INVALID_TEXT,
            f"{what} is not valid UTF-8 (byte {error.start}); send text as UTF-8",
        ) from error
    problem = text_problem(value)
    if problem is not None:
        raise ServiceError(422, ErrorCode.INVALID_TEXT, f"{what} contains a {problem}")
    return value


class StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, with UTF-8 and control-character checks of the fields the route
    reads (``checked_fields``; others are ignored by the route, so they are let be) and a 413
    for extra files."""

    def __init__(self, *args: Any, checked_fields: frozenset[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checked_fields = checked_fields

    def on_part_end(self) -> None:
        name = self._current_part.field_name
        if self._current_part.file is None and name in self.checked_fields:
            checked_text(bytes(self._current_part.data), f"form field {name!r}")
        super().on_part_end()

    def on_headers_finished(self) -> None:
        options = _disposition_options(self._current_part.content_disposition or b"")
        name = options.get(b"name")
        filename = options.get(b"filename")
        if filename is None and name is not None and _declares_binary(self._current_part):
            # RFC 7578 makes a file part's filename optional; a part that declares a non-text
            # media type is a file whether or not it names one (it is given its field's name).
            filename = name
            quoted = name.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            self._current_part.content_disposition = (
                (self._current_part.content_disposition or b"") + b'; filename="' + quoted + b'"'
            )
        if filename is not None:
            if name is not None and name.decode("latin-1") in self.checked_fields:
                checked_text(filename, "a file name")
            if self._current_files + 1 > self.max_files:
                raise ServiceError(
                    413,
                    ErrorCode.TOO_MANY_FILES,
                    f"more than {int(self.max_files)} files in one request; "
                    f"send at most {int(self.max_files)}",
                )
        super().on_headers_finished()


def _declares_binary(part: MultipartPart) -> bool:
    for header, value in part.item_headers:
        if header == b"content-type":
            return not value.strip().lower().startswith(b"text/")
    return False


def _disposition_options(header: bytes) -> dict[bytes, bytes]:
    _, options = parse_options_header(header)
    return options


class StrictFormRequest(Request):
    """A request whose multipart form is read by :class:`StrictMultiPartParser`."""

    def __init__(self, scope: Scope, receive: Receive, checked_fields: frozenset[str]) -> None:
        super().__init__(scope, receive)
        self.checked_fields = checked_fields

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        if self._form is None and self.headers.get("content-type", "").lower().startswith(
            "multipart/form-data"
        ):
            parser = StrictMultiPartParser(
                self.headers,
                self.stream(),
                max_files=max_files,
                max_fields=max_fields,
                max_part_size=max_part_size,
                checked_fields=self.checked_fields,
            )
            try:
                self._form = await parser.parse()
            except MultiPartException as error:
                # Starlette's own refusals (no boundary, malformed parts) stay 400s.
                raise ServiceError(400, ErrorCode.BAD_REQUEST, error.message) from error
        return await super()._get_form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )


class StrictFormRoute(APIRoute):
    """An API route whose handler sees a :class:`StrictFormRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fields = frozenset(
            param.alias for param in self.dependant.body_params if not _is_json_text(param)
        )

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictFormRequest(request.scope, request.receive, fields))

        return strict_handler


# A form field declared as JSON text (``Form(json_schema_extra=JSON_TEXT)``): whitespace, newlines
# included, is part of JSON's syntax, and the route parses and checks the value as JSON itself.
JSON_TEXT: Final = {"contentMediaType": "application/json"}


def _is_json_text(param: Any) -> bool:
    extra = getattr(param.field_info, "json_schema_extra", None)
    return (
        isinstance(extra, dict) and extra.get("contentMediaType") == JSON_TEXT["contentMediaType"]
    )
