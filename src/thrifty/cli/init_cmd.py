"""``thrifty init``: write a complete, commented starter config."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import typer

from thrifty.errors import ConfigError


def starter_config(upstream_url: str, api_key_env: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
        raise ConfigError(f"--api-key-env must be an environment variable name, got {api_key_env!r}")
    if not upstream_url.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream-url must start with http:// or https://, got {upstream_url!r}")
    text = resources.files("thrifty").joinpath("data/starter.yaml").read_text(encoding="utf-8")
    return text.replace("__UPSTREAM_URL__", upstream_url.rstrip("/")).replace("__API_KEY_ENV__", api_key_env)


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        upstream_url: str = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible base URL."),
        api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the upstream key."),
        out: Path = typer.Option(Path("thrifty.yaml"), "--out", "-o", help="Where to write the config."),
        force: bool = typer.Option(False, help="Overwrite an existing file."),
    ) -> None:
        """Write a starter config: one provider, the seed model hierarchy, a baseline, a SQLite ledger."""
        if out.exists() and not force:
            raise ConfigError(f"{out} exists; pass --force to overwrite it")
        out.write_text(starter_config(upstream_url, api_key_env), encoding="utf-8")
        typer.echo(f"wrote {out}; check it with: thrifty config check {out}")
