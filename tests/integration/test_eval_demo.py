"""``thrifty demo`` without the data: one line on how to fetch it, then a live mock session."""

import pytest

from thrifty.cli.main import main


def test_demo_without_data_explains_and_falls_back_to_the_mock(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THRIFTY_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("THRIFTY_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        main(["demo"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "THRIFTY_DATA_DIR" in lines[0] and "thrifty demo --download" in lines[0]
    out = "\n".join(lines[1:])
    assert "-> gpt-4o" in out and "thrifty spend report" in out and "deepseek-v4-flash" in out
    assert not (tmp_path / "cache").exists()  # nothing downloaded without --download
