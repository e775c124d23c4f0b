"""Prometheus metrics of one app: requests by route template and status, connections opened,
pool and cache gauges.

With several worker processes (`WORKERS`, PROMETHEUS_MULTIPROC_DIR set by `python -m service
serve`) every worker writes its counters and histograms to files in that directory, and /metrics,
whichever worker answers it, sums them (prometheus-client's multiprocess mode). The live state of
a worker (pool, caches, listener) is read by callbacks; in multiprocess mode each worker copies
it into gauges labelled by its pid (`liveall`: dropped when the worker exits) and counters, on
every scrape it answers and once a second, so /metrics shows every worker's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker copies its live state into the shared files (multiprocess mode).
SYNC_INTERVAL_S = 1.0

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _CallbackCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Any]:
        yield from self._collect()


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROCESS_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        self._callbacks: list[Callable[[], Iterable[Any]]] = []
        self.requests = Counter(
            "algoways_http_requests_total",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "algoways_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connections_opened = Counter(
            "algoways_db_connections_opened",
            "Database connections the pool opened (flat in steady state: no churn).",
            registry=self.registry,
        )
        self._observers: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.served = 0
        # multiprocess mode: the gauges and counters the callbacks' families are copied into
        self._shared: dict[str, Any] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        if self.multiprocess_dir is not None:
            self.add_collector(self._worker_families)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        pair = self._observers.get(key)
        if pair is None:  # resolving labels is the slow part; do it once per series
            pair = (self.requests.labels(*key), self.latency.labels(*key))
            self._observers[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)
        self.served += 1

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        if self.multiprocess_dir is None:
            self.registry.register(_CallbackCollector(collect))
        else:
            self._callbacks.append(collect)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.sync()
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=self.multiprocess_dir
        )
        return generate_latest(registry)

    def sync(self) -> None:
        """Copy this worker's live state into the shared files (multiprocess mode only)."""
        for collect in self._callbacks:
            for family in collect():
                self._share(family)

    def worker_exited(self) -> None:
        """Drop this worker's live gauges from what /metrics reports (multiprocess mode)."""
        if self.multiprocess_dir is not None:
            prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), self.multiprocess_dir
            )

    def _worker_families(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "algoways_worker_requests_served",
            "HTTP requests this worker process served (one series per live worker).",
            value=self.served,
        )

    def _share(self, family: Metric) -> None:
        labels = sorted({name for sample in family.samples for name in sample.labels})
        metric: Any = self._shared.get(family.name)
        if metric is None:
            if family.type == "counter":
                metric = Counter(family.name, family.documentation, labels, registry=None)
            else:
                metric = Gauge(
                    family.name,
                    family.documentation,
                    labels,
                    registry=None,
                    multiprocess_mode="liveall",
                )
            self._shared[family.name] = metric
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values = tuple(sample.labels[name] for name in labels)
            child: Any = metric.labels(*values) if labels else metric
            if family.type == "counter":
                # Counters add up across workers: hand over what grew since the last copy.
                key = (family.name, values)
                grown = sample.value - self._counted.get(key, 0.0)
                if grown > 0:
                    child.inc(grown)
                    self._counted[key] = sample.value
            else:
                child.set(sample.value)


def pool_metrics(pool: Any) -> Iterator[Any]:
    for name, help_text, read in (
        ("algoways_db_pool_size", "Connections the pool keeps.", "size"),
        ("algoways_db_pool_checked_out", "Connections in use.", "checkedout"),
        ("algoways_db_pool_overflow", "Connections open beyond the pool size.", "overflow"),
    ):
        reader = getattr(pool, read, None)
        if reader is not None:
            yield GaugeMetricFamily(name, help_text, value=max(float(reader()), 0.0))


def cache_metrics(caches: Iterable[Any]) -> Iterator[Any]:
    """Hits, misses and entries by cache, and the state of the invalidation listener that keeps
    them coherent across instances (taken from the registry's bus, when it has one)."""
    bus = getattr(caches, "bus", None)
    if bus is not None:
        yield from listener_metrics(bus)
    hits = CounterMetricFamily("algoways_cache_hits", "Cache hits by cache.", labels=["cache"])
    misses = CounterMetricFamily(
        "algoways_cache_misses", "Cache misses by cache.", labels=["cache"]
    )
    size = GaugeMetricFamily("algoways_cache_entries", "Entries by cache.", labels=["cache"])
    for cache in caches:
        hits.add_metric([cache.name], cache.hits)
        misses.add_metric([cache.name], cache.misses)
        size.add_metric([cache.name], len(cache))
    yield from (hits, misses, size)


def listener_metrics(bus: Any) -> Iterator[Any]:
    yield GaugeMetricFamily(
        "algoways_invalidation_listener_up",
        "1 while invalidations from every instance reach this one (caches on), 0 while not.",
        value=1.0 if bus.connected.is_set() else 0.0,
    )
    yield CounterMetricFamily(
        "algoways_invalidation_listener_failures",
        "Times the invalidation listener lost its connection or failed to set it up.",
        value=bus.failures,
    )
