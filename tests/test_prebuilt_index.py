"""The symbol index built beside the start-up (service/prebuilt_index.py): its hand-over as bytes
keeps every field and every shared object, each worker claims one copy, a failed or finished
builder sends the worker to the database, the holder takes the copy only at the version the
database holds, and the builder reads from PostgreSQL what the app's own refresh reads."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from service import prebuilt_index, symbol_source
from service.repositories import symbols as symbols_repo
from service.symbol_index import COLUMNS, IndexBuilder, SymbolIndex, SymbolIndexHolder
from tests.contract import generate, put_contract
from tests.support import BACKEND, make_settings

CONTRACT = generate(3000, seed=41, base=date(2026, 11, 26))


def built(rows: list[dict[str, Any]] = CONTRACT, version: int = 7) -> SymbolIndex:
    ranked = sorted(rows, key=lambda r: (len(r["symbol"]), r["symbol"], r["exchange"]))
    builder = IndexBuilder(version, datetime(2026, 11, 30, 9, 15, tzinfo=UTC))
    builder.add_rows([tuple(r.get(c) for c in COLUMNS) for r in ranked])
    return builder.finish()


def same(one: SymbolIndex, other: SymbolIndex) -> None:
    for name in SymbolIndex.__slots__:
        assert getattr(one, name) == getattr(other, name), name


def hand_over(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv(prebuilt_index.ENV, str(tmp_path))
    return tmp_path


class TestBytes:
    def test_a_snapshot_read_back_is_the_same_snapshot(self) -> None:
        index = built()
        index.search(["NIFTY"], limit=5)  # fills caches: they are not handed over
        back = SymbolIndex.from_bytes(index.to_bytes())
        assert back.version == 7 and back.loaded_at == index.loaded_at
        assert back.size == len(CONTRACT)
        for name in ("symbol", "token", "by_symbol", "by_token", "by_brsymbol", "_groups"):
            assert getattr(back, name) == getattr(index, name), name
        assert back._masks == {} and back._sorted_names is None
        for r in CONTRACT[:200]:
            i = back.find(r["exchange"], token=r["token"])
            assert i is not None and i == index.find(r["exchange"], token=r["token"])
            assert back.row(i) == index.row(i)
        assert back.search(["NIFTY", "CE"], limit=20) == index.search(["NIFTY", "CE"], limit=20)

    def test_values_shared_in_the_snapshot_stay_shared(self) -> None:
        index = built()
        back = SymbolIndex.from_bytes(index.to_bytes())
        assert len({id(e) for e in back.exchange}) == len(set(index.exchange))
        assert len({id(n) for n in back.name}) == len({id(n) for n in index.name})
        same_object = [i for i in range(index.size) if index.brsymbol[i] is index.symbol[i]]
        assert same_object and all(back.brsymbol[i] is back.symbol[i] for i in same_object)


class TestHandOver:
    async def test_each_worker_claims_one_copy_and_a_later_one_none(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        directory = hand_over(monkeypatch, tmp_path)
        index = built()
        prebuilt_index.write(index, directory, copies=2)
        first, second = await prebuilt_index.take(), await prebuilt_index.take()
        assert first is not None and second is not None and first is not second
        same(first, index)
        same(second, index)
        assert await prebuilt_index.take() is None  # every copy claimed: the database, then
        assert sorted(os.listdir(directory)) == ["built"]  # nothing left behind

    async def test_a_worker_waits_for_the_builder(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        directory = hand_over(monkeypatch, tmp_path)
        waiting = asyncio.create_task(prebuilt_index.take())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        prebuilt_index.write(built(), directory, copies=1)
        taken = await asyncio.wait_for(waiting, 5)
        assert taken is not None and taken.version == 7

    async def test_a_failed_builder_sends_the_worker_to_the_database(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        directory = hand_over(monkeypatch, tmp_path)
        prebuilt_index._note_failure(directory, "ConnectionRefusedError: no server")
        with caplog.at_level(logging.WARNING, "service.symbols"):
            assert await prebuilt_index.take() is None
        assert "ConnectionRefusedError: no server" in caplog.text

    async def test_a_builder_that_dies_without_a_word_is_spoken_for(self, tmp_path: Path) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(3)
        await asyncio.to_thread(prebuilt_index._reap, pid, tmp_path)
        assert "ended with wait status 768" in (tmp_path / "failed").read_text()

    async def test_without_a_builder_there_is_nothing_to_take(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(prebuilt_index.ENV, raising=False)
        assert await prebuilt_index.take() is None


class TestHolder:
    async def test_the_copy_serves_when_the_database_holds_its_version(self) -> None:
        index = built(version=7)

        async def read_index(_previous: SymbolIndex | None) -> SymbolIndex:
            raise AssertionError("the database was read although the copy is current")

        async def version() -> int:
            return 7

        async def prebuilt() -> SymbolIndex:
            return index

        holder = SymbolIndexHolder(version, read_index, prebuilt)
        assert await holder.refresh() is index
        assert await holder.refresh() is index  # asked once: later refreshes compare versions

    async def test_a_copy_behind_the_database_is_rebuilt_from_it(self) -> None:
        stale, current = built(version=7), built(CONTRACT[:100], version=8)
        previous: list[SymbolIndex | None] = []

        async def read_index(old: SymbolIndex | None) -> SymbolIndex:
            previous.append(old)
            return current

        async def version() -> int:
            return 8

        async def prebuilt() -> SymbolIndex:
            return stale

        holder = SymbolIndexHolder(version, read_index, prebuilt)
        assert await holder.refresh() is current
        assert previous == [stale]  # the copy's strings are shared by the rebuild


def test_the_builder_reads_in_the_repository_rank() -> None:
    """symbol_source's SQL (asyncpg alone) and the repository's rank (SQLAlchemy) are one order."""
    columns = [getattr(symbols_repo.Symbol, c) for c in COLUMNS]
    stmt = select(*columns).order_by(*symbols_repo._rank("postgresql"))
    compiled = str(stmt.compile(dialect=postgresql.dialect())).replace("symbols.", "")
    assert " ".join(compiled.split()) == " ".join(symbol_source.RANKED_ROWS_SQL.split())


@pytest.mark.skipif(BACKEND != "postgresql", reason="the start-up builder is PostgreSQL's")
async def test_the_builder_reads_what_the_app_reads(client: Any, database_url: str) -> None:
    assert (await put_contract(client, CONTRACT)).status_code == 200
    app_index = client.app.state.store.runtime.symbols.index
    sent = await prebuilt_index.build(make_settings(database_url))
    assert sent.by_token == {}  # left to the worker: made from the columns
    index = SymbolIndex.from_bytes(sent.to_bytes())  # what a worker takes
    assert index.version == app_index.version and index.loaded_at == app_index.loaded_at
    same(index, app_index)
