"""The offline auditor reconciles smart-meter slots from an evidence bundle (SPEC §6, §13).

Two devices read a smart meter beside the grid meter (readings signed like a
gateway's, as tests/test_registry_reconciliation.py builds them), fed through
ingest's real path into a real store (SQLite and PostgreSQL): one whose smart
meter counts 0.5 % more, one 3 % more. The registry issues what it may, holds
the 3 % device's slots, and one of them is released with a reason. Then
`crev audit export` (a subprocess, on the store) writes each device's bundle
and `crev audit verify` (a subprocess, on the bundle and the ledger key alone,
with worker processes) must report, per device and slot, the verdicts ingest
wrote in its `reconciliation` table, and the release. A bundle that lacks the
release while carrying the slot's issuance fails, and so does the bundle of a
registry that issued held slots, as `crev audit ledger` does.
"""

import io
import json
from pathlib import Path
from typing import Any

import pytest
import reconcile_support as support
from harness import run_crev
from ingest_support import LEDGER_KEY, NOW, LocalIngest
from registry_support import FACTOR_LABEL, FACTOR_MG, add_site, open_owner, seal, write_ingest_config

from crev import cbor, evidence, reconcile
from crev.keys import SigningKey
from crev.registry_format import LEAF_SITE, Release
from crev_cli.bundle_verify import Verification, verify_bundle
from crev_ingest import LedgerError
from crev_ingest.export import ExportRequest, export_bundle
from crev_ingest.registry_audit import replay_registry
from crev_market.registry import Registry, _signed_map

PARAMS = reconcile.Params(step_mwh=1000, digits=8)  # a smart meter with 1 Wh steps
SITE = "site-drift-01"
DEVICES = {"dgc-drift-0005": (SigningKey(bytes([41]) * 32), 5), "dgc-drift-0030": (SigningKey(bytes([42]) * 32), 30)}
OK_DEV, HELD_DEV = "dgc-drift-0005", "dgc-drift-0030"
MINUTES = 620  # over 2 x 256 readings: `crev audit verify` checks them in worker processes
START = (NOW - 12 * 3600) // 1800 * 1800
END = START + 60 * MINUTES  # the bundles' range: [START, END)
RELEASED = START + 3 * 1800
REASON = "smart meter SM-0042 replaced on site"
# Slots (S, S+1800] inside the range with both fixed-time values: START + 1800 .. END - 1800 - 1800.
CHECKED = [START + k * 1800 for k in range(1, (END - START) // 1800)]


def registry_of(ingest: LocalIngest, params: reconcile.Params = PARAMS) -> Registry:
    return Registry(ingest.store, ingest.ledger, FACTOR_MG, FACTOR_LABEL, params, 900)


def fed(tmp_path: Path, store_url: str | None) -> LocalIngest:
    """Both devices' readings through ingest's real path (check, integrate, reconcile), then sealed."""
    ingest = LocalIngest(tmp_path, store_url)
    ingest.config.reconciliation = PARAMS
    for dev, (key, _drift) in DEVICES.items():
        ingest._key_event(1, dev, key.public_key, NOW - 86400)
    for dev, (key, drift) in DEVICES.items():
        support.feed(ingest, dev, support.signed_readings(key, dev, drift, MINUTES, start=START), batch=40)
    seal(ingest)
    return ingest


def with_site(ingest: LocalIngest, params: reconcile.Params = PARAMS) -> Registry:
    registry = registry_of(ingest, params)
    open_owner(registry)
    add_site(registry, SITE, sorted(DEVICES))
    return registry


def config_for(tmp_path: Path, store_url: str | None) -> Path:
    config = write_ingest_config(tmp_path, store_url=store_url)
    config.write_text(config.read_text() + "\n[reconciliation]\nstep_mwh = 1000\ndigits = 8\n")
    (tmp_path / "ledger.pub").write_text(LEDGER_KEY.public_key.hex() + "\n")
    return config


def export(tmp_path: Path, config: Path, dev: str) -> Path:
    out = tmp_path / ("%s.bundle" % dev)
    done = run_crev(
        tmp_path,
        *("audit", "export", "--config", str(config), "--device", dev),
        *("--from", str(START), "--to", str(END), "--out", str(out)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registry leaves" in done.stdout, done.stdout
    return out


def verify_cli(tmp_path: Path, bundle: Path, *options: str) -> tuple[int, Any]:
    done = run_crev(tmp_path, "audit", "verify", str(bundle), "--ledger-key", "ledger.pub", "--jobs", "2", *options)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout) if "--json" in options else done.stdout


def table(ingest: LocalIngest, dev: str) -> list[tuple[Any, ...]]:
    """What ingest wrote: (dev, slot, verdict, meter, grid import, export, smart import, export, tolerances)."""
    return [tuple(row[:10]) for row in ingest.store.reconciliations(dev)]


def from_report(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            s["dev"],
            s["slot"],
            s["verdict"],
            s["meter_id"],
            s["grid_import_mwh"],
            s["grid_export_mwh"],
            s["sm_import_mwh"],
            s["sm_export_mwh"],
            s["tolerance_import_mwh"],
            s["tolerance_export_mwh"],
        )
        for s in report["reconciliation"]["slots"]
    ]


@pytest.fixture
def held(tmp_path: Path, store_url: str | None) -> Any:
    """0.5 % and 3 %: issued, held, one slot released and then issued."""
    ingest = fed(tmp_path, store_url)
    registry = with_site(ingest)
    summary = registry.issue(NOW * 1000)
    assert sorted(slot for dev, slot, _detail in summary.mismatched) == CHECKED
    assert {dev for dev, _slot, _detail in summary.mismatched} == {HELD_DEV}
    assert registry.release(SITE, RELEASED, REASON, NOW * 1000) == [(HELD_DEV, ingest.store.releases()[0][0])]
    assert registry.issue(NOW * 1000).issuances == 1
    yield ingest, config_for(tmp_path, store_url)
    ingest.store.close()


def test_the_bundle_gives_ingest_s_verdicts_and_the_release(held: Any, tmp_path: Path) -> None:
    ingest, config = held
    for dev in DEVICES:
        rows = table(ingest, dev)
        # The first slot is UNCHECKED (its first reading has no baseline); each checked slot has a verdict.
        assert [row[1] for row in rows] == [START, *CHECKED]
        bundle = export(tmp_path, config, dev)
        assert cbor.loads(bundle.read_bytes())[1] == evidence.VERSION_RECONCILED  # type: ignore[index]
        code, report = verify_cli(tmp_path, bundle, "--json")
        assert (code, report["ok"]) == (0, True), report["failure"]
        assert report["checks"][-1] == {
            "number": 8,
            "name": "smart-meter reconciliation",
            "status": "ok",
            "failures": 0,
        }
        found = report["reconciliation"]
        assert from_report(report) == rows
        assert found["params"]["from"] == dict.fromkeys(("basis_points", "steps", "step_mwh", "digits"), "bundle")
        assert (found["params"]["step_mwh"], found["params"]["digits"]) == (1000, 8)
        statuses = {s["slot"]: s["status"] for s in found["slots"]}
        assert statuses[START] == "incomplete"
        if dev == OK_DEV:
            assert (found["passed"], found["mismatched"], found["incomplete"]) == (len(CHECKED), 0, 1)
            assert found["releases"] == 0
        else:
            assert (found["passed"], found["mismatched"], found["incomplete"]) == (0, len(CHECKED), 1)
            assert found["releases"] == 1
            assert statuses == {START: "incomplete", RELEASED: "released"} | {
                slot: "held" for slot in CHECKED if slot != RELEASED
            }
            released = next(s for s in found["slots"] if s["slot"] == RELEASED)
            assert released["released"] == REASON and len(released["issued"]) == 1
            assert released["diff_import_mwh"] == released["sm_import_mwh"] - released["grid_import_mwh"] > 0

    # The same through worker processes: small proof groups make three tasks of 256 readings or fewer.
    grouped = tmp_path / "grouped.bundle"
    export_bundle(ingest.store, _request(grouped, HELD_DEV, group=64))
    code, report = verify_cli(tmp_path, grouped, "--json")
    assert code == 0 and report["bundle"]["readings"] == MINUTES > 2 * 256
    assert from_report(report) == table(ingest, HELD_DEV)
    assert [s["status"] for s in report["reconciliation"]["slots"]].count("released") == 1

    # The plain report: the counts, and each mismatched slot with its energies and what became of it.
    code, text = verify_cli(tmp_path, tmp_path / ("%s.bundle" % HELD_DEV))
    assert code == 0 and "RESULT: PASS" in text, text
    assert "8 smart-meter reconciliation " in text
    count = len(CHECKED)
    assert "%d slots, 0 passed, %d mismatched, 1 incomplete" % (count + 1, count) in text
    assert "MISMATCH   %s slot %s: released: %s" % (HELD_DEV, _iso(RELEASED), REASON) in text
    assert text.count("held: not issued, no release") == count - 1
    assert "    import  grid 600000 mWh, smart meter 618000 mWh, difference +18000 mWh (tolerance 6000 mWh)" in text


def test_an_issuance_without_its_release_fails(held: Any, tmp_path: Path) -> None:
    """The release left out of the bundle, the slot's issuance kept: the slot was issued while held."""
    _ingest, config = held
    bundle = export(tmp_path, config, HELD_DEV)
    value = cbor.loads(bundle.read_bytes())
    assert isinstance(value, list)
    registry = value[5]
    kinds = [item[2] for item in registry]
    assert kinds.count(LEAF_SITE) == 1, "the bundle carries the release"
    dropped = [item for item in registry if item[2] != LEAF_SITE]
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(cbor.dumps([*value[:5], dropped, value[6]]))
    code, report = verify_cli(tmp_path, cut, "--json")
    assert code == 1 and report["ok"] is False
    failure = report["failure"]
    assert (failure["check"], failure["item"], failure["dev"]) == (evidence.RECONCILE, "registry leaf", HELD_DEV)
    assert "slot %d of %s is held by SMART_METER_MISMATCH" % (RELEASED, HELD_DEV) in failure["detail"]
    assert "no release precedes its issuance" in failure["detail"]
    assert report["failure_count"] == 1
    slot = next(s for s in report["reconciliation"]["slots"] if s["slot"] == RELEASED)
    assert slot["status"] == "issued without release" and slot["released"] is None
    code, text = verify_cli(tmp_path, cut)
    assert code == 1 and "ISSUED WITHOUT A RELEASE" in text
    assert "check 8 (smart-meter reconciliation) failed" in text


def test_a_registry_that_issued_held_slots_fails_as_the_ledger_audit_does(
    tmp_path: Path, store_url: str | None
) -> None:
    ingest = fed(tmp_path, store_url)
    try:
        # A registry run with a tolerance of 100 % holds nothing: every slot is issued.
        lax = with_site(ingest, reconcile.Params(basis_points=10000, step_mwh=1000, digits=8))
        assert lax.issue(NOW * 1000).issuances == 2 * (len(CHECKED) + 1)
        with pytest.raises(LedgerError, match="slot %d of %s is held by SMART_METER_MISMATCH" % (CHECKED[0], HELD_DEV)):
            replay_registry(ingest.store, LEDGER_KEY.public_key, PARAMS)
        config = config_for(tmp_path, store_url)
        code, report = verify_cli(tmp_path, export(tmp_path, config, HELD_DEV), "--json")
        assert code == 1
        failed = [f for f in report["failures"] if f["check"] == evidence.RECONCILE]
        assert len(failed) == report["failure_count"] == len(CHECKED)
        assert all("no release precedes its issuance" in f["detail"] for f in failed)
        assert {s["status"] for s in report["reconciliation"]["slots"]} == {"incomplete", "issued without release"}
        # The 0.5 % device's slots passed: their issuances are in order.
        code, report = verify_cli(tmp_path, export(tmp_path, config, OK_DEV), "--json")
        assert code == 0 and report["reconciliation"]["passed"] == len(CHECKED)
    finally:
        ingest.store.close()


def test_a_release_of_a_slot_not_held_fails(tmp_path: Path, store_url: str | None) -> None:
    ingest = fed(tmp_path, store_url)
    try:
        with_site(ingest)
        release = Release(SITE, OK_DEV, CHECKED[0], "forged", NOW)
        with ingest.store.transaction():
            ingest.ledger.sync()
            leaf = ingest.ledger.append(LEAF_SITE, NOW * 1000, _signed_map(release.to_map(), ingest.ledger.key))
            ingest.store.add_release(leaf, SITE, OK_DEV, CHECKED[0], "forged", NOW)
            ingest.ledger.seal(NOW * 1000)
        out = tmp_path / "forged.bundle"
        export_bundle(ingest.store, _request(out, OK_DEV))
        result = _verify(out.read_bytes())
        failure = result.first_failure()
        assert failure is not None and (failure.check, failure.item, getattr(failure, "leaf", None)) == (
            evidence.RECONCILE,
            "registry leaf",
            leaf,
        )
        assert "release: slot %d of %s is not held by a smart-meter mismatch" % (CHECKED[0], OK_DEV) in failure.detail
    finally:
        ingest.store.close()


def test_options_replace_the_stated_tolerance_and_old_bundles_still_verify(held: Any, tmp_path: Path) -> None:
    ingest, config = held
    bundle = export(tmp_path, config, OK_DEV)
    # A stricter auditor: at 0.4 % the 0.5 % device's slots mismatch, and their issuances fail check 8.
    code, report = verify_cli(tmp_path, bundle, "--json", "--tolerance-percent", "0.4", "--tolerance-steps", "0")
    assert code == 1
    found = report["reconciliation"]
    assert found["params"]["from"]["basis_points"] == found["params"]["from"]["steps"] == "option"
    assert found["params"]["from"]["step_mwh"] == "bundle"
    assert found["mismatched"] == len(CHECKED)
    assert {f["check"] for f in report["failures"]} == {evidence.RECONCILE}

    # A version 2 bundle (no registry section, no stated parameters) verifies as before; its slots are
    # reconciled with ingest's defaults, or with the options, and their releases are not known.
    value = cbor.loads(bundle.read_bytes())
    assert isinstance(value, list)
    meta = {k: v for k, v in value[2].items() if k != evidence.M_RECONCILIATION}
    old = tmp_path / "old.bundle"
    old.write_bytes(cbor.dumps([value[0], 2, meta, value[3], value[4], value[6]]))
    code, report = verify_cli(tmp_path, old, "--json", "--step-mwh", "1000", "--digits", "8")
    assert code == 0, report["failure"]
    assert [c["number"] for c in report["checks"]] == list(range(1, 8))
    assert from_report(report) == table(ingest, OK_DEV)
    assert report["reconciliation"]["registry_leaves"] is None
    assert report["reconciliation"]["params"]["from"]["basis_points"] == "default"
    code, text = verify_cli(tmp_path, old)
    assert code == 0 and "registry   not in the bundle" in text
    assert "(ingest's defaults: the bundle states none)" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tolerance-percent", "101"], "--tolerance-percent must be a number from 0 to 100"),
        (["--tolerance-percent", "0.125"], "with at most 2 decimals"),
        (["--step-mwh", "0"], "--step-mwh must be a whole number from 1 to"),
        (["--digits", "9"], "--digits must be a whole number from 0 to 8"),
        (["--tolerance-steps", "-1"], "--tolerance-steps must be a whole number from 0 to 1000"),
    ],
)
def test_a_bad_tolerance_is_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    (tmp_path / "x.bundle").write_bytes(b"\x80")
    done = run_crev(tmp_path, "audit", "verify", "x.bundle", "--ledger-key", LEDGER_KEY.public_key.hex(), *options)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def _request(out: Path, dev: str, group: int = 1024) -> ExportRequest:
    return ExportRequest(
        dev, START, END, out, "crev.test/ledger", LEDGER_KEY.public_key, 423.0, NOW * 1000, group, PARAMS
    )


def _verify(data: bytes, jobs: int = 1) -> Verification:
    return verify_bundle(io.BytesIO(data), LEDGER_KEY.public_key, False, jobs)


def _iso(seconds: int) -> str:
    from crev_cli.audit_cmd import iso

    return iso(seconds)
