"""Spend reports from the ledger: requests, spend, baseline spend and savings, grouped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from thrifty.catalog import Catalog
from thrifty.cost import price_tokens, priced_at
from thrifty.errors import InvalidRequestError
from thrifty.ledger.store import SQLStore
from thrifty.types import Usage

GROUPS = {
    "model": "COALESCE(served_model, requested_model)",
    "task": "COALESCE(task, '(none)')",
    "tier": "COALESCE(tier, '(none)')",
    "key": "COALESCE(key_id, '(none)')",
    "strategy": "strategy",
    "route": "COALESCE(route, '(none)')",
    # The service tier the served answer was billed at (OpenAI's flex, priority); NULL: standard.
    "service_tier": "COALESCE(service_tier, '(none)')",
    "day": "{day}",  # filled with the store's dialect-specific floor (SQLStore.day_sql)
}


# One request's saving (docs/operations.md, "Accounting"): what the baseline would have cost
# minus what the request cost. The baseline prices the prompt as the client sent it, before
# compression (pipeline/accounting.py ``baseline_cost``), so what compression saved is already
# inside this difference. A failed request has no baseline: what it spent is a loss. A request
# whose cost is unknown (a model without a price) claims nothing: counting it as $0 would claim
# its whole baseline as saved. A cache hit whose baseline is unknown counts what the cache says
# it saved; any other request with an unknown baseline claims nothing.
SAVED_SQL = (
    "(CASE WHEN status <> 'ok' THEN -COALESCE(cost_usd, 0)"
    " WHEN cost_usd IS NULL THEN 0"
    " WHEN baseline_cost_usd IS NOT NULL THEN baseline_cost_usd - cost_usd"
    " WHEN cache_status = 'hit' THEN cache_saved_usd ELSE 0 END)"
)
# Compression's share of that saving (the removed tokens at the served model's price), for
# surfaces that show it as a strategy of its own; only where the saving was counted at all.
COMPRESSION_SQL = ("(CASE WHEN status = 'ok' AND cost_usd IS NOT NULL AND baseline_cost_usd IS NOT NULL"
                   " THEN COALESCE(compression_saved_usd, 0) ELSE 0 END)")
# The saving with compression's share taken out: what the request's own strategy saved.
CALL_SAVED_SQL = f"({SAVED_SQL} - {COMPRESSION_SQL})"
# The baseline of the requests whose saving is counted: an unpriced request is out of spend, so
# its baseline is out too (else the gap between spend and baseline would read as saved).
BASELINE_SQL = "(CASE WHEN status = 'ok' AND cost_usd IS NOT NULL THEN baseline_cost_usd ELSE 0 END)"
# Requests left out of spend or savings because a price was unknown.
UNPRICED_SQL = "CASE WHEN cost_usd IS NULL OR (status = 'ok' AND baseline_cost_usd IS NULL) THEN 1 ELSE 0 END"
# Requests with at least one call priced from thrifty's own token counts (no usable usage).
ESTIMATED_SQL = ("CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.request_id = requests.request_id"
                 " AND a.cost_source = 'estimated') THEN 1 ELSE 0 END")


def request_saved_usd(status: str, cost_usd: float | None, baseline_cost_usd: float | None,
                      cache_status: str | None, cache_saved_usd: float) -> float:
    """``SAVED_SQL`` for one request, in Python: for surfaces fed by the finished request rather
    than by the ledger (the ``thrifty_savings_usd`` metric), so they cannot drift from the report
    (the metric claimed an unpriced request's whole baseline, the report nothing)."""
    if status != "ok":
        return -(cost_usd or 0.0)
    if cost_usd is None:
        return 0.0
    if baseline_cost_usd is not None:
        return baseline_cost_usd - cost_usd
    return cache_saved_usd if cache_status == "hit" else 0.0


@dataclass
class ReportRow:
    group: str
    requests: int
    errors: int
    spend_usd: float
    baseline_usd: float
    saved_usd: float
    saved_pct: float
    cache_hits: int
    escalations: int
    prompt_tokens: int
    completion_tokens: int
    # Input tokens (and their dollars at the served model's input price) compression removed.
    # The dollars only where the request's saving is counted (COMPRESSION_SQL, as the dashboard):
    # they are a share of ``saved_usd``, and an unpriced request's share showed beside $0 saved.
    compression_saved_tokens: int = 0
    compression_saved_usd: float = 0.0
    batch_requests: int = 0  # requests answered through a provider Batch API
    # Response cache: misses, hits / (hits + misses), and what the hits would have cost.
    cache_misses: int = 0
    cache_hit_rate: float = 0.0
    cache_saved_usd: float = 0.0
    # Exactness: requests whose cost or baseline is unknown (left out of spend / saved), and
    # requests with a call priced from offline token counts because the provider sent no usage.
    unpriced_requests: int = 0
    estimated_requests: int = 0
    # Provider Batch API calls of these requests (``batch_savings``, the table's "provider
    # batches" line): how many were priced, what they cost, the same tokens at normal prices,
    # and the difference. JSON and CSV had only ``batch_requests``, not the half-price saving.
    provider_batch_calls: int = 0
    provider_batch_spend_usd: float = 0.0
    provider_batch_normal_usd: float = 0.0
    provider_batch_saved_usd: float = 0.0
    # Prompt tokens written to the provider's prompt cache (inside ``prompt_tokens``, billed at
    # the cache-write price, not the input one). Last, so the CSV's earlier columns keep their places.
    cache_write_tokens: int = 0


def parse_since(value: str | None, now: float | None = None, *, flag: str = "--since") -> float | None:
    """``7d``, ``24h``, ``30m``, or an ISO date, to epoch seconds; an error names ``flag``."""
    if not value:
        return None
    now = time.time() if now is None else now
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * units[value[-1]]
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"{flag}: expected like 7d, 24h, 30m or an ISO date, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _window(column: str, since: float | None, until: float | None) -> tuple[list[str], list[float]]:
    """SQL conditions (and their parameters) for ``since <= column < until``, each bound optional."""
    conds, params = [], []
    if since is not None:
        conds.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        conds.append(f"{column} < ?")
        params.append(until)
    return conds, params


def _group_sql(store: SQLStore, by: str | None) -> str:
    """The SQL expression over ``requests`` that names a row's group (``'total'`` when none)."""
    if by is not None and by not in GROUPS:
        raise InvalidRequestError(f"--by must be one of {', '.join(GROUPS)}, got {by!r}")
    return GROUPS[by].format(day=store.day_sql) if by else "'total'"


def _day_label(by: str | None, g: object) -> str:
    """A group's label: ``--by day`` groups by day number, shown as its date."""
    return time.strftime("%Y-%m-%d", time.gmtime(int(str(g)) * 86400)) if by == "day" else str(g)


def spend_report(
    store: SQLStore, by: str | None = None, since: float | None = None, until: float | None = None,
    catalog: Catalog | None = None,
) -> list[ReportRow]:
    """The rows of ``thrifty report``; with ``catalog``, each carries its provider-batch figures."""
    group_sql = _group_sql(store, by)
    conds, params = _window("ts", since, until)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    sql = f"""
        SELECT {group_sql} AS g,
               COUNT(*),
               SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END),
               COALESCE(SUM(cost_usd), 0),
               COALESCE(SUM({BASELINE_SQL}), 0),
               SUM(CASE WHEN cache_status = 'hit' THEN 1 ELSE 0 END),
               COALESCE(SUM(escalations), 0),
               COALESCE(SUM(prompt_tokens), 0),
               COALESCE(SUM(completion_tokens), 0),
               COALESCE(SUM(compression_saved_tokens), 0),
               COALESCE(SUM({COMPRESSION_SQL}), 0),
               SUM(CASE WHEN batch THEN 1 ELSE 0 END),
               SUM(CASE WHEN cache_status = 'miss' THEN 1 ELSE 0 END),
               COALESCE(SUM(cache_saved_usd), 0),
               COALESCE(SUM({SAVED_SQL}), 0),
               COALESCE(SUM({UNPRICED_SQL}), 0),
               COALESCE(SUM({ESTIMATED_SQL}), 0),
               COALESCE(SUM(cache_write_tokens), 0)
        FROM requests {where}
        GROUP BY g ORDER BY g
    """
    rows = store.query(sql, params)
    out = []
    for g, n, errors, spend, base, hits, esc, pt, ct, cst, csu, nb, cmiss, csaved, saved_sum, unpriced, est, cwt in rows:
        label = _day_label(by, g)
        saved = float(saved_sum)
        out.append(
            ReportRow(label, int(n), int(errors), float(spend), float(base), saved,
                      100.0 * saved / float(base) if base else 0.0, int(hits), int(esc), int(pt), int(ct),
                      int(cst), float(csu), int(nb or 0), int(cmiss or 0),
                      int(hits) / (int(hits) + int(cmiss or 0)) if int(hits) + int(cmiss or 0) else 0.0,
                      float(csaved), int(unpriced), int(est), cache_write_tokens=int(cwt))
        )
    if catalog is not None:
        batches = batch_savings_by(store, catalog, by, since, until)
        for row in out:
            b = batches.get(row.group)
            if b is not None:
                row.provider_batch_calls, row.provider_batch_spend_usd = b.requests, b.spend_usd
                row.provider_batch_normal_usd, row.provider_batch_saved_usd = b.full_price_usd, b.saved_usd
    return out


@dataclass
class BatchSavings:
    """Provider Batch API use: what it cost, and what the same tokens cost at normal prices."""

    requests: int
    spend_usd: float
    full_price_usd: float

    @property
    def saved_usd(self) -> float:
        return self.full_price_usd - self.spend_usd


def batch_savings(
    store: SQLStore, catalog: Catalog, since: float | None = None, until: float | None = None
) -> BatchSavings:
    """Every batch call of the window's requests, re-priced at its model's normal price."""
    return batch_savings_by(store, catalog, None, since, until).get("total", BatchSavings(0, 0.0, 0.0))


def batch_savings_by(
    store: SQLStore, catalog: Catalog, by: str | None = None, since: float | None = None,
    until: float | None = None,
) -> dict[str, BatchSavings]:
    """Re-price every batch attempt at its model's normal price (exact: same tokens, same model),
    per group of ``spend_report`` (``by``), keyed by the group's label.

    The window is the requests' (``spend_report``'s), so a group's figures are those of the
    calls of the requests in its row, and the groups add up to the total (windowed on the
    attempts' own times, a request answered by a batch hours after it arrived could count on
    one side of --until and not on the other). ``requests`` counts the calls whose two figures
    are known (the ones summed), so the figures never claim calls they did not price."""
    window, params = _window("ts", since, until)
    # The group is computed inside the requests subquery: `tier` and `ts` are columns of both tables.
    groups = f"SELECT request_id, {_group_sql(store, by)} AS g FROM requests"
    if window:
        groups += " WHERE " + " AND ".join(window)
    rows = store.query(
        "SELECT r.g, a.model, a.prompt_tokens, a.cached_tokens, a.cache_write_tokens, a.completion_tokens,"
        " a.cost_usd, a.ts "
        f"FROM attempts a JOIN ({groups}) r ON a.request_id = r.request_id"
        " WHERE a.batch AND a.status = 'ok' AND a.cost_usd IS NOT NULL",  # an unknown cost is not summed
        params,
    )
    out: dict[str, BatchSavings] = {}
    for g, model, pt, cached, written, ct, cost, ts in rows:
        info = catalog.get(str(model))
        # At the hour the call ran: a price that varies in time (DeepSeek's off-peak hours are half
        # price) read at the report's own time made the same past calls' normal price, and so
        # the saving, depend on when the report was run (the batch's cost itself is stored).
        with priced_at(datetime.fromtimestamp(float(ts), UTC)):
            # The writes at the cache-write price: left out, they were priced as plain input
            # (cheaper), so the normal price, and the batch saving, came out too low.
            usage = Usage(prompt_tokens=int(pt), completion_tokens=int(ct), cached_tokens=int(cached),
                          cache_write_tokens=int(written))
            normal = price_tokens(usage, info.price if info else None)
        if normal is None:
            continue
        b = out.setdefault(_day_label(by, g), BatchSavings(0, 0.0, 0.0))
        b.spend_usd += float(cost)
        b.full_price_usd += normal
        b.requests += 1
    return out
