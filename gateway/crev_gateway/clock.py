"""Is the system clock synchronised, and did it jump? (SPEC §3 clk, CLOCK_STEP)

We ask the kernel with ``adjtimex(2)`` (read-only, modes = 0) rather than
``timedatectl``: it needs no D-Bus or systemd, it reflects whichever daemon
disciplines the clock (chrony, ntpd, systemd-timesyncd, a GNSS PPS), and it
reports ``maxerror``, so "within 1 s" (SPEC §3) can be checked, not assumed.
Synchronised means: the clock state is not TIME_ERROR, STA_UNSYNC is clear,
and maxerror is below 1 s.
"""

import ctypes
import ctypes.util
import time

TIME_ERROR = 5
STA_UNSYNC = 0x0040
MAX_ERROR_US = 1_000_000
STEP_THRESHOLD_S = 2.0


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> on Linux.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


def kernel_clock_synchronised() -> bool:
    """True if adjtimex says the clock is disciplined to within 1 s."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        return False
    return state != TIME_ERROR and not timex.status & STA_UNSYNC and timex.maxerror < MAX_ERROR_US


class ClockWatch:
    """Decides clk for each reading and notices steps of the wall clock.

    ``mode`` is "auto" (ask the kernel), or "synchronised"/"unsynchronised"
    to state it for a bench set-up without NTP.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._last: tuple[float, float] | None = None
        self.stepped = False

    def synchronised(self) -> bool:
        if self.mode == "auto":
            return kernel_clock_synchronised()
        return self.mode == "synchronised"

    def observe(self) -> None:
        """Call often: compares wall-clock progress with the monotonic clock."""
        now = (time.time(), time.monotonic())
        if self._last is not None:
            drift = (now[0] - self._last[0]) - (now[1] - self._last[1])
            if abs(drift) > STEP_THRESHOLD_S:
                self.stepped = True
        self._last = now

    def take_step(self) -> bool:
        stepped, self.stepped = self.stepped, False
        return stepped
