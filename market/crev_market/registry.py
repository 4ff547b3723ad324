"""The registry (SPEC §8, §10): accounts, sites, issuance, holdings and retirement.

Every change is one write transaction on the ledger store: the leaf, its
rows and a sealed block commit together or not at all, so a process killed
mid-way leaves nothing behind and the next pass simply does the work again.
Two processes issuing at once are serialised by the store's write lock, and
each reads the issue cursors inside its transaction, so no reading is ever
issued twice.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crev import cbor, reconcile
from crev.cose import sign1
from crev.dgcc import SOURCE_NAMES
from crev.errors import CrevError
from crev.keys import SigningKey, key_id
from crev.reading import Reading, valid_device_id
from crev.registry_format import (
    ACCOUNT_OPEN,
    LEAF_ACCOUNT,
    LEAF_ISSUANCE,
    LEAF_RETIREMENT,
    LEAF_SITE,
    MAX_TEXT,
    ROLE_PARTICIPANT,
    SITE_CHANGE,
    SITE_REGISTER,
    AccountEvent,
    Issuance,
    RegistryFormatError,
    Release,
    Retirement,
    SiteEvent,
    compute_lots,
    format_kg,
    generation_entries,
    path_problem,
    slot_of,
    type_sums,
)
from crev_ingest.ledger import Ledger
from crev_ingest.registry_store import HeldLot, IssuanceRow
from crev_ingest.store import Store
from crev_market import Refused

log = logging.getLogger("crev.registry")


@dataclass
class IssueSummary:
    issuances: int = 0
    readings: int = 0
    grams: int = 0
    held: list[str] = field(default_factory=list)  # devices whose issuance waits for the operator
    # SPEC §13: (dev, slot, detail) held by a SMART_METER_MISMATCH until released
    mismatched: list[tuple[str, int, str]] = field(default_factory=list)
    # (dev, slot) whose readings carry key 12 and whose verdict is not final yet
    waiting: list[tuple[str, int]] = field(default_factory=list)
    rows: list[IssuanceRow] = field(default_factory=list, repr=False)  # written together at the end of the pass


def _signed_map(payload: dict[int, Any], key: SigningKey) -> bytes:
    return sign1(cbor.dumps(payload), key)


DEFAULT_VERDICT_WAIT_S = 900


class Registry:
    """``reconciliation`` and ``verdict_wait_s`` (the ingest config's [reconciliation]) decide which
    slots are held for a smart-meter mismatch (SPEC §13); see ``_smart_meter_holds``."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        default_factor_mg: int,
        default_label: str,
        reconciliation: reconcile.Params | None = None,
        verdict_wait_s: int = DEFAULT_VERDICT_WAIT_S,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.default_factor_mg = default_factor_mg
        self.default_label = default_label
        self.reconciliation = reconciliation or reconcile.Params()
        self.verdict_wait_s = verdict_wait_s

    def _append(self, leaf_type: int, data: bytes, now_ms: int) -> int:
        return self.ledger.append(leaf_type, now_ms, data)

    # ------------------------------------------------------------ accounts

    def add_account(
        self, account: str, name: str, pubkey: bytes, disclosed: bool, now_ms: int, role: int = ROLE_PARTICIPANT
    ) -> int:
        """Open an account; with ``role=ROLE_OPERATOR``, enrol an operator who may command controllers (SPEC §12)."""
        event = AccountEvent(ACCOUNT_OPEN, account, name, pubkey, disclosed, role, now_ms // 1000)
        if not valid_device_id(account):
            raise Refused(
                "--account %r is not an id (3-63 of a-z, 0-9 and '-', starting with a letter or digit)" % account
            )
        problem = event.problem()
        if problem:
            raise Refused("the account cannot be opened: %s" % problem)
        with self.store.transaction():
            self.ledger.sync()
            if self.store.account(account) is not None:
                raise Refused("account %s already exists" % account)
            for other in self.store.accounts():
                known = self.store.account(other)
                if known is not None and known["pubkey"] == pubkey:
                    raise Refused("this key already belongs to account %s; every account has its own key" % other)
            leaf = self._append(LEAF_ACCOUNT, _signed_map(event.to_map(), self.ledger.key), now_ms)
            self.store.add_account_event(
                leaf, ACCOUNT_OPEN, account, name, pubkey, key_id(pubkey), disclosed, role, event.time_s
            )
            self.ledger.seal(now_ms)
        return leaf

    def signed_by_account(
        self, account: str, kid: bytes, verify: Callable[[bytes], object], what: str
    ) -> dict[str, Any]:
        """The open account, once ``verify(its public key)`` holds for a message that names its kid."""
        known = self.open_account(account)
        if kid != key_id(known["pubkey"]):
            raise Refused("the %s is not signed by the key of account %s" % (what, account), "NOT_SIGNED")
        try:
            verify(known["pubkey"])
        except RegistryFormatError as err:
            raise Refused("the %s is not signed by the key of account %s" % (what, account), "NOT_SIGNED") from err
        return known

    def open_account(self, account: str) -> dict[str, Any]:
        known = self.store.account(account)
        if known is None:
            raise Refused("unknown account %s; open it with `crev registry account add`" % account)
        if not known["open"]:
            raise Refused("account %s is closed" % account)
        return known

    # ------------------------------------------------------------ sites

    def current_site(self, site: str) -> tuple[int, SiteEvent] | None:
        found = self.store.site_event(site)
        if found is None:
            return None
        leaf_idx, leaf = found
        return leaf_idx, SiteEvent.parse(_leaf_data(leaf), None)

    def add_site(
        self,
        site: str,
        owner: str,
        place: str,
        devices: list[str],
        types: dict[str, str],
        factor_mg: int | None,
        factor_label: str | None,
        floor: int | None,
        now_ms: int,
    ) -> int:
        return self._site_event(
            SITE_REGISTER, site, owner, place, devices, types, factor_mg, factor_label, floor or None, now_ms
        )

    def change_site(
        self,
        site: str,
        owner: str | None,
        place: str | None,
        add_devices: list[str],
        types: dict[str, str],
        factor_mg: int | None,
        factor_label: str | None,
        floor: int | None,
        now_ms: int,
    ) -> int:
        """A new site event: owner, place, factor, types or devices for slots issued from now on."""
        found = self.current_site(site)
        if found is None:
            raise Refused("unknown site %s; register it with `crev registry site add`" % site)
        current = found[1]
        merged_types = {meter: path for meter, path in current.types}
        merged_types.update(types)
        return self._site_event(
            SITE_CHANGE,
            site,
            owner or current.owner,
            place or current.place,
            sorted(set(current.devices) | set(add_devices)),
            merged_types,
            current.factor_mg if factor_mg is None else factor_mg,
            factor_label or (current.factor_label if factor_mg is None else None),
            current.floor if floor is None else (floor or None),  # 0: no floor, the controller may not sell
            now_ms,
        )

    def _site_event(
        self,
        action: int,
        site: str,
        owner: str,
        place: str,
        devices: list[str],
        types: dict[str, str],
        factor_mg: int | None,
        factor_label: str | None,
        floor: int | None,
        now_ms: int,
    ) -> int:
        if not valid_device_id(site):
            raise Refused("--site %r is not an id (3-63 of a-z, 0-9 and '-')" % site)
        problem = path_problem(place)
        if problem:
            raise Refused("--place: %s" % problem)
        for dev in devices:
            if not valid_device_id(dev):
                raise Refused("--device %r is not a device id" % dev)
        for meter, path in types.items():
            problem = path_problem(path)
            if problem:
                raise Refused("--type %s=%s: %s" % (meter, path, problem))
            if path.split("/")[0] not in SOURCE_NAMES[1:]:
                raise Refused(
                    "--type %s=%s: a type starts with the meter's source (%s)"
                    % (meter, path, ", ".join(SOURCE_NAMES[1:]))
                )
        if factor_mg is None:
            factor_mg, factor_label = self.default_factor_mg, factor_label or self.default_label
        event = SiteEvent(
            action,
            site,
            owner,
            place,
            sorted(set(devices)),
            sorted([meter, path] for meter, path in types.items()),
            factor_mg,
            factor_label or "given to crev registry without a label",
            floor,
            now_ms // 1000,
        )
        problem = event.problem()
        if problem:
            raise Refused("the site cannot be recorded: %s" % problem)
        with self.store.transaction():
            self.ledger.sync()
            self.open_account(owner)
            if action == SITE_REGISTER and self.store.site_event(site) is not None:
                raise Refused("site %s is already registered; change it with `crev registry site change`" % site)
            for dev in event.devices:
                other = self.store.site_of_device(dev)
                if other is not None and other != site:
                    raise Refused("device %s already belongs to site %s; a device belongs to one site" % (dev, other))
            leaf = self._append(LEAF_SITE, _signed_map(event.to_map(), self.ledger.key), now_ms)
            self.store.add_site_event(
                leaf,
                action,
                site,
                owner,
                place,
                json.dumps(event.devices),
                json.dumps(event.types),
                event.factor_mg,
                event.factor_label,
                floor,
                event.time_s,
            )
            for dev in event.devices:
                if self.store.site_of_device(dev) is None:
                    self.store.add_site_device(dev, site, leaf)
            self.ledger.seal(now_ms)
        return leaf

    # ------------------------------------------------------------ issuance

    def issue(self, now_ms: int) -> IssueSummary:
        """One pass: issue every closed slot's unissued sealed readings (SPEC §8)."""
        summary = IssueSummary()
        with self.store.transaction():
            self.ledger.sync()
            sealed = self.ledger.sealed_size
            sites: dict[str, SiteEvent] = {}
            for dev, site_id in self.store.site_devices():
                if site_id not in sites:
                    found = self.current_site(site_id)
                    assert found is not None, "a site device row without its site event"
                    sites[site_id] = found[1]
                self._issue_device(dev, sites[site_id], sealed, now_ms, summary)
            if summary.issuances:
                self.store.add_issuances(summary.rows)
                self.ledger.seal(now_ms)
        return summary

    def _issue_device(self, dev: str, site: SiteEvent, sealed: int, now_ms: int, summary: IssueSummary) -> None:
        latest = self.store.latest_sealed_t1(dev, sealed)
        if latest is None:
            return
        # SPEC §8: slot S is closed once a reading with t1 > S+1800 is sealed.
        open_slot = slot_of(latest)
        cursor = self.store.issue_cursor(dev)
        ahead = self.store.issued_ahead(dev)
        slots: dict[int, list[tuple[int, dict[str, int]]]] = {}
        waiting: int | None = None  # the first reading left for a later pass
        scanned = cursor
        for leaf_idx, t1, gs, cose in self.store.readings_from_leaf(dev, cursor, sealed):
            scanned = leaf_idx + 1
            if leaf_idx in ahead:
                continue
            slot = slot_of(t1)
            if slot >= open_slot:
                # Its slot is still open; a late reading of a closed slot after it is issued all the same.
                waiting = leaf_idx if waiting is None else waiting
                continue
            try:
                sums = _type_sums(gs, cose, site)
            except RegistryFormatError as err:
                log.warning("issuance of %s held at leaf %d: %s", dev, leaf_idx, err.detail)
                summary.held.append(dev)
                waiting = leaf_idx if waiting is None else waiting
                scanned = leaf_idx
                break
            slots.setdefault(slot, []).append((leaf_idx, sums))
        if slots:
            kept = self._smart_meter_holds(dev, slots, latest, summary)
            if kept is not None:
                waiting = kept if waiting is None else min(waiting, kept)
        if slots:
            supplements = self.store.supplements(dev, min(slots))
            carries: dict[str, int] = {}
            for slot in sorted(slots):
                self._issue_slot(dev, site, slot, slots[slot], supplements.get(slot, 0), carries, now_ms, summary)
        next_cursor = scanned if waiting is None else waiting
        if next_cursor > cursor:
            self.store.set_issue_cursor(dev, next_cursor)
        issued_past = [leaf for readings in slots.values() for leaf, _sums in readings if leaf >= next_cursor]
        if issued_past or (ahead and next_cursor > cursor):
            self.store.set_issued_ahead(dev, next_cursor, issued_past)

    def _window_readings(self, dev: str, first_slot: int, last_slot: int) -> list[Reading]:
        """The device's readings of ``crev.reconcile.window`` of every slot from first to last."""
        low, high = reconcile.window(first_slot)[0], reconcile.window(last_slot)[1]
        return [Reading.from_cose(cose) for _seq, _leaf, _ms, cose in self.store.readings_between(dev, low, high)]

    def slot_verdict(self, dev: str, slot: int, readings: list[Reading] | None = None) -> reconcile.Verdict | None:
        """The slot's smart-meter verdict from the ledger's readings, by the rule the replay uses."""
        if readings is None:
            readings = self._window_readings(dev, slot, slot)
        low, high = reconcile.window(slot)
        mine = [r for r in readings if r.t1 > low and r.t0 < high]
        return reconcile.slot_verdict(mine, slot, self.reconciliation)

    def _smart_meter_holds(
        self, dev: str, slots: dict[int, list[tuple[int, dict[str, int]]]], latest: int, summary: IssueSummary
    ) -> int | None:
        """SPEC §13: take out of ``slots`` those not to issue now; the first leaf left behind, or None.

        A slot whose verdict (from the ledger's readings, crev.reconcile) is SMART_METER_MISMATCH is
        held until a release of it is in the ledger. A slot whose own readings carry key 12 but whose
        verdict is not final (no value at its end yet, or UNCHECKED) waits until the device has a
        sealed reading with t1 beyond the slot's end + verdict_wait_s, then issues UNCHECKED. A slot
        without key 12 is issued as before.
        """
        readings = self._window_readings(dev, min(slots), max(slots))
        if not any(r.smart_meter is not None for r in readings):
            return None
        left: int | None = None
        for slot in sorted(slots):
            verdict = self.slot_verdict(dev, slot, readings)
            hold = False
            if verdict is not None and verdict.verdict == reconcile.SMART_METER_MISMATCH:
                if self.store.release_leaf(dev, slot) is None:
                    summary.mismatched.append((dev, slot, verdict.detail))
                    hold = True
            elif (
                (verdict is None or verdict.verdict == reconcile.UNCHECKED)
                and reconcile.carries_smart_meter(readings, slot)
                and latest <= slot + reconcile.SLOT_S + self.verdict_wait_s
            ):
                summary.waiting.append((dev, slot))
                hold = True
            if hold:
                first = min(leaf for leaf, _sums in slots.pop(slot))
                left = first if left is None else min(left, first)
        return left

    # ------------------------------------------------------------ releases (SPEC §13)

    def release(self, site: str, slot: int, reason: str, now_ms: int) -> list[tuple[str, int]]:
        """Release every device of ``site`` held at ``slot`` by a smart-meter mismatch: one leaf each.

        Returns ``[(dev, leaf)]``. A slot released already, or not held, is refused.
        """
        if not valid_device_id(site):
            raise Refused("--site %r is not an id (3-63 of a-z, 0-9 and '-')" % site)
        if slot < 0 or slot % reconcile.SLOT_S:
            raise Refused("--slot %d is not the start of a 30-minute slot (a multiple of 1800 s)" % slot)
        if not 0 < len(reason) <= MAX_TEXT or reason != reason.strip() or not all(32 <= ord(c) != 127 for c in reason):
            raise Refused(
                "--reason must be 1 to %d printable characters (it has %d): say why the slot may be issued"
                % (MAX_TEXT, len(reason))
            )
        released: list[tuple[str, int]] = []
        with self.store.transaction():
            self.ledger.sync()
            found = self.current_site(site)
            if found is None:
                raise Refused("unknown site %s; register it with `crev registry site add`" % site)
            already: list[tuple[str, int]] = []
            held: list[str] = []
            for dev in found[1].devices:
                leaf = self.store.release_leaf(dev, slot)
                if leaf is not None:
                    already.append((dev, leaf))
                    continue
                verdict = self.slot_verdict(dev, slot)
                if verdict is not None and verdict.verdict == reconcile.SMART_METER_MISMATCH:
                    held.append(dev)
            if not held:
                if already:
                    raise Refused(
                        "slot %d of site %s was released already (%s); a release is recorded once"
                        % (slot, site, ", ".join("%s at leaf %d" % item for item in already))
                    )
                raise Refused(
                    "slot %d of site %s is not held: no device of the site has a SMART_METER_MISMATCH there"
                    % (slot, site)
                )
            for dev in held:
                event = Release(site, dev, slot, reason, now_ms // 1000)
                leaf = self._append(LEAF_SITE, _signed_map(event.to_map(), self.ledger.key), now_ms)
                self.store.add_release(leaf, site, dev, slot, reason, event.time_s)
                released.append((dev, leaf))
            self.ledger.seal(now_ms)
        log.info("released %s slot %d: %s", site, slot, reason)
        return released

    def _issue_slot(
        self,
        dev: str,
        site: SiteEvent,
        slot: int,
        readings: list[tuple[int, dict[str, int]]],
        supplement: int,
        carries: dict[str, int],
        now_ms: int,
        summary: IssueSummary,
    ) -> None:
        """Issue one slot's readings; ``carries`` caches the device's carry per type during the pass."""
        sums = [r[1] for r in readings]
        for path in {path for s in sums for path in s}:
            if path not in carries:
                carries[path] = self.store.carry(dev, path)
        lots = compute_lots(sums, carries, site.factor_mg)
        if not any(lot[1] for lot in lots):
            return  # nothing self-consumed: no lot, and every carry stays as it is
        issuance = Issuance(
            site.site,
            dev,
            slot,
            supplement,
            site.owner,
            site.place,
            site.factor_mg,
            site.factor_label,
            [r[0] for r in readings],
            lots,
            now_ms // 1000,
        )
        leaf = self._append(LEAF_ISSUANCE, _signed_map(issuance.to_map(), self.ledger.key), now_ms)
        summary.rows.append(
            (
                leaf,
                site.site,
                dev,
                slot,
                supplement,
                site.owner,
                site.place,
                site.factor_mg,
                site.factor_label,
                len(readings),
                issuance.time_s,
                lots,
            )
        )
        for lot in lots:
            carries[lot[0]] = lot[4]
        summary.issuances += 1
        summary.readings += len(readings)
        summary.grams += issuance.grams()

    # ------------------------------------------------------------ holdings and retirement

    def holdings(self, account: str) -> list[HeldLot]:
        self.open_account(account)
        return self.store.holdings(account)

    def prepare_retirement(
        self, account: str, grams: int, beneficiary: str, purpose: str, year: int, now_ms: int
    ) -> Retirement:
        """The retirement to sign: the account's lots, oldest slot first, up to ``grams``."""
        if grams <= 0:
            raise Refused("the quantity to retire must be a positive number of grams")
        held = self.holdings(account)
        total = sum(lot[7] for lot in held)
        if total < grams:
            raise Refused(
                "account %s holds %s kg, less than the %s kg to retire" % (account, format_kg(total), format_kg(grams))
            )
        taken: list[list[int]] = []
        left = grams
        for lot in held:
            take = min(left, lot[7])
            taken.append([lot[0], lot[1], take])
            left -= take
            if left == 0:
                break
        retirement = Retirement(account, grams, taken, beneficiary, purpose, year, now_ms // 1000, os.urandom(16))
        problem = retirement.problem()
        if problem:
            raise Refused("the retirement cannot be made: %s" % problem)
        return retirement

    def retire(self, signed: bytes, now_ms: int) -> int:
        """Record a retirement signed by its account; return its id (its leaf index).

        Call it inside the store's transaction, with the holdings the
        retirement was prepared from still current.
        """
        try:
            retirement = Retirement.parse(signed, None)
        except RegistryFormatError as err:
            raise Refused(err.detail) from err
        self.signed_by_account(
            retirement.account, retirement.kid, lambda key: Retirement.parse(signed, key), "retirement"
        )
        statement_hash = hashlib.sha256(signed).digest()
        if self.store.retirement_seen(statement_hash):
            raise Refused("this signed retirement was recorded already; it is never carried out twice", "REPLAY")
        held = {(lot[0], lot[1]): lot[7] for lot in self.store.holdings(retirement.account)}
        for issuance_leaf, index, grams in retirement.lots:
            if held.get((issuance_leaf, index), 0) < grams:
                raise Refused(
                    "account %s holds %s kg of lot %d.%d, less than the %s kg to retire from it"
                    % (
                        retirement.account,
                        format_kg(held.get((issuance_leaf, index), 0)),
                        issuance_leaf,
                        index,
                        format_kg(grams),
                    )
                )
        leaf = self._append(LEAF_RETIREMENT, signed, now_ms)
        self.store.add_retirement(
            leaf,
            retirement.account,
            retirement.grams,
            retirement.beneficiary,
            retirement.purpose,
            retirement.year,
            retirement.time_s,
            statement_hash,
            retirement.lots,
        )
        self.ledger.seal(now_ms)
        return leaf


def _leaf_data(leaf: bytes) -> bytes:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and isinstance(decoded[2], bytes)
    return decoded[2]


def _type_sums(gs: str | None, cose: bytes | None, site: SiteEvent) -> dict[str, int]:
    """Self-consumption per type of one reading, from the stored gs column (or the COSE in older rows)."""
    if gs is None:
        assert cose is not None, "a readings row has its gs column or its COSE bytes"
        try:
            entries = generation_entries(Reading.from_cose(cose))
        except CrevError as err:  # cannot be: it was verified before it was stored
            raise RegistryFormatError("stored reading does not parse: %s" % err) from err
    else:
        entries = json.loads(gs)
    result: dict[str, int] = type_sums(entries, site)
    return result


def sign_retirement(retirement: Retirement, key: SigningKey) -> bytes:
    return _signed_map(retirement.to_map(), key)
