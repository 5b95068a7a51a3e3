"""Autoscaling: the decision only (the poller acts on it)."""

from __future__ import annotations


class Autoscaler:
    """A metric above the high mark for high_for_s grows the fleet by one;
    below the low mark for low_for_s shrinks it by one; never outside
    min..max, and never within cooldown_s of the last change.

    Growing also needs `can_grow` (the machine has room for the next
    instance: capacity.py). When it has not, a due "up" comes
    back as "blocked" and nothing changes: a high load on saturated cores is
    a reason to refuse work quickly, not to start an instance that would only
    split the same cores."""

    def __init__(self, knobs: dict):
        self.knobs = knobs
        self.high_since: float | None = None
        self.low_since: float | None = None

    def observe(self, now: float, value: float | None, size: int, low: int, high: int,
                last_scale_at: float, can_grow: bool = True) -> str | None:
        k = self.knobs
        if value is None or value > k["high_mark"]:
            self.low_since = None
        if value is None or value < k["low_mark"]:
            self.high_since = None
        if value is None:
            return None
        if value > k["high_mark"] and self.high_since is None:
            self.high_since = now
        elif value < k["low_mark"] and self.low_since is None:
            self.low_since = now
        elif k["low_mark"] <= value <= k["high_mark"]:
            self.high_since = self.low_since = None
        if now - last_scale_at < k["cooldown_s"]:
            return None
        if self.high_since is not None and now - self.high_since >= k["high_for_s"] and size < high:
            if not can_grow:
                return "blocked"
            self.high_since = None
            return "up"
        if self.low_since is not None and now - self.low_since >= k["low_for_s"] and size > low:
            self.low_since = None
            return "down"
        return None
