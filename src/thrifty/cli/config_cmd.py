"""``thrifty config check``: validate a config file and print precise errors."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from thrifty.catalog import Catalog
from thrifty.config import _OPTIONAL_SECRETS, Config, interpolate_env, load_config, missing_env_vars, read_raw

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

# Files SQLite makes beside a database it opens.
_SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal")


def _local_stores(cfg: Config) -> list[str]:
    """The SQLite files building the gateway opens (ledger, cache, compression store), with their
    sidecars: `config check` removes the ones that did not exist before it ran."""
    # Listed whether or not they are used (Postgres, Redis): only files that appear are removed.
    paths = [cfg.resolve_path(cfg.ledger.path), cfg.resolve_path(cfg.compression.store.path)]
    if cfg.cache is not None:
        paths.append(cfg.resolve_path(cfg.cache.path))
    return [p + s for p in paths if p != ":memory:" for s in _SQLITE_SIDECARS]


def tool_gateway(cfg: Config) -> Gateway:
    """A gateway of ``cfg`` for a CLI tool (``config check``, ``batch``, ``ledger reconcile``,
    ``outcomes collect``): everything but capture, which only ``thrifty serve`` opens. The tool's
    calls are no traffic of the team's, and the capture file is held (locked) by the server on
    the same config: opening it refused the tool ("in use by another process")."""
    from thrifty.gateway import Gateway

    return Gateway.from_config(cfg.model_copy(update={"capture": None}))


def check_capture_path(cfg: Config) -> None:
    """``capture.path`` can be created or appended to (``build_like_serve`` does not open it: the
    file is held by a server running on the config, and a check leaves no empty file behind)."""
    if cfg.capture is None:
        return
    from thrifty.errors import ConfigError

    path = Path(cfg.resolve_path(cfg.capture.path))
    folder = path.parent  # the writer creates missing folders: the nearest existing one must take them
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    why = ("it is a folder" if path.is_dir() else f"{folder} is not a folder" if not folder.is_dir()
           else None if os.access(path if path.exists() else folder, os.W_OK) else "permission denied")
    if why:
        raise ConfigError(f"capture.path: cannot write {path} ({why})")


def build_like_serve(cfg: Config) -> Catalog:
    """Build the gateway exactly as `thrifty serve` does at start-up, without listening, then
    close it: a route naming an unknown model, a bad regex, an unreadable verifier, router or
    examples file... are only found there, and `config check` must refuse what serve refuses.
    Capture is left off (``tool_gateway``); its path is checked on its own (``check_capture_path``).
    Returns the gateway's catalog (building another would log each unpriced model again)."""
    check_capture_path(cfg)
    before = {p for p in _local_stores(cfg) if os.path.exists(p)}
    try:
        gw = tool_gateway(cfg)
        try:
            gw.app()
            return gw.catalog
        finally:
            gw.close()
    finally:
        # A check leaves no empty databases behind (serve creates them when it really starts).
        for p in _local_stores(cfg):
            if p not in before:
                with contextlib.suppress(OSError):
                    os.unlink(p)


def reach_services(cfg: Config) -> None:
    """Connect once to the PostgreSQL ledger and the Redis server the config names.

    Why: both are connected lazily by the gateway (a database that is briefly down must not stop
    it), so building the gateway proves nothing about them; a check that says "ok" for a DSN
    with the wrong port would send every ledger row to the fallback file. Messages never show
    the URL's password."""
    from thrifty.errors import ConfigError, StorageError
    from thrifty.ledger.store import open_store
    from thrifty.redact import mask_credentials, scrub

    if cfg.ledger.dsn:
        store = open_store(dsn=cfg.ledger.dsn)
        try:
            store.query("SELECT 1")
        except StorageError as exc:
            # libpq's message spans lines (a hint follows the error): one line for the CLI.
            raise ConfigError(f"ledger.dsn: {scrub(exc.message, cfg.ledger.dsn)}") from None
        finally:
            store.close()
    urls = {"redis_url": cfg.redis_url}
    if cfg.cache is not None and cfg.cache.backend == "redis":
        urls["cache.redis_url"] = cfg.cache.redis_url or cfg.redis_url
    for key, url in urls.items():
        if not url:
            continue
        import redis

        # The URL parses: load_config checked it (config.redis_url_problem).
        client = redis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=3.0)
        try:
            client.ping()
        except (redis.RedisError, OSError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot reach Redis at {mask_credentials(url)}: "
                              f"{scrub(str(exc), url)}") from None
        finally:
            client.close()


def _optional_secret(path: tuple[str, ...]) -> bool:
    """Whether the key at ``path`` is an optional secret or URL, whose empty value means unset."""
    if len(path) == 3 and path[0] == "providers" and path[2] == "api_key":
        return True
    return any(path == ((key,) if not section else (section, key)) for section, key in _OPTIONAL_SECRETS)


def unset_env_warnings(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """One ``environment variable X is not set (...)`` line per unset ``${X}`` of the raw config.

    An optional secret or URL (``ledger.dsn``, ``auth.key_salt``, a provider's ``api_key``...)
    left empty by it is treated as unset (thrifty.config ``_OPTIONAL_SECRETS``); anywhere else
    the variable is used as an empty string. A variable used in both kinds of place gets the
    second wording, the one that needs attention."""
    env = dict(os.environ) if env is None else env
    missing = missing_env_vars(raw, env)
    as_unset: dict[str, bool] = dict.fromkeys(missing, True)

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, str):
            unset = _optional_secret(path) and not str(interpolate_env(value, env)).strip()
            for var in missing_env_vars(value, env):
                as_unset[var] = as_unset[var] and unset
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, str(k)))
        elif isinstance(value, list):
            for v in value:
                walk(v, (*path, "[]"))

    walk(raw, ())
    return [f"environment variable {var} is not set "
            f"({'treated as unset' if as_unset[var] else 'used as an empty string'})" for var in missing]


@contextlib.contextmanager
def _catalog_quiet() -> Iterator[None]:
    """Hold back the catalog's own price warnings (logged as each model is priced)."""
    log = logging.getLogger("thrifty.catalog")
    previous = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = previous


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect and validate configuration files.", no_args_is_help=True)

    @group.command("check")
    def check(file: Path = typer.Argument(..., help="The YAML config file.")) -> None:
        """Validate FILE: every problem is printed as `key.path: what is wrong`."""
        cfg = load_config(file)
        with _catalog_quiet():  # each unpriced model is warned once, below, with its key path
            catalog = build_like_serve(cfg)
        reach_services(cfg)
        raw, _ = read_raw(file)
        for line in unset_env_warnings(raw):
            typer.echo(f"warning: {line}", err=True)
        unpriced = [m.name for m in catalog if m.price is None]
        for name in unpriced:
            typer.echo(f"warning: models.{name}: no known price; its cost will be recorded as unknown", err=True)
        base = catalog.baseline.name if catalog.baseline else "(none)"
        typer.echo(f"{file}: ok — {len(cfg.providers)} provider(s), {len(catalog)} model(s), baseline {base}")

    app.add_typer(group, name="config")
