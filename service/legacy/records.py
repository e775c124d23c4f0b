"""The append-only tables (order, analyzer, traffic and latency logs, login attempts), imported
in legacy id order behind a ledger mark; and the IP bans and offence counters, by natural key."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel
from sqlalchemy import Table, select

from service.cache import invalidate
from service.legacy import ledger
from service.legacy.context import Context, validated
from service.legacy.convert import IST, Skip, boolean, integer, json_text, text, timestamp
from service.legacy.convert import optional_timestamp as maybe_timestamp
from service.legacy.report import TableReport
from service.legacy.source import LegacyFile, Row
from service.models.auth import LoginAttempt
from service.models.latency import OrderLatency
from service.models.logs import AnalyzerLog, OrderLog
from service.models.traffic import IPBan, IPOffenceCounter, TrafficLog
from service.repositories import bans as bans_repo
from service.repositories import logs as logs_repo
from service.schemas.auth import LoginAttemptCreate
from service.schemas.latency import LatencyCreate
from service.schemas.logs import ApiLogCreate
from service.schemas.traffic import TrafficLogCreate, normalize_ip

Convert = Callable[[Row, TableReport], dict[str, Any]]


def _table(model: type[object]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


def _row(item: BaseModel) -> dict[str, Any]:
    return dict(item.__dict__)


# --- append-only tables, behind the ledger -----------------------------------------------------


async def import_log_table(
    ctx: Context,
    source: LegacyFile,
    table: str,
    target: type[object],
    columns: list[str],
    convert: Convert,
) -> None:
    """Import `table` from after its ledger mark, a batch per transaction with the mark."""
    name = f"{source.label}.{table}"
    report = ctx.report.table(name, _table(target).name)
    if not source.has(table):
        report.missing = True
        return
    async with ctx.batch() as session:
        mark = await ledger.read(session, name)
    report.earlier = mark.imported
    progress = ctx.progress(name, source.count(table, mark.last_id))
    last = mark.last_id
    for batch in source.stream(table, ["id", *columns], after_id=last):
        rows, skipped = [], 0
        for legacy in batch:
            try:
                rows.append(convert(legacy, report))
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                skipped += 1
        report.read += len(batch)
        newest = int(batch[-1]["id"])
        if ctx.write:
            async with ctx.batch() as session:
                # The mark first: on PostgreSQL its statement opens the transaction, and the COPY
                # (straight on the driver) must run inside it, not commit on its own.
                await ledger.advance(session, name, last, newest, len(rows), skipped)
                if rows:
                    await logs_repo.insert_rows(session, _table(target), rows)
        report.imported += len(rows)
        last = newest
        progress.advance(len(batch))
    progress.close()


def _text(legacy: Row, key: str) -> str | None:
    return text(legacy[key], what=key)


def _json_field(report: TableReport, value: Any, what: str) -> Any:
    parsed, ok = json_text(value)
    if not ok:
        report.note(f"{what} was not JSON: kept as a JSON string")
    return parsed


def api_log(legacy: Row, report: TableReport) -> dict[str, Any]:
    item = validated(
        ApiLogCreate,
        {
            "api_type": _text(legacy, "api_type"),
            "request_data": _json_field(report, legacy["request_data"], "request_data"),
            "response_data": _json_field(report, legacy["response_data"], "response_data"),
            "created_at": timestamp(legacy["created_at"], IST, what="created_at"),
        },
    )
    return _row(item)


def traffic_log(legacy: Row, _report: TableReport) -> dict[str, Any]:
    item = validated(
        TrafficLogCreate,
        {
            "client_ip": _text(legacy, "client_ip"),
            "method": _text(legacy, "method"),
            "path": _text(legacy, "path"),
            "status_code": legacy["status_code"],
            "duration_ms": legacy["duration_ms"],
            "host": _text(legacy, "host") or None,
            "error": _text(legacy, "error") or None,
            "user_id": _text(legacy, "user_id"),
            "timestamp": timestamp(legacy["timestamp"], UTC),
        },
    )
    return _row(item)


def latency(legacy: Row, report: TableReport) -> dict[str, Any]:
    values: dict[str, Any] = {
        key: _text(legacy, key) or None for key in ("user_id", "broker", "symbol", "order_type")
    }
    for key in (
        "rtt_ms",
        "validation_latency_ms",
        "response_latency_ms",
        "overhead_ms",
        "total_latency_ms",
    ):
        values[key] = legacy[key]
    item = validated(
        LatencyCreate,
        {
            **values,
            "order_id": _text(legacy, "order_id"),
            "request_body": _json_field(report, legacy["request_body"], "request_body"),
            "response_body": _json_field(report, legacy["response_body"], "response_body"),
            "status": _text(legacy, "status") or None,
            "error": _text(legacy, "error") or None,
            "timestamp": timestamp(legacy["timestamp"], UTC),
        },
    )
    return _row(item)


def login_attempt(legacy: Row, _report: TableReport) -> dict[str, Any]:
    item = validated(
        LoginAttemptCreate,
        {
            "username": _text(legacy, "username"),
            "ip_address": _text(legacy, "ip_address") or None,
            "device_info": _text(legacy, "device_info") or None,
            "status": _text(legacy, "status"),
            "login_type": _text(legacy, "login_type") or None,
            "broker": _text(legacy, "broker") or None,
            "failure_reason": _text(legacy, "failure_reason") or None,
        },
    )
    return {**item.model_dump(), "created_at": timestamp(legacy["timestamp"], IST)}


API_LOG_COLUMNS = ["api_type", "request_data", "response_data", "created_at"]
TRAFFIC_COLUMNS = [
    "timestamp",
    "client_ip",
    "method",
    "path",
    "status_code",
    "duration_ms",
    "host",
    "error",
    "user_id",
]
LATENCY_COLUMNS = [
    "timestamp",
    "order_id",
    "user_id",
    "broker",
    "symbol",
    "order_type",
    "rtt_ms",
    "validation_latency_ms",
    "response_latency_ms",
    "overhead_ms",
    "total_latency_ms",
    "request_body",
    "response_body",
    "status",
    "error",
]
LOGIN_ATTEMPT_COLUMNS = [
    "username",
    "ip_address",
    "device_info",
    "status",
    "login_type",
    "broker",
    "failure_reason",
    "timestamp",
]


async def import_order_logs(ctx: Context, source: LegacyFile) -> None:
    await import_log_table(ctx, source, "order_logs", OrderLog, API_LOG_COLUMNS, api_log)


async def import_analyzer_logs(ctx: Context, source: LegacyFile) -> None:
    await import_log_table(ctx, source, "analyzer_logs", AnalyzerLog, API_LOG_COLUMNS, api_log)


async def import_traffic_logs(ctx: Context, source: LegacyFile) -> None:
    await import_log_table(ctx, source, "traffic_logs", TrafficLog, TRAFFIC_COLUMNS, traffic_log)


async def import_latency(ctx: Context, source: LegacyFile) -> None:
    await import_log_table(ctx, source, "order_latency", OrderLatency, LATENCY_COLUMNS, latency)


async def import_login_attempts(ctx: Context, source: LegacyFile) -> None:
    await import_log_table(
        ctx, source, "login_attempts", LoginAttempt, LOGIN_ATTEMPT_COLUMNS, login_attempt
    )


# --- IP bans -----------------------------------------------------------------------------------


def _ip(value: Any) -> str:
    raw = text(value)
    if not raw:
        raise Skip("ip_address missing")
    try:
        return normalize_ip(raw)
    except ValueError:
        raise Skip("ip_address is not an IPv4 or IPv6 address") from None


def _ban(legacy: Row) -> dict[str, Any]:
    permanent = boolean(legacy["is_permanent"], False)
    expires = None if permanent else maybe_timestamp(legacy["expires_at"], UTC, what="expires_at")
    reason = _text(legacy, "ban_reason")
    created_by = _text(legacy, "created_by") or "system"
    if (reason and len(reason) > 255) or len(created_by) > 50:
        raise Skip("ban_reason or created_by too long")
    return {
        "ip_address": _ip(legacy["ip_address"]),
        "reason": reason,
        "ban_count": integer(legacy["ban_count"], what="ban_count", default=1, low=1),
        "banned_at": timestamp(legacy["banned_at"], UTC, what="banned_at"),
        "expires_at": expires,
        "is_permanent": permanent,
        "created_by": created_by,
    }


async def import_bans(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.ip_bans"
    report = ctx.report.table(name, "ip_bans")
    if not source.has("ip_bans"):
        report.missing = True
        return
    columns = [
        "id",
        "ip_address",
        "ban_reason",
        "ban_count",
        "banned_at",
        "expires_at",
        "is_permanent",
        "created_by",
    ]
    progress = ctx.progress(name, source.count("ip_bans"))
    now = datetime.now(UTC)
    for batch in source.stream("ip_bans", columns):
        report.read += len(batch)
        rows: dict[str, dict[str, Any]] = {}
        for legacy in batch:
            try:
                row = _ban(legacy)
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            if row["ip_address"] in rows:
                report.skip("the same address is banned by an earlier row", legacy["id"])
                continue
            rows[row["ip_address"]] = row
        async with ctx.batch() as session:
            present = set(
                await session.scalars(select(IPBan.ip_address).where(IPBan.ip_address.in_(rows)))
            )
            new = [row for ip, row in rows.items() if ip not in present]
            report.present += len(present)
            if ctx.write and new:
                inserted = set(
                    await session.scalars(
                        ctx.insert(IPBan).on_conflict_do_nothing().returning(IPBan.ip_address),
                        new,
                    )
                )
                for ip in inserted:
                    await invalidate(session, bans_repo.TOPIC, ip)
                report.present += len(new) - len(inserted)
                new = [row for row in new if row["ip_address"] in inserted]
            report.imported += len(new)
            for row in new:
                expires = row["expires_at"]
                if not row["is_permanent"] and (expires is None or expires <= now):
                    report.note("expired or without an end: kept as history, not in force")
        progress.advance(len(batch))
    progress.close()


# --- 404 and invalid-API-key trackers ----------------------------------------------------------


def _last(value: Any) -> str | None:
    """The latest entry of a legacy JSON array of paths or key fingerprints."""
    try:
        items = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if isinstance(items, list) and items and isinstance(items[-1], str):
        entry = items[-1]
        return entry[:2048] if "\x00" not in entry else None
    return None


async def import_tracker(
    ctx: Context,
    source: LegacyFile,
    table: str,
    kind: str,
    names: tuple[str, str, str, str],
) -> None:
    """A legacy tracker (one row per address, reset after a day) as per-day counters, on the
    UTC day of the row's latest event; rows of one address on one day are added up."""
    count_column, first_column, last_column, detail_column = names
    name = f"{source.label}.{table}"
    report = ctx.report.table(name, f"ip_offence_counters ({kind})")
    if not source.has(table):
        report.missing = True
        return
    ctx.not_imported(source, table, (detail_column,), "rows (their latest entry only is kept)")
    progress = ctx.progress(name, source.count(table))
    columns = ["id", "ip_address", count_column, first_column, last_column, detail_column]
    pending: dict[tuple[Any, ...], dict[str, Any]] = {}

    async def flush(rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with ctx.batch() as session:
            if ctx.write:
                inserted = len(
                    (
                        await session.execute(
                            ctx.insert(IPOffenceCounter)
                            .on_conflict_do_nothing()
                            .returning(IPOffenceCounter.id),
                            rows,
                        )
                    ).all()
                )
            else:
                keys = {(r["day"], r["ip_address"]) for r in rows}
                present = (
                    await session.execute(
                        select(IPOffenceCounter.day, IPOffenceCounter.ip_address).where(
                            IPOffenceCounter.kind == kind,
                            IPOffenceCounter.ip_address.in_({ip for _, ip in keys}),
                        )
                    )
                ).all()
                inserted = len(keys - {tuple(p) for p in present})
        report.imported += inserted
        report.present += len(rows) - inserted

    for batch in source.stream(table, columns, order=("ip_address", "id")):
        report.read += len(batch)
        ready: list[dict[str, Any]] = []
        for legacy in batch:
            try:
                last_at = timestamp(legacy[last_column], UTC, what=last_column)
                row = {
                    "kind": kind,
                    "day": last_at.date(),
                    "ip_address": _ip(legacy["ip_address"]),
                    "count": integer(legacy[count_column], what=count_column, default=1, low=1),
                    "first_seen_at": timestamp(legacy[first_column], UTC, what=first_column),
                    "last_seen_at": last_at,
                    "last_detail": _last(legacy[detail_column]),
                }
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            key = (row["ip_address"], row["day"])
            earlier = pending.get(key)
            if earlier is not None:
                report.note("rows of one address and day added up", 1)
                earlier["count"] += row["count"]
                earlier["first_seen_at"] = min(earlier["first_seen_at"], row["first_seen_at"])
                if row["last_seen_at"] >= earlier["last_seen_at"]:
                    earlier["last_seen_at"] = row["last_seen_at"]
                    earlier["last_detail"] = row["last_detail"] or earlier["last_detail"]
                continue
            # Rows come by address: one that differs closes the earlier addresses for good.
            for done in [k for k in pending if k[0] != row["ip_address"]]:
                ready.append(pending.pop(done))
            pending[key] = row
        await flush(ready)
        progress.advance(len(batch))
    await flush(list(pending.values()))
    progress.close()


async def import_404_tracker(ctx: Context, source: LegacyFile) -> None:
    await import_tracker(
        ctx,
        source,
        "error_404_tracker",
        "404",
        ("error_count", "first_error_at", "last_error_at", "paths_attempted"),
    )


async def import_invalid_key_tracker(ctx: Context, source: LegacyFile) -> None:
    await import_tracker(
        ctx,
        source,
        "invalid_api_key_tracker",
        "invalid_api_key",
        ("attempt_count", "first_attempt_at", "last_attempt_at", "api_keys_tried"),
    )
