"""``crev audit export|verify|ledger``: evidence bundles and the ledger check.

``verify`` imports nothing that opens a database or a socket: an auditor runs
it on their own machine with the bundle and the ledger's public key alone.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from crev import evidence, reconcile
from crev import trace as trace_format
from crev.dgcc import flag_names
from crev_cli import UsageError, trace_verify
from crev_cli.bundle_verify import check_lines


def parse_time(text: str, option: str) -> int:
    """Unix seconds from a date (UTC midnight), an ISO 8601 time (UTC unless it says), or Unix seconds."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        if len(value) == 10:
            day = datetime.date.fromisoformat(value)
            moment = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
        else:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
    except ValueError:
        raise UsageError(
            "%s %r is not a date (2026-11-01), a time (2026-11-01T09:00Z, 2026-11-01T18:00+09:00) or Unix seconds"
            % (option, text)
        ) from None
    return int(moment.timestamp())


def iso(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kwh(mwh: int) -> str:
    sign = "-" if mwh < 0 else ""
    whole, part = divmod(abs(mwh), 1_000_000)
    return "%s%d.%06d" % (sign, whole, part)


# ------------------------------------------------------------------ export


def export(args: argparse.Namespace) -> int:
    from crev_ingest import IngestError
    from crev_ingest import cli as ingest_cli

    from_s = parse_time(args.from_time, "--from")
    to_s = parse_time(args.to_time, "--to")
    if to_s <= from_s:
        raise UsageError("--to must be after --from")
    try:
        summary = ingest_cli.export(Path(args.config), args.device, from_s, to_s, Path(args.out))
    except IngestError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError("cannot write %s: %s" % (args.out, err)) from err
    print(
        "wrote %s: %d readings of %s in the range (seq %d..%d), %d with their neighbours; "
        "%d blocks, %d key events; %d bytes"
        % (
            summary.path,
            summary.in_range,
            args.device,
            summary.first_seq,
            summary.last_seq,
            summary.readings,
            summary.blocks,
            summary.key_events,
            summary.bytes,
        )
    )
    if summary.registry_leaves:
        print(
            "it carries %d registry leaves (releases and issuances of the device's slots) for the smart-meter "
            "reconciliation" % summary.registry_leaves
        )
    if summary.cosignatures:
        print(
            "its checkpoint carries %d witness cosignatures (check them with --witness VKEY --quorum K)"
            % summary.cosignatures
        )
    elif summary.cosigned_height is not None:
        print(
            "its checkpoint is not cosigned yet: it needs the newest block, and the witnesses have cosigned up to "
            "block %d; export again in a few seconds for a bundle they vouch for" % summary.cosigned_height
        )
    print("verify it offline with: crev audit verify %s --ledger-key <the ledger's public key>" % summary.path)
    return 0


# ------------------------------------------------------------------ trace


def trace(args: argparse.Namespace) -> int:
    from crev_ingest import IngestError
    from crev_market import MarketError
    from crev_market.cli import trace as market_trace

    out = Path(args.out)
    if out.is_dir():
        raise UsageError("--out %s is a directory; name the bundle file" % out)
    if not out.parent.is_dir():
        raise UsageError("--out: the directory %s does not exist" % out.parent)
    try:
        summary = market_trace(Path(args.config), args.retirement, out)
    except (IngestError, MarketError) as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError("cannot write %s: %s" % (args.out, err)) from err
    print(
        "wrote %s: retirement %d of %d g, %d issuances, %d readings, %d entries; %d bytes"
        % (
            summary.path,
            args.retirement,
            summary.grams,
            summary.issuances,
            summary.readings,
            summary.entries,
            summary.bytes,
        )
    )
    print("verify it offline with: crev audit verify %s --ledger-key <the ledger's public key>" % summary.path)
    return 0


# ------------------------------------------------------------------ verify


def verify(args: argparse.Namespace) -> int:
    from crev_cli.bundle_verify import default_jobs, parse_ledger_key, verify_bundle

    try:
        ledger_key = parse_ledger_key(args.ledger_key)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be 1 or more")
    witnesses = _witness_keys(args.witness or [], args.quorum)
    tolerance = tolerance_options(args)
    try:
        handle = open(args.file, "rb")  # noqa: SIM115 - closed by the with below (buffered: it can peek)
    except OSError as err:
        raise UsageError("cannot read %s: %s" % (args.file, err.strerror)) from err
    with handle:
        if trace_verify.is_trace(handle.peek(32)):
            if tolerance:
                raise UsageError(
                    "--tolerance-percent, --tolerance-steps, --step-mwh and --digits are for an evidence "
                    "bundle, not a trace bundle"
                )
            traced = trace_verify.verify_trace(handle, ledger_key, args.jobs or default_jobs())
            report = trace_verify.build_trace_report(traced)
            checkpoint = traced.meta.get(trace_format.T_CHECKPOINT)
            text = trace_verify.render_trace_text
        else:
            result = verify_bundle(handle, ledger_key, args.allow_gaps, args.jobs or default_jobs(), tolerance)
            report = build_report(result, args.factor)
            checkpoint = result.meta.get(evidence.M_CHECKPOINT) if result.meta else None
            text = render_text
    if witnesses is not None:
        apply_quorum(report, checkpoint, *witnesses)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        rendered = text(report)
        head, sep, tail = rendered.rpartition("RESULT: ")
        sys.stdout.write(head + "\n".join(_witness_lines(report)) + sep + tail if sep else rendered)
    return 0 if report["ok"] else 1


def add_tolerance_options(parser: argparse.ArgumentParser) -> None:
    """``crev audit verify``'s reconciliation options, named after ingest's [reconciliation] settings."""
    group = parser.add_argument_group(
        "smart-meter reconciliation (SPEC §13)",
        "By default the parameters a version 3 bundle states (ingest's [reconciliation] at export), else "
        "ingest's defaults; each option replaces one.",
    )
    group.add_argument(
        "--tolerance-percent",
        type=float,
        metavar="P",
        help="tolerance_percent: the tolerance in %% of the grid meter's energy (default 1)",
    )
    group.add_argument(
        "--tolerance-steps",
        type=int,
        metavar="N",
        help="steps: the smallest tolerance, in steps of the smart meter's resolution (default 2)",
    )
    group.add_argument(
        "--step-mwh",
        type=int,
        metavar="M",
        help="step_mwh: one step of the smart meter's counter in mWh (default 100000)",
    )
    group.add_argument(
        "--digits",
        type=int,
        metavar="D",
        help="digits: the smart meter's effective digits (default 6; 0: roll-over unknown)",
    )


def tolerance_options(args: argparse.Namespace) -> dict[str, int | None]:
    """The reconciliation parameters given on the command line (SPEC §13), named as in ingest's
    [reconciliation]: tolerance_percent, steps, step_mwh, digits; as crev.reconcile.Params' fields."""
    given: dict[str, int | None] = {}
    percent = getattr(args, "tolerance_percent", None)
    if percent is not None:
        basis_points = round(percent * 100)
        if not 0 <= percent <= 100 or abs(basis_points - percent * 100) > 1e-6:
            raise UsageError("--tolerance-percent must be a number from 0 to 100 with at most 2 decimals")
        given["basis_points"] = basis_points
    for option, name, low, high in (
        ("tolerance_steps", "steps", 0, 1000),
        ("step_mwh", "step_mwh", 1, 10**12),
        ("digits", "digits", 0, 8),
    ):
        value = getattr(args, option, None)
        if value is None:
            continue
        if not low <= value <= high:
            raise UsageError("--%s must be a whole number from %d to %d" % (option.replace("_", "-"), low, high))
        given[name] = value
    return given


def _witness_keys(texts: list[str], quorum: int | None) -> tuple[list[Any], int] | None:
    from crev import note

    if quorum is None and not texts:
        return None
    if quorum is None or not texts:
        raise UsageError("--witness and --quorum go together: the witnesses' vkeys, and how many must have cosigned")
    keys = []
    for text in texts:
        try:
            key = note.parse_vkey(text)
        except note.NoteError as err:
            raise UsageError("--witness %s: %s" % (text, err.detail)) from err
        if key.sig_type != 0x04:
            raise UsageError("--witness %s is not a cosignature/v1 key (`crev witness init` prints one)" % text)
        keys.append(key)
    if not 1 <= quorum <= len(keys):
        raise UsageError("--quorum must be 1 to the number of --witness keys (%d)" % len(keys))
    return keys, quorum


def apply_quorum(report: dict[str, Any], checkpoint: object, keys: list[Any], quorum: int) -> None:
    """SPEC §11: K of the given witnesses cosigned the checkpoint that the bundle's blocks lead to.

    The bundle's checkpoint is its newest block's (check 1 tied it to the
    blocks and the ledger key); its cosignature lines are the witnesses'.
    """
    from crev import note

    cosigned: list[tuple[str, int]] = []
    if isinstance(checkpoint, str):
        try:
            cosigned = note.cosigners(checkpoint, keys)
        except note.NoteError:
            cosigned = []
    report["witnesses"] = {
        "quorum": quorum,
        "cosigned": [{"witness": name, "time": iso(when)} for name, when in cosigned],
        "ok": len(cosigned) >= quorum,
    }
    if len(cosigned) >= quorum:
        return
    text = "only %d of the %d witnesses required (of %d given) cosigned the bundle's checkpoint" % (
        len(cosigned),
        quorum,
        len(keys),
    )
    report["ok"] = False
    report["result"] = "fail"
    report["failure_count"] = report.get("failure_count", 0) + 1
    witness_failure = {"check": "witnesses", "item": "bundle", "position": -1, "detail": text, "text": text}
    report["failures"] = [*report.get("failures", []), witness_failure]
    if report.get("failure") is None:
        report["failure"] = witness_failure
        report["first_failure"] = witness_failure
        report["first_failure_text"] = text


def _witness_lines(report: dict[str, Any]) -> list[str]:
    found = report.get("witnesses")
    if not found:
        return []
    lines = ["Witnesses: %d cosigned, %d required" % (len(found["cosigned"]), found["quorum"])]
    lines.extend("  %s at %s" % (c["witness"], c["time"]) for c in found["cosigned"])
    return [*lines, ""]


def build_report(result: Any, factor_override: float | None) -> dict[str, Any]:
    """The JSON report; the text report is rendered from it.

    SPEC §6: the top level always has ``ok``, ``readings``, ``self_mwh``,
    ``gaps`` and ``failure`` (null, or the first failure with its one-line
    ``text``); ``readings`` and ``self_mwh`` are 0 and ``gaps`` is [] when
    the walk of the readings did not get that far. The richer fields follow.
    """
    failures = result.failures
    meta = result.meta
    sequence = result.sequence
    walked = not any(f.check == evidence.FORMAT for f in failures) and sequence is not None
    checks = []
    # Check 8 judges a version 3 bundle's registry leaves; older bundles have none to judge.
    last = evidence.RECONCILE if getattr(result, "registry", None) is not None else evidence.RECOMPUTE
    for number in range(1, last + 1):
        count = sum(1 for f in failures if f.check == number)
        status = "failed" if count else ("ok" if walked else "not completed")
        checks.append({"number": number, "name": evidence.CHECK_NAMES[number], "status": status, "failures": count})
    ok = result.failure_count == 0
    first = failures[0] if failures else None
    report: dict[str, Any] = {
        "ok": ok,
        "readings": sequence.totals.readings if sequence is not None else 0,
        "self_mwh": sequence.totals.energies[3] if sequence is not None else 0,  # G, I, E, self, demand
        "gaps": list(sequence.gaps) if sequence is not None else [],
        "failure": dict(first.to_dict(), text=first.describe()) if first is not None else None,
        "result": "pass" if ok else "fail",
        "first_failure": first.to_dict() if first is not None else None,
        "first_failure_text": first.describe() if first is not None else None,
        "failure_count": result.failure_count,
        "failures": [f.to_dict() for f in failures],
        "checks": checks,
    }
    if not meta:
        return report
    factor_mg = round(factor_override * 1000) if factor_override is not None else meta[evidence.M_FACTOR]
    heights = result.blocks.heights
    report["bundle"] = {
        "dev": meta[evidence.M_DEV],
        "origin": meta[evidence.M_ORIGIN],
        "ledger_kid": meta[evidence.M_LEDGER_KID].hex(),
        "from": meta[evidence.M_FROM],
        "to": meta[evidence.M_TO],
        "exported_ms": meta[evidence.M_EXPORTED],
        "blocks": len(heights),
        "first_height": heights[0] if heights else None,
        "last_height": heights[-1] if heights else None,
        "tree_size": result.blocks.roots[heights[-1]][0] if heights else None,
        "key_events": result.key_events,
        "readings": result.readings,
        "bytes": result.bytes,
    }
    if sequence is not None:
        totals = sequence.totals
        g, i, e, s, d = totals.energies
        report["totals"] = {
            "readings": totals.readings,
            "gen_mwh": g,
            "import_mwh": i,
            "export_mwh": e,
            "self_mwh": s,
            "demand_mwh": d,
            "self_kwh": kwh(s),
            "co2_g": round(s * factor_mg / 1e9, 3),
            "factor_g_per_kwh": factor_mg / 1000,
            "factor_from": "--factor" if factor_override is not None else "bundle",
            "readings_without_energies": totals.without_energies,
            "readings_not_recomputed": totals.not_recomputed,
            "flags_seen": flag_names(totals.flags),
        }
        report["reconciliation"] = reconciliation_report(result)
        report["gaps_allowed"] = sequence.allow_gaps
        report["range_end"] = (
            "sealed: the bundle holds the first reading after the range"
            if sequence.ends_after_range
            else "open: the ledger held no sealed reading after the range at export"
        )
    return report


def reconciliation_report(result: Any) -> dict[str, Any]:
    """SPEC §13 from the bundle's readings: each slot's verdict, and what the registry leaves say of it."""
    reconciling = result.reconciliation
    params = reconciling.params
    counts = reconciling.counts
    registry = result.registry
    slots = []
    for record in reconciling.records:
        verdict = record.verdict
        grid = verdict.grid or (None, None)
        smart = verdict.smart or (None, None)
        tolerance = verdict.tolerance or (None, None)
        diff = [None if g is None or m is None else m - g for g, m in zip(grid, smart, strict=True)]
        slots.append(
            {
                "dev": reconciling.dev,
                "slot": verdict.slot_t0,
                "slot_time": iso(verdict.slot_t0),
                "verdict": verdict.verdict,
                "status": record.status(),
                "meter_id": verdict.meter_id,
                "grid_import_mwh": grid[0],
                "grid_export_mwh": grid[1],
                "sm_import_mwh": smart[0],
                "sm_export_mwh": smart[1],
                "diff_import_mwh": diff[0],
                "diff_export_mwh": diff[1],
                "tolerance_import_mwh": tolerance[0],
                "tolerance_export_mwh": tolerance[1],
                "detail": verdict.detail,
                "released": None if record.release is None else record.release[1],
                "release_leaf": None if record.release is None else record.release[0],
                "issued": record.issued,
            }
        )
    return {
        "params": {
            "tolerance_percent": params.basis_points / 100,
            "basis_points": params.basis_points,
            "steps": params.steps,
            "step_mwh": params.step_mwh,
            "digits": params.digits,
            "from": dict(result.params_from),
        },
        "registry_leaves": None if registry is None else registry.count,
        "releases": None if registry is None else len(registry.releases),
        "issuances": None if registry is None else sum(len(v) for v in registry.issuances.values()),
        "slots_checked": len(slots),
        "passed": counts[reconcile.OK],
        "mismatched": counts[reconcile.SMART_METER_MISMATCH],
        "incomplete": counts[reconcile.UNCHECKED],
        "slots": slots,
    }


def _params_text(params: dict[str, Any]) -> str:
    sources = set(params["from"].values())
    if sources == {"bundle"}:
        where = "stated in the bundle by the exporter; it is not signed"
    elif sources == {"default"}:
        where = "ingest's defaults: the bundle states none"
    elif sources == {"option"}:
        where = "given by the options"
    else:
        given = [name for name, source in params["from"].items() if source == "option"]
        rest = "the bundle" if "bundle" in sources else "ingest's defaults"
        where = "%s given by the options, the rest from %s" % (", ".join(given), rest)
    digits = "roll-over unknown" if params["digits"] is None else "%d digits" % params["digits"]
    return "the larger of %g %% and %d steps of %d mWh, %s (%s)" % (
        params["tolerance_percent"],
        params["steps"],
        params["step_mwh"],
        digits,
        where,
    )


def _reconciliation_lines(found: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Smart-meter reconciliation (SPEC §13), from the bundle's readings: %d slots, %d passed, %d mismatched, "
        "%d incomplete" % (found["slots_checked"], found["passed"], found["mismatched"], found["incomplete"]),
        "  tolerance  %s" % _params_text(found["params"]),
    ]
    if found["registry_leaves"] is None:
        lines.append("  registry   not in the bundle (version 1 or 2): releases and issuances are not checked")
    else:
        lines.append(
            "  registry   releases %d, issuances %d: the device's slots' registry leaves in the bundle"
            % (found["releases"], found["issuances"])
        )
    for slot in found["slots"]:
        if slot["verdict"] != reconcile.SMART_METER_MISMATCH:
            continue
        status = {
            "released": "released: %s" % slot["released"],
            "held": "held: not issued, no release",
            "issued without release": "ISSUED WITHOUT A RELEASE",
            "unknown": "release and issuance not known (no registry leaves in the bundle)",
        }[slot["status"]]
        lines.append("  MISMATCH   %s slot %s: %s" % (slot["dev"], slot["slot_time"], status))
        for name in ("import", "export"):
            lines.append(
                "    %-7s grid %d mWh, smart meter %d mWh, difference %+d mWh (tolerance %d mWh)"
                % (
                    name,
                    slot["grid_%s_mwh" % name],
                    slot["sm_%s_mwh" % name],
                    slot["diff_%s_mwh" % name],
                    slot["tolerance_%s_mwh" % name],
                )
            )
    return lines


def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []
    bundle = report.get("bundle")
    if bundle:
        lines.append("Evidence bundle for %s" % bundle["dev"])
        lines.append("  range      %s .. %s" % (iso(bundle["from"]), iso(bundle["to"])))
        lines.append("  ledger     %s, key id %s" % (bundle["origin"], bundle["ledger_kid"]))
        if bundle["blocks"]:
            lines.append(
                "  blocks     %d listed, heights %s..%s, tree size %s at the last"
                % (bundle["blocks"], bundle["first_height"], bundle["last_height"], bundle["tree_size"])
            )
        lines.append(
            "  contents   readings %d, key events %d, bytes %d"
            % (bundle["readings"], bundle["key_events"], bundle["bytes"])
        )
        lines.append("")
    lines.extend(check_lines(report["checks"]))
    totals = report.get("totals")
    if totals:
        lines.append("")
        lines.append("Totals over the %d readings in the range" % totals["readings"])
        for label, key in (
            ("generation", "gen_mwh"),
            ("grid import", "import_mwh"),
            ("grid export", "export_mwh"),
            ("self-consumption", "self_mwh"),
            ("demand", "demand_mwh"),
        ):
            lines.append("  %-17s %14s kWh" % (label, kwh(totals[key])))
        lines.append(
            "  %-17s %14.3f kg-CO2 at %g g-CO2/kWh (%s)"
            % (
                "CO2 avoided",
                totals["co2_g"] / 1000,
                totals["factor_g_per_kwh"],
                "given by --factor"
                if totals["factor_from"] == "--factor"
                else "the factor stated in the bundle by the exporter; it is not signed",
            )
        )
        if totals["readings_without_energies"]:
            lines.append(
                "  %d readings carry no energies (NO_BASELINE or COUNTER_RESET)" % totals["readings_without_energies"]
            )
        if totals["flags_seen"]:
            lines.append("  flags seen: %s" % ", ".join(totals["flags_seen"]))
    if "range_end" in report:  # the walk reached the sequence checks
        lines.append("")
        gaps = report["gaps"]
        lines.append(
            "Gaps: %s" % ("none" if not gaps else "%d%s" % (len(gaps), " (allowed)" if report["gaps_allowed"] else ""))
        )
        for gap in gaps:
            missing = (
                "seq %d" % gap["first_seq"]
                if gap["first_seq"] == gap["last_seq"]
                else "seq %d..%d" % (gap["first_seq"], gap["last_seq"])
            )
            lines.append("  %s missing, from %s to %s" % (missing, iso(gap["from_t"]), iso(gap["to_t"])))
        lines.append("Range end: %s" % report["range_end"])
    found = report.get("reconciliation")
    if found and (found["slots_checked"] or found["registry_leaves"] is not None):
        lines.extend(_reconciliation_lines(found))
    lines.append("")
    if report["ok"]:
        lines.append("RESULT: PASS")
    else:
        lines.append("RESULT: FAIL (%d failures)" % report["failure_count"])
        lines.append("First failure: %s" % report["first_failure_text"])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ ledger


def ledger(args: argparse.Namespace) -> int:
    if args.mirror is not None:
        return _ledger_of_mirror(args)
    if args.config is None:
        raise UsageError("give --config ingest.toml (the local ledger) or --mirror DIR --ledger-key KEY")
    from crev_ingest import IngestError
    from crev_ingest.cli import audit_ledger
    from crev_market import MarketError
    from crev_market.cli import verify_matching
    from crev_market.market import MatchingMismatch

    try:
        ok, message = audit_ledger(Path(args.config), Path(args.state) if args.state else None, args.full)
        if ok:
            # The registry replay proves every trade is backed by its orders; this proves the
            # trades are the ones the matching rules give (price, then time), by replaying them.
            try:
                trades = verify_matching(Path(args.config))
            except MatchingMismatch as err:
                ok, message = False, "FAIL: market: %s" % err
            else:
                message += "; matching replayed: %d trades as the rules give them" % trades if trades else ""
    except (IngestError, MarketError) as err:
        raise UsageError(str(err)) from err
    print(message)
    return 0 if ok else 1


def _ledger_of_mirror(args: argparse.Namespace) -> int:
    from crev_cli.bundle_verify import parse_ledger_key
    from crev_cli.mirror_audit import audit_mirror

    if args.config is not None or args.state is not None:
        raise UsageError("--mirror audits a mirror's copy: it takes --ledger-key, not --config or --state")
    if args.ledger_key is None:
        raise UsageError("--mirror needs --ledger-key: the ledger's public key (64 hex digits, or a file)")
    try:
        key = parse_ledger_key(args.ledger_key)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not Path(args.mirror).is_dir():
        raise UsageError("--mirror %s is not a directory" % args.mirror)
    ok, message = audit_mirror(Path(args.mirror), key)
    print(message)
    return 0 if ok else 1


# ------------------------------------------------------------------ mirror


def mirror(args: argparse.Namespace) -> int:
    from crev_cli.bundle_verify import parse_ledger_key
    from crev_cli.mirror import MirrorError
    from crev_cli.mirror import mirror as mirror_log

    try:
        key = parse_ledger_key(args.ledger_key)
    except ValueError as err:
        raise UsageError(str(err)) from err
    # With witnesses and no --quorum, one cosignature among them is enough.
    quorum = args.quorum if args.quorum is not None or not args.witness else 1
    witnesses = _witness_keys(args.witness or [], quorum)
    try:
        done = mirror_log(args.url, key, Path(args.out), witnesses)
    except MirrorError as err:
        print("crev: %s" % err, file=sys.stderr)
        return 1
    except OSError as err:
        raise UsageError("cannot write the mirror in %s: %s" % (args.out, err.strerror or err)) from err
    since = "new" if done.old_size is None else "up from size %d, consistent with it" % done.old_size
    print(
        "mirrored %s into %s: %s, tree size %d (%s); fetched %d tiles, %d entry bundles and the checkpoint"
        % (args.url, args.out, done.origin, done.size, since, done.tiles, done.bundles)
    )
    if witnesses is not None:
        print(
            "cosigned by %d of the %d witnesses given (%d required): %s"
            % (len(done.cosigned), len(witnesses[0]), witnesses[1], ", ".join(name for name, _ in done.cosigned))
        )
    return 0
