"""The master contract in memory: lookup maps and search over one immutable snapshot.

A `SymbolIndex` is built whole from the database (`IndexBuilder`, fed the rows in search-rank
order) and replaced whole (`SymbolIndexHolder.refresh`): a reader holding one sees one contract,
never a mix. Nothing here touches the database; the holder is handed the function that reads it.

Layout, chosen for memory (P7: the process stays under 250 MB with 200k rows):
- columns, not row objects: one list per field, indexed by row id; low-cardinality values (names,
  exchanges, expiries, types, numbers) are shared objects, so a row costs its unique strings
  (symbol, broker symbol, token) plus one pointer per field;
- lookup maps per exchange: `{exchange: {symbol: row_id}}` (likewise token, broker symbol), so no
  tuple key is allocated per row;
- row ids follow the search rank (length of symbol, then symbol and exchange in code-point
  order), so a search walks rows best-first and stops at `limit`;
- search text: every row's symbol, broker symbol, name and token, case-folded, in one string,
  cut in blocks of 256 consecutive rows. Per term, a bitmask of the blocks holding it, filled in
  on first use (only for the blocks the query's other terms leave) and kept for the life of the
  snapshot: terms recur, so a warm query only looks inside the blocks holding all of its terms.
  Building no trigram index keeps a rebuild under a second; the price is that a term never seen
  before costs up to one pass over the text (~10 MB for 200k rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import heapq
import itertools
import logging
import marshal
import re
import string
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import eq, itemgetter
from typing import Any, ParamSpec, TypeVar

import orjson

logger = logging.getLogger("service.symbols")

COLUMNS = (
    "symbol",
    "brsymbol",
    "name",
    "exchange",
    "brexchange",
    "token",
    "expiry",
    "strike",
    "lotsize",
    "instrumenttype",
    "tick_size",
)
MAPPING_COLUMNS = (
    "symbol",
    "brsymbol",
    "exchange",
    "brexchange",
    "token",
    "lotsize",
    "tick_size",
    "instrumenttype",
)

BLOCK_SHIFT = 8  # 256 rows per search block
_CACHE_LIMIT = 20_000  # term masks kept per snapshot (a few MB at most)
_CHAIN_JSON_LIMIT = 64  # serialised chains kept per snapshot (a full NIFTY chain: ~40 kB)

_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}  # fmt: skip
_EXPIRY = re.compile(r"([0-9]{2})-([A-Z]{3})-([0-9]{2}|[0-9]{4})")

OPTION_TYPES = frozenset({"CE", "PE"})
FUTURE_TYPES = frozenset({"FUT", "PERPFUT"})
DERIVATIVE_TYPES = OPTION_TYPES | FUTURE_TYPES
_TYPE_GROUPS = {"OPTIONS": OPTION_TYPES, "FUTURES": FUTURE_TYPES}
_UNDATED = -1  # the browse rank of a row without expiry (spot, perpetual): before dated ones
_UNPARSABLE = 1 << 30  # and of an expiry that is not a date: after every date
_ALL_ROWS = "\x00all"  # the key of a name's rows on every exchange (no exchange is spelt so)
_BISECT_BUDGET = 4_000  # names x blocks looked up by bisection before walking candidates
_SPOT = "\x00spot"  # the browse key of the rows that are not derivatives
_PREFIX_RANGE = 4096  # symbol-prefix rows sorted directly; past that, candidates are walked
# A snapshot this large stays out of the collector's walks between rebuilds (_handed_back).
SET_ASIDE_ROWS = 50_000
_PREFIX_IDS = 1 << 20  # row ids kept for symbol prefixes per snapshot (4 MB)
_UNSEEN: Any = object()
_DIRECT_ROWS = 256  # a ranking group this small is read directly rather than among candidates
_SPOT_NAMES = "\x00spot names"  # the cache key of the spot rows sorted by folded name


# The fields of a SymbolIndex filled on first use (SymbolIndex._clear_caches empties them).
_CACHES = frozenset(
    {"_masks", "_prefixes", "_prefix_ids", "_sorted_symbols", "_sorted_names", "_sorted_folded",
     "_browse", "_chains", "_underlyings", "_chain_json"}
)  # fmt: skip


# Left out of SymbolIndex.to_bytes: the caches, and the lookup maps (made again from the columns).
_NOT_SENT = _CACHES | {"by_symbol", "by_token", "by_brsymbol"}


def fold(text: str) -> str:
    """Case-fold for search: ASCII letters only, exactly like SQLite's upper() and PostgreSQL's
    upper() under the "C" collation, so that memory and both databases agree."""
    return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)


def search_terms(q: str | None) -> list[str]:
    """The whitespace-separated terms of a query, case-folded."""
    return [fold(t) for t in q.split()] if q else []


def numeric_term(term: str) -> float | None:
    """The strike a term stands for, when it is a plain number (`24000`, `83.25`)."""
    return float(term) if _NUMBER.fullmatch(term) else None


def parse_expiry(text: str) -> date | None:
    """`28-NOV-24` (or `28-NOV-2024`) as a date; None when it is not one."""
    match = _EXPIRY.fullmatch(text.upper())
    if match is None or match.group(2) not in _MONTHS:
        return None
    day, month, year = int(match.group(1)), _MONTHS[match.group(2)], int(match.group(3))
    try:
        return date(year + 2000 if year < 100 else year, month, day)
    except ValueError:
        return None


def instrument_types(value: str | None) -> frozenset[str] | None:
    """The instrument types a filter value stands for: `options` (CE, PE), `futures` (FUT,
    PERPFUT), or the one type named (case-folded); None for no filter."""
    if value is None:
        return None
    folded = fold(value)
    return _TYPE_GROUPS.get(folded, frozenset({folded}))


def _expiry_key(text: str) -> tuple[int, date | None, str]:
    parsed = parse_expiry(text)
    return (0, parsed, text) if parsed is not None else (1, None, text)


@dataclass(frozen=True, slots=True)
class ChainJson:
    """One option chain, its strikes' entries serialised: `entries[k]` is the JSON of
    `{"strike": strikes[k], "CE": row | null, "PE": row | null}`, by strike."""

    underlying: str
    lotsize: int | None
    tick_size: float | None
    strikes: list[float | None]
    entries: list[bytes]


class SymbolIndex:
    """One immutable snapshot of the master contract (see the module docstring)."""

    __slots__ = (
        "_block_pos",
        "_browse",
        "_chain_json",
        "_chains",
        "_exchange_masks",
        "_expiries",
        "_expiry_rank",
        "_folded_names",
        "_groups",
        "_masks",
        "_prefix_ids",
        "_prefixes",
        "_sorted_folded",
        "_sorted_names",
        "_sorted_symbols",
        "_spot",
        "_starts",
        "_text",
        "_underlyings",
        "_unfolded",
        "brexchange",
        "brsymbol",
        "by_brsymbol",
        "by_symbol",
        "by_token",
        "counts",
        "exchange",
        "expiry",
        "instrumenttype",
        "loaded_at",
        "lotsize",
        "name",
        "size",
        "strike",
        "symbol",
        "tick_size",
        "token",
        "version",
    )

    version: int
    loaded_at: datetime | None
    size: int
    symbol: list[str]
    brsymbol: list[str]
    name: list[str | None]
    exchange: list[str]
    brexchange: list[str | None]
    token: list[str]
    expiry: list[str | None]
    strike: list[float | None]
    lotsize: list[int | None]
    instrumenttype: list[str | None]
    tick_size: list[float | None]
    by_symbol: dict[str, dict[str, int]]
    by_token: dict[str, dict[str, int]]
    by_brsymbol: dict[str, dict[str, int]]
    counts: dict[str, int]
    # {name: {(exchange, instrumenttype, expiry), ...}} for the expiry and underlying lists
    _expiries: dict[str | None, set[tuple[str, str | None, str | None]]]
    # Derivatives (rows with an expiry, or of a derivative type) by underlying: {name: {exchange:
    # row ids in rank order}}; the other rows (spot: equities, indices), in rank order.
    _groups: dict[str | None, dict[str, list[int]]]
    _spot: list[int]
    _folded_names: dict[str, list[str]]  # folded name -> the names spelt so
    _expiry_rank: dict[str, int]  # expiry -> its date's ordinal (_UNPARSABLE if not a date)
    # Filled in on first use, once per snapshot:
    _sorted_names: list[str | None] | None  # every name, sorted (rows without one last)
    _sorted_folded: list[str] | None  # every folded name, sorted (for prefix ranges)
    _sorted_symbols: array[int] | None  # row ids by case-folded symbol (for prefix ranges)
    _browse: dict[tuple[str | None, str | None], list[int]]  # (name, exchange) -> browse order
    _chains: dict[tuple[str, str], dict[str, list[int]]]  # (exchange, folded underlying) -> ...
    _chain_json: dict[tuple[str, str, str], ChainJson]  # (exchange, folded underlying, expiry)
    _underlyings: dict[tuple[str | None, bool, date], list[str]]
    _text: str
    _starts: array[int]  # _starts[i]: where row i's text begins; _starts[size]: the end
    _block_pos: list[int]  # text position of each block's first row, then the end
    _masks: dict[str | float, tuple[int, int]]  # key -> (blocks holding it, blocks looked at)
    _prefixes: dict[str, array[int] | None]  # symbol prefix -> its rows (_symbols_starting)
    _prefix_ids: int  # row ids held by _prefixes
    _exchange_masks: dict[str, int]
    _unfolded: dict[str, list[int]]  # folded symbol -> rows whose symbol is not spelt folded

    # --- as bytes -------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The snapshot as marshal data: how the start-up builder hands it to the workers
        (service/prebuilt_index.py). marshal rather than pickle: a third faster each way for
        these plain lists, dicts and strings, and an object shared within the snapshot (a name,
        an exchange, a row id) is still one object when read back. Read back only by the same
        Python.

        Only the columns and what is made from them row by row: the caches filled on first use
        start empty in the copy, and the lookup maps are made again by the reader, from the
        columns, in less time than reading them back would take (0.19 s against 0.17 s to read
        and 0.10 s to write, for 200k rows), so the builder is spared them."""
        state = {name: getattr(self, name) for name in self.__slots__ if name not in _NOT_SENT}
        state["_starts"] = self._starts.tobytes()
        state["loaded_at"] = self.loaded_at.isoformat() if self.loaded_at is not None else None
        return marshal.dumps(state)

    @classmethod
    def from_bytes(cls, data: bytes) -> SymbolIndex:
        state = marshal.loads(data)
        index = cls()
        for name, value in state.items():
            setattr(index, name, value)
        index._starts = array("I")
        index._starts.frombytes(state["_starts"])
        loaded_at = state["loaded_at"]
        index.loaded_at = datetime.fromisoformat(loaded_at) if loaded_at is not None else None
        index._clear_caches()
        index._make_lookups()
        return index

    def _make_lookups(self) -> None:
        self.by_symbol, self.by_token, self.by_brsymbol = _lookup_maps(
            self.exchange, self.symbol, self.token, self.brsymbol
        )

    def _clear_caches(self) -> None:
        self._masks, self._prefixes, self._prefix_ids = {}, {}, 0
        self._sorted_symbols = self._sorted_names = self._sorted_folded = None
        self._browse, self._chains, self._underlyings, self._chain_json = {}, {}, {}, {}

    # --- rows -----------------------------------------------------------------------------------

    def row(self, i: int) -> dict[str, Any]:
        return {
            "symbol": self.symbol[i],
            "brsymbol": self.brsymbol[i],
            "name": self.name[i],
            "exchange": self.exchange[i],
            "brexchange": self.brexchange[i],
            "token": self.token[i],
            "expiry": self.expiry[i],
            "strike": self.strike[i],
            "lotsize": self.lotsize[i],
            "instrumenttype": self.instrumenttype[i],
            "tick_size": self.tick_size[i],
        }

    def mapping(self, i: int) -> dict[str, Any]:
        """The token-lookup answer for row i."""
        return {
            "symbol": self.symbol[i],
            "brsymbol": self.brsymbol[i],
            "exchange": self.exchange[i],
            "brexchange": self.brexchange[i],
            "token": self.token[i],
            "lotsize": self.lotsize[i],
            "tick_size": self.tick_size[i],
            "instrumenttype": self.instrumenttype[i],
        }

    def find(self, exchange: str, *, symbol: str | None = None, token: str | None = None,
             brsymbol: str | None = None) -> int | None:  # fmt: skip
        """The row id for exactly one of symbol, token or broker symbol on `exchange`."""
        if symbol is not None:
            table, key = self.by_symbol.get(exchange), symbol
        elif token is not None:
            table, key = self.by_token.get(exchange), token
        else:
            table, key = self.by_brsymbol.get(exchange), brsymbol or ""
        return table.get(key) if table is not None else None

    # --- derivatives ----------------------------------------------------------------------------

    def names_for(self, underlying: str) -> list[str]:
        """The names spelt like `underlying` but for case."""
        return self._folded_names.get(fold(underlying), [])

    def expiry_date(self, expiry: str) -> date | None:
        rank = self._expiry_rank.get(expiry)
        return date.fromordinal(rank) if rank is not None and rank != _UNPARSABLE else None

    def blocks_of(self, exchange: str) -> list[int]:
        """The search blocks (of 1 << BLOCK_SHIFT rows) holding rows of `exchange`."""
        return _bits(self._exchange_masks.get(exchange, 0))

    def _live(self, expiry: str | None, today: date) -> bool:
        """Whether an instrument of `expiry` still trades on `today` (undated ones always do;
        an expiry that is not a date is kept rather than guessed expired)."""
        if expiry is None:
            return True
        rank = self._expiry_rank.get(expiry, _UNPARSABLE)
        return rank >= today.toordinal()

    def expiries(
        self,
        *,
        name: str | None,
        exchange: str | None,
        types: frozenset[str] | None,
        today: date | None = None,
    ) -> list[str]:
        """Distinct expiries matching the filters, in date order (unparsable ones last); with
        `today`, only those that have not expired by then."""
        names = self.names_for(name) if name is not None else self._expiries
        found = {
            expiry
            for each in names
            for ex, itype, expiry in self._expiries.get(each, ())
            if expiry is not None
            and (exchange is None or ex == exchange)
            and (types is None or itype in types)
        }
        if today is not None:
            found = {expiry for expiry in found if self._live(expiry, today)}
        return sorted(found, key=_expiry_key)

    def underlyings(self, *, exchange: str | None, include_futures: bool, today: date) -> list[str]:
        """Names with options on `exchange` (any exchange when None), and with `include_futures`
        also those with a future that has not expired by `today`; sorted."""
        key = (exchange, include_futures, today)
        cached = self._underlyings.get(key)
        if cached is not None:
            return cached
        found = []
        for name, group in self._expiries.items():
            if name is None:
                continue
            for ex, itype, expiry in group:
                if exchange is not None and ex != exchange:
                    continue
                if itype in OPTION_TYPES or (
                    include_futures and itype in FUTURE_TYPES and self._live(expiry, today)
                ):
                    found.append(name)
                    break
        found.sort()
        if len(self._underlyings) >= 64:  # one entry per day and filter: a handful in practice
            self._underlyings.clear()
        self._underlyings[key] = found
        return found

    def option_chains(self, exchange: str, underlying: str) -> dict[str, list[int]]:
        """{expiry: option row ids sorted by strike, then CE before PE} for one underlying on
        one exchange; built on first use and kept for the snapshot's life."""
        key = (exchange, fold(underlying))
        chains = self._chains.get(key)
        if chains is None:
            chains = {}
            for name in self.names_for(underlying):
                for i in self._groups[name].get(exchange, ()):
                    expiry = self.expiry[i]
                    if expiry is not None and self.instrumenttype[i] in OPTION_TYPES:
                        chains.setdefault(expiry, []).append(i)
            strikes, types = self.strike, self.instrumenttype
            for ids in chains.values():  # an option loaded without a strike comes last
                ids.sort(key=lambda i: (strikes[i] is None, strikes[i] or 0.0, types[i] or ""))
            self._chains[key] = chains
        return chains

    def chain_json(self, exchange: str, underlying: str, expiry: str) -> ChainJson:
        """One option chain (`option_chains`' ids of `expiry`) with each strike's entry already
        JSON: a trader's screen asks for the same few chains over and over, and serialising a
        full chain's rows cost more than the rest of its request. Kept for the snapshot's life,
        the most recently built _CHAIN_JSON_LIMIT of them."""
        key = (exchange, fold(underlying), expiry)
        chain = self._chain_json.get(key)
        if chain is None:
            ids = self.option_chains(exchange, underlying)[expiry]
            pairs: dict[float | None, dict[str, Any]] = {}
            for i in ids:
                strike = self.strike[i]
                pair = pairs.get(strike)
                if pair is None:
                    pair = pairs[strike] = {"strike": strike, "CE": None, "PE": None}
                pair[self.instrumenttype[i] or "CE"] = self.row(i)
            first = ids[0]
            chain = ChainJson(
                underlying=self.name[first] or underlying,
                lotsize=self.lotsize[first],
                tick_size=self.tick_size[first],
                strikes=list(pairs),
                entries=[orjson.dumps(pair) for pair in pairs.values()],
            )
            if len(self._chain_json) >= _CHAIN_JSON_LIMIT:
                del self._chain_json[next(iter(self._chain_json))]
            self._chain_json[key] = chain
        return chain

    def _browse_key(self, i: int) -> tuple[tuple[int, str], int, float, str, str, str]:
        """Underlying (rows without a name last), expiry date (undated first), strike, type,
        then symbol and exchange."""
        name, expiry, strike = self.name[i], self.expiry[i], self.strike[i]
        return (
            (0, name) if name is not None else (1, ""),
            _UNDATED if expiry is None else self._expiry_rank.get(expiry, _UNPARSABLE),
            -1.0 if strike is None else strike,
            self.instrumenttype[i] or "",
            self.symbol[i],
            self.exchange[i],
        )

    def _browse_order(self, name: str | None, exchange: str | None) -> list[int]:
        """The derivatives of one underlying (on one exchange, or all) in browse order."""
        key = (name, exchange)
        order = self._browse.get(key)
        if order is None:
            groups = self._groups.get(name, {})
            if exchange is not None:
                ids: Iterable[int] = groups.get(exchange, ())
            else:
                ids = itertools.chain.from_iterable(groups.values())
            order = self._browse[key] = sorted(ids, key=self._browse_key)
        return order

    def _spot_order(self, exchange: str | None) -> list[int]:
        """The rows that are not derivatives (of one exchange, or all) in browse order."""
        key = (_SPOT, exchange)
        order = self._browse.get(key)
        if order is None:
            ids = self._spot
            if exchange is not None:
                exchanges = self.exchange
                ids = [i for i in ids if exchanges[i] == exchange]
            order = self._browse[key] = sorted(ids, key=self._browse_key)
        return order

    def _names_sorted(self) -> list[str | None]:
        if self._sorted_names is None:
            named = sorted(n for n in self._groups if n is not None)
            self._sorted_names = [*named, None] if None in self._groups else [*named]
        return self._sorted_names

    def _folded_with_prefix(self, prefix: str) -> Iterator[str]:
        """Folded names that start with `prefix`, in order."""
        if self._sorted_folded is None:
            self._sorted_folded = sorted(self._folded_names)
        names = self._sorted_folded
        for k in range(bisect_left(names, prefix), len(names)):
            if not names[k].startswith(prefix):
                break
            yield names[k]

    # --- search ---------------------------------------------------------------------------------

    def search(
        self,
        terms: Sequence[str],
        *,
        exchange: str | None = None,
        types: frozenset[str] | None = None,
        expiry: str | None = None,
        underlying: str | None = None,
        strike_min: float | None = None,
        strike_max: float | None = None,
        limit: int = 50,
    ) -> list[int]:
        """Row ids of the best `limit` matches of the terms and filters.

        Every (case-folded) term must be a substring of the symbol, broker symbol, name or token,
        or equal the strike when it is a number. With terms, the rows whose symbol is the query
        come first, then those whose underlying (name) is the first term, then those whose
        underlying starts with it, then those whose symbol does, then the rest; each group in
        rank order. Without terms, rows come by underlying, expiry date, strike and instrument
        type (what an option-chain or basket screen lists)."""
        if self.size == 0 or limit <= 0:
            return []
        numbers = [numeric_term(t) for t in terms]
        names = set(self.names_for(underlying)) if underlying is not None else None
        if names is not None and not names:
            return []
        strikes = self.strike

        def accept(i: int) -> bool:
            if exchange is not None and self.exchange[i] != exchange:
                return False
            if types is not None and self.instrumenttype[i] not in types:
                return False
            if expiry is not None and self.expiry[i] != expiry:
                return False
            if names is not None and (
                self.name[i] not in names
                or (self.expiry[i] is None and self.instrumenttype[i] not in DERIVATIVE_TYPES)
            ):
                return False  # `underlying` names the underlying of derivatives
            if strike_min is not None or strike_max is not None:
                strike = strikes[i]
                if strike is None:
                    return False
                if (strike_min is not None and strike < strike_min) or (
                    strike_max is not None and strike > strike_max
                ):
                    return False
            if terms:
                text = self._text[self._starts[i] : self._starts[i + 1] - 1]
                strike = strikes[i]
                for term, number in zip(terms, numbers, strict=True):
                    if term not in text and (number is None or strike != number):
                        return False
            return True

        if not terms:
            return self._browse_matches(names, exchange, accept, limit)
        return self._ranked_matches(terms, numbers, exchange, accept, limit)

    def _browse_matches(
        self,
        names: set[str] | None,
        exchange: str | None,
        accept: Callable[[int], bool],
        limit: int,
    ) -> list[int]:
        found: list[int] = []
        listed = sorted(names) if names is not None else self._names_sorted()

        def derivatives() -> Iterator[int]:
            for name in listed:
                if exchange is None or exchange in self._groups.get(name, {}):
                    yield from self._browse_order(name, exchange)

        rows: Iterable[int] = derivatives()
        if names is None:  # the spot rows too, each in its place by name
            rows = heapq.merge(rows, self._spot_order(exchange), key=self._browse_key)
        for i in rows:
            if accept(i):
                found.append(i)
                if len(found) >= limit:
                    break
        return found

    def _ranked_matches(
        self,
        terms: Sequence[str],
        numbers: Sequence[float | None],
        exchange: str | None,
        accept: Callable[[int], bool],
        limit: int,
    ) -> list[int]:
        """Each group of the ranking is looked for only in the blocks holding every term, so a
        query costs about what it did before the groups: the rows of a popular underlying are
        many, those of it in the blocks holding "24000" and "CE" few."""
        found: list[int] = []
        taken: set[int] = set()

        def take(ids: Iterable[int]) -> bool:
            """Add the accepted ones; True once `limit` are found."""
            for i in ids:
                if i not in taken and accept(i):
                    taken.add(i)
                    found.append(i)
                    if len(found) >= limit:
                        return True
            return False

        first = terms[0]
        if take(self._exact(" ".join(terms))):
            return found
        blocks = self._candidate_blocks(terms, numbers, exchange)
        if not blocks:
            return found
        # Every group below may walk the candidates: they are found once, on demand, and kept.
        candidates = _Replay(self._candidates(terms, numbers, exchange, blocks))
        # The underlying named exactly, then those that start with the term, then the symbols
        # that start with it: each group is read directly where it is small in these blocks,
        # else found among the candidates (few when a term is rare, early when it is common).
        names = self.name
        exact_spot, prefixed_spot = self._spot_named(first, blocks)
        exact = self._folded_names.get(first, [])
        exact_names = {*exact, *(names[i] for i in exact_spot)}
        derivatives = self._rows_of_names(exact, blocks)
        rows = _merged(derivatives, exact_spot) if derivatives is not None else None
        if take(self._group(rows, lambda i: names[i] in exact_names, candidates)):
            return found
        prefixed = [
            name
            for folded in self._folded_with_prefix(first)
            if folded != first
            for name in self._folded_names[folded]
        ]
        prefixed_names = {*prefixed, *(names[i] for i in prefixed_spot)}
        listed: list[int] | None = None
        if len(prefixed) * len(blocks) <= _BISECT_BUDGET:
            derivatives = self._rows_of_names(prefixed, blocks)
            listed = _merged(derivatives, prefixed_spot) if derivatives is not None else None
        if take(self._group(listed, lambda i: names[i] in prefixed_names, candidates)):
            return found
        text, starts = self._text, self._starts
        starting = self._symbols_starting(first, blocks)
        if take(self._group(starting, lambda i: text.startswith(first, starts[i]), candidates)):
            return found
        # Then the rest.
        take(candidates)
        return found

    @staticmethod
    def _group(
        listed: list[int] | None, member: Callable[[int], bool], candidates: Iterable[int]
    ) -> Iterable[int]:
        """One group of the ranking in rank order: its rows as listed when they are few, else
        the candidates that belong to it."""
        if listed is not None and len(listed) <= _DIRECT_ROWS:
            return listed
        return filter(member, candidates)

    def _spot_named(self, first: str, blocks: list[int]) -> tuple[list[int], list[int]]:
        """Spot rows within `blocks` whose folded name is `first`, and those whose folded name
        starts with it (but is not it), each in rank order."""
        key = (_SPOT_NAMES, None)
        order = self._browse.get(key)
        names = self.name
        if order is None:  # once per snapshot: the spot rows by folded name
            named = [i for i in self._spot if names[i] is not None]
            order = self._browse[key] = sorted(named, key=lambda i: fold(names[i] or ""))

        def folded(i: int) -> str:
            return fold(names[i] or "")

        lo = bisect_left(order, first, key=folded)
        hi = bisect_left(order, first + "\U0010ffff", lo, key=folded)
        wanted = set(blocks)
        exact: list[int] = []
        prefixed: list[int] = []
        for i in order[lo:hi]:
            if i >> BLOCK_SHIFT in wanted:
                (exact if folded(i) == first else prefixed).append(i)
        exact.sort()
        prefixed.sort()
        return exact, prefixed

    def _rows_of_names(self, names: Sequence[str], blocks: list[int]) -> list[int] | None:
        """The derivatives of these names within `blocks`, in rank order; None as soon as they
        are more than a group read directly (the caller then walks the candidates)."""
        out: list[int] = []
        step = 1 << BLOCK_SHIFT
        for name in names:
            ids = self._name_ids(name)
            for block in blocks:
                first = block * step
                lo = bisect_left(ids, first)
                hi = bisect_left(ids, first + step, lo)
                if hi > lo:
                    out.extend(ids[lo:hi])
                    if len(out) > _DIRECT_ROWS:
                        return None
        if len(names) > 1:
            out.sort()
        return out

    def _name_ids(self, name: str) -> list[int]:
        """Every row of one name, in rank order (kept for the snapshot's life)."""
        ids = self._browse.get((name, _ALL_ROWS))
        if ids is None:
            groups = self._groups.get(name, {})
            ids = next(iter(groups.values())) if len(groups) == 1 else sorted(
                itertools.chain.from_iterable(groups.values())
            )  # fmt: skip
            self._browse[(name, _ALL_ROWS)] = ids
        return ids

    def _symbols_starting(self, prefix: str, blocks: list[int]) -> list[int] | None:
        """Rows within `blocks` whose case-folded symbol starts with `prefix`, in rank order;
        None when the prefix is shared by too many symbols to list them."""
        rows = self._prefixes.get(prefix, _UNSEEN)
        if rows is _UNSEEN:
            rows = self._prefixed_rows(prefix)
            size = len(rows) if rows is not None else 0
            if len(self._prefixes) >= _CACHE_LIMIT or self._prefix_ids + size > _PREFIX_IDS:
                self._prefixes.clear()
                self._prefix_ids = 0
            self._prefixes[prefix] = rows
            self._prefix_ids += size
        if rows is None:
            return None
        if len(rows) <= 4 * len(blocks):
            wanted = set(blocks)
            return [i for i in rows if i >> BLOCK_SHIFT in wanted]
        found: list[int] = []
        for block in blocks:  # few blocks among many rows: each block's run found by bisection
            lo = bisect_left(rows, block << BLOCK_SHIFT)
            hi = bisect_left(rows, (block + 1) << BLOCK_SHIFT, lo)
            found.extend(rows[lo:hi])
        return found

    def _prefixed_rows(self, prefix: str) -> array[int] | None:
        """Every row whose case-folded symbol starts with `prefix`, in rank order (None past
        _PREFIX_RANGE of them); kept per prefix, as terms recur."""
        order = self._sorted_symbols
        symbols = self.symbol
        if order is None:
            # Once per snapshot, on the first search that gets this far.
            key: Callable[[int], str] = (
                (lambda i: fold(symbols[i])) if self._unfolded else symbols.__getitem__
            )
            order = self._sorted_symbols = array("I", sorted(range(self.size), key=key))

        def folded(i: int) -> str:
            return fold(symbols[i])

        lo = bisect_left(order, prefix, key=folded)
        hi = bisect_left(order, prefix + "\U0010ffff", lo, key=folded)
        if hi - lo > _PREFIX_RANGE:
            return None
        return array("I", sorted(order[lo:hi]))

    def _exact(self, query: str) -> list[int]:
        """Rows whose case-folded symbol is `query` (itself folded), in rank order: those spelt
        exactly so are one run of the rank order; the others were noted when building."""
        symbols = self.symbol
        target = (len(query), query)

        def key(i: int) -> tuple[int, str]:
            return (len(symbols[i]), symbols[i])

        i = bisect_left(range(self.size), target, key=key)
        out = []
        while i < self.size and symbols[i] == query:
            out.append(i)
            i += 1
        others = self._unfolded.get(query)
        return sorted(out + others) if others else out

    def _candidate_blocks(
        self, terms: Sequence[str], numbers: Sequence[float | None], exchange: str | None
    ) -> list[int]:
        """The blocks that hold every term (and rows of `exchange`), lowest first."""
        blocks = (1 << (len(self._block_pos) - 1)) - 1
        if exchange is not None:
            blocks &= self._exchange_masks.get(exchange, 0)
        # Terms already looked for first (free), then the longest (likely the rarest): each one
        # is looked for only in the blocks the ones before it left.
        for term, number in sorted(
            zip(terms, numbers, strict=True), key=lambda t: (t[0] not in self._masks, -len(t[0]))
        ):
            found = self._mask(term, blocks, self._block_has_text)
            if number is not None:
                found |= self._mask(number, blocks, self._block_has_strike)
            blocks &= found
        return _bits(blocks)

    def _candidates(
        self,
        terms: Sequence[str],
        numbers: Sequence[float | None],
        exchange: str | None,
        found_blocks: list[int] | None = None,
    ) -> Iterator[int]:
        """Row ids, in rank order, that may match (a superset of the matches): from the blocks
        that hold every term, the rows holding the term that is rarest there."""
        if found_blocks is None:
            found_blocks = self._candidate_blocks(terms, numbers, exchange)
        step = 1 << BLOCK_SHIFT
        if not terms:
            for block in found_blocks:
                yield from range(block * step, min(block * step + step, self.size))
            return
        needle, number = self._driver(terms, numbers, found_blocks[:2])
        text, starts, strikes = self._text, self._starts, self.strike
        for block in found_blocks:
            first = block * step
            last = min(first + step, self.size)
            end = starts[last]
            rows = []
            pos = text.find(needle, starts[first], end)
            while pos != -1:
                i = bisect_right(starts, pos, first, last) - 1
                rows.append(i)
                pos = text.find(needle, starts[i + 1], end)
            if number is not None and self._block_has_strike(block, number):
                # A number also matches the strike, which the text need not show.
                same = map(eq, strikes[first:last], itertools.repeat(number))
                rows = sorted(set(rows).union(itertools.compress(range(first, last), same)))
            yield from rows

    def _driver(
        self, terms: Sequence[str], numbers: Sequence[float | None], sample: list[int]
    ) -> tuple[str, float | None]:
        """The term with the fewest hits in the first candidate blocks: the one to look for."""
        step = 1 << BLOCK_SHIFT
        best: tuple[int, str, float | None] | None = None
        for term, number in zip(terms, numbers, strict=True):
            hits = 0
            for block in sample:
                first = block * step
                last = min(first + step, self.size)
                hits += self._text.count(term, self._starts[first], self._starts[last])
                if number is not None:
                    hits += self.strike[first:last].count(number)
            if best is None or hits < best[0]:
                best = (hits, term, number)
        assert best is not None
        return best[1], best[2]

    def _mask(
        self, key: str | float, within: int, test: Callable[[int, Any], bool]
    ) -> int:  # fmt: skip
        """The blocks among `within` for which `test(block, key)` holds.

        Kept per key as (blocks found, blocks looked at), so that a key is never looked for
        twice in the same block of this snapshot: terms recur (NIFTY, CE, FUT...), and a new
        one is looked for only where the other terms of its query allow."""
        found, scope = self._masks.get(key, (0, 0))
        todo = within & ~scope
        if todo:
            for block in _bits(todo):
                if test(block, key):
                    found |= 1 << block
            scope |= todo
            if len(self._masks) >= _CACHE_LIMIT:
                self._masks.clear()
            self._masks[key] = (found, scope)
        return found & within

    def _block_has_text(self, block: int, term: str) -> bool:
        return self._text.find(term, self._block_pos[block], self._block_pos[block + 1]) != -1

    def _block_has_strike(self, block: int, strike: float) -> bool:
        first = block << BLOCK_SHIFT
        return strike in self.strike[first : first + (1 << BLOCK_SHIFT)]


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cyclic garbage collection during one synchronous step of a build: the step makes tens
    of thousands of containers that all survive, and the collector would walk them over and over.
    Reference counting still frees everything else meanwhile.

    Only around code that never awaits: no other task runs while the collector is off, so the
    rest of the process never runs without it (it is back on between two chunks of rows)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _set_aside() -> None:
    """Leave every object that exists now out of the collector's walks (gc.freeze).

    While a snapshot is built, the old one's millions of references would be walked by every
    full collection: measured on 200k rows (a busy 2-core machine), full collections took 1.1
    to 2.2 s of a build, 0.1 to 0.2 s with the old objects set aside. The collector keeps
    running over everything allocated meanwhile, requests included."""
    gc.freeze()


def _handed_back(index: SymbolIndex, *, collect: bool = True) -> None:
    """Once the new snapshot serves, hand what was set aside back to the collector; a large
    snapshot is then walked by one full collection (so that a cycle that died while set aside
    is freed now) and set aside again with everything else.

    Left to the collector, a large snapshot would be walked by the next full collection at a
    moment nobody chose: 130-190 ms during which no request is answered (gc callbacks on the
    bench service; the option chain's p99 read 134-165 ms for it). Here that walk happens once,
    at the end of the rebuild it belongs to, and the collections between two rebuilds walk only
    what was made since. An object set aside is still freed as soon as nothing refers to it;
    only a reference cycle that dies between two rebuilds waits for the next one. A small
    snapshot costs the collector little: it is simply handed back (and the many app instances
    of a test run pay no full collection each).

    The first snapshot of a process skips the collection (`collect=False`): no old snapshot
    died, and what else it would find (a thousand objects the imports left) is not worth the
    quarter of a second it costs the start."""
    gc.unfreeze()
    if index.size >= SET_ASIDE_ROWS:
        if collect:
            gc.collect()
        gc.freeze()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _synchronous_build_step(step: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(step)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with cycle_collection_paused():
            return step(*args, **kwargs)

    return paused


class IndexBuilder:
    """Builds a SymbolIndex from chunks of rows in search-rank order, each chunk given as its
    columns (eleven equal-length sequences, in COLUMNS order). The work is done chunk by chunk,
    so that a caller can let other tasks run in between."""

    def __init__(
        self,
        version: int,
        loaded_at: datetime | None,
        previous: SymbolIndex | None = None,
        *,
        lookups: bool = True,
    ) -> None:
        """`lookups=False` leaves the lookup maps out of the snapshot (for one that is only
        handed over as bytes: they are made again where it is read, `SymbolIndex.from_bytes`)."""
        self.version = version
        self._lookups = lookups
        self.loaded_at = loaded_at
        self._previous = previous
        self._old: dict[str, str] | None = None
        self._columns: list[list[Any]] = [[] for _ in COLUMNS]
        # One object per distinct value, per type (1 == 1.0 must not make a tick size an int).
        self._strings: dict[Any, Any] = {}
        self._floats: dict[Any, Any] = {}
        self._ints: dict[Any, Any] = {}
        self._texts: list[str] = []
        self._lengths: list[int] = []
        self._expiries: set[tuple[str | None, str, str | None, str | None]] = set()
        self._unfolded: dict[str, list[int]] = {}
        self._groups: dict[str | None, dict[str, list[int]]] = {}
        self._spot: list[int] = []

    @_synchronous_build_step
    def add(self, columns: Sequence[Sequence[Any]]) -> None:
        (symbol, brsymbol, name, exchange, brexchange, token, expiry, strike, lotsize,
         itype, tick) = columns  # fmt: skip
        if not symbol:
            return
        base = len(self._columns[0])
        if self._previous is not None:
            # A daily contract repeats nearly every instrument of the day before: the new
            # snapshot shares the old one's strings instead of holding copies. Peak memory during
            # a rebuild is then one set of strings, not two, and the heap stays dense when the
            # old snapshot goes.
            reuse: Callable[[str, str], str] = self._old_strings().get
            symbol, brsymbol, token = (
                list(map(reuse, values, values)) for values in (symbol, brsymbol, token)
            )
        # Values that repeat (names, exchanges, expiries, numbers) become one shared object each.
        shared: Callable[[Any, Any], Any] = self._strings.setdefault
        name, exchange, brexchange, expiry, itype = (
            list(map(shared, values, values))
            for values in (name, exchange, brexchange, expiry, itype)
        )
        strike = list(map(self._floats.setdefault, strike, strike))
        tick = list(map(self._floats.setdefault, tick, tick))
        lotsize = list(map(self._ints.setdefault, lotsize, lotsize))
        # The broker symbol is often the symbol itself: keep one object.
        brsymbol = [s if b == s else b for s, b in zip(symbol, brsymbol, strict=True)]
        for column, values in zip(
            self._columns,
            (
                symbol,
                brsymbol,
                name,
                exchange,
                brexchange,
                token,
                expiry,
                strike,
                lotsize,
                itype,
                tick,
            ),
            strict=True,
        ):
            column.extend(values)
        ids = _row_ids(base, len(symbol))
        symbols = "\n".join(symbol)
        if fold(symbols) != symbols:  # lower-case letters: rare in a contract
            for i, sym in zip(ids, symbol, strict=True):
                if fold(sym) != sym:
                    self._unfolded.setdefault(fold(sym), []).append(i)
        names = [n if n is not None else "" for n in name]
        texts = list(map(" ".join, zip(symbol, brsymbol, names, token, strict=True)))
        self._texts.append(fold("\n".join(texts)))
        self._lengths.extend(map(len, texts))
        groups, spot, expiries = self._groups, self._spot, self._expiries
        for i, nm, ex, exp, it in zip(ids, name, exchange, expiry, itype, strict=True):
            if exp is None and it not in DERIVATIVE_TYPES:
                spot.append(i)
                continue
            expiries.add((nm, ex, it, exp))
            by_exchange = groups.get(nm)
            if by_exchange is None:
                by_exchange = groups[nm] = {}
            rows = by_exchange.get(ex)
            if rows is None:
                by_exchange[ex] = [i]
            else:
                rows.append(i)

    def _old_strings(self) -> dict[str, str]:
        """The previous snapshot's symbols, broker symbols and tokens, each mapped to itself."""
        if self._old is None:
            previous = self._previous
            assert previous is not None
            self._old = dict(zip(previous.symbol, previous.symbol, strict=True))
            self._old.update(zip(previous.brsymbol, previous.brsymbol, strict=True))
            self._old.update(zip(previous.token, previous.token, strict=True))
        return self._old

    @_synchronous_build_step
    def add_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        # A pass per column with itemgetter: three times cheaper than zip(*rows) on records.
        if rows:
            self.add([list(map(itemgetter(k), rows)) for k in range(len(COLUMNS))])

    @_synchronous_build_step
    def finish(self) -> SymbolIndex:
        self._previous = self._old = None
        index = SymbolIndex()
        index.version = self.version
        index.loaded_at = self.loaded_at
        for column, values in zip(COLUMNS, self._columns, strict=True):
            setattr(index, column, values)
        size = index.size = len(index.symbol)
        index.counts = dict(Counter(index.exchange))
        if self._lookups:
            index._make_lookups()
        else:
            index.by_symbol, index.by_token, index.by_brsymbol = {}, {}, {}
        text = index._text = "\n".join(self._texts) + "\n" if size else ""
        self._texts.clear()
        starts = array("I", [0])
        starts.extend(itertools.accumulate(length + 1 for length in self._lengths))
        index._starts = starts
        index._block_pos = [starts[i] for i in range(0, size, 1 << BLOCK_SHIFT)] + [len(text)]
        index._unfolded = self._unfolded
        exchange_masks: dict[str, int] = dict.fromkeys(index.counts, 0)
        for block, first in enumerate(range(0, size, 1 << BLOCK_SHIFT)):
            for ex in set(index.exchange[first : first + (1 << BLOCK_SHIFT)]):
                exchange_masks[ex] |= 1 << block
        index._exchange_masks = exchange_masks
        expiries: dict[str | None, set[tuple[str, str | None, str | None]]] = {}
        ranks: dict[str, int] = {}
        for name, exchange, itype, expiry in self._expiries:
            expiries.setdefault(name, set()).add((exchange, itype, expiry))
            if expiry is not None and expiry not in ranks:
                parsed = parse_expiry(expiry)
                ranks[expiry] = parsed.toordinal() if parsed is not None else _UNPARSABLE
        index._expiries = expiries
        index._expiry_rank = ranks
        index._groups = self._groups
        index._spot = self._spot
        folded: dict[str, list[str]] = {}
        for name in self._groups:
            if name is not None:
                folded.setdefault(fold(name), []).append(name)
        index._folded_names = folded
        index._clear_caches()
        return index


def _lookup_maps(
    exchange: list[str], symbol: list[str], token: list[str], brsymbol: list[str]
) -> tuple[dict[str, dict[str, int]], ...]:
    """{exchange: {symbol: row id}}, and likewise by token and by broker symbol.

    Made a whole exchange at a time, by dict() over zipped columns rather than three dict
    operations per row in Python: a third of the time. Where a token or broker symbol repeats
    within an exchange, the row ranked first wins (built from the last row back, so that the
    first row's entry is written last), whatever order the rows were stored in."""
    ids = sorted(_row_ids(0, len(exchange)), key=exchange.__getitem__)  # stable: rank order kept
    exchanges = list(map(exchange.__getitem__, ids))
    maps: tuple[dict[str, dict[str, int]], ...] = ({}, {}, {})
    for ex in dict.fromkeys(exchanges):
        rows = ids[bisect_left(exchanges, ex) : bisect_right(exchanges, ex)]
        maps[0][ex] = dict(zip(map(symbol.__getitem__, rows), rows, strict=True))
        backwards = rows[::-1]
        maps[1][ex] = dict(zip(map(token.__getitem__, backwards), backwards, strict=True))
        maps[2][ex] = dict(zip(map(brsymbol.__getitem__, backwards), backwards, strict=True))
    return maps


# Row ids are the same int objects in every snapshot (ints above 256 are not shared by Python).
_ROW_IDS: list[int] = []


def _row_ids(start: int, count: int) -> list[int]:
    if len(_ROW_IDS) < start + count:
        _ROW_IDS.extend(range(len(_ROW_IDS), start + count))
    return _ROW_IDS[start : start + count]


class _Replay:
    """An iterator that can be walked again from the start: what was drawn from it is kept, and
    only what no walk reached yet is drawn."""

    def __init__(self, source: Iterator[int]) -> None:
        self._source = source
        self._seen: list[int] = []

    def __iter__(self) -> Iterator[int]:
        seen = self._seen
        k = 0
        while True:
            if k < len(seen):
                yield seen[k]
            else:
                item = next(self._source, None)
                if item is None:
                    return
                seen.append(item)
                yield item
            k += 1


def _merged(one: list[int], other: list[int]) -> list[int]:
    """Two sorted lists of row ids as one."""
    return sorted(one + other) if one and other else one or other


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of `mask`, lowest first."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None
    return trim


_trim = _malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc only).

    A rebuild frees as much as it allocates: the old snapshot and the new one's temporaries.
    glibc keeps freed memory in the middle of its heap mapped, so without this the resident size
    after each rebuild would be that of its peak, not of the one snapshot kept."""
    if _trim is not None:
        _trim(0)


class SymbolIndexHolder:
    """The current snapshot of one app instance, and the one way it is replaced.

    `refresh()` compares the database's contract version with the snapshot's and rebuilds when
    they differ; concurrent calls (the local after-commit signal, the NOTIFY echo, a load waiting
    for its own contract) share one rebuild. The old snapshot serves until the new one is whole.
    """

    def __init__(
        self,
        read_version: Callable[[], Awaitable[int]],
        read_index: Callable[[SymbolIndex | None], Awaitable[SymbolIndex]],
        prebuilt: Callable[[], Awaitable[SymbolIndex | None]] | None = None,
    ) -> None:
        self._read_version = read_version
        self._read_index = read_index
        # Asked once, by the first refresh: a snapshot built elsewhere (service/prebuilt_index.py)
        # that serves in place of a first build, once its version is checked like any other.
        self._prebuilt = prebuilt
        self._lock = asyncio.Lock()
        self.index: SymbolIndex | None = None

    async def refresh(self, *, force: bool = False) -> SymbolIndex:
        async with self._lock:
            if self.index is None and self._prebuilt is not None:
                await self._adopt_prebuilt()
            current = self.index
            if not force and current is not None and await self._read_version() == current.version:
                return current
            started = time.perf_counter()
            _set_aside()
            try:
                index = await self._read_index(current)
            except BaseException:
                if current is not None:
                    _handed_back(current)  # the old snapshot serves on, set aside as it was
                else:
                    gc.unfreeze()
                raise
            self.index = index
            first = current is None
            del current  # the old snapshot goes once the requests holding it are answered
            _handed_back(index, collect=not first)
            release_free_memory()
            logger.info(
                "symbol index at version %d: %d rows in %.0f ms",
                index.version,
                index.size,
                (time.perf_counter() - started) * 1000,
            )
            return index

    async def _adopt_prebuilt(self) -> None:
        prebuilt, self._prebuilt = self._prebuilt, None
        assert prebuilt is not None
        started = time.perf_counter()
        try:
            index = await prebuilt()
        except Exception:
            logger.exception("the start-up builder's index could not be read; reading the database")
            return
        if index is not None:
            self.index = index
            _handed_back(index, collect=False)
            logger.info(
                "symbol index at version %d: %d rows from the start-up builder in %.0f ms",
                index.version,
                index.size,
                (time.perf_counter() - started) * 1000,
            )

    async def on_invalidate(self, _key: str) -> None:
        """Bus handler: rebuild in the background; a failure keeps the old snapshot."""
        try:
            await self.refresh()
        except Exception:
            logger.exception("symbol index refresh failed; serving version %s",
                             self.index.version if self.index else None)  # fmt: skip
