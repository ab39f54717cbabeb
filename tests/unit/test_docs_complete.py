"""The reference docs cover every configuration key and every CLI command and flag, so the next
person finds in docs/configuration.md (or the doc a section points to) and docs/cli.md what the
code accepts. Walks the real pydantic models and the real click command tree: a key or flag
added without its documentation fails here."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from typer.main import get_command

from thrifty.cli.main import build_app
from thrifty.config import Config

DOCS = Path(__file__).resolve().parents[2] / "docs"
# A section's keys may be documented in the capability's own doc, which configuration.md names.
SECTION_DOCS = {"routing": "routing.md", "auth": "operations.md", "cache": "caching.md",
                "compression": "compression-and-batching.md", "batching": "compression-and-batching.md"}


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``dict[str, X]``, ``list[X]``)."""
    found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def config_keys() -> list[str]:
    """Every key path of the config file (``cache.semantic.verifier``), through nested models."""
    keys: list[str] = []
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            key = f"{path}.{field.alias or name}" if path else field.alias or name
            keys.append(key)
            for sub in _models(field.annotation):
                walk(sub, key)

    walk(Config, "")
    return keys


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_every_config_key_is_documented() -> None:
    reference = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = config_keys()
    assert len(keys) > 100  # the walk reached the nested sections
    missing = []
    for key in keys:
        leaf, section = key.rsplit(".", 1)[-1], key.split(".", 1)[0]
        own = (DOCS / SECTION_DOCS[section]).read_text(encoding="utf-8") if section in SECTION_DOCS else ""
        if not (_mentions(reference, leaf) or _mentions(own, leaf)):
            missing.append(key)
    assert not missing, f"config keys no doc mentions: {missing}"


def _sections(doc: str) -> dict[str, str]:
    """``## thrifty <command>`` heading -> the text under it."""
    parts = re.split(r"^## (thrifty [^\n]+)\n", doc, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def commands() -> list[tuple[str, Any]]:
    """Every visible leaf command as ``thrifty group sub``, with its command object (typer
    bundles its own click, so the tree is read by shape, not by click's classes)."""
    out: list[tuple[str, Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        if isinstance(getattr(cmd, "commands", None), dict):
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, [*path, name])
        else:
            out.append(("thrifty " + " ".join(path), cmd))

    walk(get_command(build_app()), [])
    return out


def test_every_cli_command_and_flag_is_documented_in_its_section() -> None:
    sections = _sections((DOCS / "cli.md").read_text(encoding="utf-8"))
    found = commands()
    assert len(found) > 20
    missing = []
    for name, cmd in found:
        # A subcommand is documented under its own heading or under its group's (`## thrifty cache`).
        heading = next((h for h in sorted(sections, key=len, reverse=True) if name.startswith(h)), None)
        if heading is None:
            missing.append(name)
            continue
        text = sections[heading]
        if heading != name and name.split()[-1] not in text:
            missing.append(name)
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and not getattr(param, "hidden", False):
                flags = [f for f in param.opts if f.startswith("--") and f != "--help"]
                pair = [f for f in getattr(param, "secondary_opts", []) if f.startswith("--")]
                if pair:  # a --x/--no-x switch: either spelling documents it
                    if not any(_mentions(text, f) for f in [*flags, *pair]):
                        missing.append(f"{name} {'/'.join([*flags, *pair])}")
                    continue
                missing += [f"{name} {flag}" for flag in flags if not _mentions(text, flag)]
    assert not missing, f"not in docs/cli.md under their command's heading: {missing}"
