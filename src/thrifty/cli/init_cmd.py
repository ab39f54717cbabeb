"""``thrifty init``: write a complete, commented starter config."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import typer

from thrifty.cli.checks import writable_output
from thrifty.errors import ConfigError, UsageError

# Characters a URL may hold (RFC 3986: unreserved, reserved and %-escapes) minus the quote:
# no whitespace, control characters or quotes, which could end the YAML scalar early and add
# keys of their own to the written config.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]+")


def check_upstream_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host that can be written into YAML as it is."""
    flag = "--upstream-url"
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{flag}: must start with http:// or https://, got {url!r}")
    if not _URL_CHARS.fullmatch(url):
        raise UsageError(f"{flag}: a URL cannot hold spaces, quotes or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UsageError(f"{flag}: not a valid URL ({exc}), got {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"{flag}: the URL has no host, got {url!r}")
    return url


def starter_config(upstream_url: str, api_key_env: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
        raise UsageError(f"--api-key-env must be an environment variable name, got {api_key_env!r}")
    url = check_upstream_url(upstream_url).rstrip("/")
    text = resources.files("thrifty").joinpath("data/starter.yaml").read_text(encoding="utf-8")
    # Both values go in as plain YAML scalars: the two checks above leave them no character that
    # could end the scalar or start a key.
    return text.replace("__UPSTREAM_URL__", url).replace("__API_KEY_ENV__", api_key_env)


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        upstream_url: str = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible base URL."),
        api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the upstream key."),
        out: Path = typer.Option(Path("thrifty.yaml"), "--out", "-o", help="Where to write the config."),
        force: bool = typer.Option(False, help="Overwrite an existing file."),
    ) -> None:
        """Write a starter config: one provider, the seed model hierarchy, a baseline, a SQLite ledger."""
        # Everything checked before the file is touched: a folder or a missing parent folder is a
        # one-line error, and a bad URL never leaves a config that `config check` rejects.
        text = starter_config(upstream_url, api_key_env)
        if out.exists() and not force and not out.is_dir():
            raise ConfigError(f"{out} exists; pass --force to overwrite it")
        writable_output(out, "--out")
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}; check it with: thrifty config check {out}")
