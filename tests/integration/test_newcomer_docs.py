"""A newcomer follows README.md and docs/cli.md literally against the mock upstream: the commands
as written run, and what a command tells them to run next runs as printed.

- README "Fit routing to your own traffic": its `thrifty outcomes collect` line, on the config
  the five-minute tour's `thrifty init --upstream-url <mock>` wrote, names models that config has;
- `thrifty init --provider groq --upstream-url <mock>` (a preset pointed at another host, as
  docs/cli.md allows): its models keep Groq's prices, so the baseline is the premium model and a
  request served through the gateway has a known cost;
- `thrifty batch run --deferred --no-wait --config FILE` prints the `batch status` and `batch
  results` commands to run next: they run as printed."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from fixtures.cli_run import assert_one_line, run_main
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {}}))) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A newcomer's shell has no THRIFTY_CONFIG: a command that needs one must say --config.
    monkeypatch.delenv("THRIFTY_CONFIG", raising=False)


def readme_command(section: str, command: str) -> list[str]:
    """The arguments of the README line starting ``command`` in ``section``'s bash block
    (continuation lines joined, comments dropped), without the leading ``thrifty``."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"### {section}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.S)
    assert block is not None, section
    joined = block.group(1).replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith(command))
    args = shlex.split(line, comments=True)
    assert args[0] == "thrifty"
    return args[1:]


def test_readme_fit_collect_runs_on_the_tours_config(mock: RunningServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "init", "--upstream-url", mock.url + "/v1", "--out", "thrifty.yaml")
    assert code == 0, err
    Path("prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"Summarise ticket {i}: the parcel is late.", "task": "support"}) + "\n"
        for i in range(3)))
    args = readme_command("Fit routing to your own traffic", "thrifty outcomes collect")
    code, _, err = run_main(capsys, *args, "--no-progress")
    assert code == 0, err
    lines = [json.loads(line) for line in Path("outcomes.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    models = set(args[args.index("--models") + 1].split(","))
    assert models < set(lines[0]["outcomes"])  # every model named answered (and the baseline)
    # The README's next step reads that file with the init config's baseline.
    eval_args = readme_command("Fit routing to your own traffic", "thrifty eval")
    assert eval_args[eval_args.index("--baseline") + 1] in lines[0]["outcomes"]


def test_a_preset_pointed_at_another_host_keeps_its_prices(mock: RunningServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "thrifty.yaml"
    code, _, err = run_main(capsys, "init", "--provider", "groq", "--upstream-url", mock.url + "/v1",
                            "--out", str(cfg))
    assert code == 0, err
    assert "no known price" not in cfg.read_text()
    code, _, err = run_main(capsys, "config", "check", str(cfg))
    assert code == 0, err
    assert "no known price" not in err
    written: dict[str, Any] = yaml.safe_load(cfg.read_text())
    assert written["providers"]["groq"]["price_provider"] == "groq"
    # The baseline is the preset's premium model, as docs/cli.md says, not whichever came first.
    assert written["models"][written["baseline"]]["tier"] == "premium"

    # A misspelt provider id would leave every model unpriced without a word: refused, one line.
    typo = tmp_path / "typo.yaml"
    typo.write_text(cfg.read_text().replace("price_provider: groq ", "price_provider: grok "))
    code, _, err = run_main(capsys, "config", "check", str(typo))
    assert_one_line(code, err, "providers.groq.price_provider", "'grok'", "did you mean groq?")

    # A request through a real gateway (the mock answers any name) is priced, not unknown.
    written["ledger"] = {"path": str(tmp_path / "ledger.db")}
    gw = Gateway.from_config(written)
    with run_in_thread(gw.app()) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="anything")
        raw = client.chat.completions.with_raw_response.create(
            model="openai/gpt-oss-20b", messages=[{"role": "user", "content": "Hi"}])
        assert float(raw.headers["x-thrifty-cost-usd"]) > 0
    gw.close()


def test_deferred_no_wait_prints_commands_that_run_as_printed(mock: RunningServer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "my config.yaml"  # a space: the printed command quotes it
    cfg.write_text(yaml.safe_dump({
        "providers": {"mock": {"base_url": mock.url + "/v1"}},
        "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "input": f"text {i}"}) + "\n" for i in range(2)))
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "Summarise.", "--model", "m",
                              "--deferred", "--no-wait", "--config", str(cfg), "--no-progress")
    assert code == 0, err
    printed = re.findall(r"`thrifty ([^`]+)`", err)
    assert [p.split()[:2] for p in printed] == [["batch", "status"], ["batch", "results"]], err
    for command in printed:
        code, _, err = run_main(capsys, *shlex.split(command))
        assert code == 0, (command, err)
