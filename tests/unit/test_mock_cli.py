"""``thrifty mock-upstream`` flag handling (the server itself is covered by the integration test)."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from thrifty.cli.mock_cmd import build_config, register
from thrifty.mock.behaviour import BehaviourTable


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("seed: 1\nmodels:\n  m:\n    faults: {latency_ms: 5}\n", encoding="utf-8")
    config = build_config(path, 9, ["m"], "sk-test-1", {"latency_ms": 50.0, "jitter_ms": None})
    assert config.seed == 9 and config.allowed_models == ("m",) and config.api_key == "sk-test-1"
    table = BehaviourTable(config)
    assert table.get("m").faults.latency_ms == 5  # the model's own setting still wins
    assert table.get("other").faults.latency_ms == 50


def test_defaults_without_file() -> None:
    config = build_config(None, None, None, None, {})
    assert config.seed == 0 and config.allowed_models is None


def test_command_is_registered() -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command makes typer keep command names
        pass

    result = CliRunner().invoke(app, ["mock-upstream", "--help"])
    assert result.exit_code == 0 and "--latency-ms" in result.output
