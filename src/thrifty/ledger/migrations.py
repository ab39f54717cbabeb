"""Versioned ledger schema: an append-only list of named migrations.

Each migration runs once, in order, inside a transaction; its name is recorded in
``_thrifty_migrations``. Never edit a released migration: add a new one. The SQL is the common
subset of SQLite and PostgreSQL so one list serves both stores.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "001_requests_and_attempts",
        [
            """CREATE TABLE IF NOT EXISTS requests (
                request_id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                key_id TEXT,
                tenant TEXT NOT NULL,
                task TEXT,
                route TEXT,
                requested_model TEXT NOT NULL,
                served_model TEXT,
                tier TEXT,
                strategy TEXT NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                cached_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                cost_usd DOUBLE PRECISION,
                baseline_cost_usd DOUBLE PRECISION,
                cache_status TEXT,
                cache_saved_usd DOUBLE PRECISION NOT NULL,
                compression_saved_tokens INTEGER NOT NULL,
                compression_saved_usd DOUBLE PRECISION NOT NULL,
                n_attempts INTEGER NOT NULL,
                escalations INTEGER NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                error_type TEXT,
                error TEXT,
                stream BOOLEAN NOT NULL,
                batch BOOLEAN NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS attempts (
                request_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                provider TEXT NOT NULL,
                tier TEXT,
                purpose TEXT NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                cached_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                cost_usd DOUBLE PRECISION,
                cost_source TEXT NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                error TEXT,
                score DOUBLE PRECISION,
                score_reason TEXT,
                accepted BOOLEAN,
                batch BOOLEAN NOT NULL,
                PRIMARY KEY (request_id, seq)
            )""",
            "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
            "CREATE INDEX IF NOT EXISTS requests_key ON requests (key_id, ts)",
        ],
    ),
    (
        # Virtual keys (hashed; the key itself is shown once) and per-install settings (salt).
        "002_ops_virtual_keys",
        [
            """CREATE TABLE IF NOT EXISTS virtual_keys (
                key_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                key_prefix TEXT NOT NULL,
                budget_usd DOUBLE PRECISION,
                period TEXT NOT NULL,
                rpm INTEGER,
                tpm INTEGER,
                routes TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION
            )""",
            """CREATE TABLE IF NOT EXISTS ops_settings (
                name TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )""",
        ],
    ),
    (
        # Provider Batch API jobs (thrifty batch run --deferred): persisted so a restarted
        # process resumes polling instead of resubmitting; inputs kept for resubmissions.
        "003_batch_jobs",
        [
            """CREATE TABLE IF NOT EXISTS batch_jobs (
                job_id TEXT PRIMARY KEY,
                created DOUBLE PRECISION NOT NULL,
                updated DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                model TEXT NOT NULL,
                provider TEXT NOT NULL,
                task TEXT NOT NULL,
                labels TEXT,
                round INTEGER NOT NULL,
                input_file_id TEXT,
                batch_id TEXT,
                provider_status TEXT,
                n_items INTEGER NOT NULL,
                error TEXT
            )""",
            """CREATE TABLE IF NOT EXISTS batch_job_items (
                job_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                input TEXT NOT NULL,
                status TEXT NOT NULL,
                round INTEGER NOT NULL,
                tries INTEGER NOT NULL,
                output TEXT,
                error TEXT,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cost_usd DOUBLE PRECISION,
                PRIMARY KEY (job_id, seq)
            )""",
        ],
    ),
    (
        # Responses API ids thrifty passed through (server/stored_responses.py): which provider
        # holds each one, and whose it is, so GET/DELETE /v1/responses/{id} reach that provider
        # from any instance, for that tenant only.
        "004_stored_responses",
        [
            """CREATE TABLE IF NOT EXISTS stored_responses (
                response_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                provider TEXT NOT NULL,
                key_id TEXT,
                tenant TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS stored_responses_ts ON stored_responses (ts)",
        ],
    ),
    (
        # A `background: true` response is created queued, without usage, so its ledger rows
        # start as an offline estimate; `pending` = 1 until the one retrieve that sees it finished
        # (from any instance) claims it and writes the real usage and cost (server/response_resources.py).
        # An integer rather than a BOOLEAN: `pending = 1` must compare the same on SQLite and PostgreSQL.
        "005_background_usage",
        ["ALTER TABLE stored_responses ADD COLUMN pending INTEGER NOT NULL DEFAULT 0"],
    ),
    (
        # The baseline now prices the prompt as the client sent it, before compression, and the
        # saving no longer adds compression's on top (ledger/report.py SAVED_SQL). Rows written
        # before priced the compressed prompt: adding what compression saved (at the served
        # model's price, all that is known now) keeps each old row's saving what it was, and
        # its saving can no longer exceed its baseline.
        "006_baseline_before_compression",
        ["UPDATE requests SET baseline_cost_usd = baseline_cost_usd + compression_saved_usd"
         " WHERE status = 'ok' AND baseline_cost_usd IS NOT NULL AND cost_usd IS NOT NULL"
         " AND compression_saved_usd > 0"],
    ),
    (
        # The time before which no other gateway's reconciler asks the provider about a pending
        # background response: each serve pass takes the entries it asks about (a conditional
        # UPDATE, server/stored_responses.py ``lease``), so N instances ask once per entry and
        # interval, not N times.
        "007_background_poll_lease",
        ["ALTER TABLE stored_responses ADD COLUMN poll_after DOUBLE PRECISION NOT NULL DEFAULT 0"],
    ),
    (
        # Prompt tokens written to the provider's prompt cache (Anthropic's cache_creation_input_tokens,
        # OpenRouter's cache_write_tokens), part of prompt_tokens but billed at the cache-write price:
        # without them the report re-priced a batch call's writes as plain input. Rows written before
        # are 0: their usage is gone, and their cost_usd (already priced with the writes) is unchanged.
        "008_cache_write_tokens",
        ["ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
         "ALTER TABLE attempts ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0"],
    ),
    (
        # The ``service_tier`` each call was billed at (OpenAI's flex at the batch price, priority
        # above the standard one; pipeline/accounting.py served_service_tier), and on requests the
        # served answer's. Rows written before are NULL: priced at the standard price, as they were.
        "009_service_tier",
        ["ALTER TABLE requests ADD COLUMN service_tier TEXT",
         "ALTER TABLE attempts ADD COLUMN service_tier TEXT"],
    ),
]
