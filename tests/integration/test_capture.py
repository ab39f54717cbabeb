"""``capture:``: a sample of live chat traffic written as ``thrifty outcomes collect`` prompts.

A real gateway on 127.0.0.1, the real ``openai`` client, the mock upstream: only fresh, whole text
answers are written (streamed or not; no tool calls, cache hits or failures), keys never reach
the file, seeded sampling is reproducible, and ``outcomes collect`` on the file takes each
captured answer as the reference's instead of paying for it again.
"""

from __future__ import annotations

import json
import logging
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from thrifty.config import load_config
from thrifty.errors import ConfigError, DataError
from thrifty.evaluation.collect import load_prompts
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MOCK = {"models": {
    "strong": {"answers": [{"pattern": "which option", "answer": "The answer is (B)."}]},
    "cheap": {"answers": [{"pattern": "which option", "answer": "B"}]},
    "broken": {"faults": {"status": 500, "error_message": "upstream down"}},
}}
PASTED_KEY = "sk-proj-Zx81QwErTy55UiOp0987AsDfGhJk"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]


def mc(i: int) -> str:
    return f"Question {i}: which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def write_config(tmp_path: Path, mock: RunningServer, capture: dict[str, Any] | None, name: str = "thrifty.yaml",
                 ) -> Path:
    doc: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-test-9876543210",
                               "max_retries": 0}},
        "models": {m: {"provider": "mock", "price": {"input": p, "output": p}}
                   for m, p in {"strong": 10.0, "cheap": 0.5, "broken": 1.0}.items()},
        "baseline": "strong",
        "ledger": {"path": "ledger.db"},
        "cache": {"path": "cache.db"},
    }
    if capture is not None:
        doc["capture"] = capture
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def served(config: Path, requests: list[dict[str, Any]]) -> list[Any]:
    """Each request sent through a gateway of ``config`` served on 127.0.0.1 (the gateway closed
    after): what the client got, the answer's text or the error it raised."""
    gw = Gateway.from_config(config)
    got: list[Any] = []
    try:
        with run_in_thread(gw.app()) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
            for body in requests:
                try:
                    if body.get("stream"):
                        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**body)
                                 if c.choices]
                        got.append("".join(parts))
                    else:
                        got.append(client.chat.completions.create(**body).choices[0].message.content)
                except openai.APIError as exc:
                    got.append(exc)
    finally:
        gw.close()
    return got


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().split("\n") if x]


def user(text: str, model: str = "strong", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def mock_calls(mock: RunningServer) -> list[dict[str, Any]]:
    return [r["body"] for r in httpx.get(mock.url + "/mock/requests?limit=500").json()["data"]
            if r["path"].endswith("/chat/completions")]


def test_rate_one_writes_each_fresh_whole_text_answer(mock: RunningServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, mock, {"path": "captured/prompts.jsonl"})
    out = tmp_path / "captured" / "prompts.jsonl"
    out.parent.mkdir()
    # An earlier gateway killed mid-write: a whole line, then half of one (cut off before appending).
    out.write_text(json.dumps({"id": "old", "messages": [{"role": "user", "content": "hi"}]}) + '\n{"id": "cut", "mes')
    got = served(config, [
        user(f"{mc(1)}\nMy key is {PASTED_KEY}, keep it safe."),  # captured, the key masked
        user(mc(2), stream=True, extra_body={"thrifty": {"task": "quiz"}}),  # captured, streamed
        user(f"{mc(1)}\nMy key is {PASTED_KEY}, keep it safe."),  # a cache hit: no fresh answer
        user(mc(2), stream=True, extra_body={"thrifty": {"task": "quiz"}}),  # a streamed cache hit
        user("What is the weather in Paris?", tools=WEATHER, tool_choice="required"),  # a tool call
        user("What is the weather in Oslo?", tools=WEATHER, tool_choice="required", stream=True),
        user(mc(3), model="broken"),  # failed
        user(mc(4), n=2),  # two answers: no one answer to take as the reference
    ])
    assert got[:4] == ["The answer is (B)."] * 4
    assert isinstance(got[6], openai.APIError) and got[7] == "The answer is (B)."

    text = out.read_text()
    assert PASTED_KEY not in text and "[REDACTED]" in text
    rows = lines(out)
    assert rows[0]["id"] == "old" and len(rows) == 3, rows
    first, second = rows[1], rows[2]
    assert first["id"].startswith("req_") and "task" not in first
    assert first["messages"] == [{"role": "user", "content": f"{mc(1)}\nMy key is [REDACTED], keep it safe."}]
    assert first["reference"]["model"] == "strong" and first["reference"]["answer"] == "The answer is (B)."
    assert first["reference"]["cost_usd"] > 0
    assert second["task"] == "quiz" and second["messages"] == [{"role": "user", "content": mc(2)}]
    assert second["reference"]["answer"] == "The answer is (B)." and second["reference"]["cost_usd"] > 0
    # The file is a prompts file as `outcomes collect` reads it.
    prompts = load_prompts(out)
    assert [p.served.model if p.served else None for p in prompts] == [None, "strong", "strong"]


def test_reference_false_writes_prompts_only_and_tasks_filter(mock: RunningServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, mock, {"path": "c.jsonl", "reference": False, "tasks": ["quiz"]})
    served(config, [user(mc(4), extra_body={"thrifty": {"task": "quiz"}}),
                    user(mc(5), extra_body={"thrifty": {"task": "chat"}}), user(mc(6))])
    rows = lines(tmp_path / "c.jsonl")
    assert [(r["task"], "reference" in r) for r in rows] == [("quiz", False)]


def test_seeded_sampling_is_reproducible_and_max_prompts_bounds_the_file(
        mock: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traffic = [user(f"{mc(i)} (take {i})") for i in range(16)]
    picked = []
    for run in ("a", "b"):
        config = write_config(tmp_path, mock, {"path": f"{run}.jsonl", "rate": 0.5, "seed": 7}, f"{run}.yaml")
        served(config, [{**t, "temperature": 0.5} for t in traffic])
        picked.append([r["messages"] for r in lines(tmp_path / f"{run}.jsonl")])
    assert picked[0] == picked[1] and 0 < len(picked[0]) < 16

    caplog.set_level(logging.WARNING, logger="thrifty.capture")
    config = write_config(tmp_path, mock, {"path": "small.jsonl", "max_prompts": 3}, "small.yaml")
    served(config, traffic[:6])
    assert len(lines(tmp_path / "small.jsonl")) == 3
    said = [r for r in caplog.records if "max_prompts" in r.getMessage()]
    assert len(said) == 1


def test_collect_takes_the_captured_answer_as_the_reference(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, mock, {"path": "captured.jsonl"})
    served(config, [user(mc(i)) for i in range(10, 14)])
    captured = tmp_path / "captured.jsonl"
    before = captured.read_text()
    costs = [r["reference"]["cost_usd"] for r in lines(captured)]
    httpx.post(mock.url + "/mock/reset").raise_for_status()
    out = tmp_path / "outcomes.jsonl"
    # The same config: capture is on, yet collect's own calls are not captured.
    code, stdout, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts", str(captured),
                                 "--models", "cheap", "--reference", "strong", "--out", str(out), "--no-progress")
    assert code == 0, err
    sent = mock_calls(mock)
    assert [b["model"] for b in sent] == ["cheap"] * 4  # the reference was not asked again
    assert stdout.startswith("estimate: 4 prompts, 4 calls"), stdout
    got = lines(out)
    assert [o["outcomes"]["strong"]["score"] for o in got] == [1.0] * 4
    assert [o["outcomes"]["strong"]["cost"] for o in got] == costs
    assert all(o["outcomes"]["strong"]["response"] == "The answer is (B)." for o in got)
    assert all(o["outcomes"]["cheap"]["score"] == 1.0 for o in got)  # "B" is option B
    assert captured.read_text() == before

    # The captured model as a candidate, another reference: the reference is asked, the
    # candidate's captured answer is its outcome (graded against the reference's), not asked again.
    httpx.post(mock.url + "/mock/reset").raise_for_status()
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts", str(captured),
                            "--models", "strong", "--reference", "cheap", "--out", str(tmp_path / "o2.jsonl"),
                            "--no-progress")
    assert code == 0, err
    assert [b["model"] for b in mock_calls(mock)] == ["cheap"] * 4
    got = lines(tmp_path / "o2.jsonl")
    assert all(o["outcomes"]["strong"].get("captured") and o["outcomes"]["strong"]["score"] == 1.0 for o in got)

    # A model the line did not capture is asked as before.
    httpx.post(mock.url + "/mock/reset").raise_for_status()
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts", str(captured),
                            "--models", "cheap", "--reference", "cheap", "--out", str(tmp_path / "o3.jsonl"),
                            "--no-progress")
    assert code == 0, err
    assert [b["model"] for b in mock_calls(mock)] == ["cheap"] * 4


@pytest.mark.parametrize(("capture", "needle"), [
    ({"rate": 0}, "capture.rate"),
    ({"rate": 1.5}, "capture.rate"),
    ({"rate": "half"}, "capture.rate"),
    ({"tasks": []}, "capture.tasks"),
    ({"max_prompts": 0}, "capture.max_prompts"),
    ({"seed": True}, "capture.seed"),
    ({"reference": "maybe"}, "capture.reference"),
    ({"path": " "}, "capture.path"),
    ({"sample": 0.1}, "capture.sample: unknown key"),
])
def test_a_bad_capture_value_is_a_config_error(capture: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"capture": capture})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_capture_is_off_unless_configured_and_an_empty_section_is_its_defaults(tmp_path: Path) -> None:
    assert load_config({}).capture is None
    cfg = load_config({"capture": None})
    assert cfg.capture is not None and cfg.capture.rate == 1.0 and cfg.capture.reference


@pytest.mark.parametrize(("reference", "needle"), [
    ("[]", "'reference' must be an object"),
    ('{"model": "m"}', "'reference.answer'"),
    ('{"model": "", "answer": "x"}', "'reference.model'"),
    ('{"model": "m", "answer": "x", "cost_usd": -1}', "'reference.cost_usd'"),
    ('{"model": "m", "answer": "x", "price": 1}', "unknown keys 'price'"),
])
def test_a_bad_reference_line_is_a_data_error_naming_the_line(tmp_path: Path, reference: str, needle: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n{"prompt": "hello", "reference": ' + reference + "}\n")
    with pytest.raises(DataError) as err:
        load_prompts(path)
    assert "line 2" in str(err.value) and needle in str(err.value)


# --- review C mends -------------------------------------------------------------------------------


def capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "thrifty-capture"]


def test_one_capture_path_is_held_by_one_gateway_process(mock: RunningServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, mock, {"path": "shared.jsonl", "max_prompts": 2})
    first = Gateway.from_config(config)
    try:
        # A second gateway on the same file would count max_prompts on its own (the file ~2x) and
        # could cut the first's half-written last line: it is refused, and leaves nothing running.
        with pytest.raises(ConfigError) as err:
            Gateway.from_config(config)
        assert "capture.path" in str(err.value) and "in use by another process" in str(err.value)
        assert str(tmp_path / "shared.jsonl") in str(err.value) and "\n" not in str(err.value)
        assert len(capture_threads()) == 1
    finally:
        first.close()
    Gateway.from_config(config).close()  # released by close()


def test_collect_does_not_open_the_capture_file(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, mock, {"path": "live.jsonl"})
    live = tmp_path / "live.jsonl"
    # The live gateway's line half written as collect starts: collect must neither cut it nor be
    # refused because the live gateway holds the file.
    live.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{"id": "b", "mes')
    holder = Gateway.from_config(write_config(tmp_path, mock, {"path": "other.jsonl"}, "other.yaml"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": mc(30)}) + "\n")
    live_gw = None
    try:
        code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts", str(prompts),
                                "--models", "cheap", "--reference", "strong", "--out", str(tmp_path / "o.jsonl"),
                                "--no-progress")
        assert code == 0, err
        assert live.read_text().endswith('{"id": "b", "mes')
        live_gw = Gateway.from_config(config)  # cuts the tail, holds the file
        code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts", str(prompts),
                                "--models", "cheap", "--reference", "strong", "--out", str(tmp_path / "o2.jsonl"),
                                "--no-progress")
        assert code == 0, err
    finally:
        holder.close()
        if live_gw is not None:
            live_gw.close()
    assert [r["id"] for r in lines(live)] == ["a"]


def test_a_long_capture_file_is_not_read_whole_at_start(mock: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "big.jsonl"
    row = json.dumps({"id": "x", "messages": [{"role": "user", "content": "y" * 4000}]}) + "\n"
    with out.open("w") as fh:
        for _ in range(3000):  # ~12 MB
            fh.write(row)
        fh.write('{"id": "cut", "mes')
    config = write_config(tmp_path, mock, {"path": "big.jsonl", "max_prompts": 3001})
    tracemalloc.start()
    try:
        gw = Gateway.from_config(config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    try:
        assert peak < 6_000_000, peak
        assert out.stat().st_size == 3000 * len(row)  # the cut line removed
    finally:
        gw.close()
    served(config, [user(mc(31)), user(mc(32))])
    assert len(lines(out)) == 3001  # 3000 counted at start: room for one


def test_a_failed_gateway_build_leaves_no_capture_writer(tmp_path: Path) -> None:
    config = tmp_path / "thrifty.yaml"
    config.write_text(yaml.safe_dump({"providers": {}, "models": {}, "capture": {"path": "c.jsonl"},
                                      "cache": {"backend": "redis"}}))
    for _ in range(2):  # the second build would be refused if the first still held the file
        with pytest.raises(ConfigError) as err:
            Gateway.from_config(config)
        assert "in use" not in str(err.value)
    assert capture_threads() == []


def test_requests_with_tools_are_not_captured(mock: RunningServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, mock, {"path": "t.jsonl"})
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = [{"role": "user", "content": f"{mc(40)} Also the weather in Oslo?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 20C"}]
    functions = [WEATHER[0]["function"]]
    got = served(config, [
        user(mc(41), tools=WEATHER, tool_choice="none"),  # a text answer, but to a request with tools
        user(mc(42), tools=WEATHER, tool_choice="none", stream=True),
        user(mc(43), functions=functions),
        {"model": "strong", "messages": history, "tools": WEATHER},
        {"model": "strong", "messages": history},  # tool history, tools left out (some clients do)
        user(mc(44)),  # captured
    ])
    assert all(isinstance(g, str) and g for g in got), got
    rows = lines(tmp_path / "t.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == [mc(44)]


def test_only_streams_that_will_be_written_are_tapped(
        mock: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.capture import observe

    tapped: list[int] = []

    class Counting(observe._Tap):
        def __init__(self, *args: Any) -> None:
            tapped.append(1)
            super().__init__(*args)

    monkeypatch.setattr(observe, "_Tap", Counting)
    config = write_config(tmp_path, mock, {"path": "s.jsonl", "max_prompts": 1, "tasks": ["quiz"]})
    quiz = {"thrifty": {"task": "quiz"}}
    got = served(config, [
        user(mc(50), stream=True, extra_body={"thrifty": {"task": "chat"}}),  # not a wanted task
        user(mc(51), stream=True, extra_body=quiz),  # written: the file is then full
        user(mc(52), stream=True, extra_body=quiz),
        user(mc(53), stream=True, extra_body=quiz),
    ])
    assert got == ["The answer is (B)."] * 4
    assert [r["messages"][0]["content"] for r in lines(tmp_path / "s.jsonl")] == [mc(51)]
    assert len(tapped) == 1


def test_a_discounted_answer_is_captured_without_its_cost_and_collect_prices_it_at_list(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, mock, {"path": "flex.jsonl"})
    served(config, [user(mc(60), service_tier="flex"), user(mc(61))])
    rows = lines(tmp_path / "flex.jsonl")
    assert rows[0]["reference"]["cost_usd"] is None  # half price beside list-priced candidates: not kept
    assert rows[1]["reference"]["cost_usd"] > 0
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(config), "--prompts",
                            str(tmp_path / "flex.jsonl"), "--models", "cheap", "--reference", "strong",
                            "--out", str(tmp_path / "o.jsonl"), "--no-progress")
    assert code == 0, err
    flex, listed = (o["outcomes"]["strong"] for o in lines(tmp_path / "o.jsonl"))
    usage = flex["usage"]
    list_usd = (usage["prompt_tokens"] + usage["completion_tokens"]) * 10.0 / 1e6  # strong: $10/M both ways
    assert flex["cost"] == pytest.approx(list_usd)
    assert listed["cost"] == rows[1]["reference"]["cost_usd"]


# --- final review mends ----------------------------------------------------------------------------


def test_cli_tools_on_the_config_leave_the_capture_file_alone(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config check`, `batch ...` and `ledger reconcile` on a config with capture on build a
    gateway of it: none opens the capture file. With a server holding it they were refused
    ("in use by another process"); without one, `config check` left an empty file behind and a
    `batch run` wrote its own items into it as traffic."""
    config = write_config(tmp_path, mock, {"path": "live.jsonl"})
    live = tmp_path / "live.jsonl"
    code, _, err = run_main(capsys, "config", "check", str(config))
    assert code == 0, err
    assert not live.exists()
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": 1, "input": mc(70)}) + "\n")
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "Answer.", "--model", "strong",
                            "--pack", "1", "--config", str(config), "--no-progress")
    assert "in use" not in err and not live.exists(), err
    serving = Gateway.from_config(config)  # `thrifty serve` on the same config holds the file
    try:
        for args in (["config", "check", str(config)], ["batch", "status", "--config", str(config)],
                     ["ledger", "reconcile", "--config", str(config)]):
            code, _, err = run_main(capsys, *args)
            assert code == 0 and "in use" not in err, (args, err)
    finally:
        serving.close()
    assert live.read_text() == ""


def test_a_whole_last_line_without_its_newline_is_kept(mock: RunningServer, tmp_path: Path) -> None:
    """A prompts file edited by hand (no newline after its last line) given as capture.path: that
    line is whole, so it is ended and counted, not cut as an interrupted write's tail."""
    out = tmp_path / "hand.jsonl"
    hand = json.dumps({"id": "hand", "messages": [{"role": "user", "content": "hi"}]})
    out.write_text(json.dumps({"id": "first", "messages": [{"role": "user", "content": "yo"}]}) + "\n" + hand)
    config = write_config(tmp_path, mock, {"path": "hand.jsonl", "max_prompts": 3})
    served(config, [user(mc(71)), user(mc(72))])
    assert [r["id"] for r in lines(out)][:2] == ["first", "hand"]
    assert len(lines(out)) == 3  # both counted: room for one more
