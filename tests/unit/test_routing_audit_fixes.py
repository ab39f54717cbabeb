"""The routing/cascade audit's findings, each pinned through the real pipeline (in-process
test-double providers): tool-call answers, budget guards before every call, budgets on
single-model and learned routes, logprobs only where scored, learned.models filtering,
calibrate --config keeping the base's routes, one escalation definition, route explain in
people's terms, inline multiple choice, strategy of failed cascades, tiers without threshold,
scorers seeing catalog names, clipped embedding confidence, LLM classifier tasks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fixtures.cli_run import run_main
from fixtures.routing_data import synthetic, write_jsonl
from thrifty.errors import ConfigError, InvalidRequestError, UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.pipeline.context import Plan, RequestContext, Tier
from thrifty.pipeline.route import RouteStage
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.routing.classify import EmbeddingClassifier
from thrifty.routing.formats import detect_family
from thrifty.routing.learned import LearnedRouter
from thrifty.scoring.base import Score
from thrifty.scoring.heuristics import HeuristicScorer
from thrifty.server.metrics import Metrics
from thrifty.types import ChatRequest

USAGE = {"prompt_tokens": 100, "completion_tokens": 10}
MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PRICES = {"a": 0.1, "b": 0.2, "judge": 0.05, "big": 10.0}


def tool_response(model: str, arguments: str, name: str = "get_weather") -> dict[str, Any]:
    return {"id": "chatcmpl-t", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}}],
            "usage": USAGE}


Answer = Callable[[dict[str, Any]], dict[str, Any]]


def gateway(tmp_path: Path, routes: dict[str, Any], answer: Answer, **routing: Any) -> tuple[Gateway, list[dict[str, Any]]]:
    """A gateway whose routes are ``routes`` (default route: the first), every upstream body kept."""
    bodies: list[dict[str, Any]] = []

    def fn(body: dict[str, Any]) -> dict[str, Any]:
        bodies.append(body)
        return answer(body)

    cfg = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {m: {"provider": "p", "price": {"input": p, "output": p}} for m, p in PRICES.items()},
        "baseline": "big",
        "ledger": {"path": str(tmp_path / "l.db")},
        "routing": {"default_route": next(iter(routes)), "routes": routes, **routing},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(fn)}), bodies


def texts(answers: dict[str, str]) -> Answer:
    return lambda body: chat_response(body["model"], answers[body["model"]], USAGE)


def request_row(gw: Gateway) -> dict[str, Any]:
    gw.flush()
    assert gw.config.ledger.path
    store = SQLiteStore(gw.config.ledger.path)
    (row,) = store.query("SELECT route, strategy, status, error_type, error, escalations, served_model FROM requests")
    return dict(zip(["route", "strategy", "status", "error_type", "error", "escalations", "served_model"], row,
                    strict=True))


def user(text: str, model: str = "auto", **params: Any) -> ChatRequest:
    return ChatRequest.from_body({"model": model, "messages": [{"role": "user", "content": text}], **params})


# ---------------------------------------------------------------- 1. tool calls are answers


async def test_heuristic_scores_a_well_formed_tool_call_as_an_answer() -> None:
    req = user("What is the weather in Paris?", tools=TOOLS)
    good = await HeuristicScorer().score(req, tool_response("a", '{"city": "Paris"}'))
    assert good.value == 0.85 and "get_weather" in good.reason
    for args, name, why in (("{city: Paris", "get_weather", "not valid JSON"), ('["Paris"]', "get_weather", "object"),
                            ("{}", "get_weather", "missing 'city'"), ('{"city": "x"}', "rm_rf", "not a function")):
        bad = await HeuristicScorer().score(req, tool_response("a", args, name))
        assert bad.value < 0.1 and why in bad.reason, (args, bad)


async def test_tool_call_is_accepted_at_the_cheap_tier(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.8}, {"model": "big"}]}},
                         lambda b: tool_response(b["model"], '{"city": "Paris"}'))
    ctx = await gw.handle(user("weather in Paris?", tools=TOOLS))
    assert [b["model"] for b in bodies] == ["a"] and ctx.served_model == "a"
    await gw.aclose()


async def test_agreement_compares_tool_name_and_normalised_arguments(tmp_path: Path) -> None:
    args = {"a": '{"city": "Paris"}', "b": '{ "city":"Paris" }', "big": '{"city": "Lyon"}'}
    gw, bodies = gateway(tmp_path, {"r": {"agreement": {"models": ["a", "b"], "fallback": "big"}}},
                         lambda body: tool_response(body["model"], args[body["model"]]))
    ctx = await gw.handle(user("weather in Paris?", tools=TOOLS))
    assert [b["model"] for b in bodies] == ["a", "b"] and ctx.served_model == "a"
    assert "get_weather" in (ctx.attempts[0].score_reason or "")
    await gw.aclose()


# ---------------------------------------------------------------- 2. the budget guard, every call


async def test_tiers_refuse_a_first_call_over_the_budget_and_record_it(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, {"r": {"tiers": [{"model": "big", "threshold": 0.9}, {"model": "a"}],
                                          "max_cost_usd": 1e-6}}, texts({"big": "B", "a": "B"}))
    with pytest.raises(InvalidRequestError) as err:
        await gw.handle(user(MC))
    assert bodies == [] and err.value.status == 400 and err.value.code == "route_budget_exceeded"
    assert "big" in err.value.message and "max_cost_usd of route 'r' ($1e-06)" in err.value.message
    row = request_row(gw)
    assert row["status"] == "error" and row["error_type"] == "InvalidRequestError" and row["route"] == "r"
    assert "estimated at $" in row["error"]
    await gw.aclose()


async def test_tiers_check_the_budget_after_a_failed_tier(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if body["model"] == "a":
            raise UpstreamStatusError("p: upstream returned HTTP 500", status=500)
        return chat_response(body["model"], "B", USAGE)

    # a's call is cheap enough; big's (10 $/M x ~290 tokens) is not.
    gw, bodies = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.9}, {"model": "big"}],
                                          "max_cost_usd": 1e-4}}, answer)
    with pytest.raises(UpstreamStatusError) as err:
        await gw.handle(user(MC))
    assert [b["model"] for b in bodies] == ["a"]
    assert "HTTP 500" in err.value.message and "budget guard: calling big" in err.value.message
    await gw.aclose()


async def test_agreement_refuses_a_first_call_over_the_budget(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, {"r": {"agreement": {"models": ["big", "a"], "fallback": "big"},
                                          "max_cost_usd": 1e-6}}, texts({"big": "B", "a": "B"}))
    with pytest.raises(InvalidRequestError, match="calling big"):
        await gw.handle(user(MC))
    assert bodies == [] and request_row(gw)["strategy"] == "cascade"
    await gw.aclose()


async def test_agreement_keeps_a_cheap_answer_when_the_fallback_is_over_the_budget(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, {"r": {"agreement": {"models": ["a", "b"], "fallback": "big"},
                                          "max_cost_usd": 1e-4}}, texts({"a": "B", "b": "C", "big": "B"}))
    ctx = await gw.handle(user(MC))
    assert [b["model"] for b in bodies] == ["a", "b"] and ctx.served_model == "a"
    assert "budget guard: calling big" in (ctx.attempts[0].score_reason or "")
    await gw.aclose()


# ---------------------------------------------------------------- 3. budgets on one-model routes


@pytest.mark.parametrize("stream", [False, True])
async def test_model_route_enforces_max_cost_usd(tmp_path: Path, stream: bool) -> None:
    gw, bodies = gateway(tmp_path, {"r": {"model": "big", "max_cost_usd": 1e-6}}, texts({"big": "B"}))
    with pytest.raises(InvalidRequestError, match="max_cost_usd of route 'r'"):
        await gw.handle(user(MC, stream=stream))
    assert bodies == []
    await gw.aclose()


def _learned_file(path: Path) -> Path:
    """A router file over a (always wrong) and big (always right), 10 features of zeros."""
    router = LearnedRouter(["a", "big"], np.zeros((2, 8 + 4)), np.array([-5.0, 5.0]),
                           {"a": {"*": 1e-5}, "big": {"*": 1e-3}}, {"kind": "lexical", "dim": 8})
    router.save(path)
    return path


async def test_learned_route_chooses_among_models_within_its_budget(tmp_path: Path) -> None:
    file = str(_learned_file(tmp_path / "router.json"))
    gw, bodies = gateway(tmp_path, {"r": {"learned": {"file": file, "target": 0.8}},
                                    "tight": {"learned": {"file": file, "target": 0.8}, "max_cost_usd": 1e-4},
                                    "none": {"learned": {"file": file, "target": 0.8}, "max_cost_usd": 1e-9}},
                         texts({"a": "A", "big": "B"}))
    assert (await gw.handle(user(MC, "route:r"))).served_model == "big"
    ctx = await gw.handle(user(MC, "route:tight"))
    assert ctx.served_model == "a" and "within max_cost_usd: a" in (ctx.plan.reason if ctx.plan else "")
    with pytest.raises(InvalidRequestError, match="route 'none'"):
        await gw.handle(user(MC, "route:none"))
    assert [b["model"] for b in bodies] == ["big", "a"]
    await gw.aclose()


# ---------------------------------------------------------------- 4. logprobs only where scored


@pytest.mark.parametrize("client_asks", [False, True])
async def test_logprobs_asked_of_scored_tiers_only_and_not_leaked(tmp_path: Path, client_asks: bool) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        resp = chat_response(body["model"], "B", USAGE)
        if body.get("logprobs"):
            resp["choices"][0]["logprobs"] = {"content": [{"token": "B", "logprob": -0.01}]}
        return resp

    route = {"tiers": [{"model": "a", "threshold": 0.9}, {"model": "big"}], "scorer": {"kind": "logprob"}}
    gw, bodies = gateway(tmp_path, {"r": route}, answer)
    extra = {"logprobs": True} if client_asks else {}
    ctx = await gw.handle(user(MC, **extra))
    assert [b["model"] for b in bodies] == ["a"] and bodies[0]["logprobs"] is True
    assert ctx.response is not None
    assert (ctx.response["choices"][0].get("logprobs") is not None) == client_asks
    await gw.aclose()


async def test_the_last_tier_is_not_asked_for_logprobs(tmp_path: Path) -> None:
    route = {"tiers": [{"model": "a", "threshold": 0.99}, {"model": "big"}], "scorer": {"kind": "logprob"}}
    gw, bodies = gateway(tmp_path, {"r": route}, texts({"a": "B", "big": "B"}))
    await gw.handle(user(MC))
    assert [(b["model"], "logprobs" in b) for b in bodies] == [("a", True), ("big", False)]
    await gw.aclose()


# ---------------------------------------------------------------- 5. learned.models filters


async def test_learned_models_may_leave_out_file_models_the_catalog_lacks(tmp_path: Path) -> None:
    file = tmp_path / "router.json"
    router = LearnedRouter(["a", "elsewhere"], np.zeros((2, 12)), np.array([0.0, 0.0]),
                           {"a": {"*": 1e-5}, "elsewhere": {"*": 1e-5}}, {"kind": "lexical", "dim": 8})
    router.save(file)
    gw, _ = gateway(tmp_path, {"r": {"learned": {"file": str(file), "models": ["a"], "target": 0.1}}},
                    texts({"a": "A"}))
    assert (await gw.handle(user(MC))).served_model == "a"
    await gw.aclose()
    with pytest.raises(ConfigError, match=r"routing\.routes\.r\.learned: model\(s\) not in the catalog: \['elsewhere'\]"):
        gateway(tmp_path, {"r": {"learned": {"file": str(file), "target": 0.1}}}, texts({}))[0].router  # noqa: B018


# ---------------------------------------------------------------- 6 + 14. calibrate --config BASE


def test_calibrate_keeps_the_base_routes_others_name_and_writes_the_fitted_baseline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(synthetic(), tmp_path / "outcomes.jsonl")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"provider": "p", "price": {"input": 1, "output": 1}} for m in ("weak", "mid", "big")},
        "baseline": "mid",
        "ledger": {"path": "ledger.db"},
        "cache": {"routes": {"faq": {"ttl_s": 60}}},
        "batching": {"route": "faq"},
        "routing": {"default_route": "faq", "tasks": {"help": "faq", "mc_multi": "faq"},
                    "routes": {"faq": {"model": "weak"}, "strong": {"model": "mid"},
                               "many": {"learned": {"file": "router.json", "models": ["weak"], "target": 0.5}}}},
    }))
    LearnedRouter(["weak", "big"], np.zeros((2, 12)), np.zeros(2), {"weak": {"*": 1e-5}, "big": {"*": 1e-3}},
                  {"kind": "lexical", "dim": 8}).save(tmp_path / "router.json")
    out = tmp_path / "out" / "cal.yaml"
    out.parent.mkdir()
    code, stdout, err = run_main(capsys, "calibrate", "--data", str(data), "--baseline", "big", "--config", str(base),
                                 "--out", str(out), "--folds", "3", "--target", "accuracy>=0.5")
    assert code == 0, err
    assert "baseline: mid -> big" in stdout and "kept faq" in stdout and "strong replaced" in stdout
    written = yaml.safe_load(out.read_text())
    assert written["baseline"] == "big"
    assert written["routing"]["routes"]["faq"] == {"model": "weak"}
    assert written["routing"]["routes"]["strong"] != {"model": "mid"}  # the calibrated one
    # The base's entry is kept; the data's own label (quiz) gets the route fitted on its prompts.
    # A format's name (mc_multi) would take that format's unlabelled prompts past the calibrated route.
    assert written["routing"]["tasks"] == {"help": "faq", "quiz": "quiz"}
    assert "routing.tasks: dropped mc_multi" in stdout
    assert "quiz" in written["routing"]["routes"]
    assert written["routing"]["routes"]["many"]["learned"]["file"] == "../router.json"  # from the new folder
    code, _, err = run_main(capsys, "config", "check", str(out))
    assert code == 0, err


# ---------------------------------------------------------------- 7. escalations, one definition


@pytest.mark.parametrize(("answers", "served", "escalations"), [
    ({"a": "B", "b": "B", "big": "C"}, "a", 0),   # the cheap answers agree: nothing escalated
    ({"a": "B", "b": "A", "big": "C"}, "big", 1),  # they differ: one level up, to the fallback
])
async def test_agreement_escalations(tmp_path: Path, answers: dict[str, str], served: str, escalations: int) -> None:
    gw, _ = gateway(tmp_path, {"r": {"agreement": {"models": ["a", "b"], "fallback": "big"}}}, texts(answers))
    metrics = Metrics()
    gw.observers.append(metrics.observe)
    ctx = await gw.handle(user(MC))
    row = request_row(gw)
    assert ctx.served_model == served and row["escalations"] == escalations
    counted = metrics.registry.get_sample_value("thrifty_escalations_total", {"route": "r"})
    assert (counted or 0) == escalations
    await gw.aclose()


async def test_a_failed_tier_then_the_next_serving_is_one_escalation(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if body["model"] == "a":
            raise UpstreamStatusError("p: upstream returned HTTP 500", status=500)
        return chat_response(body["model"], "B", USAGE)

    gw, _ = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.5}, {"model": "b", "threshold": 0.5},
                                               {"model": "big"}]}}, answer)
    await gw.handle(user(MC))
    assert request_row(gw)["escalations"] == 1 and request_row(gw)["served_model"] == "b"
    await gw.aclose()


# ---------------------------------------------------------------- 8. route explain


def test_route_explain_describes_routes_and_the_llm_classifier(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"provider": "p"} for m in ("a", "b", "big", "clf")},
        "routing": {"default_route": "general", "classify": {"llm": {"model": "clf", "tasks": ["faq", "legal"]}},
                    "tasks": {"legal": "careful"},
                    "routes": {"general": {"model": "b"}, "faq": {"model": "a"},
                               "careful": {"agreement": {"models": ["a", "b"], "fallback": "big"}}}},
    }))
    code, out, err = run_main(capsys, "route", "explain", "hello", "--config", str(cfg), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["kind"] == "single model" and data["plan"] == [{"model": "b", "threshold": None}]
    assert data["classifier"] == {"model": "clf", "outcomes": {"faq": "faq", "legal": "careful"}, "otherwise": "general"}
    code, out, _ = run_main(capsys, "route", "explain", "hello", "--config", str(cfg), "--model", "route:careful")
    assert "route:  careful  (agreement: serve an answer 2 of the cheap models give" in out
    assert "plan:   a -> b -> big" in out and "Cascade" not in out and "_" not in out.split("\n")[0]
    code, out, _ = run_main(capsys, "route", "explain", "hello", "--config", str(cfg))
    assert "decided by a call to clf" in out and "legal -> careful" in out and "ClassifyThenRoute" not in out


# ---------------------------------------------------------------- 9. inline multiple choice


async def test_inline_options_are_multiple_choice_for_the_scorer_only() -> None:
    prompt = "Which option is right? A) x B) y C) z D) w"
    assert detect_family(prompt) == "open"  # the fitted policies' families are left as they were
    s = await HeuristicScorer().score(user(prompt), chat_response("a", "A"))
    assert s.value == 0.9 and s.reason == "option A"
    assert (await HeuristicScorer().score(user("Plan A) fails, so try it again"), chat_response("a", "ok"))).value == 0.5


def test_detect_family_on_routerbench_is_unchanged(data_dir: Path) -> None:
    from collections import Counter

    from thrifty.evaluation.dataset import load_outcomes

    data = load_outcomes(data_dir / "routerbench")
    counts = Counter((Path(i.file).name, detect_family(i.prompt)) for i in data)
    assert counts[("arc_challenge_train.csv", "mc_multi")] == 1039
    assert counts[("winograde_train.csv", "mc_binary")] == 887
    assert counts[("mbpp_train.csv", "code")] == 298


# ---------------------------------------------------------------- 10. failed cascades are cascades


async def test_a_failed_cascade_is_recorded_as_a_cascade(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        raise UpstreamStatusError("p: upstream returned HTTP 500", status=500)

    gw, _ = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.5}, {"model": "big"}]}}, answer)
    with pytest.raises(UpstreamStatusError):
        await gw.handle(user(MC))
    row = request_row(gw)
    assert row["strategy"] == "cascade" and row["status"] == "error" and row["escalations"] == 1
    await gw.aclose()


# ---------------------------------------------------------------- 11 + 12. tiers without threshold


def test_a_non_last_tier_without_threshold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routing\.routes\.r\.tiers\.0\.threshold: required on every tier but the last"):
        gateway(tmp_path, {"r": {"tiers": [{"model": "a"}, {"model": "big"}]}}, texts({}))


async def test_the_last_tier_is_accepted_without_scoring(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.99}, {"model": "big"}]}},
                    texts({"a": "B", "big": "B"}))
    ctx = await gw.handle(user(MC))
    assert ctx.attempts[-1].score is None and ctx.attempts[-1].score_reason == "last tier: accepted without scoring"
    await gw.aclose()


# ---------------------------------------------------------------- 13 + 16. custom plans, catalog names


class RecordingScorer:
    def __init__(self) -> None:
        self.models: list[str] = []

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        self.models.append(response["model"])
        return Score(0.0, "never good enough")


class PlanRouter:
    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def plan(self, ctx: RequestContext) -> Plan:
        return self._plan


async def _custom(tmp_path: Path, plan: Plan) -> tuple[Gateway, list[str]]:
    seen: list[str] = []

    def fn(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["model"])
        return chat_response(body["model"], "B", USAGE)

    cfg = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
           "models": {"cheap": {"provider": "p", "upstream_model": "vendor-cheap-2024", "price": {"input": 1, "output": 1}},
                      "big": {"provider": "p", "price": {"input": 10, "output": 10}}},
           "ledger": {"path": str(tmp_path / "l.db")}}
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(fn)})
    next(s for s in gw.stages if isinstance(s, RouteStage)).router = PlanRouter(plan)
    return gw, seen


async def test_scorers_see_the_catalog_name_of_the_model(tmp_path: Path) -> None:
    scorer = RecordingScorer()
    gw, seen = await _custom(tmp_path, Plan([Tier("cheap", 0.5), Tier("big")], scorer=scorer))
    ctx = await gw.handle(user(MC))
    assert seen == ["vendor-cheap-2024", "big"] and scorer.models == ["cheap"] and ctx.served_model == "big"
    await gw.aclose()


async def test_custom_multi_tier_plans_get_the_same_budget_guard(tmp_path: Path) -> None:
    gw, seen = await _custom(tmp_path, Plan([Tier("big", 0.5), Tier("cheap")], scorer=RecordingScorer(),
                                            max_cost_usd=1e-6))
    with pytest.raises(InvalidRequestError, match="calling big"):
        await gw.handle(user(MC))
    assert seen == []
    await gw.aclose()


# ---------------------------------------------------------------- 15. classification checks


def test_embedding_confidence_is_within_0_and_1() -> None:
    clf = EmbeddingClassifier({"faq": ["How do I reset my password?", "Where do I change my email?"]}, "lexical")
    guess = clf.guess(user("zz"))
    assert guess is not None and guess.scores["faq"] < 0 and guess.confidence == 0.0


def test_llm_classifier_tasks_need_a_route(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routing\.classify\.llm\.tasks\.1: task 'typo' has no route"):
        gateway(tmp_path, {"g": {"model": "a"}}, texts({}),
                classify={"llm": {"model": "judge", "tasks": ["g", "typo"]}})


# ---------------------------------------------------------------- n > 1: every choice is scored


async def test_a_tier_cascade_scores_every_choice_of_an_n_answer(tmp_path: Path) -> None:
    """The client gets all n choices: a refusal in the second one escalates, though the first
    alone would pass."""
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        texts = ["Paris is the capital of France.", "I'm sorry, I can't help with that."]
        if body["model"] == "big":
            texts = ["Paris is the capital of France.", "The capital of France is Paris."]
        out = chat_response(body["model"], texts[0], USAGE)
        out["choices"] = [{**out["choices"][0], "index": i, "message": {"role": "assistant", "content": t}}
                          for i, t in enumerate(texts[: body.get("n", 1)])]
        return out

    gw, bodies = gateway(tmp_path, {"r": {"tiers": [{"model": "a", "threshold": 0.5}, {"model": "big"}]}}, answer)
    ctx = await gw.handle(user("What is the capital of France?", n=2))
    assert [b["model"] for b in bodies] == ["a", "big"] and ctx.served_model == "big"
    assert (ctx.attempts[0].score_reason or "").startswith("choice 1: ")
    one = await gw.handle(user("What is the capital of France?"))  # n = 1: the first choice alone, accepted
    assert one.served_model == "a"
    await gw.aclose()
