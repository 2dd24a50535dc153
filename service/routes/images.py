"""The archive's items: POST /index adds, GET /images/{id} reads, DELETE /images/{id} removes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Path, Response, UploadFile, status

from indexer.index.store import ItemRecord
from service.deps import ClientDep, EngineDep, SettingsDep, WriteAccess
from service.engine import AddedUpload, ItemFields
from service.errors import ErrorCode, ServiceError
from service.forms import TEXT_PATTERN, StrictFormRoute
from service.paths import display_source
from service.routes.responses import (
    SERVER_LIMITS,
    UPLOAD_ERRORS,
    Responses,
    error_responses,
    image_parts,
)
from service.routes.uploads import read_upload
from service.schemas import (
    AddedImage,
    AddStatus,
    DeleteResponse,
    FeatureItem,
    ImageSize,
    IndexResponse,
    ItemMetadata,
    TilePosition,
)
from service.vectors import NO_PIXELS_NOTE, feature_fields

# Writes always need the key; reads get theirs where the app includes them (settings decide).
write_router = APIRouter(tags=["images"], route_class=StrictFormRoute)
read_router = APIRouter(tags=["images"], route_class=StrictFormRoute)

# Ids are 63-bit integers: anything else is refused by validation before it reaches the store.
MAX_ITEM_ID = 2**63 - 1
ItemId = Annotated[int, Path(ge=0, le=MAX_ITEM_ID, description="Archive item id.")]
MetadataText = Annotated[
    str | None,
    Form(max_length=1024, pattern=TEXT_PATTERN, description="Text; no control characters."),
]

_WRITE_AUTH = (401, 403)
_ALL_DUPLICATES: Responses = {
    200: {"model": IndexResponse, "description": "Every file was a duplicate: nothing added."}
}
_THUMBNAIL: Responses = {
    200: {
        "content": {"image/jpeg": {}},
        "description": "The JPEG thumbnail, with an ETag to revalidate it by.",
    },
    304: {"description": "The thumbnail sent with this ETag is still current."},
}


def thumbnail_url(item_id: int) -> str:
    return f"/images/{item_id}/thumbnail"


def item_metadata(record: ItemRecord, *, pixels: bool = True) -> ItemMetadata:
    return ItemMetadata(**item_fields(record, pixels=pixels))


def item_fields(record: ItemRecord, *, pixels: bool = True) -> dict[str, Any]:
    """The `ItemMetadata` fields of a record, for it or for schemas extending it; an item of an
    index without ``pixels`` (a feature archive) has no thumbnail and says so."""
    if not pixels:
        slide_id, row = feature_fields(record)
        return _fields(record) | {
            "thumbnail_url": None,
            "thumbnail_note": NO_PIXELS_NOTE,
            "feature": FeatureItem(slide_id=slide_id, row=row),
        }
    return _fields(record) | {"thumbnail_url": thumbnail_url(record.id)}


def _fields(record: ItemRecord) -> dict[str, Any]:
    tile = None if record.tile is None else TilePosition(**_as_box(record.tile))
    size = None if record.source_size is None else ImageSize(**_as_size(record.source_size))
    return {
        "id": record.id,
        "label": record.label,
        "group": record.group,
        "dataset": record.dataset,
        "source": display_source(record),
        "tile": tile,
        "source_size": size,
        "added_at": datetime.fromtimestamp(record.added_at, tz=UTC),
        "extra": dict(record.extra or {}),
    }


def _as_box(tile: tuple[int, int, int, int]) -> dict[str, int]:
    x, y, width, height = tile
    return {"x": x, "y": y, "width": width, "height": height}


def _as_size(size: tuple[int, int]) -> dict[str, int]:
    width, height = size
    return {"width": width, "height": height}


@write_router.post(
    "/index",
    status_code=status.HTTP_201_CREATED,
    response_model=IndexResponse,
    responses={
        **_ALL_DUPLICATES,
        **error_responses(*_WRITE_AUTH, *UPLOAD_ERRORS, *SERVER_LIMITS),
    },
    dependencies=[WriteAccess],
    openapi_extra=image_parts("images"),
)
async def index_images(
    engine: EngineDep,
    settings: SettingsDep,
    client: ClientDep,
    response: Response,
    images: Annotated[
        list[UploadFile], File(min_length=1, description="One or more images to add.")
    ],
    label: MetadataText = None,
    group: MetadataText = None,
    dataset: MetadataText = None,
    source: MetadataText = None,
) -> IndexResponse:
    if len(images) > settings.max_files_per_request:
        raise ServiceError(
            413,
            ErrorCode.TOO_MANY_FILES,
            f"{len(images)} files in one request; the limit is {settings.max_files_per_request}",
        )
    uploads = [await read_upload(image, settings.max_upload_bytes) for image in images]
    fields = ItemFields(label=label, group=group, dataset=dataset, source=source)
    added, total = await engine.offload(
        lambda: (engine.add_uploads(uploads, fields), len(engine.index)),
        client=client,
        cost=engine.upload_cost(uploads),
    )
    body = _index_response(added, total)
    if body.added == 0:
        response.status_code = status.HTTP_200_OK
    return body


def _added_image(added: AddedUpload) -> AddedImage:
    item_id = added.outcome.id if added.outcome.added else added.outcome.duplicate_of
    if item_id is None:
        raise ServiceError(
            500, ErrorCode.INTERNAL_ERROR, "the index gave neither an id nor a duplicate"
        )
    return AddedImage(
        filename=added.upload.filename,
        id=item_id,
        status=AddStatus.ADDED if added.outcome.added else AddStatus.DUPLICATE,
        content_hash=added.content_hash,
    )


def _index_response(added: list[AddedUpload], total: int) -> IndexResponse:
    items = [_added_image(entry) for entry in added]
    new = sum(item.status is AddStatus.ADDED for item in items)
    return IndexResponse(items=items, added=new, duplicates=len(items) - new, total_items=total)


async def _record_or_404(engine: EngineDep, client: str, item_id: int) -> ItemRecord:
    record = await engine.offload(lambda: engine.index.get(item_id), client=client)
    if record is None:
        raise ServiceError(404, ErrorCode.NOT_FOUND, f"no archive item with id {item_id}")
    return record


@read_router.get(
    "/images/{item_id}",
    response_model=ItemMetadata,
    responses=error_responses(404, 422, *SERVER_LIMITS),
)
async def get_image(engine: EngineDep, client: ClientDep, item_id: ItemId) -> ItemMetadata:
    record = await _record_or_404(engine, client, item_id)
    return item_metadata(record, pixels=engine.features is None)


@read_router.get(
    "/images/{item_id}/thumbnail",
    response_class=Response,
    responses={**_THUMBNAIL, **error_responses(404, 422, *SERVER_LIMITS)},
)
async def get_thumbnail(
    engine: EngineDep,
    client: ClientDep,
    item_id: ItemId,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    thumbnail = await engine.offload(lambda: engine.index.thumbnail(item_id), client=client)
    if thumbnail is None:
        note = "" if engine.features is None else f" ({NO_PIXELS_NOTE})"
        raise ServiceError(404, ErrorCode.NOT_FOUND, f"no thumbnail for item {item_id}{note}")
    # Revalidated on every use (no-cache + ETag): a deleted item's thumbnail must not linger in
    # a browser's cache, and an unchanged one costs a 304 without its bytes.
    etag = f'"{hashlib.sha256(thumbnail).hexdigest()[:32]}"'
    headers = {"Cache-Control": "private, no-cache", "ETag": etag}
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(thumbnail, media_type="image/jpeg", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weakly or strongly) or is ``*``."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


@write_router.delete(
    "/images/{item_id}",
    response_model=DeleteResponse,
    responses=error_responses(*_WRITE_AUTH, 404, 422, *SERVER_LIMITS),
    dependencies=[WriteAccess],
)
async def delete_image(engine: EngineDep, client: ClientDep, item_id: ItemId) -> DeleteResponse:
    if not await engine.offload(lambda: engine.remove(item_id), client=client):
        raise ServiceError(404, ErrorCode.NOT_FOUND, f"no archive item with id {item_id}")
    return DeleteResponse(id=item_id, deleted=True)
