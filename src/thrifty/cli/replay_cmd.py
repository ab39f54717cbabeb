"""``thrifty replay-upstream``: serve recorded outcomes as an OpenAI-compatible upstream."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("replay-upstream")
    def replay_upstream(
        data: str = typer.Option(..., "--data", help="Outcome file, folder of them, or dataset name (routerbench)."),
        port: int = typer.Option(8002, help="Port to listen on."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind."),
        log_level: str = typer.Option("warning", help="uvicorn log level."),
    ) -> None:
        """Answer known prompts with each model's recorded response; cost in usage.cost; unknown -> 404."""
        import uvicorn

        from thrifty.evaluation.dataset import load_outcomes
        from thrifty.evaluation.datasets import resolve_data
        from thrifty.evaluation.replay_server import create_replay_app
        from thrifty.providers.replay import ReplayIndex
        from thrifty.server import listen

        # Flags and the address before the outcomes load (a dataset can take a while to read).
        level = listen.log_level(log_level)
        listen.port(port)
        listen.check_bind(host, port)
        index = ReplayIndex(load_outcomes(resolve_data(data)))
        port = listen.concrete_port(host, port)  # --port 0: the start-up line names the port picked
        typer.echo(f"thrifty replay upstream on http://{host}:{port}/v1: {len(index)} prompts, "
                   f"{len(index.models)} models (Ctrl-C to stop)", err=True)
        uvicorn.run(create_replay_app(index), host=host, port=port, log_level=level, access_log=False)
