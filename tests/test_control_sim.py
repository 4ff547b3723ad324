"""The simulated inverter's controls (crev_sim.controls): revert timers, the ramp, and what the site sees.

The controls run on a clock the test gives them, so every timer is checked
to the second without waiting.
"""

import datetime
from pathlib import Path
from typing import Any

import pytest

from crev_sim import config as sim_config
from crev_sim.config import SimConfigError
from crev_sim.controls import (
    C_CONN,
    C_CONN_RVRT,
    C_LIMIT,
    C_LIMIT_ENA,
    C_LIMIT_RVRT,
    D_ENA,
    D_ENA_RVRT,
    D_LIMIT,
    D_LIMIT_RVRT,
    D_RVRT_REM,
    D_RVRT_TMS,
    MODEL_123_LEN,
    MODEL_704_LEN,
    InverterControls,
)
from crev_sim.site import Site, SiteParams


def test_model_lengths_follow_the_sunspec_definitions() -> None:
    # json/model_123.json: 26 points with ID and L; json/model_704.json: 67 registers with ID and L.
    assert (MODEL_123_LEN, MODEL_704_LEN) == (24, 65)
    controls = InverterControls((123, 704), 10, 0.0)
    assert controls.block(123, 0.0)[:2] == [123, 24] and len(controls.block(123, 0.0)) == 26
    assert controls.block(704, 0.0)[:2] == [704, 65] and len(controls.block(704, 0.0)) == 67


def test_a_123_limit_reverts_after_its_time_since_the_last_write() -> None:
    c = InverterControls((123,), 0, 0.0)
    c.write(123, C_LIMIT, [400], 10.0)
    c.write(123, C_LIMIT_RVRT, [60], 10.0)
    c.write(123, C_LIMIT_ENA, [1], 10.0)
    c.advance(69.0)
    assert c.limit_pct() == 40
    c.write(123, C_LIMIT, [400], 69.0)  # a refresh restarts the timer
    c.advance(128.0)
    assert c.limit_pct() == 40 and c.reverts == 0
    c.advance(129.0)
    assert c.limit_pct() == 100 and c.reverts == 1 and c.regs[123][C_LIMIT_ENA] == 0


def test_a_123_limit_without_a_revert_time_stays() -> None:
    c = InverterControls((123,), 0, 0.0)
    c.write(123, C_LIMIT, [250, 0, 0, 0, 1], 1.0)
    c.advance(1e6)
    assert c.limit_pct() == 25


def test_a_disconnect_reconnects_by_itself() -> None:
    c = InverterControls((123,), 5, 0.0)
    c.advance(1.0)
    c.write(123, C_CONN_RVRT, [30, 0], 1.0)
    c.advance(1.1)
    assert not c.connected() and c.output_pct == 0, "a disconnect opens at once, without a ramp"
    c.advance(31.0)
    assert c.connected()
    c.advance(32.0)
    assert c.output_pct == pytest.approx(5.0), "and the output ramps back up"
    assert c.regs[123][C_CONN] == 1


def test_a_704_limit_takes_its_reversion_values() -> None:
    c = InverterControls((704,), 0, 0.0)
    c.write(704, D_LIMIT_RVRT, [9000, 0, 0, 20], 0.0)
    c.write(704, D_ENA, [1, 3000], 0.0)
    c.advance(5.0)
    assert c.limit_pct() == 30
    block = c.block(704, 5.0)
    assert block[2 + D_RVRT_REM] << 16 | block[2 + D_RVRT_REM + 1] == 15
    c.advance(20.0)
    assert c.regs[704][D_LIMIT] == 9000 and c.regs[704][D_ENA] == 0, "WMaxLimPctEnaRvrt was 0"
    c.write(704, D_LIMIT_RVRT, [10000, 1, 0, 20], 30.0)
    c.write(704, D_ENA, [1, 3000], 30.0)
    c.advance(50.0)
    assert (c.regs[704][D_LIMIT], c.regs[704][D_ENA], c.regs[704][D_ENA_RVRT]) == (10000, 1, 1)
    assert c.limit_pct() == 100
    assert c.regs[704][D_RVRT_TMS + 1] == 20


def test_the_output_follows_a_new_limit_at_the_ramp_rate() -> None:
    c = InverterControls((123,), 20, 0.0)
    c.write(123, C_LIMIT, [400, 0, 0, 0, 1], 0.0)
    seen = []
    for second in range(1, 5):
        c.advance(float(second))
        seen.append(round(c.output_pct, 3))
    assert seen == [80, 60, 40, 40]
    c.write(123, C_LIMIT_ENA, [0], 4.0)
    c.advance(4.5)
    assert c.output_pct == pytest.approx(50)


def test_read_only_registers() -> None:
    c = InverterControls((123, 704), 0, 0.0)
    assert c.writable(123, C_LIMIT, 5) and not c.writable(123, 21, 1) and not c.writable(123, 23, 2)
    assert not c.writable(704, D_RVRT_REM, 2) and c.writable(704, D_LIMIT_RVRT, 4) and not c.writable(704, 64, 2)


def test_the_site_exports_only_what_the_inverter_lets_through() -> None:
    noon = datetime.datetime.fromisoformat("2026-06-21T12:00:00+09:00").timestamp()
    free = Site(SiteParams(seed=3), noon)
    capped = Site(SiteParams(seed=3), noon)
    capped.pv_cap_w = 1000.0
    free.advance_to(noon + 600)
    capped.advance_to(noon + 600)
    assert free.counters.pv_wh > 400
    assert capped.counters.pv_wh == 10 * round(1000 * 60 / 3600)
    assert capped.counters.load_wh == free.counters.load_wh, "the household is not curtailed"


def _meter(**extra: Any) -> dict[str, Any]:
    return {"meter": [{"profile": "sunspec", "measures": ["pv", "grid"], **extra}]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"controls": [122]}, "models 123 and/or 704"),
        ({"controls": [123, 123]}, "models 123 and/or 704"),
        ({"controls": [123], "measures": ["grid"]}, "measures pv"),
        ({"controls": [704], "ramp_pct_per_s": -1}, "ramp_pct_per_s"),
        ({"fault": [{"kind": "ignore_everything"}]}, "ignore_writes"),
    ],
)
def test_control_configuration_mistakes(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(SimConfigError) as caught:
        sim_config.parse(_meter(**extra), Path("."))
    assert message in str(caught.value)


def test_control_configuration() -> None:
    parsed = sim_config.parse(_meter(controls=[704, 123], ramp_pct_per_s=7, rating_w=3000), Path("."))
    meter = parsed.meters[0]
    assert meter.controls is not None and meter.controls.models == (123, 704)
    assert meter.controls.ramp_pct_per_s == 7 and meter.rating_w == 3000
    assert sim_config.parse(_meter(), Path(".")).meters[0].controls is None
