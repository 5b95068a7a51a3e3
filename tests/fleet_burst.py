"""Burst clients for fleet tests: many clients at once, each retrying a
refused request after the Retry-After it was given, and a watcher timing
every instance's /health meanwhile.

The clients speak plain http.client with one multipart body built up front:
on a 2-core machine the test's own clients compete with the fleet for CPU,
and `requests` would spend a good share of a core on hundreds of refusals.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import threading
import time
import uuid
from pathlib import Path

BOUNDARY = "burst-boundary-7f3a"


def multipart(clip: Path) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{clip.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + clip.read_bytes() + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclasses.dataclass
class Attempt:
    status: int | None
    seconds: float
    retry_after: str | None = None
    text: str | None = None
    worker: str | None = None
    error: str = ""


def post(port: int, body: bytes, timeout: float = 600) -> Attempt:
    """One POST /asr through the front door on a fresh connection."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/asr", body=body, headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "X-Request-ID": f"burst-{uuid.uuid4().hex[:12]}"})
        response = connection.getresponse()
        raw = response.read()
        attempt = Attempt(response.status, time.monotonic() - started, response.getheader("Retry-After"),
                          worker=response.getheader("X-ASR-Worker"))
        if response.status == 200:
            attempt.text = json.loads(raw).get("text")
        return attempt
    except (OSError, http.client.HTTPException, ValueError) as error:
        return Attempt(None, time.monotonic() - started, error=f"{type(error).__name__}: {error}")
    finally:
        connection.close()


@dataclasses.dataclass
class Client:
    """One client's attempts, the last one its outcome."""

    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    @property
    def outcome(self) -> Attempt:
        return self.attempts[-1]


class Burst:
    """`clients` clients at once, each sending until it is served or the
    burst has served `target` requests; a 429 or 503 is retried after its
    Retry-After (jittered, so the clients do not come back in step). A
    request under way when the target is reached still runs to its end.

    rate: `target` over the time the target-th 200 took, the same measure
    for a closed loop (`retry_at` set: send again at once after a 200, and
    after a refusal, which at or below capacity is rare, retry_at later) and
    a burst: a slot that stays idle for want of a
    client counts against it, the tail of a finite test does not."""

    def __init__(self, port: int, body: bytes, clients: int, target: int, retry_at: float | None = None):
        self.port, self.body, self.target, self.retry_at = port, body, target, retry_at
        self.clients = [Client() for _ in range(clients)]
        self.served: list[float] = []
        self._lock = threading.Lock()
        self._gate = threading.Barrier(clients + 1)

    def _run(self, client: Client) -> None:
        rng = random.Random()
        self._gate.wait()
        while True:
            with self._lock:
                if len(self.served) >= self.target:
                    return
            attempt = post(self.port, self.body)
            client.attempts.append(attempt)
            if attempt.status == 200:
                with self._lock:
                    self.served.append(time.monotonic())
                if self.retry_at is not None:
                    continue  # a closed loop: send the next one
                return
            if attempt.status not in (429, 503) or not attempt.retry_after:
                return
            wait = float(attempt.retry_after) if self.retry_at is None else self.retry_at
            time.sleep(wait * rng.uniform(1.0, 1.5))

    def run(self, timeout: float) -> Burst:
        threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]
        for thread in threads:
            thread.start()
        self._gate.wait()
        self.started = time.monotonic()
        for thread in threads:
            thread.join(max(1.0, self.started + timeout - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads), f"burst still running after {timeout} s"
        return self

    @property
    def rate(self) -> float:
        served = sorted(self.served)
        return self.target / (served[self.target - 1] - self.started)

    def attempts(self) -> list[Attempt]:
        return [attempt for client in self.clients for attempt in client.attempts]


class HealthWatch:
    """Times /health of each port every `interval` seconds until stopped."""

    def __init__(self, ports: list[int], interval: float = 0.25, timeout: float = 10):
        self.ports, self.interval, self.timeout = ports, interval, timeout
        self.samples: dict[int, list[tuple[float, dict | None]]] = {port: [] for port in ports}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port,), daemon=True) for port in ports]

    def _run(self, port: int) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            try:
                connection.request("GET", "/health")
                body = json.loads(connection.getresponse().read())
            except (OSError, http.client.HTTPException, ValueError):
                body = None
            finally:
                connection.close()
            self.samples[port].append((time.monotonic() - started, body))
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def slowest(self) -> float:
        return max(seconds for samples in self.samples.values() for seconds, _ in samples)

    def unanswered(self) -> int:
        return sum(1 for samples in self.samples.values() for _, body in samples if body is None)

    def busiest(self, port: int) -> int:
        return max((body or {}).get("in_flight", 0) for _, body in self.samples[port])
