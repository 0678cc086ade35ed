"""Prometheus metrics of one app instance (its own registry: no process-global state).

Latency buckets span a tiny model on CPU (milliseconds) to 1558M on CPU (seconds).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        m = ("model",)
        self.requests = Counter(
            "gpt2_requests", "Requests by route, model and outcome", ("route", "model", "outcome"), registry=r
        )
        self.prompt_tokens = Counter("gpt2_prompt_tokens", "Prompt tokens prefilled", m, registry=r)
        self.generated_tokens = Counter("gpt2_generated_tokens", "Tokens generated", m, registry=r)
        self.cancelled = Counter("gpt2_cancelled_requests", "Requests whose client left", m, registry=r)
        self.rejected = Counter(
            "gpt2_rejected_requests",
            "Requests refused (overloaded or unavailable)",
            ("model", "reason"),
            registry=r,
        )
        self.ttft = Histogram(
            "gpt2_time_to_first_token_seconds", "Arrival to first token", m, buckets=LATENCY, registry=r
        )
        self.itl = Histogram(
            "gpt2_inter_token_latency_seconds", "Between a request's tokens", m, buckets=LATENCY, registry=r
        )
        self.request_seconds = Histogram(
            "gpt2_request_duration_seconds", "Arrival to last event", m, buckets=LATENCY, registry=r
        )
        self.queue_wait = Histogram(
            "gpt2_queue_wait_seconds", "Arrival to admission into a slot", m, buckets=LATENCY, registry=r
        )
        self.prefill_seconds = Histogram(
            "gpt2_prefill_seconds",
            "One prefill call (several prompts' pieces, or a long prompt's chunk)",
            m,
            buckets=LATENCY,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "gpt2_decode_step_seconds", "One batched decode step", m, buckets=LATENCY, registry=r
        )
        self.batch_occupancy = Histogram(
            "gpt2_batch_occupancy", "Sequences advanced per decode step", m, buckets=BATCH, registry=r
        )
        self.queue_length = Gauge("gpt2_queue_length", "Requests waiting for a slot", m, registry=r)
        self.active_slots = Gauge("gpt2_active_slots", "Slots generating now", m, registry=r)
        self.max_active_slots = Gauge(
            "gpt2_max_active_slots", "Most slots busy at once since start", m, registry=r
        )
