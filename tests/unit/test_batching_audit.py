"""Audit of batching against what users expect: an answer cut at max_tokens is not an answer,
and a provider batch that takes its time to cancel ("cancelling") is followed to its end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_batching_collector import FakeBatchAPI

from thrifty.batching.deferred import DeferredRunner
from thrifty.batching.packing import MARKER
from thrifty.batching.runner import run_batch
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response

USAGE = {"prompt_tokens": 10, "completion_tokens": 8}


def cut(model: str, text: str) -> dict[str, Any]:
    """An answer stopped by max_tokens."""
    response = chat_response(model, text, USAGE)
    response["choices"][0]["finish_reason"] = "length"
    return response


def config(tmp: Path, **batching: Any) -> dict[str, Any]:
    return {"providers": {"p": {"base_url": "http://unused.invalid"}},
            "models": {"m": {"provider": "p", "price": {"input": 1.0, "output": 4.0}}},
            "ledger": {"path": str(tmp / "ledger.db")}, "batching": batching}


# ---------------------------------------------------------------- packed and single calls
async def test_a_single_answer_cut_at_max_tokens_is_failed_not_ok(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(
        lambda body: cut("m", "The review talks about the batter"))})
    (result,) = await run_batch(gw, ["a long review"], task="Summarise the review.", model="m", pack=1)
    assert result.status == "failed" and result.output is None
    assert "max_tokens" in (result.error or "") and result.cost_usd and result.cost_usd > 0
    await gw.aclose()


async def test_a_pack_cut_at_max_tokens_is_retried_in_smaller_calls(tmp_path: Path) -> None:
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        if MARKER in body["messages"][0]["content"]:
            items = json.loads(body["messages"][1]["content"])["items"]
            answer = json.dumps({"results": [{"id": it["id"], "output": "summary"} for it in items]})
            # A complete-looking JSON answer, but the provider says it stopped at max_tokens.
            return cut("m", answer) if len(items) > 1 else chat_response("m", answer, USAGE)
        return chat_response("m", "summary", USAGE)

    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(upstream)})
    results = await run_batch(gw, ["one", "two", "three", "four"], task="Summarise.", model="m", pack=4)
    assert [r.status for r in results] == ["ok"] * 4
    assert all(r.produced == "single" and r.calls >= 2 for r in results)
    await gw.aclose()


# ---------------------------------------------------------------- provider batches
class SlowBatchAPI(FakeBatchAPI):
    """The in-memory Batch API of test_batching_collector, but batches stay in progress until
    told, and a cancel is "cancelling" for one poll, then "cancelled" with the answers made
    before it."""

    def __init__(self, answer: Any = None) -> None:
        super().__init__()
        self.finish = False
        self.answer = answer or (lambda line: chat_response("m", "positive", USAGE))

    def _output(self, lines: list[dict[str, Any]]) -> str:
        rows = [{"custom_id": line["custom_id"], "error": None,
                 "response": {"status_code": 200, "body": self.answer(line)}} for line in lines]
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return file_id

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        if batch["status"] == "cancelling" and batch.setdefault("polls", 0) >= 1:
            # the first line was answered before the cancel took effect
            batch.update(status="cancelled", output_file_id=self._output(self.lines(batch_id)[:1]))
        elif batch["status"] == "cancelling":
            batch["polls"] += 1
        elif batch["status"] == "in_progress" and self.finish:
            batch.update(status="completed", output_file_id=self._output(self.lines(batch_id)))
        return dict(batch)

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        self.batches[batch_id]["status"] = "cancelling"
        return dict(self.batches[batch_id])


def _gateway(tmp: Path, **batching: Any) -> Gateway:
    return Gateway.from_config(config(tmp, **batching), providers={"p": FunctionProvider(
        lambda body: chat_response("m", "unused"))})


async def test_cancel_follows_a_cancelling_batch_to_its_end(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    runner = DeferredRunner(gw, apis={"p": SlowBatchAPI()})
    job = await runner.submit(["a", "b", "c"], task="Classify.", model="m")
    job = await runner.cancel(job.job_id)
    assert job.status == "cancelling" and not job.done  # the provider has not stopped yet
    job = await runner.wait(job.job_id, interval=0.001, timeout=5)
    assert job.status == "cancelled"
    results = runner.results(job.job_id)
    assert [r.status for r in results] == ["ok", "failed", "failed"]
    assert results[0].output == "positive" and results[0].produced == "batch_api"
    await runner.aclose()
    await gw.aclose()


async def test_deferred_answers_cut_at_max_tokens_are_resubmitted_then_reported(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, deferred={"max_resubmits": 1})
    api = SlowBatchAPI(answer=lambda line: cut("m", "The review talks about"))
    api.finish = True
    runner = DeferredRunner(gw, apis={"p": api})
    job = await runner.submit(["a long review"], task="Summarise.", model="m")
    job = await runner.wait(job.job_id, interval=0.001, timeout=5)
    (result,) = runner.results(job.job_id)
    assert job.status == "finished" and len(api.batches) == 2  # resubmitted once
    assert result.status == "failed" and result.output is None and "max_tokens" in (result.error or "")
    await runner.aclose()
    await gw.aclose()


async def test_a_malformed_line_in_the_output_file_is_a_missing_item_not_a_crash(tmp_path: Path) -> None:
    class Garbled(SlowBatchAPI):
        def _output(self, lines: list[dict[str, Any]]) -> str:
            file_id = super()._output(lines)
            if len(self.batches) == 1:  # the first batch's file ends with a cut line
                self.files[file_id] = self.files[file_id][:-20]
            return file_id

    gw = _gateway(tmp_path)
    api = Garbled()
    api.finish = True
    runner = DeferredRunner(gw, apis={"p": api})
    job = await runner.submit(["a", "b"], task="Classify.", model="m")
    job = await runner.wait(job.job_id, interval=0.001, timeout=5)
    results = runner.results(job.job_id)
    assert job.status == "finished" and len(api.batches) == 2  # the cut item went into round 2
    assert [r.status for r in results] == ["ok", "ok"] and [r.calls for r in results] == [1, 2]
    await runner.aclose()
    await gw.aclose()


async def test_wait_stops_on_a_permanent_provider_error(tmp_path: Path) -> None:
    from thrifty.errors import UpstreamError, UpstreamStatusError

    class Gone(SlowBatchAPI):
        def __init__(self) -> None:
            super().__init__()
            self.gets = 0

        async def get_batch(self, batch_id: str) -> dict[str, Any]:
            self.gets += 1
            if self.gets == 1:  # a blip first: waited through
                raise UpstreamStatusError("p: /batches: 503", status=503)
            raise UpstreamStatusError("p: /batches: 404 no such batch", status=404)

    gw = _gateway(tmp_path)
    api = Gone()
    runner = DeferredRunner(gw, apis={"p": api})
    job = await runner.submit(["a"], task="Classify.", model="m")
    try:
        await runner.wait(job.job_id, interval=0.001, timeout=2)
    except UpstreamError as exc:
        assert "404" in exc.message and api.gets == 2
    else:
        raise AssertionError("a batch the provider does not know was polled until the timeout")
    await runner.aclose()
    await gw.aclose()
