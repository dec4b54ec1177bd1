"""/docs and /redoc: FastAPI's pages, with every script and stylesheet they load from outside
pinned to one release and checked by the browser (Subresource Integrity)."""

from __future__ import annotations

import re

import httpx
import pytest

from conductor_api.api_docs import INTEGRITY

# Every tag that names something outside: its URL, and the whole tag.
EXTERNAL = re.compile(r'<(?:script|link)\b[^>]*?(?:src|href)="(https://[^"]+)"[^>]*>')


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_every_script_and_stylesheet_is_pinned_and_checked(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    loaded = 0
    for match in EXTERNAL.finditer(response.text):
        url, tag = match[1], match[0]
        if 'rel="shortcut icon"' in tag:
            continue  # an image: nothing it holds runs
        loaded += 1
        # An exact release (name@1.2.3/), never a range such as swagger-ui-dist@5/.
        assert re.search(r"@\d+\.\d+\.\d+/", url), url
        assert f'integrity="{INTEGRITY[url]}"' in tag, tag
        assert 'crossorigin="anonymous"' in tag, tag
    assert loaded == (2 if path == "/docs" else 1)
    assert "fonts.googleapis.com" not in response.text


async def test_the_swagger_page_reads_this_servers_document_and_redirect(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/docs")).text
    assert "url: '/openapi.json'" in page
    assert "window.location.origin + '/docs/oauth2-redirect'" in page
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text
    assert (await client.get("/openapi.json")).status_code == 200


async def test_the_pages_are_not_operations_of_the_api(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)
    refused = await client.post("/docs")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
