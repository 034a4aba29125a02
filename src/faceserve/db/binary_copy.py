"""A query's rows in one pass: binary COPY into fixed-size records, read by numpy, not row by row.

Only for queries whose every row has the same binary size: NOT NULL columns of fixed-size types and arrays of
a fixed length without NULLs. Every length word is checked against that layout before rows are returned."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from .pool import Connection, discard

# the signature, then flags and header extension length, both 0: no OIDs, no extension
_HEADER_BYTES = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_HEADER = len(_HEADER_BYTES)
_TRAILER_BYTES = b"\xff\xff"  # a field count of -1
_ARRAY_HEADER = 20  # dimensions, has-null flag, element type, then size and lower bound of the one dimension
# COPY bytes gathered before a worker thread parses them (while the next are gathered): big enough that a
# million rows are ~500 thread hops, small enough to stay in the CPU's cache and to hold beside the arrays
DRAIN_BYTES = 4 * 2**20

# a column of the query: name, numpy type of its value(s) as COPY writes them, array length (0: a scalar)
Column = tuple[str, str, int]


def record_type(columns: Sequence[Column]) -> np.dtype:
    fields: list[tuple] = [("fields", ">i2")]
    for name, kind, length in columns:
        fields.append((f"{name}_len", ">i4"))
        if length:
            fields += [
                (f"{name}_ndim", ">i4"),
                (f"{name}_has_null", ">i4"),
                (f"{name}_element_type", ">u4"),
                (f"{name}_size", ">i4"),
                (f"{name}_lower_bound", ">i4"),
                (name, [("len", ">i4"), ("value", kind)], (length,)),
            ]
        else:
            fields.append((name, kind))
    return np.dtype(fields)


async def copy_records(
    conn: Connection, columns: Sequence[Column], query: str, *args: object, timeout: float | None = None
) -> np.ndarray:
    """The rows of `query` (selecting `columns` in order) as a structured array, a view of the copied bytes;
    read the columns with rows[name] (arrays: rows[name]["value"]). timeout: the pool's command timeout when
    None."""
    buffer = io.BytesIO()
    await copy_out(conn, query, args, buffer, timeout)
    # a million rows are hundreds of MB to check: off the event loop
    return await asyncio.to_thread(parse_records, buffer, columns)


def parse_records(buffer: io.BytesIO, columns: Sequence[Column]) -> np.ndarray:
    """A whole binary COPY's records, a view of `buffer`'s bytes, checked as _RecordParser checks a stream."""
    data = buffer.getbuffer()
    if len(data) < _HEADER:
        raise RuntimeError("unexpected binary COPY end: no header")
    _check_header(data[:_HEADER])
    rows, end = _whole_records(data, _HEADER, record_type(columns), columns)
    _check_trailer(data[end:])
    return rows


def _check_header(header: bytes | bytearray | memoryview) -> None:
    if header != _HEADER_BYTES:
        raise RuntimeError("not a binary COPY without OIDs or header extension")


def _check_trailer(rest: bytes | bytearray | memoryview) -> None:
    """What follows the last whole record must be the trailer and nothing else: a COPY cut short (or one
    with records of another size) is an error, never fewer rows."""
    if rest != _TRAILER_BYTES:
        raise RuntimeError(
            f"unexpected binary COPY end: {len(rest)} bytes after the last whole record of this length, "
            "not the trailer"
        )


def _whole_records(
    data: bytes | bytearray | memoryview, start: int, record: np.dtype, columns: Sequence[Column]
) -> tuple[np.ndarray, int]:
    """The whole records in data[start:], a view checked against the layout, and where they end."""
    count = (len(data) - start) // record.itemsize
    rows = np.frombuffer(data, dtype=record, count=count, offset=start)
    if count and not _layout_ok(rows, columns):
        raise RuntimeError("unexpected binary COPY record layout")
    return rows, start + count * record.itemsize


def _layout_ok(rows: np.ndarray, columns: Sequence[Column]) -> bool:
    """Every length word is the layout's: a NULL, or an array of another length, would say otherwise."""
    if not (rows["fields"] == len(columns)).all():
        return False
    for name, kind, length in columns:
        item = np.dtype(kind).itemsize
        if not (rows[f"{name}_len"] == (_ARRAY_HEADER + length * (4 + item) if length else item)).all():
            return False
        if length and not (
            (rows[f"{name}_ndim"] == 1).all()
            and (rows[f"{name}_has_null"] == 0).all()
            and (rows[f"{name}_size"] == length).all()
            and (rows[name]["len"] == item).all()
        ):
            return False
    return True


class _RecordParser:
    """A binary COPY's bytes, piece by piece, handed on as whole checked records (blocking: a worker thread's)."""

    def __init__(self, columns: Sequence[Column], consume: Callable[[np.ndarray], None]) -> None:
        self._columns = columns
        self._record = record_type(columns)
        self._consume = consume
        self._pending = bytearray()  # bytes of a record not whole yet (the header before it is checked)
        self._started = False

    def feed(self, pieces: list[bytes]) -> None:
        """Parses `pieces`, emptying the list as it goes: each piece is let go once it is copied."""
        pieces.reverse()
        while pieces:
            self._pending += pieces.pop()
        start = 0
        if not self._started:
            if len(self._pending) < _HEADER:
                return
            _check_header(self._pending[:_HEADER])
            start, self._started = _HEADER, True
        rows, end = _whole_records(self._pending, start, self._record, self._columns)
        if len(rows):
            self._consume(rows)  # copies what it keeps: the bytes are reused
        del rows
        del self._pending[:end]

    def finish(self) -> None:
        if not self._started:
            raise RuntimeError(f"unexpected binary COPY end: {len(self._pending)} bytes, no header")
        _check_trailer(self._pending)


class _RecordStream:
    """A binary COPY's bytes as they arrive, gathered up to DRAIN_BYTES on the event loop (no copy: a list of
    the pieces) and parsed on a worker thread while the next batch arrives: the whole result is never held
    (a million embeddings are 2 GB of COPY bytes beside the 2 GB array they become), and neither its copying
    nor its checks block the loop. `consume` runs on that thread, one batch after another."""

    def __init__(self, columns: Sequence[Column], consume: Callable[[np.ndarray], None]) -> None:
        self._parser = _RecordParser(columns, consume)
        self._pieces: list[bytes] = []
        self._gathered = 0
        self._parsing: asyncio.Future[None] | None = None

    async def write(self, data: bytes) -> None:
        """asyncpg's output callback, awaited before it reads on: at most one batch parsing and one gathering."""
        self._pieces.append(data)
        self._gathered += len(data)
        if self._gathered >= DRAIN_BYTES:
            await self._drain()

    async def finish(self) -> None:
        await self._drain()
        await self._parsed()
        self._parser.finish()

    def abandon(self) -> None:
        """The COPY failed: a batch still parsing is let finish unheard (its error is the COPY's own)."""
        if self._parsing is not None:
            self._parsing.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _drain(self) -> None:
        await self._parsed()
        pieces, self._pieces, self._gathered = self._pieces, [], 0
        self._parsing = asyncio.ensure_future(asyncio.to_thread(self._parser.feed, pieces))

    async def _parsed(self) -> None:
        if self._parsing is not None:
            parsing, self._parsing = self._parsing, None
            await parsing


async def stream_records(
    conn: Connection,
    columns: Sequence[Column],
    consume: Callable[[np.ndarray], None],
    query: str,
    *args: object,
    timeout: float | None = None,
) -> None:
    """copy_records, a batch of records at a time as they arrive, to `consume` (which must copy what it
    keeps, and runs on a worker thread); for results too big to hold twice."""
    stream = _RecordStream(columns, consume)
    try:
        await copy_out(conn, query, args, stream.write, timeout)
        await stream.finish()
    except BaseException:
        stream.abandon()
        raise


async def copy_out(
    conn: Connection,
    query: str,
    args: Sequence[object],
    output: io.BytesIO | Callable[[bytes], Awaitable[Any]],
    timeout: float | None = None,
) -> None:
    """A binary COPY of `query` to `output`, on a connection closed if the COPY is cut from this side (the
    task cancelled, the output failed). asyncpg then sends the server a cancel request and waits, with no
    time limit, for the answer to it; when the server had already sent the whole COPY no answer ever comes,
    and every later use of the connection (the rollback, the pool's release, the pool's close) waits with it:
    a shutdown during a re-clustering hung CI for 600 s. An error the server reports leaves it usable."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            await copy_out(held, query, args, output, timeout)
        return
    try:
        await conn.copy_from_query(query, *args, output=output, format="binary", timeout=timeout)
    except asyncpg.PostgresError:
        raise
    except BaseException:
        discard(conn)
        raise
