"""Promise: any bad input to any `thrifty` command is one `thrifty: ...` line on stderr, exit 2,
never a traceback.

The commands are discovered from the CLI itself, so a command added later is checked too: each
one taking `--config` gets a missing, a malformed and a misspelt config file; each one taking a
data file gets a missing one. Required arguments are filled with harmless values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from fixtures.cli_run import assert_one_line, run_main
from thrifty.cli.main import build_app

DATA_OPTIONS = ("data", "pairs")


def _leaves(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from _leaves(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = dict(_leaves(typer.main.get_command(build_app())))


def _options(cmd: Any) -> set[str]:
    return {opt for p in cmd.params for opt in (getattr(p, "opts", None) or [])}


WITH_CONFIG = sorted(" ".join(path) for path, cmd in COMMANDS.items() if "--config" in _options(cmd))
WITH_DATA = sorted(" ".join(path) for path, cmd in COMMANDS.items()
                   if any(f"--{name}" in _options(cmd) for name in DATA_OPTIONS))
# What a command needs before it reads its config, so that the config is what fails.
PREREQUISITES = {"cache clear": ["--all"], "compress purge": ["--all"]}


def argv_for(name: str, tmp_path: Path, **given: str) -> list[str]:
    """``name`` with every required argument filled (``given`` overrides by parameter name)."""
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "input": "hello"}\n')
    cmd = COMMANDS[tuple(name.split())]
    argv = [*name.split(), *PREREQUISITES.get(name, [])]
    for p in cmd.params:
        opts = getattr(p, "opts", None) or []
        value = given.get(p.name or "")
        if value is None and not getattr(p, "required", False):
            continue
        if value is None:
            value = {"items_file": str(items), "out": str(tmp_path / "out.json")}.get(p.name or "", "x")
            if p.name in DATA_OPTIONS:  # present, so that only what the test breaks is wrong
                data = tmp_path / "outcomes.jsonl"
                data.write_text('{"prompt": "hi"}\n')
                value = str(data)
        argv += [value] if type(p).__name__ == "TyperArgument" else [opts[0], value]
    return argv


def test_the_sweep_finds_the_commands() -> None:
    # Guards the parametrisation below against silently checking nothing.
    assert len(WITH_CONFIG) >= 20 and {"serve", "report", "keys create", "batch run"} <= set(WITH_CONFIG)
    assert {"eval", "router train", "cache eval"} <= set(WITH_DATA)


@pytest.mark.parametrize("name", WITH_CONFIG)
@pytest.mark.parametrize("case", ["missing", "malformed", "misspelt"])
def test_a_bad_config_file_is_one_line(name: str, case: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / f"{case}.yaml"
    if case == "malformed":
        cfg.write_text("providers:\n  p: [unclosed\n")
    elif case == "misspelt":
        cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1'}}\nmodels: {m: {provider: p}}\n"
                       "ledgr: {path: l.db}\n")
    code, _, err = run_main(capsys, *argv_for(name, tmp_path, config=str(cfg)))
    assert_one_line(code, err)
    if case == "misspelt" and name != "mock-upstream":  # the mock's own format has no `ledgr` either
        assert "ledgr" in err
    elif case != "misspelt":
        assert str(cfg) in err  # the message names the file it could not use
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", WITH_DATA)
def test_a_missing_data_file_is_one_line(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-outcomes.jsonl"
    option = next(n for n in DATA_OPTIONS if f"--{n}" in _options(COMMANDS[tuple(name.split())]))
    code, _, err = run_main(capsys, *argv_for(name, tmp_path, **{option: str(missing)}))
    assert_one_line(code, err, "no-such-outcomes.jsonl")
