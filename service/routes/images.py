"""The archive's items: POST /index adds, GET /images/{id} reads, DELETE /images/{id} removes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status

from indexer.index.store import ItemRecord
from service.deps import EngineDep, ReadAccess, SettingsDep, WriteAccess
from service.engine import AddedUpload, ItemFields
from service.errors import ServiceError
from service.routes.uploads import read_upload
from service.schemas import (
    AddedImage,
    AddStatus,
    DeleteResponse,
    ErrorResponse,
    ImageSize,
    IndexResponse,
    ItemMetadata,
    TilePosition,
)

router = APIRouter(tags=["images"])

# Ids are 63-bit integers: anything else is refused by validation before it reaches the store.
ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="Archive item id.")]
MetadataText = Annotated[str | None, Form(max_length=1024)]

_WRITE_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 415, 422, 503)
}
_READ_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422, 503)
}

_ALL_DUPLICATES: dict[int | str, dict[str, object]] = {
    200: {"model": IndexResponse, "description": "Every file was a duplicate: nothing added."}
}
_JPEG: dict[int | str, dict[str, object]] = {200: {"content": {"image/jpeg": {}}}}


def thumbnail_url(item_id: int) -> str:
    return f"/images/{item_id}/thumbnail"


def item_metadata(record: ItemRecord) -> ItemMetadata:
    return ItemMetadata(**item_fields(record))


def item_fields(record: ItemRecord) -> dict[str, Any]:
    """The `ItemMetadata` fields of a record, for it or for schemas extending it."""
    tile = None if record.tile is None else TilePosition(**_as_box(record.tile))
    size = None if record.source_size is None else ImageSize(**_as_size(record.source_size))
    return {
        "id": record.id,
        "label": record.label,
        "group": record.group,
        "dataset": record.dataset,
        "source": record.source,
        "tile": tile,
        "source_size": size,
        "added_at": datetime.fromtimestamp(record.added_at, tz=UTC),
        "thumbnail_url": thumbnail_url(record.id),
        "extra": dict(record.extra or {}),
    }


def _as_box(tile: tuple[int, int, int, int]) -> dict[str, int]:
    x, y, width, height = tile
    return {"x": x, "y": y, "width": width, "height": height}


def _as_size(size: tuple[int, int]) -> dict[str, int]:
    width, height = size
    return {"width": width, "height": height}


@router.post(
    "/index",
    status_code=status.HTTP_201_CREATED,
    response_model=IndexResponse,
    responses={**_ALL_DUPLICATES, **_WRITE_ERRORS},
    dependencies=[WriteAccess],
)
async def index_images(
    engine: EngineDep,
    settings: SettingsDep,
    response: Response,
    images: Annotated[list[UploadFile], File(description="One or more images to add.")],
    label: MetadataText = None,
    group: MetadataText = None,
    dataset: MetadataText = None,
    source: MetadataText = None,
) -> IndexResponse:
    if len(images) > settings.max_files_per_request:
        raise ServiceError(
            413,
            "too_many_files",
            f"{len(images)} files in one request; the limit is {settings.max_files_per_request}",
        )
    uploads = [await read_upload(image, settings.max_upload_bytes) for image in images]
    fields = ItemFields(label=label, group=group, dataset=dataset, source=source)
    added, total = await engine.offload(
        lambda: (engine.add_uploads(uploads, fields), len(engine.index))
    )
    body = _index_response(added, total)
    if body.added == 0:
        response.status_code = status.HTTP_200_OK
    return body


def _added_image(added: AddedUpload) -> AddedImage:
    item_id = added.outcome.id if added.outcome.added else added.outcome.duplicate_of
    if item_id is None:
        raise ServiceError(500, "internal_error", "the index gave neither an id nor a duplicate")
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


async def _record_or_404(engine: EngineDep, item_id: int) -> ItemRecord:
    record = await engine.offload(lambda: engine.index.get(item_id))
    if record is None:
        raise ServiceError(404, "not_found", f"no archive item with id {item_id}")
    return record


@router.get(
    "/images/{item_id}",
    response_model=ItemMetadata,
    responses=_READ_ERRORS,
    dependencies=[ReadAccess],
)
async def get_image(engine: EngineDep, item_id: ItemId) -> ItemMetadata:
    return item_metadata(await _record_or_404(engine, item_id))


@router.get(
    "/images/{item_id}/thumbnail",
    response_class=Response,
    responses={**_JPEG, **_READ_ERRORS},
    dependencies=[ReadAccess],
)
async def get_thumbnail(engine: EngineDep, item_id: ItemId) -> Response:
    thumbnail = await engine.offload(lambda: engine.index.thumbnail(item_id))
    if thumbnail is None:
        raise ServiceError(404, "not_found", f"no thumbnail for item {item_id}")
    # Items never change once added (a delete removes the id for good), so caches may keep them.
    return Response(
        thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.delete(
    "/images/{item_id}",
    response_model=DeleteResponse,
    responses={**_WRITE_ERRORS, **_READ_ERRORS},
    dependencies=[WriteAccess],
)
async def delete_image(engine: EngineDep, item_id: ItemId) -> DeleteResponse:
    if not await engine.offload(lambda: engine.remove(item_id)):
        raise ServiceError(404, "not_found", f"no archive item with id {item_id}")
    return DeleteResponse(id=item_id, deleted=True)
