"""Request limits for the whole API, as plain ASGI middleware:
- body size: a declared Content-Length over the limit is refused before the body is read, and a
  chunked body is cut off as soon as it passes the limit (413); bodies are read whole (at most
  the limit) before the app runs;
- NUL characters, in the path, the query or the body (raw or as a JSON \\u0000 escape), are refused
  (400): no text field means anything with one, and PostgreSQL cannot store one (it would be a 500).
  A multipart/form-data body is exempt: it carries files (gzip, Parquet), binary by nature, and the
  one route that takes it (billing imports) parses and checks its fields itself."""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

NUL_ESCAPE = b"\\u0000"


class RequestLimits:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        raw_path = scope.get("raw_path") or scope.get("path", "").encode()
        if b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reject(send, 400, "NUL characters are not allowed in the path or query")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _reject(send, 400, "Content-Length is not a number")
                if declared > self.max_bytes:
                    return await _reject(send, 413, self._too_large())
        # Read the body before the app sees it (at most max_bytes), so a refusal is ours to word,
        # not a framework's "error parsing the body".
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                return await _reject(send, 413, self._too_large())
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = dict(scope.get("headers", ())).get(b"content-type", b"").lower()
        if (b"\x00" in body or NUL_ESCAPE in body) and not content_type.startswith(b"multipart/form-data"):
            return await _reject(send, 400, "NUL characters (\\u0000) are not allowed in request bodies")
        replayed = False

        async def buffered_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, buffered_receive, send)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes; split it into smaller requests"


async def _reject(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
