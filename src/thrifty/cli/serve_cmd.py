"""``thrifty serve``: run the OpenAI-compatible gateway."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Path = typer.Option(..., "--config", "-c", help="The thrifty YAML config file."),
        host: str | None = typer.Option(None, help="Interface to listen on (default: server.host, 127.0.0.1)."),
        port: int | None = typer.Option(None, help="Port to listen on (default: server.port, 8000)."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
    ) -> None:
        """Serve POST /v1/chat/completions, GET /v1/models and GET /health."""
        import uvicorn

        from thrifty.gateway import Gateway
        from thrifty.logs import setup_logging

        setup_logging(log_level)
        gw = Gateway.from_config(config)
        h = host or gw.config.server.host
        p = port if port is not None else gw.config.server.port
        typer.echo(f"thrifty gateway on http://{h}:{p}/v1  pipeline: {gw.describe()}", err=True)
        uvicorn.run(gw.app(), host=h, port=p, log_level=log_level, access_log=False)
