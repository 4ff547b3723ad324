"""``crev audit verify`` of a trace bundle (SPEC §10): read it item by item and check it offline.

The checks are in the portable core (``crev.trace``); this module streams
the file and builds the report. It opens no database and no socket.
"""

import datetime
from typing import IO, Any, cast

from crev import cbor, trace
from crev.evidence import BlockChecks, checkpoint_failure
from crev.registry_format import format_kg
from crev_cli.bundle_verify import (
    BundleFormatError,
    BundleReader,
    FailureLog,
    _BrokenReading,
    _check_readings,
    check_lines,
)


def is_trace(head: bytes) -> bool:
    """Whether the file's first bytes are those of a trace bundle."""
    return cbor.dumps(trace.MAGIC) in head[:32]


class TraceVerification(FailureLog):
    def __init__(self) -> None:
        FailureLog.__init__(self)
        self.meta: dict[int, Any] = {}
        self.entries = 0
        self.readings = 0
        self.blocks = 0
        self.bytes = 0
        self.trace: dict[str, Any] | None = None
        self.self_mwh = 0


def verify_trace(stream: IO[bytes], ledger_public_key: bytes, jobs: int = 1) -> TraceVerification:
    """Check a whole trace bundle; ``jobs`` worker processes check the readings (1: none)."""
    result = TraceVerification()
    reader = BundleReader(stream)
    where = ("bundle", -1)
    try:
        if reader.array() != 6 or reader.item() != trace.MAGIC:
            raise BundleFormatError("not a crev trace bundle")
        version = reader.item()
        if version != trace.VERSION:
            raise BundleFormatError("trace bundle version %r; this crev reads version %d" % (version, trace.VERSION))
        meta = reader.item()
        problem = trace.check_meta(meta, ledger_public_key)
        if problem is not None:
            result.fail(problem)
            return result
        result.meta = meta
        blocks = BlockChecks(ledger_public_key)
        for position in range(reader.array()):
            where = ("block", position)
            found = blocks.add(position, reader.item())
            result.fail(None if found is None else trace.adopt(found))
            result.blocks += 1
        where = ("bundle", -1)
        if result.failure_count == 0:
            found = checkpoint_failure(meta[trace.T_CHECKPOINT], meta[trace.T_ORIGIN], ledger_public_key, blocks)
            result.fail(None if found is None else trace.adopt(found))
        checks = trace.TraceChecks(ledger_public_key, meta, blocks)
        for position in range(reader.array()):
            where = ("entry", position)
            result.fail(checks.add_entry(position, reader.item()))
            result.entries += 1
        count = reader.array()
        where = ("reading", 0)
        for position, (found, info) in _check_readings(reader, count, checks.reading_checks, jobs):
            where = ("reading", position)
            # Trace workers send (leaf, dev, t1, entries, meters) where evidence workers send a Summary.
            result.fail(found if found is not None else checks.record(position, cast(tuple[Any, ...], info)))
            result.readings += 1
        where = ("bundle", -1)
        if not reader.at_end():
            raise BundleFormatError("bytes after the bundle's last item, at byte %d" % reader.offset)
        if result.failure_count == 0:
            result.fail(checks.finish())
        if result.failure_count == 0:
            result.trace = checks.report()
            result.self_mwh = sum(lot[1] for issuance in checks.replay.issuances.values() for lot in issuance.lots)
    except _BrokenReading as err:
        result.fail(trace.failure(trace.FORMAT, "reading", err.position, str(err)))
    except BundleFormatError as err:
        result.fail(trace.failure(trace.FORMAT, where[0], where[1], str(err)))
    result.bytes = reader.offset
    return result


def build_trace_report(result: TraceVerification) -> dict[str, Any]:
    failures = result.failures
    checks = []
    for number in range(1, len(trace.CHECK_NAMES)):
        count = sum(1 for f in failures if f.check == number)
        status = "failed" if count else ("ok" if result.failure_count == 0 else "not completed")
        checks.append({"number": number, "name": trace.CHECK_NAMES[number], "status": status, "failures": count})
    first = failures[0].to_dict() if failures else None
    if first is not None:
        first["text"] = failures[0].describe()
    report: dict[str, Any] = {
        "ok": result.failure_count == 0,
        "kind": "trace",
        "readings": result.readings,
        "self_mwh": result.self_mwh,
        "gaps": [],
        "failure": first,
        "result": "pass" if result.failure_count == 0 else "fail",
        "failure_count": result.failure_count,
        "failures": [f.to_dict() for f in failures],
        "checks": checks,
        "bundle": {
            "retirement": result.meta.get(trace.T_RETIREMENT),
            "origin": result.meta.get(trace.T_ORIGIN),
            "blocks": result.blocks,
            "entries": result.entries,
            "readings": result.readings,
            "bytes": result.bytes,
        },
        "trace": result.trace,
    }
    return report


def _slot(slot: int) -> str:
    return datetime.datetime.fromtimestamp(slot, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")


def render_trace_text(report: dict[str, Any]) -> str:
    lines = []
    bundle = report["bundle"]
    lines.append("Trace bundle of retirement %s (%s)" % (bundle["retirement"], bundle["origin"]))
    lines.append(
        "  contents   blocks %d, entries %d, readings %d, bytes %d"
        % (bundle["blocks"], bundle["entries"], bundle["readings"], bundle["bytes"])
    )
    traced = report["trace"]
    if traced:
        lines.append("")
        lines.append("Retired    %s kg-CO2 (%d g)" % (format_kg(traced["grams"]), traced["grams"]))
        lines.append("  for      %s" % traced["beneficiary"])
        lines.append("  purpose  %s, reporting year %d" % (traced["purpose"], traced["year"]))
        lines.append("  by       account %s (%s)" % (traced["account"], traced["account_name"]))
        lines.append("  sites    %s" % ", ".join(traced["sites"]))
        lines.append("  places   %s" % ", ".join(traced["places"]))
        lines.append("  types    %s" % ", ".join(traced["types"]))
        slots = traced["slots"]
        lines.append("  slots    %d, from %s to %s (+30 min)" % (len(slots), _slot(slots[0]), _slot(slots[-1])))
        lines.append("  meters   %s" % ", ".join(traced["meters"]))
        for bought in traced["trades"]:
            lines.append(
                "  traded   %s kg from %s to %s at %s yen/kg (trade %d)"
                % (
                    format_kg(bought["grams"]),
                    bought["seller"],
                    bought["buyer"],
                    "%d.%02d" % (bought["price"] // 100, bought["price"] % 100),
                    bought["trade"],
                )
            )
        lines.append("")
        lines.append("Lots")
        for lot in traced["lots"]:
            lines.append(
                "  %-10s %10s kg  %s %s  %s  %s  slot %s  %d readings, %d mWh at %s g/kWh (%s)"
                % (
                    lot["lot"],
                    format_kg(lot["grams"]),
                    lot["site"],
                    lot["dev"],
                    lot["type"],
                    lot["place"],
                    _slot(lot["slot"]),
                    lot["readings"],
                    lot["self_mwh"],
                    format_kg(lot["factor_mg_per_kwh"]),
                    lot["factor_label"],
                )
            )
    lines.append("")
    lines.extend(check_lines(report["checks"]))
    lines.append("")
    if report["ok"]:
        lines.append("RESULT: PASS")
    else:
        lines.append("RESULT: FAIL (%d failures)" % report["failure_count"])
        lines.append("First failure: %s" % report["failure"]["text"])
    return "\n".join(lines) + "\n"
