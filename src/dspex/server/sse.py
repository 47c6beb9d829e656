"""Server-sent events: the wire format and a response that stops its producer when the client leaves.

FastAPI's generator endpoints (``response_class=EventSourceResponse``) commit to status 200 before the
generator runs, so an unknown program could no longer be a 404. The streaming endpoints here check
everything first and then return :class:`EventStream` over an async iterator of ``(event, data)`` pairs.
It always watches for the client's disconnect, whatever ASGI spec version the server reports, and then
cancels the iterator, which is how a streamed run ends as ``cancelled``. A comment line is sent every
``ping_s`` seconds of silence so proxies keep the connection open.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from fastapi.sse import EventSourceResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["EventStream", "EventStreamDoc", "RawData", "format_event"]

Event = tuple[str, Any]


class RawData(str):
    """Event data sent as it is rather than as JSON (an HTML fragment for htmx to swap in)."""

    __slots__ = ()


def format_event(event: str, data: Any) -> bytes:
    """One SSE message: ``event: <name>`` and ``data: <json>`` (JSON has no raw newlines); a
    :class:`RawData` payload as its lines, each on a ``data:`` line."""
    if isinstance(data, RawData):
        lines = b"".join(b"data: " + line.encode() + b"\n" for line in data.splitlines() or [""])
        return b"event: " + event.encode() + b"\n" + lines + b"\n"
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventStreamDoc(Response):
    """``response_class`` of the streaming routes: documents ``text/event-stream`` in the OpenAPI document.

    Not :class:`fastapi.sse.EventSourceResponse`, which would make FastAPI treat the endpoint as a
    generator; the endpoints return an :class:`EventStream` themselves.
    """

    media_type = "text/event-stream"


class EventStream(EventSourceResponse):
    """``text/event-stream`` over ``events``; the iterator is closed when the client disconnects."""

    def __init__(self, events: AsyncIterator[Event], *, ping_s: float = 15.0) -> None:
        super().__init__(
            content=iter(()),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.events = events
        self.ping_s = ping_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The producer runs in its own task and hands encoded messages over a memory stream: a ping
        # timeout then never cancels the producer in the middle of an await (a slow LM call).
        sender, receiver = anyio.create_memory_object_stream[bytes](max_buffer_size=16)
        events = self.events

        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                async with sender:
                    try:
                        async for event, data in events:
                            await sender.send(format_event(event, data))
                    finally:
                        aclose = getattr(events, "aclose", None)
                        if aclose is not None:
                            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                                await aclose()

            async def deliver() -> None:
                await send(
                    {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
                )
                async with receiver:
                    while True:
                        with anyio.move_on_after(self.ping_s) as waited:
                            try:
                                body = await receiver.receive()
                            except anyio.EndOfStream:
                                break
                        if waited.cancelled_caught:
                            body = b": ping\n\n"
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()

            async def watch() -> None:  # the client left: cancel the producer (a streamed run ends cancelled)
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(produce)
            tg.start_soon(deliver)
            tg.start_soon(watch)


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event: its type in `event`, its JSON payload in `data`.",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
"""The schema of each event of a stream (OpenAPI 3.2's reading of ``text/event-stream``)."""
