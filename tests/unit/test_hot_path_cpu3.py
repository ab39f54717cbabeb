"""Per-request CPU cut without a change of behaviour, third round.

/metrics latency histograms keep their observations as a sum and a count per bucket until the
metrics are read, then apply them: what a read sees is what ``observe`` at once gave, bucket by
bucket. ``FastJSONResponse`` builds its raw headers itself: the bytes a client receives are
Starlette's, in the same order, whatever headers a handler passes.
"""

from __future__ import annotations

import math
from typing import Any

import openai
import orjson
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Histogram
from starlette.responses import Response

from fixtures.served import serving
from thrifty.fastjson import FastJSONResponse
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.server.metrics import _LATENCY_BUCKETS, Metrics
from thrifty.types import ChatRequest

# Bounds, just past them, both ends, a negative and +Inf: every place observe's scan can stop.
AMOUNTS = [0.0, 0.005, 0.0050001, 0.01, 1.0, 1.5, 120.0, 120.5, -2.0, math.inf, 0.3, 0.3, 59.9]


def _ctx(elapsed_s: float, attempt_s: float) -> RequestContext:
    ctx = RequestContext(request=ChatRequest.from_body({"model": "cheap", "messages": [{"role": "user",
                                                                                        "content": "hi"}]}),
                         served_model="cheap")
    ctx.started -= elapsed_s  # elapsed_ms reads the clock: ``elapsed_s`` ago, give or take microseconds
    ctx.attempts.append(Attempt(model="cheap", provider="p", started=0.0, latency_ms=attempt_s * 1000.0))
    return ctx


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    """A histogram's samples by (sample name, bucket bound), whatever its other labels."""
    return {(s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for metric in registry.collect() if metric.name == name for s in metric.samples
            if not s.name.endswith("_created")}


def test_pending_histograms_read_as_observe_at_once_gave_them() -> None:
    m = Metrics()
    ref_registry = CollectorRegistry()
    ref = Histogram("ref", "", buckets=_LATENCY_BUCKETS, registry=ref_registry)
    for amount in AMOUNTS:
        m.observe(_ctx(0.0, amount))
        ref.observe(amount)
    got = _samples(m.registry, "thrifty_upstream_latency_seconds")
    want = _samples(ref_registry, "ref")
    assert got.keys() == want.keys() and len(got) == len(_LATENCY_BUCKETS) + 3  # +Inf, _count, _sum
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    # Read again after more requests: only the new ones are added (nothing applied twice).
    m.observe(_ctx(0.0, 0.02))
    ref.observe(0.02)
    again, want = _samples(m.registry, "thrifty_upstream_latency_seconds"), _samples(ref_registry, "ref")
    assert again == pytest.approx(want)


def test_a_nan_latency_is_summed_and_counted_in_no_bucket_as_observe_does() -> None:
    m = Metrics()
    ref_registry = CollectorRegistry()
    ref = Histogram("ref", "", buckets=_LATENCY_BUCKETS, registry=ref_registry)
    m.observe(_ctx(0.0, math.nan))
    ref.observe(math.nan)
    got, want = _samples(m.registry, "thrifty_upstream_latency_seconds"), _samples(ref_registry, "ref")
    assert math.isnan(got[("_sum", "")]) and math.isnan(want[("_sum", "")])
    assert {k: v for k, v in got.items() if k[0] != "_sum"} == {k: v for k, v in want.items() if k[0] != "_sum"}


def test_request_latency_lands_in_its_bucket() -> None:
    m = Metrics()
    m.observe(_ctx(0.2, 0.001))
    labels = {"model": "cheap", "route": "-"}
    value = m.registry.get_sample_value
    assert value("thrifty_request_latency_seconds_bucket", {**labels, "le": "0.1"}) == 0
    assert value("thrifty_request_latency_seconds_bucket", {**labels, "le": "0.25"}) == 1
    assert value("thrifty_request_latency_seconds_count", labels) == 1
    assert 0.2 <= (value("thrifty_request_latency_seconds_sum", labels) or 0) < 0.25


def test_observe_makes_no_histogram_observe_until_the_metrics_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = prometheus_client.Histogram.observe

    def counting(self: Any, amount: float, exemplar: Any = None) -> None:
        calls.append(amount)
        real(self, amount, exemplar)

    monkeypatch.setattr(prometheus_client.Histogram, "observe", counting)
    m = Metrics()
    for _ in range(5):
        m.observe(_ctx(0.0, 0.003))
    assert calls == []  # an observe was five Python calls and two locks; a read applies them in one go
    assert m.registry.get_sample_value("thrifty_upstream_latency_seconds_bucket",
                                       {"model": "cheap", "purpose": "answer", "status": "ok", "le": "0.005"}) == 5


HEADERS = {"x-thrifty-request-id": "req_1", "x-request-id": "req_1", "x-thrifty-model": "cheap",
           "x-thrifty-cost-usd": "0.000012", "x-thrifty-latency-ms": "1.5"}
BODY = {"id": "chatcmpl-1", "choices": [{"message": {"content": "é ünïcode ☃"}}]}


class _Starlettes(Response):
    """What FastJSONResponse sent before: Starlette's own header building, an orjson body."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@pytest.mark.parametrize("kwargs", [
    {"headers": HEADERS},
    {"headers": None},
    {"headers": {}},
    {"headers": {"X-Thrifty-Model": "cheap", "Retry-After": "3"}},  # names sent lower-cased
    {"headers": {"content-length": "999", **HEADERS}},  # given: replaces the computed one
    {"headers": {**HEADERS, "Content-Type": "application/json; charset=utf-8"}},
    {"headers": HEADERS, "status_code": 201},
    {"headers": HEADERS, "status_code": 204},  # no content-length for a bodiless status
    {"headers": HEADERS, "status_code": 100},
    {"headers": HEADERS, "media_type": "application/vnd.x+json"},
    {"headers": HEADERS, "media_type": "text/plain"},  # Starlette adds the charset
])
def test_fast_json_response_sends_starlettes_headers_and_body(kwargs: dict[str, Any]) -> None:
    for _ in range(2):  # the second time, the names come from the cache
        fast, slow = FastJSONResponse(BODY, **kwargs), _Starlettes(BODY, **kwargs)
        assert fast.raw_headers == slow.raw_headers
        assert (fast.body, fast.status_code, fast.media_type, fast.background) == \
               (slow.body, slow.status_code, slow.media_type, slow.background)


def test_fast_json_response_refuses_what_starlette_refuses() -> None:
    with pytest.raises(TypeError):  # not JSON: the body is made first, as before
        FastJSONResponse({1, 2}, headers={"x-a": "☃"})
    with pytest.raises(UnicodeEncodeError):
        FastJSONResponse(BODY, headers={"x-a": "☃"})


def test_fast_json_response_skips_starlettes_header_building(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(Response, "init_headers", lambda self, headers=None: calls.append(headers))
    FastJSONResponse(BODY, headers=HEADERS)
    assert calls == []  # its per-header lower().encode() and checks were ~1 us a request


def test_a_served_answer_reaches_the_openai_client_with_its_headers() -> None:
    with run_in_thread(create_mock(MockConfig())) as upstream:
        cfg = {"providers": {"mock": {"base_url": upstream.url + "/v1", "api_key": "sk-upstream-0000"}},
               "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}}}
        with serving(cfg) as (gw, client):
            raw = client.chat.completions.with_raw_response.create(
                model="cheap", messages=[{"role": "user", "content": "hi"}])
            answer = raw.parse()
            assert answer.choices[0].message.content
            assert raw.headers["x-request-id"] == raw.headers["x-thrifty-request-id"].strip()
            assert raw.headers["x-thrifty-model"] == "cheap"
            assert raw.headers["content-type"] == "application/json"
            assert int(raw.headers["content-length"]) == len(raw.http_response.content)
            assert float(raw.headers["x-thrifty-cost-usd"]) > 0
            labels = {"model": "cheap", "route": "-"}
            assert gw.ops.metrics.registry.get_sample_value("thrifty_request_latency_seconds_count", labels) == 1
        assert isinstance(client, openai.OpenAI)
