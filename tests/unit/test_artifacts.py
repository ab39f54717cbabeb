"""Fitted artifacts are written whole or not at all, and read back with their format checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.artifacts import read_artifact, write_artifact
from thrifty.errors import ConfigError


def test_write_replaces_atomically_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    write_artifact(path, {"format": "x/1", "n": 1})
    write_artifact(path, {"format": "x/1", "n": 2})
    assert read_artifact(path, "x/1", "test")["n"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]  # no temporary file left behind
    with pytest.raises(ConfigError, match="not a thrifty test file"):
        read_artifact(path, "y/1", "test")


def test_unwritable_target_is_a_config_error_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "v.json"
    with pytest.raises(ConfigError, match="cannot write"):
        write_artifact(target, {"format": "x/1"})
    assert not any(tmp_path.rglob("*.tmp"))
