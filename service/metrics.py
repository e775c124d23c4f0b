"""Prometheus metrics of one app: requests by route template and status, pool and cache gauges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _CallbackCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Any]:
        yield from self._collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self._observers: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        pair = self._observers.get(key)
        if pair is None:  # resolving labels is the slow part; do it once per series
            pair = (self.requests.labels(*key), self.latency.labels(*key))
            self._observers[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_CallbackCollector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
