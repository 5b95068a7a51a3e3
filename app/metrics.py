"""Counters behind /stats (the original system's shape) and /metrics (Prometheus).

Each app gets its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Recent latencies kept for /stats percentiles: enough for a stable p99,
# small enough that sorting it per /stats call costs nothing.
LATENCY_WINDOW = 2048


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.total = self.successful = self.failed = 0
        self.audio_seconds = 0.0
        self.inference_seconds = 0.0
        self.in_flight = 0

        self.requests = Counter(
            "asr_requests", "Transcription requests by endpoint and status.",
            ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "asr_request_latency_seconds", "Transcription request latency.", ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry)
        self.batch_size = Histogram(
            "asr_batch_size", "Segments per model call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=self.registry)
        self.audio = Counter(
            "asr_audio_seconds", "Seconds of audio transcribed.", registry=self.registry)
        self.queue_depth = Gauge(
            "asr_queue_depth", "Segments waiting for the model.", registry=self.registry)
        self.in_flight_gauge = Gauge(
            "asr_in_flight_requests", "Transcription requests being handled.",
            registry=self.registry)

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.in_flight_gauge.set(self.in_flight)

    def request_finished(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.in_flight_gauge.set(self.in_flight)
            self.total += 1
            if status < 400:
                self.successful += 1
                self._latencies.append(seconds)
            else:
                self.failed += 1
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def batch_done(self, size: int, audio_seconds: float, inference_seconds: float) -> None:
        with self._lock:
            self.audio_seconds += audio_seconds
            self.inference_seconds += inference_seconds
        self.batch_size.observe(size)
        self.audio.inc(audio_seconds)

    def stats(self) -> dict:
        with self._lock:
            latencies = sorted(self._latencies)
            total, successful, failed = self.total, self.successful, self.failed
            audio, inference = self.audio_seconds, self.inference_seconds
        return {
            "total_requests": total,
            "successful_requests": successful,
            "failed_requests": failed,
            "success_rate": round(successful / total, 4) if total else 1.0,
            "latency_ms": {
                name: round(percentile(latencies, fraction) * 1000, 1)
                for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))
            },
            "audio_seconds": round(audio, 3),
            "inference_seconds": round(inference, 3),
            # Model time per second of audio: below 1 is faster than real time.
            "real_time_factor": round(inference / audio, 4) if audio else 0.0,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    def prometheus(self, queue_depth: int) -> bytes:
        self.queue_depth.set(queue_depth)
        return generate_latest(self.registry)
