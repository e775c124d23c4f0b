"""Webhook strategies and chartink strategies with their symbol mappings, by natural key: a
strategy by its webhook id, a mapping by (strategy, symbol, exchange)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, tuple_

from service.cache import invalidate
from service.errors import ValidationFailed
from service.legacy.context import Context
from service.legacy.convert import Skip, boolean, integer, text
from service.legacy.convert import optional_timestamp as maybe_timestamp
from service.legacy.source import LegacyFile
from service.repositories.strategies import CHARTINK, STRATEGIES, StrategyKind, check_times
from service.schemas.strategies import TIME_FIELDS

PLATFORMS = ("tradingview", "amibroker", "python", "metatrader", "excel", "others")
TRADING_MODES = ("LONG", "SHORT", "BOTH")
PRODUCT_TYPES = ("MIS", "CNC", "NRML")
_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


def _time(value: Any, what: str) -> str | None:
    raw = (text(value) or "").strip()
    if not raw:
        return None
    match = _TIME.match(raw)
    if match is None:
        raise Skip(f"{what} {raw!r} is not HH:MM")
    return f"{int(match[1]):02d}:{match[2]}"  # "9:15" was the legacy form of "09:15"


def _bounded(value: Any, what: str, length: int) -> str:
    result = (text(value) or "").strip()
    if not result:
        raise Skip(f"{what} missing")
    if len(result) > length:
        raise Skip(f"{what} longer than {length} characters")
    return result


def _strategy_row(kind: StrategyKind, legacy: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": _bounded(legacy["name"], "name", 255),
        "webhook_id": _bounded(legacy["webhook_id"], "webhook_id", 36),
        "user_id": _bounded(legacy["user_id"], "user_id", 255),
        "is_active": boolean(legacy["is_active"], True),
        "is_intraday": boolean(legacy["is_intraday"], True),
    }
    for field in TIME_FIELDS:
        row[field] = _time(legacy[field], field)
    try:
        check_times(row)
    except ValidationFailed:
        notes.append("intraday times incomplete or out of order: imported as they were")
    if kind is STRATEGIES:
        platform = (text(legacy["platform"]) or "tradingview").strip().lower()
        if platform not in PLATFORMS:
            notes.append(f"platform {platform!r} unknown here: imported as 'others'")
            platform = "others"
        mode = (text(legacy["trading_mode"]) or "LONG").strip().upper()
        if mode not in TRADING_MODES:
            raise Skip(f"trading_mode {mode!r} unknown")
        row["platform"], row["trading_mode"] = platform, mode
    created = maybe_timestamp(legacy["created_at"], UTC, what="created_at") or datetime.now(UTC)
    row["created_at"] = created
    row["updated_at"] = maybe_timestamp(legacy["updated_at"], UTC, what="updated_at") or created
    return row


async def import_strategies(ctx: Context, source: LegacyFile, kind: StrategyKind) -> None:
    table = kind.strategy.__tablename__
    name = f"{source.label}.{table}"
    report = ctx.report.table(name, table)
    if not source.has(table):
        report.missing = True
        return
    columns = ["id", "name", "webhook_id", "user_id", "is_active", "is_intraday", *TIME_FIELDS]
    columns += ["created_at", "updated_at"]
    if kind is STRATEGIES:
        columns += ["platform", "trading_mode"]
    model = kind.strategy
    progress = ctx.progress(name, source.count(table))
    for batch in source.stream(table, columns):
        report.read += len(batch)
        rows: dict[str, tuple[dict[str, Any], list[str]]] = {}
        for legacy in batch:
            notes: list[str] = []
            try:
                row = _strategy_row(kind, legacy, notes)
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            rows[row["webhook_id"]] = (row, notes)
        async with ctx.batch() as session:
            present = set(
                await session.scalars(select(model.webhook_id).where(model.webhook_id.in_(rows)))
            )
            new = [row for hook, (row, _) in rows.items() if hook not in present]
            for hook, (_, notes) in rows.items():
                for note in notes if hook not in present else ():
                    report.note(note)
            report.present += len(present)
            if ctx.write and new:
                inserted = list(
                    await session.scalars(
                        ctx.insert(model).on_conflict_do_nothing().returning(model.webhook_id),
                        new,
                    )
                )
                for hook in inserted:
                    await invalidate(session, kind.topic, hook)
                report.present += len(new) - len(inserted)
                new = new[: len(inserted)]
            elif new:
                ctx.planned.setdefault(kind.name, set()).update(row["webhook_id"] for row in new)
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()


async def import_mappings(ctx: Context, source: LegacyFile, kind: StrategyKind) -> None:
    """Mappings follow their strategy by webhook id: legacy ids mean nothing here."""
    table = kind.mapping.__tablename__
    parent = kind.strategy.__tablename__
    name = f"{source.label}.{table}"
    report = ctx.report.table(name, table)
    if not source.has(table):
        report.missing = True
        return
    ctx.not_imported(source, table, ("updated_at",))
    symbol_column = "chartink_symbol" if kind is CHARTINK else "symbol"
    columns = ["id", "strategy_id", symbol_column, "exchange", "quantity", "product_type"]
    columns += ["created_at"]
    strategy, mapping = kind.strategy, kind.mapping
    progress = ctx.progress(name, source.count(table))
    for batch in source.stream(table, columns):
        report.read += len(batch)
        parents = {row["strategy_id"] for row in batch if row["strategy_id"] is not None}
        hooks: dict[Any, str] = {}
        if parents and source.has(parent):
            marks = ", ".join("?" * len(parents))
            hooks = dict(
                source.query(
                    f'SELECT id, webhook_id FROM "{parent}" WHERE id IN ({marks})', list(parents)
                )
            )
        async with ctx.batch() as session:
            ids = dict(
                (
                    await session.execute(
                        select(strategy.webhook_id, strategy.id).where(
                            strategy.webhook_id.in_(set(hooks.values()))
                        )
                    )
                ).all()
            )
            rows: dict[tuple[Any, ...], dict[str, Any]] = {}
            pending_hooks: dict[int, str] = {}
            for legacy in batch:
                try:
                    hook = hooks.get(legacy["strategy_id"])
                    if hook is None:
                        raise Skip("its strategy is not in the legacy file")
                    strategy_id = ids.get(hook)
                    if strategy_id is None:
                        if hook in ctx.planned.get(kind.name, ()):  # a dry run's stand-in id
                            strategy_id = ids[hook] = -len(ids) - 1
                        else:
                            raise Skip("its strategy was not imported")
                    product = (text(legacy["product_type"]) or "").strip().upper()
                    if product not in PRODUCT_TYPES:
                        raise Skip(f"product_type {product!r} unknown")
                    row = {
                        "strategy_id": strategy_id,
                        "symbol": _bounded(legacy[symbol_column], symbol_column, 50),
                        "exchange": _bounded(legacy["exchange"], "exchange", 20),
                        "quantity": integer(legacy["quantity"], what="quantity", low=1),
                        "product_type": product,
                        "created_at": maybe_timestamp(legacy["created_at"], UTC)
                        or datetime.now(UTC),
                    }
                except Skip as reason:
                    report.skip(str(reason), legacy["id"])
                    continue
                key = (row["strategy_id"], row["symbol"], row["exchange"])
                if key in rows:
                    report.skip("repeats an earlier mapping of its strategy", legacy["id"])
                    continue
                rows[key] = row
                pending_hooks[strategy_id] = hook
            symbol = mapping.symbol  # the chartink_symbol column in that family
            present = set(
                (
                    await session.execute(
                        select(mapping.strategy_id, symbol, mapping.exchange).where(
                            tuple_(mapping.strategy_id, symbol, mapping.exchange).in_(list(rows))
                        )
                    )
                ).all()
                if rows
                else ()
            )
            new = [row for key, row in rows.items() if key not in present]
            report.present += len(present)
            if ctx.write and new:
                values = [{**row, symbol.key: row["symbol"]} for row in new]
                if symbol.key != "symbol":
                    for value in values:
                        del value["symbol"]
                inserted = list(
                    await session.scalars(
                        ctx.insert(mapping).on_conflict_do_nothing().returning(mapping.strategy_id),
                        values,
                    )
                )
                for strategy_id in set(inserted):
                    await invalidate(session, kind.topic, pending_hooks[strategy_id])
                report.present += len(new) - len(inserted)
                new = new[: len(inserted)]
            report.imported += len(new)
        progress.advance(len(batch))
    progress.close()
