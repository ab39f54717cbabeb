"""``thrifty init``: write a complete, commented starter config."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import typer

from thrifty.cli.checks import writable_output
from thrifty.cli.init_local import LOCAL_PRESETS, PLACEHOLDER, LocalPreset, discover, local_preset
from thrifty.cli.init_presets import Preset, preset_for_url, presets, render
from thrifty.errors import ConfigError, UsageError

# Characters a URL may hold (RFC 3986: unreserved, reserved and %-escapes) minus the quote:
# no whitespace, control characters or quotes, which could end the YAML scalar early and add
# keys of their own to the written config.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]+")


def check_upstream_url(url: str, flag: str = "--upstream-url") -> str:
    """``url`` when it is an http(s) URL with a host that can be written into YAML as it is."""
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


def _choose(values: list[str]) -> list[tuple[str, Preset | LocalPreset, str | None]]:
    """(name, preset, URL given as ``NAME=URL`` or None) per ``--provider``, in order, repeats dropped."""
    known, local = presets(), LOCAL_PRESETS
    chosen: list[tuple[str, Preset | LocalPreset, str | None]] = []
    for raw in values:
        name, sep, url = raw.partition("=")
        name = name.strip().lower()
        preset = known.get(name) or local.get(name)
        if preset is None:
            raise UsageError(f"--provider: unknown preset {name!r} (known: {', '.join(sorted(known))}; "
                             f"local servers: {', '.join(sorted(local))})")
        if sep and not url:
            raise UsageError(f"--provider {raw}: no URL after '=' (--provider NAME=URL)")
        if name not in (c[0] for c in chosen):
            chosen.append((name, preset, check_upstream_url(url, "--provider " + name).rstrip("/") if sep else None))
    return chosen


def starter_config(upstream_url: str | None = None, api_key_env: str | None = None,
                   providers: list[str] | None = None, discover_models: bool = True,
                   warn: Callable[[str], None] | None = None) -> str:
    """The text ``thrifty init`` writes (checks every argument first; see init_presets).

    ``providers``: preset names, each optionally ``NAME=URL``; none: the preset whose host
    ``upstream_url`` is (default OpenAI's), else thrifty's seed hierarchy under one provider
    ``main`` at ``upstream_url``. A local preset's models are asked of its server unless
    ``discover_models`` is false; ``warn`` gets a line when none could be (a placeholder is written)."""
    chosen = _choose(providers or [])
    url = check_upstream_url(upstream_url).rstrip("/") if upstream_url is not None else None
    if len(chosen) > 1 and url is not None:
        # Unambiguous only when one local preset has no URL yet: the cloud presets have their API's.
        open_local = [i for i, (_, p, u) in enumerate(chosen) if isinstance(p, LocalPreset) and u is None]
        if len(open_local) != 1 or any(u is not None for _, _, u in chosen):
            raise UsageError("--upstream-url applies to one provider; with several --provider give one its URL "
                             "as --provider NAME=URL (the others use their preset's)")
        name, preset, _ = chosen[open_local[0]]
        chosen[open_local[0]] = (name, preset, url)
    elif chosen and url is not None:
        name, preset, given = chosen[0]
        if given is not None:
            raise UsageError(f"--upstream-url and --provider {name}=URL both give {name}'s URL: give one")
        chosen[0] = (name, preset, url)
    if len(chosen) > 1 and api_key_env is not None:
        raise UsageError("--api-key-env applies to one provider; with several --provider each reads its "
                         "preset's variable (edit the written file to change one)")
    key_env = _check_env_name(api_key_env) if api_key_env is not None else None
    if not chosen and url is None:
        chosen = [("openai", presets()["openai"], None)]
    elif not chosen and url is not None:
        found = preset_for_url(url)
        if found is None:  # the mock upstream, any server: the seed names, which the server must serve
            return render([("main", None)], {"main": url}, {"main": key_env or "OPENAI_API_KEY"})
        chosen = [(found.name, found, url)]
    groups: list[tuple[str, Preset | None]] = []
    urls: dict[str, str] = {}
    key_envs: dict[str, str] = {}
    for name, preset, given in chosen:
        base = given or preset.base_url
        if base is None:
            raise UsageError(f"--provider {name} needs the server's URL: --upstream-url URL or "
                             f"--provider {name}=URL")
        urls[name] = base
        key_envs[name] = key_env if key_env is not None else (preset.api_key_env or "")
        if isinstance(preset, LocalPreset):
            preset = _local(preset, base, key_envs[name], discover_models, warn or (lambda line: None))
        groups.append((name, preset))
    return render(groups, urls, key_envs)


def _local(local: LocalPreset, url: str, key_env: str, discover_models: bool, warn: Callable[[str], None]) -> Preset:
    """The preset of a local server: the models it lists, else a placeholder and a warning."""
    if not discover_models:
        return local_preset(local, url, key_env, [])
    models, why = discover(url, key_env or None)
    if not models:
        # Not a failure: the server may simply not be running yet while the config is written.
        warn(f"warning: could not list the models of {url}/models ({why}); wrote the placeholder model "
             f"{PLACEHOLDER} under {local.name}: replace it with one the server serves")
    return local_preset(local, url, key_env, models)


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        provider: list[str] | None = typer.Option(
            None, "--provider", metavar="NAME",
            help=f"Provider preset, repeatable: {', '.join(presets())}; a server on your own hardware: "
                 f"{', '.join(LOCAL_PRESETS)} (its models written free). NAME=URL gives that preset's "
                 "URL. Default: the preset of --upstream-url's host, else OpenAI's."),
        upstream_url: str | None = typer.Option(
            None, help="OpenAI-compatible base URL (default: the preset's). With several --provider, the "
                       "one local preset's. A host no preset knows, without --provider (the mock "
                       "upstream), gets thrifty's seed model names."),
        api_key_env: str | None = typer.Option(
            None, help="Environment variable holding the upstream key (default: the preset's, else OPENAI_API_KEY)."),
        out: Path = typer.Option(Path("thrifty.yaml"), "--out", "-o", help="Where to write the config."),
        force: bool = typer.Option(False, help="Overwrite an existing file."),
        no_discover: bool = typer.Option(
            False, "--no-discover", help="Do not ask a local server (ollama, vllm, local) for its models "
                                         "(GET /v1/models): write a placeholder model to replace."),
    ) -> None:
        """Write a starter config: the providers, a model hierarchy they serve with today's prices, a baseline, a SQLite ledger."""
        # Everything checked before the file is touched: a folder or a missing parent folder is a
        # one-line error, and a bad URL never leaves a config that `config check` rejects.
        text = starter_config(upstream_url, api_key_env, provider, discover_models=not no_discover,
                              warn=lambda line: typer.echo(line, err=True))
        if out.exists() and not force and not out.is_dir():
            raise ConfigError(f"{out} exists; pass --force to overwrite it")
        writable_output(out, "--out")
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}; check it with: thrifty config check {out}")
