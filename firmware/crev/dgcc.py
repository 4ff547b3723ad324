"""The DGC-C net-metering rules (SPEC §2), in integer mWh.

A channel is the tuple ``(role, meter_id, source, counter_mwh)`` read from a
certified cumulative energy register. ``apply_rules`` turns the counters at
the end of the previous reading and at the end of this one into the
interval's energies. Edge cases are flagged, never substituted.
"""

from crev.errors import MisuseError

# Channel roles (SPEC §3).
ROLE_GENERATION = 0
ROLE_IMPORT = 1
ROLE_EXPORT = 2
ROLE_BATTERY_CHARGE = 3  # reserved in format v1
ROLE_BATTERY_DISCHARGE = 4  # reserved in format v1
ROLES_V1 = (ROLE_GENERATION, ROLE_IMPORT, ROLE_EXPORT)

# Channel sources (SPEC §3).
SOURCE_GRID = 0
SOURCE_SOLAR = 1
SOURCE_WIND = 2
SOURCE_HYDRO = 3
SOURCE_BIOMASS = 4
SOURCE_GEOTHERMAL = 5
SOURCE_NAMES = ("grid", "solar", "wind", "hydro", "biomass", "geothermal")

# Reading flags (SPEC §3 key 10).
# METER_ERROR marks a reading whose interval spans reads that failed: the
# failed intervals produced no reading, so this one covers them (SPEC §2).
METER_ERROR = 1
COUNTER_RESET = 2
EXPORT_EXCEEDS_GEN = 4
NO_BASELINE = 8
CLOCK_STEP = 16
RESTARTED = 32
CURTAILED = 64  # an inverter limit of SPEC §12 was in force during the interval
ALL_FLAGS = 127
FLAG_NAMES = (
    (METER_ERROR, "METER_ERROR"),
    (COUNTER_RESET, "COUNTER_RESET"),
    (EXPORT_EXCEEDS_GEN, "EXPORT_EXCEEDS_GEN"),
    (NO_BASELINE, "NO_BASELINE"),
    (CLOCK_STEP, "CLOCK_STEP"),
    (RESTARTED, "RESTARTED"),
    (CURTAILED, "CURTAILED"),
)
# The flags that the adapter (not the rules) decides.
ADAPTER_FLAGS = METER_ERROR | CLOCK_STEP | RESTARTED | CURTAILED


def flag_names(flags: int) -> list:
    return [name for bit, name in FLAG_NAMES if flags & bit]


def check_channel(channel: object) -> None:
    """Raise MisuseError unless ``channel`` is a well-formed v1 channel."""
    if not isinstance(channel, tuple) or len(channel) != 4:
        raise MisuseError("a channel is (role, meter_id, source, counter_mwh)")
    role, meter_id, source, counter = channel
    if role not in ROLES_V1:
        raise MisuseError("channel role %r is not 0, 1 or 2 in format v1" % (role,))
    if not isinstance(meter_id, str) or not meter_id:
        raise MisuseError("a channel's meter_id is a non-empty string")
    if not isinstance(source, int) or not 0 <= source < len(SOURCE_NAMES):
        raise MisuseError("channel source %r is not 0..5" % (source,))
    if (role == ROLE_GENERATION) == (source == SOURCE_GRID):
        raise MisuseError("generation channels need a renewable source, grid channels source 0")
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 0:
        raise MisuseError("a counter is a non-negative integer of mWh, got %r" % (counter,))


def allocate_self(self_mwh: int, generation: list) -> list:
    """SPEC §2: split ``self_mwh`` over generators in proportion to their Δ.

    ``generation`` is the list of each generator's Δ in channel order. Each
    generator gets floor(self·G_j/G); the mWh left over go one each to the
    largest remainders, ties to the earlier channel, so the parts sum to
    ``self_mwh`` exactly.
    """
    total = 0
    for g in generation:
        total += g
    if total == 0:
        return [0] * len(generation)
    shares = []
    remainders = []
    given = 0
    for j, g in enumerate(generation):
        product = self_mwh * g
        share = product // total
        shares.append(share)
        remainders.append((-(product - share * total), j))
        given += share
    remainders.sort()
    for k in range(self_mwh - given):
        shares[remainders[k][1]] += 1
    return shares


def apply_rules(previous: list | None, current: list) -> tuple:
    """Energies of one interval: ``(energies, generator_self, flags)``.

    ``previous`` and ``current`` are the channel lists at the end of the
    previous reading and of this one. ``energies`` is ``[G, I, E, self,
    demand]`` and ``generator_self`` is ``[[meter_id, self_j], ...]``; both
    are None when the rules cannot give energies (NO_BASELINE,
    COUNTER_RESET).
    """
    for channel in current:
        check_channel(channel)
    if previous is None or len(previous) != len(current):
        return None, None, NO_BASELINE
    flags = 0
    for before, now in zip(previous, current):
        if before[0] != now[0] or before[2] != now[2]:
            # The channel layout changed (re-commissioning): no baseline.
            return None, None, NO_BASELINE
        if before[1] != now[1]:
            flags |= COUNTER_RESET  # meter replaced: a new serial number
    if flags:
        return None, None, flags

    generation = []
    gen_ids = []
    imported = 0
    exported = 0
    for before, now in zip(previous, current):
        delta = now[3] - before[3]
        if delta < 0:
            # SPEC §2: counter reset, rollover or meter replaced.
            return None, None, COUNTER_RESET
        if now[0] == ROLE_GENERATION:
            generation.append(delta)
            gen_ids.append(now[1])
        elif now[0] == ROLE_IMPORT:
            imported += delta
        else:
            exported += delta
    generated = 0
    for g in generation:
        generated += g

    if exported > generated:
        # Wrong CT direction or battery export: self cannot be negative.
        flags |= EXPORT_EXCEEDS_GEN
        self_mwh = 0
        demand = max(0, generated + imported - exported)
    else:
        self_mwh = generated - exported
        demand = self_mwh + imported
    shares = allocate_self(self_mwh, generation)
    generator_self = [[gen_ids[j], shares[j]] for j in range(len(shares))]
    return [generated, imported, exported, self_mwh, demand], generator_self, flags
