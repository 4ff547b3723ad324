"""Smart-meter reconciliation per 30-minute slot (SPEC §13): pure functions.

The certified grid meter's import and export over a slot (S, S+1800] are the
sums of I and E (key 8) of the device's readings of that slot (SPEC §2). The
utility smart meter's over the same slot are the differences of its 30-minute
fixed-time values (key 12, ``[meter_id, t, import_mWh, export_mWh]``) at
t = S and t = S+1800. Each direction is compared on its own::

    tolerance = max(grid x basis_points / 10000, steps x step_mwh)
    mismatch  = |grid - smart| > tolerance

with the defaults of SPEC §13: 1 % (100 basis points) and two steps of the
smart meter's resolution. The reading does not carry the resolution (one
counter step, ``crev.smartmeter.Scale.mwh_per_step``) or the effective
digits, so whoever reconciles is configured with them (``Params``). A smart
meter counter rolls over at 10^digits steps, so the smart meter's difference
is taken modulo ``10^digits x step_mwh`` when the digits are known; without
them a counter that went back cannot be reconciled.

A slot is reconciled only when its inputs are complete: readings that cover
(S, S+1800] exactly (the first starts at S, each starts where the one before
ended, the last ends at S+1800), all with energies, and fixed-time values of
one meter at both ends. Otherwise the verdict is UNCHECKED, with the reason,
and nothing is held. Everything is an integer: no floating point.
"""

from crev.errors import MisuseError
from crev.reading import sm_problem

SLOT_S = 1800
OK = "OK"
SMART_METER_MISMATCH = "SMART_METER_MISMATCH"
UNCHECKED = "UNCHECKED"
VERDICTS = (OK, SMART_METER_MISMATCH, UNCHECKED)

DEFAULT_BASIS_POINTS = 100  # 1 %
DEFAULT_STEPS = 2
DEFAULT_STEP_MWH = 100000  # 0.1 kWh: coefficient 1, unit 0x01, the common low-voltage meter
DEFAULT_DIGITS = 6


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def slot_of(t1: int) -> int:
    """S of the slot (S, S+1800] that holds ``t1``."""
    return ((t1 - 1) // SLOT_S) * SLOT_S


class Params:
    """The tolerance and the smart meter's resolution; ``digits`` None: roll-over unknown."""

    def __init__(
        self,
        basis_points: int = DEFAULT_BASIS_POINTS,
        steps: int = DEFAULT_STEPS,
        step_mwh: int = DEFAULT_STEP_MWH,
        digits: "int | None" = DEFAULT_DIGITS,
    ) -> None:
        if not _is_uint(basis_points) or basis_points > 10000:
            raise MisuseError("basis_points %r is not 0..10000" % (basis_points,))
        if not _is_uint(steps):
            raise MisuseError("steps %r is not an unsigned integer" % (steps,))
        if not _is_uint(step_mwh) or step_mwh == 0:
            raise MisuseError("step_mwh %r is not a positive integer" % (step_mwh,))
        if digits is not None and (not _is_uint(digits) or not 1 <= digits <= 8):
            raise MisuseError("digits %r is not 1..8" % (digits,))
        self.basis_points = basis_points
        self.steps = steps
        self.step_mwh = step_mwh
        self.digits = digits
        self.modulus_mwh = None if digits is None else int(10**digits) * step_mwh  # type: int | None

    def __repr__(self) -> str:
        return "Params(basis_points=%d, steps=%d, step_mwh=%d, digits=%r)" % (
            self.basis_points,
            self.steps,
            self.step_mwh,
            self.digits,
        )

    def tolerance(self, grid_mwh: int) -> int:
        """The largest difference allowed against ``grid_mwh``, in mWh."""
        return max(grid_mwh * self.basis_points // 10000, self.steps * self.step_mwh)


class Verdict:
    """The outcome for one device and slot. Energies in mWh; None where not known."""

    def __init__(
        self,
        slot_t0: int,
        verdict: str,
        detail: str = "",
        grid: "tuple | None" = None,
        smart: "tuple | None" = None,
        tolerance: "tuple | None" = None,
        meter_id: "str | None" = None,
    ) -> None:
        self.slot_t0 = slot_t0
        self.verdict = verdict
        self.detail = detail
        self.grid = grid  # (import, export) of the certified grid meter
        self.smart = smart  # (import, export) of the smart meter
        self.tolerance = tolerance  # (import, export)
        self.meter_id = meter_id

    def as_list(self) -> list:
        """A JSON-ready form: ``[slot_t0, verdict, grid, smart, tolerance, detail]``."""
        return [
            self.slot_t0,
            self.verdict,
            None if self.grid is None else list(self.grid),
            None if self.smart is None else list(self.smart),
            None if self.tolerance is None else list(self.tolerance),
            self.detail,
        ]

    def __repr__(self) -> str:
        return "Verdict(%r)" % (self.as_list(),)


def grid_energy(slot_t0: int, intervals: list) -> tuple:
    """``(import, export)`` over the slot from ``[(t0, t1, import, export), ...]``,
    or ``(None, reason)`` when they do not cover (slot_t0, slot_t0+1800] exactly
    or one has no energies (import None)."""
    end = slot_t0 + SLOT_S
    ordered = sorted(intervals, key=lambda item: item[1])
    if not ordered:
        return (None, "no readings of the slot")
    at = slot_t0
    imported = exported = 0
    for t0, t1, imp, exp in ordered:
        if t0 != at:
            if t0 < slot_t0:
                return (None, "a reading from %d spans the slot's start %d" % (t0, slot_t0))
            return (None, "no reading covers %d..%d" % (at, t0))
        if imp is None or exp is None:
            return (None, "the reading ending at %d has no energies" % t1)
        imported += imp
        exported += exp
        at = t1
    if at != end:
        return (None, "no reading covers %d..%d" % (at, end))
    return (imported, exported)


def smart_energy(start: list, end: list, params: Params) -> tuple:
    """``(import, export)`` of the smart meter from its values at the slot's two ends,
    or ``(None, reason)``."""
    if start[0] != end[0]:
        return (None, "the smart meter changed from %s to %s" % (start[0], end[0]))
    if end[1] - start[1] != SLOT_S:
        return (None, "fixed-time values at %d and %d are not one slot apart" % (start[1], end[1]))
    out = []
    for i in (2, 3):
        delta = end[i] - start[i]
        if delta < 0:
            if params.modulus_mwh is None:
                return (None, "the smart meter's counter went back and its digits are not configured")
            delta %= params.modulus_mwh
        out.append(delta)
    return (out[0], out[1])


def reconcile_slot(
    slot_t0: int, intervals: list, sm_start: "list | None", sm_end: "list | None", params: Params
) -> Verdict:
    """The verdict for one device's slot (slot_t0, slot_t0+1800].

    ``intervals``: ``(t0, t1, import_mwh, export_mwh)`` of the slot's readings
    (import and export None for a reading without energies); ``sm_start`` and
    ``sm_end``: key 12 values with t = slot_t0 and t = slot_t0 + 1800, or None.
    """
    if slot_t0 % SLOT_S:
        raise MisuseError("slot %r does not start at a 30-minute mark" % (slot_t0,))
    for value, t in ((sm_start, slot_t0), (sm_end, slot_t0 + SLOT_S)):
        if value is not None and (sm_problem(value) or value[1] != t):
            raise MisuseError("smart meter value %r is not a valid value at %d" % (value, t))
    grid = grid_energy(slot_t0, intervals)
    if grid[0] is None:
        return Verdict(slot_t0, UNCHECKED, grid[1])
    if sm_start is None or sm_end is None:
        missing = slot_t0 if sm_start is None else slot_t0 + SLOT_S
        return Verdict(slot_t0, UNCHECKED, "no smart meter value at %d" % missing, grid)
    smart = smart_energy(sm_start, sm_end, params)
    if smart[0] is None:
        return Verdict(slot_t0, UNCHECKED, smart[1], grid, None, None, sm_end[0])
    tolerance = (params.tolerance(grid[0]), params.tolerance(grid[1]))
    problems = []
    for name, g, s, tol in (("import", grid[0], smart[0], tolerance[0]), ("export", grid[1], smart[1], tolerance[1])):
        if abs(g - s) > tol:
            problems.append("%s: grid meter %d mWh, smart meter %d mWh, beyond %d mWh" % (name, g, s, tol))
    if problems:
        return Verdict(slot_t0, SMART_METER_MISMATCH, "; ".join(problems), grid, smart, tolerance, sm_end[0])
    return Verdict(slot_t0, OK, "", grid, smart, tolerance, sm_end[0])


def reconcile_readings(readings: list, params: Params) -> list:
    """Verdicts for every slot of one device's readings (crev.reading.Reading
    objects, any order) that has a smart meter value at its end; by slot.

    The slot's fixed-time values are taken from any of the readings: the
    first reading carrying a value at that time gives it.
    """
    values = {}  # type: dict[int, list]
    slots = {}  # type: dict[int, list]
    for reading in sorted(readings, key=lambda r: r.seq):
        sm = reading.smart_meter
        if sm is not None and sm[1] not in values:
            values[sm[1]] = sm
        e = reading.energies
        entry = (reading.t0, reading.t1, None if e is None else e[1], None if e is None else e[2])
        slots.setdefault(slot_of(reading.t1), []).append(entry)
    verdicts = []
    for slot_t0 in sorted(values):
        start = slot_t0 - SLOT_S
        if start not in slots:
            continue
        verdicts.append(reconcile_slot(start, slots[start], values.get(start), values[slot_t0], params))
    return verdicts


def window(slot_t0: int) -> tuple:
    """``(from_s, to_s)``: the readings overlapping [from_s, to_s) are all that decide slot ``slot_t0``:
    its own, and the ones around it that carry the fixed-time values at its two ends."""
    return (slot_t0 - SLOT_S, slot_t0 + 2 * SLOT_S)


def slot_verdict(readings: list, slot_t0: int, params: Params) -> "Verdict | None":
    """The verdict of slot ``slot_t0`` from one device's readings (those of ``window``); None when no
    reading carries the fixed-time value at its end yet. The registry holds a slot's issuance, and
    the registry replay checks that hold, with this one function (SPEC §13)."""
    for verdict in reconcile_readings(readings, params):
        if verdict.slot_t0 == slot_t0:
            found = verdict  # type: Verdict
            return found
    return None


def carries_smart_meter(readings: list, slot_t0: int) -> bool:
    """Whether any of the slot's own readings carries key 12: its device reads a smart meter."""
    return any(reading.smart_meter is not None and slot_of(reading.t1) == slot_t0 for reading in readings)


def hold_problem(readings: list, slot_t0: int, dev: str, params: Params) -> "str | None":
    """SPEC §13 for an issuance of ``dev``'s slot ``slot_t0`` that no release of the slot precedes:
    why it should have been held, or None. ``readings``: the device's readings of ``window(slot_t0)``
    that precede the issuance in the ledger. The registry replay (crev.registry_replay) and the
    offline auditor (crev.evidence) both ask this function."""
    verdict = slot_verdict(readings, slot_t0, params)
    if verdict is None or verdict.verdict != SMART_METER_MISMATCH:
        return None
    return "slot %d of %s is held by SMART_METER_MISMATCH (%s) and no release precedes its issuance" % (
        slot_t0,
        dev,
        verdict.detail,
    )


def release_problem(readings: list, slot_t0: int, dev: str, params: Params) -> "str | None":
    """SPEC §13 for a release of ``dev``'s slot ``slot_t0``: why there was nothing to release, or
    None when the slot is held. ``readings`` as for ``hold_problem``, those before the release."""
    verdict = slot_verdict(readings, slot_t0, params)
    if verdict is not None and verdict.verdict == SMART_METER_MISMATCH:
        return None
    return "slot %d of %s is not held by a smart-meter mismatch: there is nothing to release" % (slot_t0, dev)
