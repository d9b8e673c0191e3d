"""Media: images a run sends (sample predictions, add_image), kept as files, referenced by URL.

``POST /api/runs/{id}/media?name=&step=&caption=`` takes the image bytes as the body (PNG, JPEG,
GIF or WebP, found by their magic bytes, at most 10 MiB), writes them under
``<data_dir>/media/<run>/``, and stores a ``media`` event whose ``data.url`` serves them back from
``GET /api/media/{run}/{file}``. The event carries the URL, never the bytes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, Response

from trainpilot.events import NewEvent
from trainpilot.exceptions import NotFound
from trainpilot.server.errors import JSON, HTTPError
from trainpilot.server.http import READ, WRITE, hub_of, read_body
from trainpilot.server.hub import Hub
from trainpilot.wire import IMAGE_FORMATS, MAX_MEDIA_BYTES, MAX_STEP

router = APIRouter()
CONTENT_TYPES = {ext: mime for ext, mime in IMAGE_FORMATS.values()}
SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sniff(body: bytes) -> tuple[str, str]:
    for magic, kind in IMAGE_FORMATS.items():
        if body.startswith(magic) and (magic != b"RIFF" or body[8:12] == b"WEBP"):
            return kind
    raise HTTPError(415, "unsupported_media_type", "expected PNG, JPEG, GIF or WebP image bytes as the body")


@router.post(
    "/api/runs/{run_id}/media",
    tags=["runs"],
    status_code=201,
    summary="Upload an image (the body); stores a media event that references it by URL",
    dependencies=WRITE,
)
async def upload_media(
    request: Request,
    run_id: str,
    name: Annotated[str, Query(min_length=1, max_length=200)],
    step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    caption: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    body = await read_body(request, MAX_MEDIA_BYTES)
    data = await save_media(hub_of(request), run_id, name, step, caption, body)
    return JSON(data, status_code=201)


async def save_media(
    hub: Hub, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
) -> dict[str, Any]:
    """Write the image under the data dir and store the media event that points at it."""
    await hub.store.get_run(run_id)
    if len(body) > MAX_MEDIA_BYTES:
        raise HTTPError(413, "too_large", f"images are limited to {MAX_MEDIA_BYTES} bytes")
    extension, _ = sniff(body)
    folder = Path(hub.settings.data_dir).resolve() / "media" / SAFE.sub("_", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    filename = f"{SAFE.sub('_', name)[:80]}-{step if step is not None else 'x'}-{time.time_ns()}.{extension}"
    (folder / filename).write_bytes(body)
    data: dict[str, Any] = {
        "type": "image",
        "name": name,
        "url": f"/api/media/{folder.name}/{filename}",
        "caption": caption,
        "bytes": len(body),
    }
    result = await hub.ingest(run_id, [NewEvent(run_id, "media", data, ts=time.time(), step=step)])
    return {**data, "event_id": result.last_id}


@router.get("/api/media/{run_id}/{filename}", tags=["runs"], summary="A stored image", dependencies=READ)
async def get_media(request: Request, run_id: str, filename: str) -> Response:
    root = Path(hub_of(request).settings.data_dir).resolve() / "media"
    path = (root / run_id / filename).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"no media {run_id}/{filename}")
    return FileResponse(
        path, media_type=CONTENT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    )
