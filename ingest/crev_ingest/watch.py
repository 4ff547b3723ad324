"""Devices that publish far more often than any controller should (SPEC §4, the broker as operators meet it).

A controller sends one reading per interval. A device that sends dozens a
minute of live messages (readings stamped near now, or messages that fail
validation) is misconfigured or hostile, and can crowd out the others. A
backlog replayed after an outage is not counted: its readings carry old
timestamps, and the gateway sends them as fast as the broker takes them.
"""

from collections import deque

LIVE_S = 600  # a reading stamped within this of its arrival is live, not backlog
WINDOW_S = 60
REPEAT_S = 600  # one alarm per device per this long, while it goes on


class FloodWatch:
    def __init__(self, max_per_minute: int) -> None:
        self.max_per_minute = max_per_minute
        self._seen: dict[str, deque[float]] = {}
        self._alarmed: dict[str, float] = {}

    def note(self, dev: str, now_s: float) -> int | None:
        """Count one live message; the count in the last minute when an alarm is due, else None."""
        seen = self._seen.setdefault(dev, deque())
        seen.append(now_s)
        while seen and seen[0] <= now_s - WINDOW_S:
            seen.popleft()
        if len(seen) <= self.max_per_minute:
            return None
        if now_s - self._alarmed.get(dev, -REPEAT_S) < REPEAT_S:
            return None
        self._alarmed[dev] = now_s
        return len(seen)

    @staticmethod
    def is_live(t1: int, now_s: float) -> bool:
        return abs(now_s - t1) <= LIVE_S
