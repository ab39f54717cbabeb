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


def _yaml_blocks(doc: str) -> list[Any]:
    import yaml

    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", (DOCS / doc).read_text(encoding="utf-8"), re.S)]


def _loads(raw: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> None:
    """``raw`` passes what ``thrifty config check`` checks offline (load, then build as serve does)."""
    from thrifty.cli.config_cmd import build_like_serve
    from thrifty.config import load_config

    build_like_serve(load_config({**raw, "base_dir": str(tmp_path)}, env=env))


ENV = {"OPENAI_API_KEY": "sk-docs-example-1", "DEEPSEEK_API_KEY": "sk-docs-example-2",
       "THRIFTY_REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_the_configuration_reference_examples_load_together(tmp_path: Path) -> None:
    """docs/configuration.md's full example with every section example of the page put in it: what
    a reader copies must load. The section examples name models `cheap`, `mid` and `big` (added
    here on the example's provider) and files a team writes itself (the router and examples files
    are written here; the cache verifier, a calibration output, is left out)."""
    blocks = _yaml_blocks("configuration.md")
    assert len(blocks) >= 6 and "providers" in blocks[0]
    merged: dict[str, Any] = {}
    for block in blocks:
        merged.update(block)
    provider = next(iter(merged["providers"]))
    for name in ("cheap", "mid", "big"):
        merged["models"].setdefault(name, {"provider": provider, "price": {"input": 1.0, "output": 2.0}})
    for route in (merged["cache"].get("routes") or {}).values():
        route.pop("verifier", None)
    import numpy as np

    from thrifty.routing.learned import LearnedRouter

    (tmp_path / "examples.jsonl").write_text('{"task": "code", "prompt": "Fix this Python traceback"}\n',
                                             encoding="utf-8")
    LearnedRouter(["cheap", "mid"], np.zeros((2, 8)), np.zeros(2), {"cheap": {"*": 1e-6}, "mid": {"*": 1e-5}},
                  {"kind": "lexical", "dim": 8}).save(tmp_path / "router.json")
    _loads(merged, tmp_path, ENV)


def test_the_deployment_and_operations_examples_load_on_the_full_example(tmp_path: Path) -> None:
    base = _yaml_blocks("configuration.md")[0]
    for doc in ("deployment.md", "operations.md"):
        for block in _yaml_blocks(doc):
            _loads({**base, **block}, tmp_path, ENV)


def test_the_mock_upstream_example_loads() -> None:
    from thrifty.mock.behaviour import MockConfig

    (block,) = _yaml_blocks("mock-upstream.md")
    assert MockConfig.from_dict(block).models
