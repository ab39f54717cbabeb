"""Config parsing, inheritance and the x-mock-behaviour header grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.errors import ConfigError, InvalidRequestError
from thrifty.mock.behaviour import BehaviourTable, MockConfig
from thrifty.mock.faults import FaultState, parse_header
from thrifty.mock.recorder import Recorder, redact


def test_models_inherit_unset_fields_from_default() -> None:
    config = MockConfig.from_dict(
        {
            "default": {"reasoning_tokens": 5, "faults": {"latency_ms": 10, "jitter_ms": 2}},
            "models": {"weak": {"wrong_rate": 0.5, "faults": {"latency_ms": 1}}},
        }
    )
    weak = BehaviourTable(config).get("weak")
    assert weak.wrong_rate == 0.5
    assert weak.reasoning_tokens == (5, 5)
    assert weak.faults.latency_ms == 1
    assert weak.faults.jitter_ms == 2  # nested faults merge field by field


def test_glob_patterns_and_exact_names() -> None:
    config = MockConfig.from_dict(
        {"models": {"gpt-4o*": {"answer": "pattern"}, "gpt-4o-mini": {"answer": "exact"}}}
    )
    table = BehaviourTable(config)
    assert table.get("gpt-4o-mini").answer == "exact"
    assert table.get("gpt-4o-2024").answer == "pattern"
    assert table.get("other").answer is None
    assert config.model_names() == ["gpt-4o-mini"]


def test_allow_list() -> None:
    table = BehaviourTable(MockConfig.from_dict({"allowed_models": ["a"]}))
    assert table.allowed("a") and not table.allowed("b")
    assert BehaviourTable(MockConfig()).allowed("anything")


@pytest.mark.parametrize(
    "data",
    [
        {"models": {"m": {"wrong_rate": 2}}},
        {"models": {"m": {"answers": [{"pattern": "(", "answer": "x"}]}}},
        {"default": {"output_tokens": [5, 1]}},
        {"unknown_key": 1},
    ],
)
def test_bad_config_is_one_config_error(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="mock config"):
        MockConfig.from_dict(data)


def test_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("seed: 3\nmodels:\n  m:\n    answer: hi\n", encoding="utf-8")
    config = MockConfig.from_yaml(path)
    assert config.seed == 3 and config.models["m"].answer == "hi"
    path.write_text("- not a mapping\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        MockConfig.from_yaml(path)


def test_with_default_faults_keeps_model_overrides() -> None:
    config = MockConfig.from_dict({"models": {"m": {"faults": {"latency_ms": 5}}}}).with_default_faults(
        latency_ms=50, error_rate=0.1
    )
    table = BehaviourTable(config)
    assert table.get("m").faults.latency_ms == 5 and table.get("m").faults.error_rate == 0.1
    assert table.get("x").faults.latency_ms == 50


def test_header_grammar() -> None:
    faults = parse_header("status=429; retry_after=1.5")
    assert faults.status == 429 and faults.retry_after == 1.5
    assert parse_header("hang").hang is True
    assert parse_header(" truncate_after=3 ;malformed").truncate_after == 3
    assert parse_header("Latency-MS=200").latency_ms == 200
    assert parse_header("status=500").model_fields_set == {"status"}
    with pytest.raises(InvalidRequestError, match="unknown key"):
        parse_header("stauts=500")
    with pytest.raises(InvalidRequestError):
        parse_header("status=abc")


def test_fail_first_counts_only_while_set_and_resets() -> None:
    state = FaultState(seed=0)
    plain = parse_header("latency_ms=0")
    failing = parse_header("fail_first=2; fail_status=503")
    assert state.check("m", plain) is None  # plain traffic does not use up the failures
    assert [getattr(state.check("m", failing), "status", None) for _ in range(3)] == [503, 503, None]
    state.reset()
    assert [getattr(state.check("m", failing), "status", None) for _ in range(3)] == [503, 503, None]


def test_error_rate_and_jitter_are_deterministic() -> None:
    faults = parse_header("error_rate=0.3; jitter_ms=100")
    runs = []
    for _ in range(2):
        state = FaultState(seed=7)
        runs.append([(state.delay_s("m", faults), state.check("m", faults) is None) for _ in range(200)])
    assert runs[0] == runs[1]
    failures = sum(1 for _, ok in runs[0] if not ok)
    assert 30 <= failures <= 90
    assert all(0 <= delay < 0.1 for delay, _ in runs[0])


def test_429_gets_a_retry_after_by_default() -> None:
    error = FaultState(0).check("m", parse_header("status=429"))
    assert error is not None and error.headers() == {"retry-after": "1", "retry-after-ms": "1000"}


def test_recorder_redacts_credentials() -> None:
    recorder = Recorder(limit=2)
    headers = [
        (b"Authorization", b"Bearer sk-test-abcdefgh1234"),
        (b"x-api-key", b"secretkey9876"),
        (b"a", b"b"),
    ]
    for i in range(3):
        recorder.add("POST", "/v1/chat/completions", headers, {"i": i})
    items = recorder.last()
    assert [item["body"]["i"] for item in items] == [1, 2]
    assert items[0]["headers"]["authorization"] == "...1234"
    assert items[0]["headers"]["x-api-key"] == "...9876"
    assert items[0]["headers"]["a"] == "b"
    assert recorder.total == 3 and recorder.last(1)[0]["body"]["i"] == 2
    assert redact("abc") == "..."
