"""A simulated inverter's controls: SunSpec models 123 and 704 (SPEC §12).

Written from the SunSpec model definitions (github.com/sunspec/models,
json/model_123.json and json/model_704.json), independently of the
gateway's profile file, so that an offset mistake on one side shows.

The controls run on the wall clock (``time.monotonic``), as a real
inverter's timers do, whatever speed the site's simulated day runs at:

- a limit written with a revert time lifts itself when that time has passed
  since it was last written (123: WMaxLim_Ena back to 0; 704: WMaxLimPct and
  WMaxLimPctEna take their reversion values), and a disconnect written with
  Conn_RvrtTms reconnects by itself;
- the output follows a new limit at ``ramp_pct_per_s`` (of the rating, per
  second), up or down; a disconnect opens at once.
"""

import math

MODEL_123_LEN = 24
MODEL_704_LEN = 65
MODEL_LENGTHS = {123: MODEL_123_LEN, 704: MODEL_704_LEN}

# Model 123 offsets, after its ID and L.
C_CONN_RVRT = 1
C_CONN = 2
C_LIMIT = 3
C_LIMIT_RVRT = 5
C_LIMIT_ENA = 7
C_LIMIT_SF = 21
C_READ_ONLY = (21, 22, 23)  # the scale factors
SF_123 = -1  # WMaxLimPct in 1/10 %

# Model 704 offsets, after its ID and L.
D_ENA = 12
D_LIMIT = 13
D_LIMIT_RVRT = 14
D_ENA_RVRT = 15
D_RVRT_TMS = 16  # uint32
D_RVRT_REM = 18  # uint32, read-only
D_WRMP = 47
D_LIMIT_SF = 52
# The reversion times remaining and the scale factors.
D_READ_ONLY = (4, 5, 10, 11, 18, 19, 31, 32, 45, 46, 51, 52, 53, 54, 55, 56)
SF_704 = -2  # WMaxLimPct in 1/100 %

# The offsets whose write (re)starts a revert timer.
LIMIT_POINTS_123 = (C_LIMIT, C_LIMIT_RVRT, C_LIMIT_ENA)
CONN_POINTS_123 = (C_CONN_RVRT, C_CONN)
LIMIT_POINTS_704 = (D_ENA, D_LIMIT, D_RVRT_TMS, D_RVRT_TMS + 1)


def _u16(value: int) -> int:
    return value & 0xFFFF


class InverterControls:
    def __init__(self, models: tuple[int, ...], ramp_pct_per_s: float, now: float) -> None:
        self.models = models
        self.ramp_pct_per_s = ramp_pct_per_s
        self.regs: dict[int, list[int]] = {m: [0] * MODEL_LENGTHS[m] for m in models}
        if 123 in self.regs:
            r = self.regs[123]
            r[C_CONN] = 1
            r[C_LIMIT] = 1000  # 100.0 %
            r[C_LIMIT_SF] = _u16(SF_123)
        if 704 in self.regs:
            r = self.regs[704]
            r[D_LIMIT] = 10000  # 100.00 %
            r[D_LIMIT_RVRT] = 10000
            r[D_WRMP] = max(0, min(0xFFFF, round(ramp_pct_per_s)))
            r[D_LIMIT_SF] = _u16(SF_704)
        self.limit_written_at: dict[int, float] = {}
        self.conn_written_at: float | None = None
        self.output_pct = self.limit_pct()
        self._last = now
        self.reverts = 0  # how many times a revert timer fired

    # ------------------------------------------------------------ registers

    def block(self, model: int, now: float) -> list[int]:
        """``[ID, L, data...]`` as the inverter serves it now."""
        data = list(self.regs[model])
        if model == 704:
            remaining = 0
            started = self.limit_written_at.get(704)
            total = self._rvrt_704()
            if started is not None and data[D_ENA] == 1 and total > 0:
                remaining = max(0, math.ceil(total - (now - started)))
            data[D_RVRT_REM] = (remaining >> 16) & 0xFFFF
            data[D_RVRT_REM + 1] = remaining & 0xFFFF
        return [model, MODEL_LENGTHS[model], *data]

    def writable(self, model: int, offset: int, count: int) -> bool:
        if model not in self.regs or offset < 0 or offset + count > MODEL_LENGTHS[model]:
            return False
        read_only = C_READ_ONLY if model == 123 else D_READ_ONLY
        return not any(offset + i in read_only for i in range(count))

    def write(self, model: int, offset: int, values: list[int], now: float) -> None:
        """A Modbus write the inverter takes (the caller checked ``writable``)."""
        self.advance(now)
        regs = self.regs[model]
        touched = range(offset, offset + len(values))
        for i, value in enumerate(values):
            regs[offset + i] = value & 0xFFFF
        if model == 123:
            if any(o in LIMIT_POINTS_123 for o in touched):
                self.limit_written_at[123] = now
            if any(o in CONN_POINTS_123 for o in touched):
                self.conn_written_at = now
        elif any(o in LIMIT_POINTS_704 for o in touched):
            self.limit_written_at[704] = now

    def _rvrt_704(self) -> int:
        r = self.regs[704]
        return (r[D_RVRT_TMS] << 16) | r[D_RVRT_TMS + 1]

    # ------------------------------------------------------------ behaviour

    def connected(self) -> bool:
        return 123 not in self.regs or self.regs[123][C_CONN] != 0

    def limit_pct(self) -> float:
        """The limit the registers ask for now, in % of the rating (100 without one, 0 disconnected)."""
        if not self.connected():
            return 0.0
        limit = 100.0
        if 123 in self.regs and self.regs[123][C_LIMIT_ENA] == 1:
            limit = min(limit, self.regs[123][C_LIMIT] * 10.0**SF_123)
        if 704 in self.regs and self.regs[704][D_ENA] == 1:
            limit = min(limit, self.regs[704][D_LIMIT] * 10.0**SF_704)
        return max(0.0, limit)

    def _fire_timers(self, now: float) -> float | None:
        """Fire the revert timers due by ``now``; returns when the last of them was due."""
        fired: list[float] = []
        if 123 in self.regs:
            r = self.regs[123]
            started = self.limit_written_at.get(123)
            if r[C_LIMIT_ENA] == 1 and r[C_LIMIT_RVRT] > 0 and started is not None and now - started >= r[C_LIMIT_RVRT]:
                r[C_LIMIT_ENA] = 0
                fired.append(started + r[C_LIMIT_RVRT])
            conn_at = self.conn_written_at
            if r[C_CONN] == 0 and r[C_CONN_RVRT] > 0 and conn_at is not None and now - conn_at >= r[C_CONN_RVRT]:
                r[C_CONN] = 1
                fired.append(conn_at + r[C_CONN_RVRT])
        if 704 in self.regs:
            r = self.regs[704]
            started = self.limit_written_at.get(704)
            total = self._rvrt_704()
            if r[D_ENA] == 1 and total > 0 and started is not None and now - started >= total:
                r[D_LIMIT] = r[D_LIMIT_RVRT]
                r[D_ENA] = r[D_ENA_RVRT]
                self.limit_written_at.pop(704, None)
                fired.append(started + total)
        self.reverts += len(fired)
        return max(fired) if fired else None

    def advance(self, now: float) -> None:
        """Run the revert timers and the ramp up to ``now``."""
        if now <= self._last:
            return
        fired_at = self._fire_timers(now)
        target = self.limit_pct()
        # Until a timer fired, the output was already where the old registers held it.
        elapsed = now - max(self._last, fired_at if fired_at is not None else self._last)
        self._last = now
        if not self.connected():
            self.output_pct = 0.0
        elif self.ramp_pct_per_s <= 0:
            self.output_pct = target
        else:
            step = self.ramp_pct_per_s * elapsed
            if self.output_pct < target:
                self.output_pct = min(target, self.output_pct + step)
            else:
                self.output_pct = max(target, self.output_pct - step)

    def state(self) -> dict[str, float | bool | int]:
        return {
            "limit_pct": round(self.limit_pct(), 2),
            "output_pct": round(self.output_pct, 2),
            "connected": self.connected(),
            "reverts": self.reverts,
        }
