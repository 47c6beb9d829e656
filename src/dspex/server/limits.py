"""Request limits: the largest body the service reads, and the largest and deepest JSON document.

:class:`BodyLimit` is a pure ASGI middleware: a ``Content-Length`` over the limit is refused before the
body is read, and a body without one (chunked) is counted while it streams and refused the moment it
passes the limit (the app then sees a cut body and its answer is replaced), so a client cannot make
the server buffer more than ``max_body_bytes``. Both answer
413 with the JSON error body. :func:`check_document` bounds a spec or space document's depth and size
(``SpecError``, a 422 naming the field), before anything walks it recursively.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dspex.errors import SpecError

__all__ = ["BodyLimit", "check_document"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _message(limit: int) -> str:
    return (
        f"the request body is larger than {limit:,} bytes; send less, or raise the server's limit "
        "(DSPEX_MAX_BODY_BYTES, or dspex serve --max-body-bytes)"
    )


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        exceeded = False

        async def counted_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:  # the app reads on after the cut: the client went away, as far as it knows
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Stop reading here; the app sees a cut body, and its answer is replaced below.
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)
            # the app's own body for the cut request is dropped: the 413 has been sent

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": {"code": "payload_too_large", "message": _message(self.max_bytes)}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def check_document(value: Any, field: str, *, max_depth: int, max_bytes: int) -> None:
    """``SpecError`` at ``field`` when ``value`` nests deeper than ``max_depth`` or its JSON is larger
    than ``max_bytes``; iterative, so no document can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise SpecError(
                    f"the document nests deeper than {max_depth} levels here; flatten it "
                    "(or raise DSPEX_MAX_SPEC_DEPTH)",
                    path=path,
                )
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
                stack.append((child, where, depth + 1))
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise SpecError(
            f"the document is {size:,} bytes, over the limit of {max_bytes:,} (DSPEX_MAX_SPEC_BYTES)",
            path=field,
        )
