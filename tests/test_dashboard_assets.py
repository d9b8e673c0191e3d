"""The dashboard is served by the server itself, with its vendored chart library: no CDN, no build.

The page's behaviour in a real browser is tested by the dashboard issue's browser tests; this file
checks what a browser needs to get from the server.
"""

from __future__ import annotations

import re

from starlette.testclient import TestClient


def test_the_page_and_every_asset_it_references_are_served(app_client: TestClient) -> None:
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/vendor/uPlot.iife.min.js", "/static/style.css"} <= set(assets)
    for asset in assets:
        response = app_client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert app_client.get("/static/../pyproject.toml").status_code == 404
