"""Reading multipart file parts within the per-file byte limit."""

from __future__ import annotations

from fastapi import UploadFile

from service.engine import Upload
from service.errors import ErrorCode
from service.imaging import ImageRejectedError

_CHUNK_BYTES = 1024 * 1024


async def read_upload(upload: UploadFile, max_bytes: int) -> Upload:
    """Read one file part, refusing it as soon as it passes ``max_bytes``.

    The request body is already capped while it streams in; this enforces the per-file limit when
    one request carries several files.
    """
    filename = upload.filename or "upload"
    if upload.size is not None and upload.size > max_bytes:
        raise _too_large(filename, max_bytes)
    chunks: list[bytes] = []
    received = 0
    while chunk := await upload.read(_CHUNK_BYTES):
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(filename, max_bytes)
        chunks.append(chunk)
    return Upload(filename=filename, data=b"".join(chunks))


def _too_large(filename: str, max_bytes: int) -> ImageRejectedError:
    return ImageRejectedError(
        ErrorCode.UPLOAD_TOO_LARGE,
        f"{filename}: the file exceeds the limit of {max_bytes} bytes",
    )
