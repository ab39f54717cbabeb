"""Cache statistics from the ledger (every gateway instance writes there) and the backend."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from thrifty.errors import InvalidRequestError

GROUPS = {
    "tenant": "tenant",
    # The model name the client asked for: what the cache key holds and what `cache clear --model`
    # matches (the serving model varies within one key's traffic: routes, cascades, fallbacks).
    "model": "requested_model",
    "route": "COALESCE(route, '(none)')",
    "day": "{day}",  # the store's dialect-specific day floor (SQLStore.day_sql)
}


@dataclass
class CacheStatsRow:
    group: str
    hits: int
    misses: int
    bypasses: int
    hit_rate: float  # hits / (hits + misses): bypassed requests could not have hit (as `report`)
    saved_usd: float  # partials' included: what their cached inputs would have cost
    # Embeddings requests with some of their inputs cached (cache/embeddings.py), apart from
    # hits (answered whole) and misses (nothing cached).
    partials: int = 0


def ledger_stats(store: Any, by: str | None = None, since: float | None = None) -> list[CacheStatsRow]:
    if by is not None and by not in GROUPS:
        raise InvalidRequestError(f"--by must be one of {', '.join(GROUPS)}, got {by!r}")
    group_sql = GROUPS[by].format(day=store.day_sql) if by else "'total'"
    where = "WHERE cache_status IS NOT NULL" + (" AND ts >= ?" if since is not None else "")
    rows = store.query(
        f"""SELECT {group_sql} AS g,
                   SUM(CASE WHEN cache_status = 'hit' THEN 1 ELSE 0 END),
                   SUM(CASE WHEN cache_status = 'miss' THEN 1 ELSE 0 END),
                   SUM(CASE WHEN cache_status = 'bypass' THEN 1 ELSE 0 END),
                   COALESCE(SUM(cache_saved_usd), 0),
                   SUM(CASE WHEN cache_status = 'partial' THEN 1 ELSE 0 END)
            FROM requests {where} GROUP BY g ORDER BY g""",
        [since] if since is not None else [],
    )
    out = []
    for g, hits, misses, bypasses, saved, partials in rows:
        label = time.strftime("%Y-%m-%d", time.gmtime(int(g) * 86400)) if by == "day" else str(g)
        h, m, p = int(hits or 0), int(misses or 0), int(partials or 0)
        out.append(CacheStatsRow(label, h, m, int(bypasses or 0), h / (h + m) if h + m else 0.0, float(saved), p))
    return out


def as_dicts(rows: list[CacheStatsRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
