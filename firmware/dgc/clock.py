"""Wall-clock time for readings: synchronised or not, and whether it jumped.

``clk`` is 1 only after a successful NTP synchronisation (``ntptime.settime``)
within the last ``max_age_s``; a device clock drifts by seconds a day, so an
old synchronisation does not count. A step is when wall time and the
monotonic tick counter disagree by more than 2 s between two looks (SPEC §3
CLOCK_STEP), which is what an NTP correction or a reset RTC looks like.
"""

import time

STEP_S = 2


class Clock:
    def __init__(self, sync: object = None, source: object = time, max_age_s: int = 3 * 3600) -> None:
        self.sync_fn = sync  # ntptime.settime on a device; None where there is no network time
        self.source = source
        self.max_age_s = max_age_s
        self.synced_at_ms = None  # type: int | None
        # The last look, as two attributes: a tuple would be a new object at every pass.
        self._last_wall = None  # type: int | None
        self._last_ticks = 0
        self.stepped = False

    def now(self) -> int:
        wall = int(self.source.time())  # type: ignore[attr-defined]
        ticks = self.source.ticks_ms()  # type: ignore[attr-defined]
        last_wall = self._last_wall
        if last_wall is not None:
            tick_delta = self.source.ticks_diff(ticks, self._last_ticks) // 1000  # type: ignore[attr-defined]
            # The loop looks every 200 ms, so the wall second is mostly the same: comparing
            # allocates nothing, while subtracting two Unix times (bigints on a 32-bit port) does.
            wall_delta = 0 if wall == last_wall else wall - last_wall
            if abs(wall_delta - tick_delta) > STEP_S:
                self.stepped = True
        self._last_wall = wall
        self._last_ticks = ticks
        return wall

    def synchronise(self) -> bool:
        if self.sync_fn is None:
            return False
        try:
            self.sync_fn()  # type: ignore[operator]
        except Exception:  # no network yet: stay unsynchronised, try again later
            return False
        self.synced_at_ms = self.source.ticks_ms()  # type: ignore[attr-defined]
        self.now()  # the jump the synchronisation made is a step
        return True

    def synchronised(self) -> bool:
        if self.synced_at_ms is None:
            return False
        age = self.source.ticks_diff(self.source.ticks_ms(), self.synced_at_ms)  # type: ignore[attr-defined]
        return age < self.max_age_s * 1000

    def take_step(self) -> bool:
        stepped, self.stepped = self.stepped, False
        return stepped
