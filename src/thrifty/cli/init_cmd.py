"""``thrifty init``: write a complete, commented starter config."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import typer

from thrifty.cli.checks import writable_output
from thrifty.cli.init_presets import choose_presets, preset_for_url, presets, render
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


def _check_env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"--api-key-env must be an environment variable name, got {name!r}")
    return name


def starter_config(upstream_url: str | None = None, api_key_env: str | None = None,
                   providers: list[str] | None = None) -> str:
    """The text ``thrifty init`` writes (checks every argument first; see init_presets).

    ``providers``: preset names; none: the preset whose host ``upstream_url`` is (default
    OpenAI's), else thrifty's seed hierarchy under one provider ``main`` at ``upstream_url``."""
    chosen = choose_presets(providers or [])
    if len(chosen) > 1 and upstream_url is not None:
        raise UsageError("--upstream-url applies to one provider; with several --provider each uses its "
                         "preset's URL (edit the written file to change one)")
    if len(chosen) > 1 and api_key_env is not None:
        raise UsageError("--api-key-env applies to one provider; with several --provider each reads its "
                         "preset's variable (edit the written file to change one)")
    url = check_upstream_url(upstream_url).rstrip("/") if upstream_url is not None else None
    key_env = _check_env_name(api_key_env) if api_key_env is not None else None
    if not chosen and url is None:
        chosen = [presets()["openai"]]
    elif not chosen and url is not None:
        found = preset_for_url(url)
        if found is None:  # vLLM, Ollama, the mock upstream: the seed names, which the server must serve
            return render([("main", None)], {"main": url}, {"main": key_env or "OPENAI_API_KEY"})
        chosen = [found]
    urls = {p.name: (url if url is not None else p.base_url) for p in chosen}
    key_envs = {p.name: (key_env if key_env is not None else p.api_key_env) for p in chosen}
    return render([(p.name, p) for p in chosen], urls, key_envs)


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        provider: list[str] | None = typer.Option(
            None, "--provider", metavar="NAME",
            help=f"Provider preset, repeatable: {', '.join(presets())}. Default: the preset of "
                 "--upstream-url's host, else OpenAI's."),
        upstream_url: str | None = typer.Option(
            None, help="OpenAI-compatible base URL (default: the preset's). A host no preset knows "
                       "(vLLM, Ollama, the mock upstream) gets thrifty's seed model names."),
        api_key_env: str | None = typer.Option(
            None, help="Environment variable holding the upstream key (default: the preset's, else OPENAI_API_KEY)."),
        out: Path = typer.Option(Path("thrifty.yaml"), "--out", "-o", help="Where to write the config."),
        force: bool = typer.Option(False, help="Overwrite an existing file."),
    ) -> None:
        """Write a starter config: the providers, a model hierarchy they serve with today's prices, a baseline, a SQLite ledger."""
        # Everything checked before the file is touched: a folder or a missing parent folder is a
        # one-line error, and a bad URL never leaves a config that `config check` rejects.
        text = starter_config(upstream_url, api_key_env, provider)
        if out.exists() and not force and not out.is_dir():
            raise ConfigError(f"{out} exists; pass --force to overwrite it")
        writable_output(out, "--out")
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}; check it with: thrifty config check {out}")
