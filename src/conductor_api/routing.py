"""Every route's JSON body read as the contract says bodies are: UTF-8 JSON, one value a key.

Starlette's `Request.json` is `json.loads` on the bytes, which also takes UTF-16 and UTF-32
(told by their first bytes) and lets the last of two equal keys win. A filter in front of
the server that reads the body as UTF-8, or keeps the first of two keys (as some parsers
do), would then see another request than the one the server acts on: with
`{"password": "a", "password": "b"}`, another password. Here either is a 400.

A body sent with a `Content-Encoding` (gzip, say) would be read as it came, compressed,
and refused as not UTF-8, or, for a coding that leaves JSON intact, acted on while a filter
that decodes it sees something else; the server decodes none, so such a body is a 415
(RFC 9110 section 8.4.1)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

_NOT_UTF8 = "The body is not UTF-8 JSON"
_CODED = "Content-Encoding is not supported: send the body as it is"


def _one_value_a_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise HTTPException(400, f"The key {json.dumps(key)[:100]} appears twice in the body")
        found[key] = value
    return found


def parse_json(body: bytes) -> Any:
    """`body` as JSON: UTF-8 only (no byte order mark), no key twice in one object; a 400
    otherwise, and JSONDecodeError (FastAPI's 422) for text that is not JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, _NOT_UTF8) from None
    if text.startswith("\ufeff"):
        raise HTTPException(400, _NOT_UTF8)
    return json.loads(text, object_pairs_hook=_one_value_a_key)


def _has_body(headers: Any) -> bool:
    """Whether the request comes with a body (a chunked one, or a non-zero length)."""
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


class StrictJSONRequest(Request):
    """A request whose `json()` is `parse_json`'s."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose body FastAPI reads through `StrictJSONRequest`: the class of every
    router of the API."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            headers = request.headers
            coding = headers.get("content-encoding")
            if coding is not None and coding.strip().lower() != "identity" and _has_body(headers):
                raise HTTPException(415, _CODED)
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
