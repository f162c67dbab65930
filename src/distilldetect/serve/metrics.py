"""Prometheus metrics of the service (one registry per app, scraped at ``GET /metrics``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Metrics", "SCORE_BUCKETS", "LATENCY_BUCKETS"]

#: Score histogram buckets: 4 per decade from 1e-4 to 1e2 (distillation losses are >= 0).
SCORE_BUCKETS: tuple[float, ...] = tuple(float(f"{10 ** (e / 4):.4g}") for e in range(-16, 9))
#: Request latency buckets in seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Micro-batch size buckets (instances per forward pass).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """Counters, histograms and gauges of one service, in their own registry.

    Examples
    --------
    >>> m = Metrics()
    >>> m.observe_request("/score", "POST", 200, 0.01)
    >>> b'distilldetect_requests_total{endpoint="/score",method="POST",status="200"} 1.0' in m.render()
    True
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "distilldetect_requests",
            "HTTP requests answered, by endpoint (route template), method and status code",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "distilldetect_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint and status",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.disconnects = Counter(
            "distilldetect_client_disconnects",
            "Requests whose client went away before the response was complete",
            ["endpoint"],
            registry=r,
        )
        self.instances = Counter("distilldetect_instances_scored", "Instances scored", registry=r)
        self.flagged = Counter(
            "distilldetect_instances_flagged",
            "Instances whose score exceeded the threshold (is_adversarial)",
            registry=r,
        )
        self.scores = Histogram(
            "distilldetect_instance_score",
            "Distillation scores of the instances scored",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "distilldetect_batch_instances",
            "Instances per forward pass (micro-batching)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "distilldetect_batch_requests",
            "Requests gathered into one forward pass",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "distilldetect_forward_seconds",
            "Time of one scoring forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.drift_p = Gauge(
            "distilldetect_drift_p_value", "p-value of the latest drift test", registry=r
        )
        self.drift_flag = Gauge(
            "distilldetect_drift_is_drift",
            "1 if the latest drift test flagged harmful drift, else 0",
            registry=r,
        )
        self.drift_tests = Counter(
            "distilldetect_drift_tests", "Drift tests run", ["result"], registry=r
        )
        self.drift_enabled = Gauge(
            "distilldetect_drift_enabled", "1 if the drift monitor is on", registry=r
        )
        self.window_flagged = Gauge(
            "distilldetect_window_flagged_rate",
            "Fraction of the drift window flagged at the latest test",
            registry=r,
        )
        self.reloads = Counter(
            "distilldetect_reloads", "Hot reloads, by result", ["result"], registry=r
        )
        self.threshold = Gauge(
            "distilldetect_threshold", "Threshold of the detector being served", registry=r
        )
        self.info = Gauge(
            "distilldetect_model_info",
            "1 for the detector version being served",
            ["model_name", "model_version"],
            registry=r,
        )
        self.event_errors = Gauge(
            "distilldetect_event_write_errors",
            "Drift events that could not be written to --events",
            registry=r,
        )
        for result in ("drift", "no_drift"):
            self.drift_tests.labels(result)
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self.drift_p.set(float("nan"))
        self.drift_flag.set(float("nan"))

    # ------------------------------------------------------------------ updates
    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_scores(self, scores: np.ndarray, threshold: float) -> None:
        self.instances.inc(len(scores))
        self.flagged.inc(int((scores > threshold).sum()))
        observe = self.scores.observe
        for value in scores.tolist():
            observe(value)

    def observe_batch(self, n_instances: int, n_requests: int, seconds: float) -> None:
        self.batch_size.observe(n_instances)
        self.batch_requests.observe(n_requests)
        self.forward_seconds.observe(seconds)

    def observe_drift(self, result: dict[str, Any]) -> None:
        self.drift_p.set(result["p_val"])
        self.drift_flag.set(1.0 if result["is_drift"] else 0.0)
        self.drift_tests.labels("drift" if result["is_drift"] else "no_drift").inc()
        self.window_flagged.set(result["flagged_rate"])

    def set_detector(self, name: str, version: str, threshold: float, drift: bool) -> None:
        self.info.clear()
        self.info.labels(name, version).set(1)
        self.threshold.set(threshold)
        self.drift_enabled.set(1 if drift else 0)
        self.drift_p.set(float("nan"))
        self.drift_flag.set(float("nan"))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
