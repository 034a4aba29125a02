"""Prometheus metrics of the service, and their rendering for GET /metrics.

A metric is defined next to the code that updates it: search steps in http/search.py, recogniser runs in
vision/batcher.py, refused uploads in core/services.py. Here are the rendering and the instruments of the
shared modules that update them: request latencies (http/observability.py counts them through
RequestTimes), rate-limit refusals (http/ratelimit.py), and the live gauges that http/observability.py
samples from each owner's state (set_live_gauges).

Run by the CLI, every process writes its samples to files under PROMETHEUS_MULTIPROC_DIR (a fresh folder the
service makes and removes, see cli.metrics_folder), and a scrape of any worker reads them all, so `--workers N`
report together. Without that variable (tests, embedding) the samples stay in this process.

prometheus_client picks its storage when it is first imported, so the CLI sets the variable before anything
imports this module. Gauges of live state (pools, queues, indexes) are sampled by each worker every few
seconds (`sample`), never computed per request; per request there is one histogram observation.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# ~1 ms (a 304 from memory) to a minute (a large batch upload)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# index sizes are reported by bucket, never by session id: the number of series stays small
_SIZE_BUCKETS = ((1_000, "lt1k"), (10_000, "lt10k"), (100_000, "lt100k"), (1_000_000, "lt1m"))

_HTTP_REQUESTS = Histogram(
    "faceserve_http_request_duration_seconds",
    "Time to answer a request, by method, route template and status (its _count is the request count)",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "faceserve_rate_limited_total", "Requests refused with 429 by a rate limit, by budget", ["budget"]
)
UPLOADS_IN_FLIGHT = Gauge(
    "faceserve_uploads_in_flight", "Images being received or analysed", multiprocess_mode="livesum"
)
INFERENCE_QUEUE = Gauge(
    "faceserve_inference_queue_depth",
    "Work waiting for an inference thread, and callers waiting for a recogniser run",
    ["queue"],
    multiprocess_mode="livesum",
)
DB_POOL = Gauge(
    "faceserve_db_pool_connections", "Database pool connections, by state", ["state"], multiprocess_mode="livesum"
)
# every worker holds its own copy of the indexes it serves: the largest report is the deployment's
INDEX_SESSIONS = Gauge(
    "faceserve_index_sessions",
    "Session indexes in memory, by kind and size bucket (faces)",
    ["kind", "size"],
    multiprocess_mode="livemax",
)
INDEX_FACES = Gauge(
    "faceserve_index_faces", "Faces in the session indexes in memory, by kind", ["kind"], multiprocess_mode="livemax"
)
LIVE_STREAMS = Gauge(
    "faceserve_live_streams", "Live results streams open (Server-Sent Events)", multiprocess_mode="livesum"
)


class RequestTimes:
    """Request latencies counted in plain lists and handed to the histogram in bulk (flush).

    One histogram observation costs ~3-7 us in multiprocess mode (a lock and an mmap write for the sum and
    for a bucket), a tenth of a small image's whole answer; counting here costs a dict lookup and a bisect.
    flush() runs every metrics_sample_s and before each scrape, so a scrape lags the other workers by at
    most that long. It adds bucket counts through the histogram's own value objects (_buckets, _sum):
    prometheus-client has no public call that adds n observations at once.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds = list(_LATENCY_BUCKETS) + [float("inf")]
        # (method, route, status) -> [count per bucket..., sum of seconds]
        self._pending: dict[tuple[str, str, int], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counts = self._pending.get(key)
        if counts is None:
            counts = self._pending[key] = [0] * (len(self._bounds) + 1)
        counts[bisect_left(self._bounds, seconds)] += 1  # the first bound >= seconds, as observe() picks
        counts[-1] += seconds

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (method, route, status), counts in pending.items():
            child = self._histogram.labels(method, route, str(status))
            for bucket, count in enumerate(counts[:-1]):
                if count:
                    child._buckets[bucket].inc(count)
            child._sum.inc(counts[-1])


HTTP_REQUESTS = RequestTimes(_HTTP_REQUESTS)


def size_bucket(faces: int) -> str:
    for limit, name in _SIZE_BUCKETS:
        if faces < limit:
            return name
    return "ge1m"


class _IndexSeries:
    """Label sets reported before: a kind or bucket that empties is set to 0, not left at its last value."""

    def __init__(self) -> None:
        self.sessions: set[tuple[str, str]] = set()
        self.faces: set[str] = set()


_index_series = _IndexSeries()


def set_live_gauges(
    uploads_in_flight: int,
    inference_waiting: int,
    recogniser_waiting: int,
    pool_size: int,
    pool_idle: int,
    pool_max: int,
    indexes: Iterable[tuple[str, int]],
    live_streams: int = 0,
) -> None:
    """The gauges of this process's live state, as its owner (http/observability.py) samples them."""
    LIVE_STREAMS.set(live_streams)
    UPLOADS_IN_FLIGHT.set(uploads_in_flight)
    INFERENCE_QUEUE.labels("inference_threads").set(inference_waiting)
    INFERENCE_QUEUE.labels("recogniser").set(recogniser_waiting)
    DB_POOL.labels("in_use").set(pool_size - pool_idle)
    DB_POOL.labels("idle").set(pool_idle)
    DB_POOL.labels("max").set(pool_max)
    _sample_indexes(indexes)


def _sample_indexes(loaded: Iterable[tuple[str, int]]) -> None:
    sessions: dict[tuple[str, str], int] = {}
    faces: dict[str, int] = {}
    for kind, count in loaded:
        key = (kind, size_bucket(count))
        sessions[key] = sessions.get(key, 0) + 1
        faces[kind] = faces.get(kind, 0) + count
    for key in _index_series.sessions | sessions.keys():
        INDEX_SESSIONS.labels(*key).set(sessions.get(key, 0))
    for kind in _index_series.faces | faces.keys():
        INDEX_FACES.labels(kind).set(faces.get(kind, 0))
    _index_series.sessions |= sessions.keys()
    _index_series.faces |= faces.keys()


def render() -> bytes:
    """Every process's samples in the text format (reads files in multiprocess mode: call off the loop)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def process_exited(pid: int) -> None:
    """A worker is gone: its live gauges stop counting (its counters and histograms stay)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
