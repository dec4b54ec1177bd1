"""uvicorn's HTTP protocol (httptools), answering a request it cannot parse in the API's shape.

uvicorn answers such a request itself, before any application code runs: `400`, `text/plain`,
no `X-Content-Type-Options`. The contract wants every error body in JSON with a `code` and
every response with `nosniff`, so this protocol writes that 400 instead."""

from __future__ import annotations

import json
import uuid
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from conductor_api.metrics.middleware import UNMATCHED

_BODY = json.dumps({"detail": "Invalid HTTP request", "code": "bad_request"}).encode()


def _application(app: Any) -> Any:
    """The application under uvicorn's wrappers (each keeps the one it wraps as `app`)."""
    while not hasattr(app, "state") and hasattr(app, "app"):
        app = app.app
    return app


class Protocol(HttpToolsProtocol):
    """httptools, with the 400 for an unparsable request as JSON with `nosniff`, counted in
    the metrics as every answered request is (method `other`, route `unmatched`)."""

    def send_400_response(self, msg: str) -> None:
        """The connection's last answer: a malformed request line, header or body framing."""
        # The container (and its metrics) exists once the application's lifespan has run.
        container = getattr(getattr(_application(self.app), "state", None), "container", None)
        if container is not None:
            container.metrics.observe_request("", UNMATCHED, 400, 0.0)
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
                b"x-content-type-options: nosniff\r\n",
                b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                _BODY,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
