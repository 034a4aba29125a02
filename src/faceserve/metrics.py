"""Prometheus metrics of the service, and their rendering for GET /metrics.

A metric is defined next to the code that updates it: request latencies in http/observability.py,
rate-limit refusals in http/ratelimit.py, search steps in http/search.py, recogniser runs in
vision/batcher.py, refused uploads and searches and uploads in flight in core/admission.py, inference queues in
core/models.py, pool connections in core/services.py, indexes in memory in index/registry.py, live streams in
core/live_hub.py. Here are the rendering, the latency buckets and RequestTimes.

Run by the CLI, every process writes its samples to files under PROMETHEUS_MULTIPROC_DIR (a fresh folder the
service makes and removes, see cli.metrics_folder), and a scrape of any worker reads them all, so `--workers N`
report together. Without that variable (tests, embedding) the samples stay in this process.

prometheus_client picks its storage when it is first imported, so the CLI sets the variable before anything
imports it: a module that defines a metric must not be imported by the CLI's own modules at load (db/ and
the modules cli/ imports at its top define none; tests/test_metrics.py holds it). Gauges of live state (pools, queues, indexes) are sampled by each worker every few
seconds (`sample`), never computed per request; per request there is one histogram observation.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# ~1 ms (a 304 from memory) to a minute (a large batch upload)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestTimes:
    """Request latencies counted in plain lists and handed to the histogram in bulk (flush).

    One histogram observation costs ~3-7 us in multiprocess mode (a lock and an mmap write for the sum and
    for a bucket), a tenth of a small image's whole answer; counting here costs a dict lookup and a bisect.
    flush() runs every metrics_sample_s and before each scrape, so a scrape lags the other workers by at
    most that long. It adds bucket counts through the histogram's own value objects (_buckets, _sum):
    prometheus-client has no public call that adds n observations at once.
    """

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self._histogram = histogram
        self._bounds = list(buckets) + [float("inf")]
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
