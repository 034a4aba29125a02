"""A query's rows in one pass: binary COPY into fixed-size records, read by numpy, not row by row.

Only for queries whose every row has the same binary size: NOT NULL columns of fixed-size types and arrays of
a fixed length without NULLs. Every length word is checked against that layout before rows are returned."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence

import numpy as np

from .pool import Connection

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = 19  # the signature, flags, header extension length
_TRAILER_BYTES = b"\xff\xff"  # a field count of -1
_TRAILER = len(_TRAILER_BYTES)
_ARRAY_HEADER = 20  # dimensions, has-null flag, element type, then size and lower bound of the one dimension

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


async def copy_records(conn: Connection, columns: Sequence[Column], query: str, *args: object) -> np.ndarray:
    """The rows of `query` (selecting `columns` in order) as a structured array, a view of the copied bytes;
    read the columns with rows[name] (arrays: rows[name]["value"])."""
    buffer = io.BytesIO()
    await conn.copy_from_query(query, *args, output=buffer, format="binary")
    # a million rows are hundreds of MB to check: off the event loop
    return await asyncio.to_thread(parse_records, buffer, columns)


def parse_records(buffer: io.BytesIO, columns: Sequence[Column]) -> np.ndarray:
    record = record_type(columns)
    data = buffer.getbuffer()
    count, rest = divmod(len(data) - _HEADER - _TRAILER, record.itemsize)
    if rest or count < 0:
        raise RuntimeError(f"unexpected binary COPY length {len(data)} for records of {record.itemsize} bytes")
    rows = np.frombuffer(data, dtype=record, count=count, offset=_HEADER)
    if count and not _layout_ok(rows, columns):
        raise RuntimeError("unexpected binary COPY record layout")
    return rows


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


class _RecordStream:
    """A binary COPY's bytes as they arrive, handed on as complete records: the whole result is never held
    (a million embeddings are 2 GB of COPY bytes beside the 2 GB array they become)."""

    def __init__(self, columns: Sequence[Column], consume: Callable[[np.ndarray], None]) -> None:
        self._columns = columns
        self._record = record_type(columns)
        self._consume = consume
        self._pending = bytearray()
        self._started = False

    async def write(self, data: bytes) -> None:
        self._pending += data
        start = 0
        if not self._started:
            if len(self._pending) < _HEADER:
                return
            if not self._pending.startswith(_SIGNATURE):
                raise RuntimeError("not a binary COPY")
            start, self._started = _HEADER, True
        count = (len(self._pending) - start) // self._record.itemsize
        if count:
            rows = np.frombuffer(self._pending, dtype=self._record, count=count, offset=start)
            if not _layout_ok(rows, self._columns):
                raise RuntimeError("unexpected binary COPY record layout")
            self._consume(rows)  # copies what it keeps: the bytes are reused
            del rows
            start += count * self._record.itemsize
        del self._pending[:start]

    def finish(self) -> None:
        if not self._started or bytes(self._pending) != _TRAILER_BYTES:
            raise RuntimeError(f"unexpected binary COPY end: {len(self._pending)} bytes left over")


async def stream_records(
    conn: Connection, columns: Sequence[Column], consume: Callable[[np.ndarray], None], query: str, *args: object
) -> None:
    """copy_records, a batch of records at a time as they arrive, to `consume` (which must copy what it
    keeps); for results too big to hold twice."""
    stream = _RecordStream(columns, consume)
    await conn.copy_from_query(query, *args, output=stream.write, format="binary")
    stream.finish()
