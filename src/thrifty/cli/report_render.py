"""How ``thrifty report`` (and the demo) print a spend report: a table, JSON or CSV.

The three formats carry the same figures under the same names: JSON objects and CSV columns
are the ``ReportRow`` fields, the label of each row under ``group`` (the model, day, task...,
or ``total`` when not grouped), so a script reads the same schema whatever ``--by`` is. The
table, for people, names its first column after the grouping (``model``, ``day``, ``scope``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import TYPE_CHECKING

from thrifty.strictjson import dumps

if TYPE_CHECKING:
    # Only for the types: `dollars` is imported by command modules that every `thrifty`
    # invocation loads (estimate, outcomes), and the ledger's modules add ~20 ms to its start-up.
    from thrifty.ledger.report import ReportRow


def dollars(v: float | None) -> str:
    """A dollar figure for people: cents from one cent up; below, two significant digits, so
    small figures are told apart instead of all showing 0.00."""
    if v is None:
        return "unknown"
    if not math.isfinite(v):  # finite inputs can still overflow (1e300 requests x 1e300 tokens)
        return "overflow"
    return f"{v:,.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}" if abs(v) >= 1e-4 else f"{v:.1e}"


def _usd(v: float) -> str:
    """``cost.usd_text``, imported when a table is drawn: thrifty.cost (and the catalog and types
    it loads) would add ~20 ms to every `thrifty` start-up, as the ledger's modules would."""
    from thrifty.cost import usd_text

    return usd_text(v)


def _pct(p: float) -> str:
    """A saving's share to one decimal, but never rounded onto 0.0 or 100.0 it did not reach: a
    cheap model's spend beside a premium baseline read "100.0" saved, as if it had cost nothing."""
    if 0 < p < 0.05:
        return "<0.1"
    if 99.95 <= p < 100:
        return ">99.9"
    return f"{p:.1f}"


def render(rows: list[ReportRow], fmt: str, group_label: str, total: ReportRow | None = None) -> str:
    """``rows`` as ``fmt`` (table, json or csv); ``group_label`` heads the table's first column,
    and ``total`` (the whole window, table only) is its last line."""
    if fmt == "json":
        # Strict JSON: a ratio over nothing is null, never NaN (which JSON parsers reject).
        return dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        from thrifty.ledger.report import ReportRow

        # Every field, in order: the CSV header, even when there are no rows to print.
        writer.writerow([f.name for f in fields(ReportRow)])
        for r in rows:
            writer.writerow(list(asdict(r).values()))
        return buf.getvalue()
    return _table(rows, group_label, total)


# The table's columns after the group's: (header, the cell, the fields that decide whether a
# strategy's columns are shown). Spend and savings are always shown; a strategy's columns only
# when some row has something in them, so a gateway without caching, compression or batching
# gets a table that fits a terminal. JSON and CSV always carry every field. Dollars to six
# decimals, a real figure below that in two significant digits (_usd), never 0.000000.
_CELLS: list[tuple[str, Callable[[ReportRow], str], tuple[str, ...]]] = [
    ("requests", lambda r: str(r.requests), ()),
    ("errors", lambda r: str(r.errors), ()),
    ("spend $", lambda r: _usd(r.spend_usd), ()),
    ("baseline $", lambda r: _usd(r.baseline_usd), ()),
    ("saved $", lambda r: _usd(r.saved_usd), ()),
    ("saved %", lambda r: _pct(r.saved_pct), ()),
    ("cache hits", lambda r: str(r.cache_hits), ("cache_hits", "cache_misses")),
    ("cache misses", lambda r: str(r.cache_misses), ("cache_hits", "cache_misses")),
    ("cache hit %", lambda r: f"{100 * r.cache_hit_rate:.1f}", ("cache_hits", "cache_misses")),
    ("cache $", lambda r: _usd(r.cache_saved_usd), ("cache_hits", "cache_misses")),
    ("escalations", lambda r: str(r.escalations), ("escalations",)),
    ("compressed tok", lambda r: str(r.compression_saved_tokens), ("compression_saved_tokens",)),
    ("compress $", lambda r: _usd(r.compression_saved_usd), ("compression_saved_tokens",)),
    ("batch reqs", lambda r: str(r.batch_requests), ("batch_requests",)),
    ("cache write tok", lambda r: str(r.cache_write_tokens), ("cache_write_tokens",)),
    ("unpriced", lambda r: str(r.unpriced_requests), ("unpriced_requests",)),
    ("estimated", lambda r: str(r.estimated_requests), ("estimated_requests",)),
]


def _table(rows: list[ReportRow], group_label: str, total: ReportRow | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    shown = [(head, cell) for head, cell, decide in _CELLS
             if not decide or any(getattr(r, name) for r in rows for name in decide)]
    hidden = len(_CELLS) - len(shown)
    caption = (f"{hidden} empty columns hidden (--format json or csv has all)"
               if hidden else None)
    table = Table(title="thrifty spend report", caption=caption)
    table.add_column(group_label, justify="left")
    for head, _ in shown:
        table.add_column(head, justify="right")
    for r in rows:
        table.add_row(r.group, *(cell(r) for _, cell in shown))
    if total is not None:
        table.add_section()
        table.add_row("total", *(cell(total) for _, cell in shown), style="bold")
    # Wide enough for every column at its natural width: truncated money is worse than wrapping.
    console = Console(file=io.StringIO(), width=400, force_terminal=False)
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]
