"""``thrifty mock-upstream``: run the mock OpenAI-compatible upstream in the foreground.

Flags override the YAML file's default behaviour, so ``--latency-ms 50`` adds latency to every
model without editing the file. See docs/mock-upstream.md for the file format.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from thrifty.cli.checks import finite_float, int_at_least
from thrifty.mock.behaviour import MockConfig


def build_config(
    config: Path | None,
    seed: int | None,
    allow_models: list[str] | None,
    api_key: str | None,
    faults: dict[str, Any],
) -> MockConfig:
    """The ``MockConfig`` the flags describe (file first, then flags on top)."""
    result = MockConfig.from_yaml(config) if config is not None else MockConfig()
    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = seed
    if allow_models:
        update["allowed_models"] = tuple(allow_models)
    if api_key is not None:
        update["api_key"] = api_key
    if update:
        result = MockConfig.from_dict({**result.model_dump(exclude_unset=True), **update})
    set_faults = {k: v for k, v in faults.items() if v is not None}
    return result.with_default_faults(**set_faults) if set_faults else result


def check_fault_flags(latency_ms: float | None, jitter_ms: float | None, chunk_delay_ms: float | None,
                      error_rate: float | None, fail_status: int | None) -> None:
    """``UsageError`` naming the flag, before pydantic sees the value (its report is many lines
    and names the field, not the flag). Same bounds as ``Faults``, plus finiteness: an infinite
    latency would make every request hang."""
    finite_float(latency_ms, "--latency-ms", 0.0)
    finite_float(jitter_ms, "--jitter-ms", 0.0)
    finite_float(chunk_delay_ms, "--chunk-delay-ms", 0.0)
    finite_float(error_rate, "--error-rate", 0.0, 1.0)
    int_at_least(fail_status, "--fail-status", 400, 599)


def register(app: typer.Typer) -> None:
    """Add the ``mock-upstream`` command to the ``thrifty`` CLI."""

    @app.command("mock-upstream")
    def mock_upstream(
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
        host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
        # Not typer's exists=True: its multi-line box would replace the one-line error from_yaml gives.
        config: Annotated[Path | None, typer.Option(help="Behaviours YAML file.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed for answers, jitter and error rates.")] = None,
        latency_ms: Annotated[float | None, typer.Option(help="Fixed latency per request.")] = None,
        jitter_ms: Annotated[float | None, typer.Option(help="Extra random latency, up to this.")] = None,
        chunk_delay_ms: Annotated[float | None, typer.Option(help="Delay between stream chunks.")] = None,
        error_rate: Annotated[float | None, typer.Option(help="Fraction of requests that fail.")] = None,
        fail_status: Annotated[int | None, typer.Option(help="HTTP status of injected failures.")] = None,
        allow_model: Annotated[
            list[str] | None, typer.Option(help="Accept only these models (repeatable); others get 404.")
        ] = None,
        api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Run a fake OpenAI-compatible LLM provider (deterministic answers, injectable failures)."""
        import uvicorn

        from thrifty.mock.app import create_app
        from thrifty.server import listen

        level = listen.log_level(log_level)
        listen.port(port)
        check_fault_flags(latency_ms, jitter_ms, chunk_delay_ms, error_rate, fail_status)
        faults = {
            "latency_ms": latency_ms,
            "jitter_ms": jitter_ms,
            "chunk_delay_ms": chunk_delay_ms,
            "error_rate": error_rate,
            "fail_status": fail_status,
        }
        mock_config = build_config(config, seed, allow_model, api_key, faults)
        listen.check_bind(host, port)
        port = listen.concrete_port(host, port)  # --port 0: say which port was picked
        typer.echo(f"thrifty mock upstream on http://{host}:{port}/v1 (Ctrl-C to stop)", err=True)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(mock_config),
                host=host,
                port=port,
                loop="auto",
                log_level=level,
                access_log=False,
            )
        )
        # Ctrl-C is how this server is stopped: uvicorn shuts down, then re-raises the signal.
        # Caught as `uvicorn.run` (serve, replay-upstream) catches it: exit 0, not "interrupted".
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
