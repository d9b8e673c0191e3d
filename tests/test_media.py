"""Images: uploaded as files, referenced by URL from a media event (on the app in this process); from the
SDK even across an outage (on a real server that starts late)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from starlette.testclient import TestClient

import trainpilot
from tests.conftest import LiveServer, create_run, in_process, sse_events


def png(width: int = 4, height: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


PNG = {"content-type": "image/png"}


def test_an_uploaded_image_is_stored_as_a_file_and_served_by_url(
    app_client: TestClient, tmp_path: Path
) -> None:
    client = app_client
    create_run(client, "media-up")
    reply = client.post(
        "/api/runs/media-up/media",
        params={"name": "grid", "step": 3, "caption": "hi"},
        content=png(),
        headers=PNG,
    )
    assert reply.status_code == 201, reply.text
    url = reply.json()["url"]
    served = client.get(url)
    assert served.status_code == 200 and served.content == png()
    assert served.headers["content-type"] == "image/png"
    (stored,) = (tmp_path / "app-data" / "media" / "media-up").iterdir()  # a file in the data dir
    assert stored.read_bytes() == png()
    (event,) = sse_events(client, {"after": "0", "run_id": "media-up", "kinds": "media"}, count=1)
    assert event.data["data"]["url"] == url and event.data["step"] == 3  # type: ignore[index]


def test_bad_uploads_are_refused(tmp_path: Path) -> None:
    with in_process(tmp_path, store="") as client:  # SQLite in the data dir: a file worth reaching for
        assert (tmp_path / "trainpilot.db").is_file()
        create_run(client, "media-bad")
        bad = client.post("/api/runs/media-bad/media", params={"name": "x"}, content=b"hello", headers=PNG)
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_media_type"
        ghost = client.post("/api/runs/ghost/media", params={"name": "x"}, content=png(), headers=PNG)
        assert ghost.status_code == 404
        no_name = client.post("/api/runs/media-bad/media", content=png(), headers=PNG)
        assert no_name.status_code == 422
        assert client.get("/api/media/media-bad/..%2F..%2Ftrainpilot.db").status_code == 404
        assert client.get("/api/media/../trainpilot.db").status_code == 404


def test_sdk_images_survive_an_outage(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server")
    run = trainpilot.init(project="media", server=live.url, data_dir=str(tmp_path / "client"))
    run.log({"loss": 1.0})
    run.log_image("array", np.linspace(0, 1, 64 * 48).reshape(48, 64), caption="a ramp")
    run.log_image("chw", np.zeros((3, 8, 8), dtype=np.float32), step=5)
    deadline = time.monotonic() + 10
    while not run._sender.spool and time.monotonic() < deadline:
        time.sleep(0.05)
    live.start()
    try:
        run.finish(timeout=60)
        events = sse_events(live.url, {"after": "0", "run_id": run.id, "kinds": "media"}, count=2)
        first, second = (e.data["data"] for e in events)  # type: ignore[index]
        assert (first["name"], first["caption"], second["name"]) == ("array", "a ramp", "chw")
        assert events[1].data["step"] == 5  # type: ignore[index]
        image = Image.open(io.BytesIO(httpx.get(live.url + first["url"]).content))
        assert image.size == (64, 48)
    finally:
        live.stop()
