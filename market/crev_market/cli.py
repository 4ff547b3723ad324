"""``crev registry ...``: the registry operator's and account holders' commands, on the local store."""

import datetime
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crev.keyfile import KeyFileError, create_key, load_key
from crev.keys import SigningKey
from crev.market_format import SIDE_BUY, SIDE_CANCEL, SIDE_SELL, Order
from crev.registry_format import ROLE_OPERATOR, format_kg, lot_id, parse_decimal, parse_kg, path_problem
from crev_ingest import config as ingest_config
from crev_ingest.keyfile import load_key as load_ledger_key
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store
from crev_market import Refused
from crev_market.market import Market, Placed, new_nonce, sign_order
from crev_market.registry import Registry, sign_retirement
from crev_market.trace_export import TraceSummary, export_trace


@contextmanager
def open_registry(config_path: Path) -> Iterator[tuple[ingest_config.IngestConfig, Registry]]:
    config = ingest_config.load(config_path)
    key = load_ledger_key(config.ledger_key_path)
    if config.storage_url is None and not config.storage_path.exists():
        raise Refused(
            "no ledger at %s (storage.path in %s); run `crev ingest run` first" % (config.storage_path, config_path)
        )
    store = Store(config.store_location)
    try:
        ledger = Ledger(store, key, config.origin, config.block_interval_s, config.block_max_leaves)
        factor_mg = round(config.default_g_per_kwh * 1000)
        yield (
            config,
            Registry(
                store,
                ledger,
                factor_mg,
                config.default_factor_label,
                config.reconciliation,
                config.reconciliation_wait_s,
            ),
        )
    finally:
        store.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pubkey(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise Refused("--pubkey must be 64 hex digits: the public key `crev registry keygen` printed")
    return key


def keygen(out: Path) -> int:
    try:
        key = create_key(out, "account")
    except KeyFileError as err:
        raise Refused(str(err)) from err
    print("pubkey  %s" % key.public_key.hex())
    print("key     %s (mode 0600; keep it secret: it signs your retirements and orders)" % out)
    return 0


def account_add(config_path: Path, account: str, name: str, pubkey_hex: str, undisclosed: bool) -> int:
    pubkey = _pubkey(pubkey_hex)
    with open_registry(config_path) as (_config, registry):
        leaf = registry.add_account(account, name.strip(), pubkey, not undisclosed, _now_ms())
    print(
        "opened account %s (%s, name %s) at leaf %d"
        % (account, name.strip(), "undisclosed" if undisclosed else "disclosed", leaf)
    )
    return 0


def operator_add(config_path: Path, operator: str, name: str | None, pubkey_hex: str) -> int:
    """SPEC §12: an operator is an account event with role operator, in the ledger like any account."""
    pubkey = _pubkey(pubkey_hex)
    shown = (name or operator).strip()
    with open_registry(config_path) as (_config, registry):
        leaf = registry.add_account(operator, shown, pubkey, True, _now_ms(), role=ROLE_OPERATOR)
    print("enrolled operator %s (%s) at leaf %d" % (operator, shown, leaf))
    print('list it in each controller it may command: [[operator]] id = "%s" pubkey = "%s"' % (operator, pubkey.hex()))
    return 0


def _types(pairs: list[str]) -> dict[str, str]:
    types: dict[str, str] = {}
    for pair in pairs:
        meter, sep, path = pair.partition("=")
        if not sep or not meter.strip() or not path:
            raise Refused("--type %r must be METER_ID=PATH, such as SDM-0001=solar/rooftop" % pair)
        if meter.strip() in types:
            raise Refused("--type names meter %s twice" % meter.strip())
        types[meter.strip()] = path
    return types


def _factor(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        factor_mg = parse_decimal(text, 3, "--factor")
    except ValueError as err:
        raise Refused("%s (g-CO2/kWh, up to 3 decimals)" % err) from err
    if factor_mg > 2_000_000:
        raise Refused("--factor %s g-CO2/kWh is beyond any grid's (at most 2000)" % text)
    return factor_mg


NO_FLOOR = 0  # `--controller-sells-at off` in a site change: the controller may no longer sell


def _floor(text: str | None) -> int | None:
    if text is None:
        return None
    if text == "off":
        return NO_FLOOR
    try:
        return parse_decimal(text, 2, "--controller-sells-at")
    except ValueError as err:
        raise Refused("%s (yen per kg-CO2, up to 2 decimals)" % err) from err


def site_add(
    config_path: Path,
    site: str,
    owner: str,
    place: str,
    devices: list[str],
    types: list[str],
    factor: str | None,
    factor_label: str | None,
    sells_at: str | None,
) -> int:
    factor_mg = _factor(factor)
    if factor_mg is not None and not factor_label:
        factor_label = "given at registration"
    with open_registry(config_path) as (config, registry):
        if factor_mg is None and site in config.site_g_per_kwh:
            factor_mg = round(config.site_g_per_kwh[site] * 1000)
            factor_label = factor_label or "ingest [emission.sites] %s" % site
        leaf = registry.add_site(
            site, owner, place, devices, _types(types), factor_mg, factor_label, _floor(sells_at), _now_ms()
        )
        _leaf, event = registry.current_site(site) or (0, None)
    assert event is not None
    print(
        "registered site %s (owner %s, place %s, devices %s, factor %s g-CO2/kWh: %s) at leaf %d"
        % (site, owner, place, ", ".join(event.devices), format_kg(event.factor_mg), event.factor_label, leaf)
    )
    return 0


def site_change(
    config_path: Path,
    site: str,
    owner: str | None,
    place: str | None,
    devices: list[str],
    types: list[str],
    factor: str | None,
    factor_label: str | None,
    sells_at: str | None,
) -> int:
    factor_mg = _factor(factor)
    if factor_mg is not None and not factor_label:
        raise Refused("--factor needs --factor-label: say where the new factor comes from")
    with open_registry(config_path) as (_config, registry):
        leaf = registry.change_site(
            site, owner, place, devices, _types(types), factor_mg, factor_label, _floor(sells_at), _now_ms()
        )
    print("changed site %s at leaf %d; slots issued from now on follow the change" % (site, leaf))
    return 0


def issue(config_path: Path) -> int:
    with open_registry(config_path) as (_config, registry):
        summary = registry.issue(_now_ms())
    print(
        "issued %d slots from %d readings: %s kg-CO2" % (summary.issuances, summary.readings, format_kg(summary.grams))
    )
    for dev in sorted(set(summary.held)):
        print("held: %s has a reading whose meter type does not fit its site; fix the site's --type" % dev)
    for dev, slot, detail in summary.mismatched:
        print(
            "held: %s slot %d (%s) is SMART_METER_MISMATCH (%s); once checked, release it with "
            "`crev registry release --config %s --site SITE --slot %d --reason TEXT`"
            % (dev, slot, _slot_text(slot), detail, config_path, slot)
        )
    if summary.waiting:
        print("waiting: %d slots for their smart-meter verdict (SPEC §13)" % len(summary.waiting))
    return 0


def release(config_path: Path, site: str, slot_text: str, reason: str) -> int:
    """SPEC §13: release a slot held by a smart-meter mismatch; it is issued on the next pass."""
    try:
        slot = _slot_start(slot_text)
    except ValueError as err:
        raise Refused(str(err)) from err
    with open_registry(config_path) as (_config, registry):
        released = registry.release(site, slot, reason.strip(), _now_ms())
    for dev, leaf in released:
        print("released %s slot %d (%s) of site %s at leaf %d" % (dev, slot, _slot_text(slot), site, leaf))
    print("it is issued on the next pass: crev registry issue --config %s" % config_path)
    return 0


def _slot_start(text: str) -> int:
    """``--slot``: the slot's start S, as Unix seconds or ISO 8601 (UTC unless it says), a multiple of 1800."""
    value = text.strip()
    if value.isdigit():
        slot = int(value)
    else:
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(
                "--slot %r is not a time: give the slot's start as Unix seconds or ISO 8601" % text
            ) from err
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        slot = int(when.timestamp())
    if slot % 1800:
        raise ValueError(
            "--slot %s is not the start of a 30-minute slot (a multiple of 1800 s, such as %d)"
            % (text, slot // 1800 * 1800)
        )
    return slot


def _slot_text(slot: int) -> str:
    start = datetime.datetime.fromtimestamp(slot, datetime.UTC)
    return start.strftime("%Y-%m-%dT%H:%MZ") + "+30min"


def holdings(config_path: Path, account: str, as_json: bool) -> int:
    with open_registry(config_path) as (_config, registry):
        lots = registry.holdings(account)
    rows: list[dict[str, Any]] = [
        {
            "lot": lot_id(lot[0], lot[1]),
            "site": lot[2],
            "dev": lot[3],
            "type": lot[4],
            "place": lot[5],
            "slot": lot[6],
            "grams": lot[7],
        }
        for lot in lots
    ]
    total = sum(r["grams"] for r in rows)
    if as_json:
        print(json.dumps({"account": account, "grams": total, "lots": rows}, indent=2))
        return 0
    print("%s holds %s kg-CO2 in %d lots" % (account, format_kg(total), len(rows)))
    if rows:
        print("%-12s %-16s %-14s %-24s %-20s %12s" % ("lot", "site", "type", "place", "slot", "kg"))
    for r in rows:
        print(
            "%-12s %-16s %-14s %-24s %-20s %12s"
            % (r["lot"], r["site"], r["type"], r["place"], _slot_text(r["slot"]), format_kg(r["grams"]))
        )
    return 0


def retire(
    config_path: Path,
    account: str,
    key_path: Path,
    kg: str,
    beneficiary: str,
    purpose: str,
    year: int | None,
    as_json: bool,
) -> int:
    try:
        grams = parse_kg(kg)
    except ValueError as err:
        raise Refused(str(err)) from err
    try:
        key = load_key(key_path, "account")
    except KeyFileError as err:
        raise Refused(str(err)) from err
    now_ms = _now_ms()
    year = year or datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).year
    with open_registry(config_path) as (_config, registry):
        store = registry.store
        with store.transaction():
            registry.ledger.sync()
            known = registry.open_account(account)
            if known["pubkey"] != key.public_key:
                raise Refused("the key in %s is not the key of account %s" % (key_path, account))
            retirement = registry.prepare_retirement(account, grams, beneficiary.strip(), purpose.strip(), year, now_ms)
            leaf = registry.retire(sign_retirement(retirement, key), now_ms)
    result: dict[str, Any] = {
        "retirement": leaf,
        "account": account,
        "grams": grams,
        "beneficiary": retirement.beneficiary,
        "purpose": retirement.purpose,
        "year": year,
        "lots": [{"lot": lot_id(a, b), "grams": g} for a, b, g in retirement.lots],
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(
            "retired %s kg-CO2 for %s (%s, %d): retirement %d"
            % (format_kg(grams), retirement.beneficiary, retirement.purpose, year, leaf)
        )
        print("trace it with: crev audit trace --config %s --retirement %d --out FILE" % (config_path, leaf))
    return 0


def trace(config_path: Path, retirement_id: int, out: Path) -> TraceSummary:
    with open_registry(config_path) as (config, registry):
        return export_trace(
            registry.store, retirement_id, out, config.origin, registry.ledger.key.public_key, _now_ms()
        )


# ------------------------------------------------------------------ the market (SPEC §9)


def _price(text: str) -> int:
    try:
        return parse_decimal(text, 2, "--price")
    except ValueError as err:
        raise Refused("%s (yen per kg-CO2, up to 2 decimals)" % err) from err


def _yen(hundredths: int) -> str:
    return "%d.%02d" % (hundredths // 100, hundredths % 100)


def _account_key(key_path: Path) -> SigningKey:
    try:
        return load_key(key_path, "account")
    except KeyFileError as err:
        raise Refused(str(err)) from err


def _place(market: Market, signed: bytes) -> Placed:
    return market.place(signed, _now_ms())


def order(
    config_path: Path,
    account: str,
    key_path: Path,
    side: str,
    kg: str,
    price: str,
    place: list[str],
    type_paths: list[str],
    sellers: list[str],
    slot_from: int | None,
    slot_to: int | None,
    expires: int | None,
    as_json: bool,
    site: str | None = None,
) -> int:
    try:
        grams = parse_kg(kg)
    except ValueError as err:
        raise Refused(str(err)) from err
    hundredths = _price(price)
    for path in (*place, *type_paths):
        problem = path_problem(path)
        if problem:
            raise Refused("--place/--type: %s" % problem)
    key = _account_key(key_path)
    now_s = _now_ms() // 1000
    if side == "sell":
        if len(place) != 1 or len(type_paths) != 1 or sellers or slot_from is not None or slot_to is not None:
            raise Refused("a sell order names one --place and one --type, and no buy conditions")
        fields = Order.to_map(
            SIDE_SELL, account, now_s, new_nonce(), grams, hundredths, place[0], type_paths[0], expires=expires,
            site=site,
        )  # fmt: skip
    else:
        fields = Order.to_map(
            SIDE_BUY, account, now_s, new_nonce(), grams, hundredths, sellers=sellers, places=place,
            types=type_paths, slot_from=slot_from, slot_to=slot_to, expires=expires,
        )  # fmt: skip
    with open_registry(config_path) as (_config, registry):
        if registry.open_account(account)["pubkey"] != key.public_key:
            raise Refused("the key in %s is not the key of account %s" % (key_path, account))
        placed = _place(Market(registry), sign_order(fields, key))
    fills: list[dict[str, Any]] = [
        {"trade": leaf, "buy": e.buy, "sell": e.sell, "grams": e.grams, "price_yen_per_kg": _yen(e.price)}
        for leaf, e in placed.trades
    ]
    if as_json:
        print(json.dumps({"order": placed.order, "fills": fills, "grams_left": placed.grams_left}, indent=2))
        return 0
    print("order %d: %s %s kg at %s yen/kg" % (placed.order, side, format_kg(grams), _yen(hundredths)))
    for fill in fills:
        print(
            "  filled %s kg at %s yen/kg (trade %d)"
            % (format_kg(fill["grams"]), fill["price_yen_per_kg"], fill["trade"])
        )
    print("  %s kg rest on the book" % format_kg(placed.grams_left) if placed.grams_left else "  filled")
    return 0


def cancel(config_path: Path, account: str, key_path: Path, order_id: int) -> int:
    key = _account_key(key_path)
    fields = Order.to_map(SIDE_CANCEL, account, _now_ms() // 1000, new_nonce(), cancels=order_id)
    with open_registry(config_path) as (_config, registry):
        if registry.open_account(account)["pubkey"] != key.public_key:
            raise Refused("the key in %s is not the key of account %s" % (key_path, account))
        placed = _place(Market(registry), sign_order(fields, key))
    print("cancelled order %d (cancel %d)" % (order_id, placed.order))
    return 0


def book(config_path: Path, as_json: bool) -> int:
    with open_registry(config_path) as (_config, registry):
        entries = Market(registry).book()
    rows: list[dict[str, Any]] = [
        {"order": o, "side": side, "account": account, "grams_left": grams, "price_yen_per_kg": _yen(price)}
        for o, side, account, grams, price in entries
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print("%d resting orders" % len(rows))
    for r in rows:
        print(
            "  %-8d %-4s %-20s %12s kg  %10s yen/kg"
            % (r["order"], r["side"], r["account"], format_kg(r["grams_left"]), r["price_yen_per_kg"])
        )
    return 0


def trades(config_path: Path, as_json: bool) -> int:
    with open_registry(config_path) as (_config, registry):
        rows = registry.store.trades()
    listed: list[dict[str, Any]] = [
        {"trade": leaf, "buy": buy, "sell": sell, "grams": grams, "price_yen_per_kg": _yen(price),
         "amount_yen": "%d.%05d" % (amount // 100000, amount % 100000), "buyer": buyer, "seller": seller, "time": t}
        for leaf, buy, sell, grams, price, amount, buyer, seller, t in rows
    ]  # fmt: skip
    if as_json:
        print(json.dumps(listed, indent=2))
        return 0
    print("%d trades" % len(listed))
    for r in listed:
        print(
            "  %-8d %s -> %s  %s kg at %s yen/kg = %s yen"
            % (r["trade"], r["seller"], r["buyer"], format_kg(r["grams"]), r["price_yen_per_kg"], r["amount_yen"])
        )
    return 0


def statement(config_path: Path, account: str, day: str, fmt: str) -> int:
    """SPEC §9: the account's trades of one day, summed exactly and rounded once to whole yen."""
    import csv
    import sys

    from crev_market import statements

    try:
        day = statements.parse_day(day)
    except ValueError as err:
        raise Refused(str(err)) from err
    with open_registry(config_path) as (config, registry):
        if registry.store.account(account) is None:
            raise Refused(
                "unknown account %s; check --account (accounts are opened with `crev registry account add`)" % account
            )
        rows = registry.store.trades()
    s = statements.statement(rows, account, day, config.local_day)
    if fmt == "json":
        print(json.dumps(s.to_json(), indent=2))
        return 0
    if fmt == "csv":
        csv.writer(sys.stdout, lineterminator="\n").writerows(statements.csv_rows(s))
        return 0
    offset = config.day_offset_h
    print("statement of %s for %s (UTC%+g), %d trades" % (account, day, offset, len(s.lines)))
    for line in s.lines:
        j = line.to_json()
        print(
            "  %-8d %-6s %-20s %12s kg at %10s yen/kg = %18s yen"
            % (line.trade, line.side, line.counterparty, j["kg"], j["price_yen_per_kg"], j["amount_yen"])
        )
    fmt_kg, fmt_yen = statements.format_grams, statements.format_amount
    print("  bought %12s kg  %18s yen" % (fmt_kg(s.bought_grams), fmt_yen(s.bought_amount)))
    print("  sold   %12s kg  %18s yen" % (fmt_kg(s.sold_grams), fmt_yen(s.sold_amount)))
    print("  net    %18s yen (sold - bought, exact)" % fmt_yen(s.net_amount))
    if s.net_yen:
        print("  %s: %d yen (rounded once, half up)" % (s.direction, abs(s.net_yen)))
    else:
        print("  nothing due: 0 yen")
    return 0


def verify_matching(config_path: Path) -> int:
    """For `crev audit ledger`: replay the orders through the engine; the number of trades checked."""
    with open_registry(config_path) as (_config, registry):
        return Market(registry).verify_matching()
