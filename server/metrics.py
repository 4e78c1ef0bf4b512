"""Prometheus metrics, one registry per Engine (so several apps can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "danet_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "danet_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "danet_inference_seconds",
            "onnxruntime run time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "danet_queue_wait_seconds",
            "time a batch's oldest request waited",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "danet_batch_size", "images per onnxruntime run", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("danet_queue_depth", "requests waiting for a worker", ["model"], registry=r)
        self.abandoned = Counter(
            "danet_abandoned_total",
            "requests whose caller went away (deadline, disconnect, cancelled call), by where they were: "
            "queue (left it) or run (stopped once no caller of its batch was left)",
            ["model", "where"],
            registry=r,
        )
        self.overloaded = Counter(
            "danet_overloaded", "requests refused because the queue was full", ["model"], registry=r
        )
        self.provider = Gauge(
            "danet_model_provider",
            "1 for the execution provider running each model",
            ["model", "provider"],
            registry=r,
        )
        self.provider_fallback = Gauge(
            "danet_provider_fallback",
            "1 when a requested GPU provider fell back to CPU",
            ["model"],
            registry=r,
        )
        self.ready = Gauge("danet_ready", "1 once models are loaded and warmed up", registry=r)
        self.serving = Gauge(
            "danet_model_version_serving",
            "1 for each model version that serves",
            ["model", "version"],
            registry=r,
        )

    def track_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
