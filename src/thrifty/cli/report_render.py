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
from dataclasses import asdict, fields

from thrifty.ledger.report import ReportRow
from thrifty.strictjson import dumps


def dollars(v: float | None) -> str:
    """A dollar figure for people: cents from one cent up; below, two significant digits, so
    small figures are told apart instead of all showing 0.00."""
    if v is None:
        return "unknown"
    if not math.isfinite(v):  # finite inputs can still overflow (1e300 requests x 1e300 tokens)
        return "overflow"
    return f"{v:,.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}" if abs(v) >= 1e-4 else f"{v:.1e}"


# Every field, in order: the CSV header, even when there are no rows to print.
COLUMNS = [f.name for f in fields(ReportRow)]


def render(rows: list[ReportRow], fmt: str, group_label: str) -> str:
    """``rows`` as ``fmt`` (table, json or csv); ``group_label`` heads the table's first column."""
    if fmt == "json":
        # Strict JSON: a ratio over nothing is null, never NaN (which JSON parsers reject).
        return dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(list(asdict(r).values()))
        return buf.getvalue()
    return _table(rows, group_label)


def _table(rows: list[ReportRow], group_label: str) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="thrifty spend report")
    for col in (group_label, "requests", "errors", "spend $", "baseline $", "saved $", "saved %", "cache hits",
                "cache misses", "cache hit %", "cache $", "escalations", "compressed tok", "compress $",
                "batch reqs", "unpriced", "estimated"):
        table.add_column(col, justify="left" if col == group_label else "right")
    for r in rows:
        table.add_row(r.group, str(r.requests), str(r.errors), f"{r.spend_usd:.6f}", f"{r.baseline_usd:.6f}",
                      f"{r.saved_usd:.6f}", f"{r.saved_pct:.1f}", str(r.cache_hits), str(r.cache_misses),
                      f"{100 * r.cache_hit_rate:.1f}", f"{r.cache_saved_usd:.6f}", str(r.escalations),
                      str(r.compression_saved_tokens), f"{r.compression_saved_usd:.6f}", str(r.batch_requests),
                      str(r.unpriced_requests), str(r.estimated_requests))
    # Wide enough for every column at its natural width: truncated money is worse than wrapping.
    console = Console(file=io.StringIO(), width=400, force_terminal=False)
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]
