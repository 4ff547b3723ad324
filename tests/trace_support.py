"""Traced retirements made to order for trace-bundle tests, hand-signed forgeries, and bundle surgery.

A trace bundle is ``["crev-trace", 1, meta, blocks, entries, readings]``
(``crev.trace``); ``parts`` decodes it in one go with every reading item
unwrapped from its byte string, and ``pack`` puts it back together.
"""

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

from crev import cbor
from crev.cose import sign1
from crev.keys import SigningKey
from crev.reading import Reading
from crev.registry_format import (
    LEAF_ISSUANCE,
    LEAF_RETIREMENT,
    Issuance,
    Retirement,
    compute_lots,
    generation_entries,
    slot_of,
    type_sums,
)
from crev_cli.trace_verify import TraceVerification, verify_trace
from crev_market.registry import Registry, sign_retirement
from crev_market.trace_export import TraceSummary, export_trace

ORIGIN = "crev.test/ledger"
ACCOUNT = "owner-1"
ACCOUNT_KEY = SigningKey(bytes([5]) * 32)
SITE = "site-1"
PLACE = "Japan/Tokyo"
FACTOR_MG = 423000
BENEFICIARY = "Bene"
PURPOSE = "FY report"
YEAR = 2026
# The first slot with readings; 100 readings a minute apart end 20 minutes before
# the slot that holds NOW, so every reading has t1 <= NOW.
BASE = (NOW // 1800) * 1800 - 4 * 1800


@dataclass
class Traced:
    """A ledger with two devices of one site, issued, and (once retired) one retirement."""

    ingest: LocalIngest
    registry: Registry
    devices: list[Device]
    retirement: int = -1

    @property
    def ms(self) -> int:
        return NOW * 1000

    def seal(self) -> None:
        with self.ingest.store.transaction():
            self.ingest.ledger.sync()
            if self.ingest.ledger.size > self.ingest.ledger.sealed_size:
                self.ingest.ledger.seal(self.ms)

    def slot_readings(self, dev: str, slot: int) -> list[tuple[int, int, str | None, bytes | None]]:
        """(leaf_idx, t1, gs, cose) of the device's sealed readings in one slot."""
        store = self.ingest.store
        rows = store.readings_from_leaf(dev, 0, self.ingest.ledger.sealed_size)
        return [row for row in rows if slot_of(row[1]) == slot]

    def prepare(self, grams: int = 1500) -> Retirement:
        with self.ingest.store.transaction():
            self.ingest.ledger.sync()
            return self.registry.prepare_retirement(ACCOUNT, grams, BENEFICIARY, PURPOSE, YEAR, self.ms)

    def retire(self, grams: int = 1500, key: SigningKey = ACCOUNT_KEY) -> int:
        with self.ingest.store.transaction():
            self.ingest.ledger.sync()
            prepared = self.registry.prepare_retirement(ACCOUNT, grams, BENEFICIARY, PURPOSE, YEAR, self.ms)
            self.retirement = self.registry.retire(sign_retirement(prepared, key), self.ms)
        return self.retirement

    def record_retirement_unchecked(self, signed: bytes) -> int:
        """Record a signed retirement the way a misbehaving registry would: no signature check."""
        retirement = Retirement.parse(signed, None)
        with self.ingest.store.transaction():
            self.ingest.ledger.sync()
            leaf = self.ingest.ledger.append(LEAF_RETIREMENT, self.ms, signed)
            self.ingest.store.add_retirement(
                leaf,
                retirement.account,
                retirement.grams,
                retirement.beneficiary,
                retirement.purpose,
                retirement.year,
                retirement.time_s,
                hashlib.sha256(signed).digest(),
                retirement.lots,
            )
            self.ingest.ledger.seal(self.ms)
        self.retirement = leaf
        return leaf

    def issue_by_hand(
        self,
        dev: str,
        slot: int,
        covered: Callable[[list[int]], list[int]] = lambda leaves: leaves,
        lots: Callable[[list[list[Any]]], list[list[Any]]] = lambda lots: lots,
    ) -> int:
        """Issue one slot as a registry holding the ledger key may: signed validly, whatever it says.

        ``covered`` edits the list of reading leaves the issuance names and
        ``lots`` its lots, which are first computed honestly from every
        reading of the slot. The store rows follow the signed leaf, so the
        holdings (and so retirements) see what was signed.
        """
        store = self.ingest.store
        found = self.registry.current_site(SITE)
        assert found is not None
        site = found[1]
        rows = self.slot_readings(dev, slot)
        assert rows, "no sealed readings of %s in slot %d" % (dev, slot)
        sums = []
        for _leaf, _t1, gs, cose in rows:
            assert gs is not None or cose is not None
            entries = json.loads(gs) if gs is not None else generation_entries(Reading.from_cose(cose or b""))
            sums.append(type_sums(entries, site))
        with store.transaction():
            self.ingest.ledger.sync()
            types = sorted({path for s in sums for path in s})
            carries = {path: store.carry(dev, path) for path in types}
            signed_lots = lots(compute_lots(sums, carries, site.factor_mg))
            issuance = Issuance(
                site.site,
                dev,
                slot,
                store.supplements(dev, slot).get(slot, 0),
                site.owner,
                site.place,
                site.factor_mg,
                site.factor_label,
                covered([row[0] for row in rows]),
                signed_lots,
                NOW,
            )
            data = sign1(cbor.dumps(issuance.to_map()), LEDGER_KEY)
            leaf = self.ingest.ledger.append(LEAF_ISSUANCE, self.ms, data)
            store.add_issuance(
                leaf,
                site.site,
                dev,
                slot,
                issuance.supplement,
                site.owner,
                site.place,
                site.factor_mg,
                site.factor_label,
                len(issuance.readings),
                NOW,
                signed_lots,
            )
            store.set_issue_cursor(dev, rows[-1][0] + 1)
            self.ingest.ledger.seal(self.ms)
        return leaf

    def export(self, out: Path, retirement: int | None = None) -> TraceSummary:
        return export_trace(
            self.ingest.store,
            self.retirement if retirement is None else retirement,
            out,
            ORIGIN,
            LEDGER_KEY.public_key,
            self.ms,
        )


def make_traced(directory: Path, readings: int = 100, location: str | None = None) -> Traced:
    """Two devices of site-1 with ``readings`` each, sealed; account and site open; nothing issued."""
    ingest = LocalIngest(directory, location)
    devices = [Device("dgc-a-000%d" % i, SigningKey(bytes([3 + i]) * 32), t1=BASE) for i in range(2)]
    for device in devices:
        ingest.enroll(device)
    for _ in range(readings):
        for device in devices:
            assert ingest.send(device.next()).status == "accepted"
    traced = Traced(ingest, Registry(ingest.store, ingest.ledger, FACTOR_MG, "default"), devices)
    traced.seal()
    traced.registry.add_account(ACCOUNT, "Owner One", ACCOUNT_KEY.public_key, True, traced.ms)
    traced.registry.add_site(SITE, ACCOUNT, PLACE, [d.dev for d in devices], {}, None, None, None, traced.ms)
    return traced


def make_retired(directory: Path, grams: int = 1500, location: str | None = None) -> Traced:
    """The whole honest story: readings, issuance, one retirement."""
    traced = make_traced(directory, location=location)
    traced.registry.issue(traced.ms)
    traced.retire(grams)
    return traced


def verify(data: bytes, key: bytes | None = None) -> TraceVerification:
    return verify_trace(io.BytesIO(data), key or LEDGER_KEY.public_key)


def parts(data: bytes) -> list[Any]:
    """The trace as one decoded value, readings unwrapped from their byte strings."""
    value = cbor.loads(data)
    assert isinstance(value, list) and len(value) == 6 and value[0] == "crev-trace"
    value[5] = [cbor.loads(raw) for raw in value[5]]
    return value


def pack(value: list[Any]) -> bytes:
    """The inverse of parts(): each reading goes back into its byte string."""
    return cbor.dumps([*value[:5], [cbor.dumps(reading) for reading in value[5]]])


def first(result: TraceVerification) -> tuple[int, str, int]:
    assert result.failures, "the trace verified"
    failure = result.failures[0]
    return failure.check, failure.item, failure.position


def entry_position(data: bytes, leaf: int) -> int:
    """The position among the bundle's entries of the entry of ledger leaf ``leaf``."""
    entries = parts(data)[4]
    return next(i for i, entry in enumerate(entries) if entry[0] == leaf)
