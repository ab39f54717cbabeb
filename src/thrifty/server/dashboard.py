"""``GET /dashboard``: a self-contained spend page (no CDN), and ``/dashboard/data`` behind it.

The data are aggregate queries over the ledger's ``requests`` table for a period (24h, 7d,
30d, 90d or all): spend against the baseline over time, savings per strategy, tier mix,
escalation and cache hit rates, top tasks and keys. When ``auth.enabled`` the data need the
admin key (the page asks for it and keeps it in the browser's session storage only).
"""

from __future__ import annotations

import math
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.errors import InvalidRequestError, NotFoundError
from thrifty.ledger.report import BASELINE_SQL, CALL_SAVED_SQL, COMPRESSION_SQL, SAVED_SQL, UNPRICED_SQL
from thrifty.ledger.store import SQLiteStore, SQLStore, in_thread
from thrifty.ops.admin import check_admin, json_errors

# The dashboard's aggregate queries over a period (seconds on a large ledger; a frozen database never).
DATA_WAIT_S = 30.0

PERIODS: dict[str, tuple[float | None, int]] = {  # name -> (seconds back, bucket seconds)
    "24h": (86400, 3600),
    "7d": (7 * 86400, 6 * 3600),
    "30d": (30 * 86400, 86400),
    "90d": (90 * 86400, 86400),
    "all": (None, 86400),
}
# Every strategy a request row can name, always listed in this order (the passthrough endpoints
# too: they claim no saving by design, and a row with its request count shows they were served).
STRATEGIES = ("routing", "cascade", "cache", "compression", "batching", "passthrough", "embeddings", "responses",
              "completions")
# What the page calls them, where the ledger's name alone would mislead: `passthrough` is chat
# answered by the model the client named (no routing), not the other passthrough endpoints.
STRATEGY_LABELS = {"passthrough": "chat, model as asked", "responses": "responses API", "completions": "legacy completions"}
# Ledger strategies the page shows under another name: both ways of batching (the config's
# `batching:` section), provider Batch API answers (`batch`) and packed runs (`packing`, many
# items per call) are its `batching` bar (`thrifty report --by strategy` keeps them apart).
SHOWN_AS = {"batch": "batching", "packing": "batching"}
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "favicon.svg": "image/svg+xml"}
# A row's saving is the report's (ledger/report.py SAVED_SQL: a failed request's spend is a loss,
# an unpriced request claims nothing). The strategy chart takes compression's share out of each
# row's (CALL_SAVED_SQL) and shows it as a strategy of its own (COMPRESSION_SQL).


def _bucket_sql(store: SQLStore, seconds: int) -> str:
    # SQLite's CAST truncates; PostgreSQL's rounds, so it needs FLOOR (absent from some SQLite builds).
    if isinstance(store, SQLiteStore):
        return f"CAST(ts / {seconds} AS INTEGER)"
    return f"CAST(FLOOR(ts / {seconds}) AS BIGINT)"


def dashboard_data(store: SQLStore, period: str = "7d", now: float | None = None) -> dict[str, Any]:
    """Everything the page draws, for one period."""
    if period not in PERIODS:
        raise InvalidRequestError(f"period must be one of {', '.join(PERIODS)}, got {period!r}", param="period")
    now = time.time() if now is None else now
    back, bucket = PERIODS[period]
    since = now - back if back is not None else 0.0
    q = store.query
    # escalations: cascade levels moved past before the served answer (pipeline/accounting.py);
    # the escalation rate is the share of cascaded requests with at least one.
    # unpriced: requests left out of spend and savings (a price unknown), as the report counts them;
    # without it the page's spend and saved % read as complete when they were not.
    (n, errors, spend, base, saved, hits, lookups, cascades, escalated, escalations, comp, pt, ct, unpriced), = q(f"""
        SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), 0),
               COALESCE(SUM(cost_usd), 0),
               COALESCE(SUM({BASELINE_SQL}), 0),
               COALESCE(SUM({SAVED_SQL}), 0),
               COALESCE(SUM(CASE WHEN cache_status = 'hit' THEN 1 ELSE 0 END), 0),
               COALESCE(SUM(CASE WHEN cache_status IN ('hit', 'miss') THEN 1 ELSE 0 END), 0),
               COALESCE(SUM(CASE WHEN strategy = 'cascade' THEN 1 ELSE 0 END), 0),
               COALESCE(SUM(CASE WHEN escalations > 0 THEN 1 ELSE 0 END), 0),
               COALESCE(SUM(escalations), 0),
               COALESCE(SUM({COMPRESSION_SQL}), 0),
               COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
               COALESCE(SUM({UNPRICED_SQL}), 0)
        FROM requests WHERE ts >= ?""", [since])
    saved_total = float(saved)
    totals = {
        "requests": int(n), "errors": int(errors), "spend_usd": float(spend), "baseline_usd": float(base),
        "saved_usd": saved_total, "saved_pct": 100.0 * saved_total / float(base) if base else 0.0,
        "cache_hits": int(hits), "cache_lookups": int(lookups),
        "cache_hit_rate": int(hits) / int(lookups) if lookups else 0.0,
        "cascades": int(cascades), "escalations": int(escalations),
        "escalation_rate": int(escalated) / int(cascades) if cascades else 0.0,
        "compression_saved_usd": float(comp), "prompt_tokens": int(pt), "completion_tokens": int(ct),
        "unpriced_requests": int(unpriced),
    }
    b = _bucket_sql(store, bucket)
    series = [
        {"t": int(g) * bucket, "requests": int(r), "spend_usd": float(s), "baseline_usd": float(bl)}
        for g, r, s, bl in q(f"""
            SELECT {b} AS g, COUNT(*), COALESCE(SUM(cost_usd), 0),
                   COALESCE(SUM({BASELINE_SQL}), 0)
            FROM requests WHERE ts >= ? GROUP BY g ORDER BY g""", [since])
    ]
    def strategy(name: str) -> dict[str, Any]:
        return {"strategy": name, "label": STRATEGY_LABELS.get(name, name), "requests": 0, "spend_usd": 0.0,
                "saved_usd": 0.0}

    by_strategy = {s: strategy(s) for s in STRATEGIES}
    for s, r, sp, sv in q(f"""SELECT strategy, COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM({CALL_SAVED_SQL}), 0)
                              FROM requests WHERE ts >= ? GROUP BY strategy ORDER BY strategy""", [since]):
        name = SHOWN_AS.get(str(s), str(s))
        entry = by_strategy.setdefault(name, strategy(name))
        entry["requests"] += int(r)
        entry["spend_usd"] += float(sp)
        entry["saved_usd"] += float(sv)
    by_strategy["compression"]["saved_usd"] += float(comp)
    tiers = [{"tier": str(t), "requests": int(r)} for t, r in q("""
        SELECT COALESCE(tier, '(none)') AS t, COUNT(*) FROM requests WHERE ts >= ? AND status = 'ok'
        GROUP BY t ORDER BY COUNT(*) DESC""", [since])]
    tasks = [{"task": str(t), "requests": int(r), "spend_usd": float(s), "saved_usd": float(sv)}
             for t, r, s, sv in q(f"""
        SELECT COALESCE(task, '(none)') AS t, COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM({SAVED_SQL}), 0)
        FROM requests WHERE ts >= ? GROUP BY t ORDER BY COALESCE(SUM(cost_usd), 0) DESC, t LIMIT 10""", [since])]
    names = {str(k): (str(nm), bd) for k, nm, bd in q("SELECT key_id, name, budget_usd FROM virtual_keys")}
    keys = []
    for k, r, s, sv in q(f"""
        SELECT COALESCE(key_id, '(none)') AS k, COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM({SAVED_SQL}), 0)
        FROM requests WHERE ts >= ? GROUP BY k ORDER BY COALESCE(SUM(cost_usd), 0) DESC, k LIMIT 10""", [since]):
        name, budget = names.get(str(k), ("", None))
        # A budget stored as inf (before budgets had to be finite) means no limit; JSON has no inf.
        budget = float(budget) if budget is not None and math.isfinite(float(budget)) else None
        keys.append({"key_id": str(k), "name": name, "requests": int(r), "spend_usd": float(s),
                     "saved_usd": float(sv), "budget_usd": budget})
    return {
        "period": period, "since": since, "now": now, "bucket_s": bucket, "totals": totals, "series": series,
        "strategies": list(by_strategy.values()), "tiers": tiers, "tasks": tasks, "keys": keys,
    }


def _asset(name: str) -> str:
    return resources.files("thrifty.server").joinpath("static", name).read_text(encoding="utf-8")


def dashboard_routes(store: SQLStore | None, *, admin_key: str | None, require_admin: bool) -> list[Route]:
    async def page(request: Request) -> Response:
        return Response(_asset("dashboard.html"), media_type="text/html",
                        headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                 "content-security-policy": "default-src 'self'; style-src 'self'; script-src 'self'"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            err = NotFoundError(f"no dashboard asset {name!r}", code="not_found")
            return JSONResponse(err.to_openai(), status_code=404)
        return Response(_asset(name), media_type=_ASSETS[name], headers={"cache-control": "no-cache"})

    async def data(request: Request) -> Response:
        if require_admin:
            check_admin(request, admin_key)
        if store is None:
            raise InvalidRequestError("the dashboard needs the ledger: it is disabled in this config")
        period = request.query_params.get("period", "7d")
        # Bounded: a frozen ledger database must not hold the page's poll forever (a 503 instead).
        body = await in_thread(lambda: dashboard_data(store, period), DATA_WAIT_S, "dashboard data")
        return JSONResponse(body, headers={"cache-control": "no-store"})

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/data", json_errors(data, "dashboard"), methods=["GET"]),
        Route("/dashboard/static/{name}", asset, methods=["GET"]),
    ]
