"""``thrifty serve``: run the OpenAI-compatible gateway."""

from __future__ import annotations

import gc
import logging
import math
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty YAML config file."),
        host: str | None = typer.Option(None, help="Interface to listen on (default: server.host, 127.0.0.1)."),
        port: int | None = typer.Option(None, help="Port to listen on (default: server.port, 8000)."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
    ) -> None:
        """Serve POST /v1/chat/completions, GET /v1/models and GET /health."""
        import uvicorn

        from thrifty.cli.config_cmd import unset_env_warnings
        from thrifty.config import load_config, read_raw
        from thrifty.gateway import DRAIN_TIMEOUT_S, Gateway
        from thrifty.logs import setup_logging
        from thrifty.server import listen

        # Flags, then the config, then the address: each refused in one line before the gateway
        # opens its databases and starts its threads.
        level = listen.log_level(log_level)
        if port is not None:
            listen.port(port)
        cfg = load_config(config)
        h = host or cfg.server.host
        p = port if port is not None else cfg.server.port
        listen.check_bind(h, p)
        p = listen.concrete_port(h, p)
        setup_logging(level)
        # As `config check` says them, as log lines: a ${VAR} left unset (an empty ledger.dsn means
        # the local SQLite ledger, which other instances do not share) is worth a line at start-up.
        raw, _ = read_raw(config)
        for line in unset_env_warnings(raw):
            logging.getLogger("thrifty.server").warning("%s", line)
        gw = Gateway.from_config(cfg)
        # Logged, not echoed: every line on serve's stderr is a JSON object (docs/cli.md).
        logging.getLogger("thrifty.server").info("thrifty gateway on http://%s:%s/v1  pipeline: %s", h, p,
                                                 gw.describe())
        app = gw.app()
        # Everything loaded at start-up (catalog, price tables, tokenizer, policies) lives as long
        # as the process: freezing it keeps the garbage collector from rescanning it on every full
        # collection. Measured by bench/overhead.py: p99 at concurrency 64 fell to the floor's,
        # and requests/s rose from ~62% to ~78% of the floor's.
        gc.collect()
        gc.freeze()
        # The ledger writer thread gives up and retakes the GIL around every SQLite statement
        # (one per up to 128 rows since ledger/store.py inserts many rows at once); with
        # CPython's default 5 ms switch interval each retake stalls behind the event loop
        # (a convoy). 1 ms measured 86% of the floor's requests/s at concurrency 64, vs 67%.
        sys.setswitchinterval(0.001)
        # log_config=None: uvicorn keeps the JSON handlers setup_logging gave its loggers. No
        # access log: the thrifty.request line per request already says more. An idle keep-alive
        # connection is closed after 5 s (uvicorn's default, spelled out: docs/operations.md);
        # limit_concurrency answers 503 past server.max_connections instead of exhausting descriptors.
        # On SIGTERM uvicorn lets the requests in flight finish, streams included, but without a
        # bound one stalled stream kept the process up forever: past the gateway's own drain
        # bound they are cancelled (and recorded as such) before the connections and ledger close.
        uvicorn.run(app, host=h, port=p, log_level=level, access_log=False, log_config=None,
                    timeout_keep_alive=5, limit_concurrency=cfg.server.max_connections,
                    timeout_graceful_shutdown=math.ceil(DRAIN_TIMEOUT_S))
