"""``thrifty compress show|approve|reject|purge``: inspect and pin stored prompt compressions."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer

from thrifty.cli.checks import int_at_least
from thrifty.errors import InvalidRequestError, NotFoundError, UsageError

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file naming the store (default: $THRIFTY_CONFIG).")
KIND = "prompt"


class _NoStore:
    """The SQLite store that does not exist yet: nothing stored. These commands only read or
    change stored prompts, so none of them creates the database file (serve does)."""

    def keys(self, kind: str) -> list[str]:
        return []

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        return None


def _store(config: Path | None) -> tuple[Any, bool]:
    """(the configured document store, whether approval is required)."""
    from thrifty.cli.checks import config_path
    from thrifty.compress.stage import compression_config
    from thrifty.compress.store import open_doc_store, sqlite_path
    from thrifty.config import load_config

    cfg = load_config(config_path(config))
    comp = compression_config(cfg)
    require = comp.system_prompt.require_approval
    db = sqlite_path(comp.store, cfg.redis_url, cfg.resolve_path)
    if db is not None and db != ":memory:" and not os.path.exists(db):
        return _NoStore(), require
    return open_doc_store(comp.store, cfg.redis_url, cfg.resolve_path), require


def _resolve(store: Any, prefix: str) -> str:
    # An empty prefix matches every prompt: `purge ""` would forget whichever one is stored.
    if not prefix.strip():
        raise UsageError("HASH: expected a prompt hash or a prefix of one, got an empty string")
    keys = [k for k in store.keys(KIND) if k.startswith(prefix)]
    if not keys:
        raise NotFoundError(f"no stored prompt with hash {prefix!r} (see `thrifty compress show`)", code="not_found")
    if len(keys) > 1:
        raise InvalidRequestError(f"hash prefix {prefix!r} is ambiguous ({len(keys)} prompts): give more characters")
    return str(keys[0])


def _read_text(path: Path) -> str:
    """--text-file's text, read before the store is opened: an unreadable, non-UTF-8 or empty file
    is a one-line error, never a traceback or an empty version."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--text-file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--text-file: {path} is not UTF-8 text") from None
    if not text:
        raise UsageError(f"--text-file: {path} is empty")
    return text


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect and pin compressed system prompts.", no_args_is_help=True)

    @group.command("show")
    def show(
        prompt_hash: str | None = typer.Argument(None, help="A prompt hash (or prefix): show its texts."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """List stored prompts (hash, tokens, versions, which is in use), or show one in full."""
        from thrifty.compress import versions

        store, require = _store(config)
        try:
            if prompt_hash is None:
                keys = store.keys(KIND)
                if not keys:
                    typer.echo("no compressed prompts stored yet")
                for key in keys:
                    doc = store.get(KIND, key)
                    used = versions.active(doc, require)
                    last = doc["versions"][-1] if doc["versions"] else None
                    state = f"v{used['version']} in use ({used['tokens']} tokens)" if used else "original in use"
                    typer.echo(f"{key[:12]}  {doc['original_tokens']} tokens  {len(doc['versions'])} version(s), "
                               f"latest {last['status'] if last else '-'}  {state}")
                return
            doc = store.get(KIND, _resolve(store, prompt_hash))
            used = versions.active(doc, require)
            typer.echo(f"prompt {doc['hash']}  ({doc['original_tokens']} tokens)")
            typer.echo("---- original ----")
            typer.echo(doc["original"])
            for v in doc["versions"]:
                mark = "  <- in use" if used is not None and v["version"] == used["version"] else ""
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v["created"]))
                typer.echo(f"---- v{v['version']} {v['status']} {v['tokens']} tokens {when} {v['reason']}{mark} ----")
                typer.echo(v["text"])
        finally:
            store.close()

    def _change(prompt_hash: str, version: int | None, config: Path | None, action: str,
                text_file: Path | None = None) -> None:
        from thrifty.compress import versions
        from thrifty.tokens import count_text

        int_at_least(version, "--version", 1)
        if version is not None and text_file is not None:
            raise UsageError("--version: give --version or --text-file, not both (--text-file pins a new version)")
        text = _read_text(text_file) if text_file is not None else ""
        store, _ = _store(config)
        try:
            key = _resolve(store, prompt_hash)
            doc = store.get(KIND, key)
            if text_file is not None:
                v = versions.add_version(doc, text, count_text(text), "validated", "written by a person")
                version = v["version"]
            chosen = versions.approve(doc, version) if action == "approve" else versions.reject(doc, version)
            store.put(KIND, key, doc)
            typer.echo(f"{key[:12]} v{chosen['version']}: {chosen['status']}")
        finally:
            store.close()

    @group.command("approve")
    def approve(
        prompt_hash: str = typer.Argument(..., help="A prompt hash (or prefix)."),
        version: int | None = typer.Option(None, "--version", help="Version to pin (default: the latest)."),
        text_file: Path | None = typer.Option(None, "--text-file", help="Pin this text as a new version."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Pin a version: every request with this prompt uses it (within seconds, on every instance)."""
        _change(prompt_hash, version, config, "approve", text_file)

    @group.command("reject")
    def reject(
        prompt_hash: str = typer.Argument(..., help="A prompt hash (or prefix)."),
        version: int | None = typer.Option(None, "--version", help="Version to reject (default: the latest)."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Never use a version; without another usable version the original prompt is sent."""
        _change(prompt_hash, version, config, "reject")

    @group.command("purge")
    def purge(
        prompt_hash: str | None = typer.Argument(None, help="A prompt hash (or prefix)."),
        all_: bool = typer.Option(False, "--all", help="Purge every stored prompt and summary."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Forget a prompt's versions: it is compressed again the next time it is seen."""
        if prompt_hash is not None and all_:
            # Which was meant is a guess, and one of the guesses forgets every prompt.
            raise UsageError(f"give a prompt hash or --all, not both (got {prompt_hash!r} and --all)")
        if prompt_hash is None and not all_:
            raise UsageError("say what to purge: a prompt hash (or prefix), or --all")
        store, _ = _store(config)
        try:
            if all_:
                n = 0
                for kind in (KIND, "summary"):
                    for key in store.keys(kind):
                        n += store.delete(kind, key)
                typer.echo(f"purged {n} record(s)")
            else:
                assert prompt_hash is not None
                key = _resolve(store, prompt_hash)
                store.delete(KIND, key)
                typer.echo(f"purged {key[:12]}")
        finally:
            store.close()

    app.add_typer(group, name="compress")
