"""What an import did, table by table, and a progress bar while it runs."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

MAX_EXAMPLES = 3


@dataclass
class TableReport:
    """One legacy table: rows imported, rows already there, rows skipped (by reason)."""

    name: str  # "openalgo.users"
    target: str  # the service's table(s)
    read: int = 0
    imported: int = 0
    present: int = 0  # already in the service (an earlier run, or written by the service)
    skipped: Counter[str] = field(default_factory=Counter)
    # Legacy ids of skipped rows, a few per reason, so an operator can look them up.
    examples: dict[str, list[object]] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)  # imported, with this said about them
    earlier: int = 0  # imported by earlier runs (tables resumed from the ledger)
    missing: bool = False  # the legacy file has no such table

    def skip(self, reason: str, legacy_id: object = None) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if legacy_id is not None and len(examples) < MAX_EXAMPLES:
            examples.append(legacy_id)

    def note(self, what: str, count: int = 1) -> None:
        self.notes[what] += count

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class Report:
    dry_run: bool
    tables: list[TableReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    columns_not_imported: list[str] = field(default_factory=list)

    def table(self, name: str, target: str) -> TableReport:
        report = TableReport(name, target)
        self.tables.append(report)
        return report

    @property
    def skipped_total(self) -> int:
        return sum(t.skipped_total for t in self.tables)

    def render(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        lines = [f"legacy import{' (dry run: nothing written)' if self.dry_run else ''}"]
        width = max((len(t.name) for t in self.tables), default=10)
        for t in self.tables:
            if t.missing:
                lines.append(f"  {t.name:<{width}}  not in the legacy file")
                continue
            parts = [f"{verb} {t.imported}"]
            if t.present:
                parts.append(f"already present {t.present}")
            if t.earlier:
                parts.append(f"imported by an earlier run {t.earlier}")
            parts.append(f"skipped {t.skipped_total}")
            lines.append(f"  {t.name:<{width}}  -> {t.target}: {', '.join(parts)}")
            for reason, count in t.skipped.most_common():
                ids = t.examples.get(reason)
                where = f" (legacy id {', '.join(map(str, ids))}…)" if ids else ""
                lines.append(f"  {'':<{width}}     skipped {count}: {reason}{where}")
            for what, count in t.notes.most_common():
                lines.append(f"  {'':<{width}}     {count}: {what}")
        if self.columns_not_imported:
            lines.append("legacy columns with no place in this service (not imported):")
            lines.extend(f"  {c}" for c in self.columns_not_imported)
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  {w}" for w in self.warnings)
        return "\n".join(lines)


class Progress:
    """A bar per table on a terminal; on anything else a plain line now and then."""

    def __init__(self, name: str, total: int, stream: TextIO | None = None) -> None:
        self.name = name
        self.total = total
        self.done = 0
        self._stream = stream or sys.stdout
        self._tty = self._stream.isatty()
        self._started = self._last = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._tty and now - self._last >= 0.1:
            self._draw()
            self._last = now
        elif not self._tty and now - self._last >= 10:
            self._stream.write(f"{self.name}: {self.done}/{self.total} rows\n")
            self._stream.flush()
            self._last = now

    def _draw(self) -> None:
        share = self.done / self.total if self.total else 1.0
        filled = int(share * 30)
        bar = "#" * filled + "-" * (30 - filled)
        rate = self.done / max(time.monotonic() - self._started, 1e-6)
        self._stream.write(
            f"\r{self.name:<32} [{bar}] {self.done}/{self.total} ({rate:,.0f} rows/s)"
        )
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._draw()
            self._stream.write("\n")
        else:
            self._stream.write(f"{self.name}: {self.done}/{self.total} rows\n")
        self._stream.flush()
