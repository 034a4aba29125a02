"""A Server-Sent Events client as the page's reader is: events and comment lines off a live results stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str | None
    data: dict | None
    comment: str | None = None  # a comment line (": heartbeat"), for those read as such


class Stream:
    """An open stream: next() answers the next event or comment, within a timeout."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout_s: float = 10.0) -> Event:
        return await asyncio.wait_for(self._next(), timeout_s)

    async def _next(self) -> Event:
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if fields.keys() - {"retry"}:
                    data = fields.get("data")
                    return Event(fields.get("id"), fields.get("event"), None if data is None else json.loads(data))
                fields = {}
                continue
            if line.startswith(":"):
                return Event(None, None, None, comment=line[1:].strip())
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    async def next_match(self, timeout_s: float = 10.0) -> Event:
        """The next event that is not a comment, within timeout_s however many heartbeats come first."""

        async def skipping_comments() -> Event:
            while True:
                event = await self._next()
                if event.comment is None:
                    return event

        return await asyncio.wait_for(skipping_comments(), timeout_s)


async def open_stream(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], last_event_id: str | None = None
) -> Stream:
    if last_event_id is not None:
        headers = {**headers, "Last-Event-ID": last_event_id}
    response = await http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=60))
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    return Stream(response)
