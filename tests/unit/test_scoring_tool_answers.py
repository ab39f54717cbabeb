"""Text-reading scorers (the LLM judge, the learned scorer) grade tool-call answers too.

A cheap tier that answers with ``tool_calls`` and no text used to reach the judge as an empty
answer (graded 0, so every tool-using request escalated) and the learned scorer as "" too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_routing_audit_fixes import TOOLS, gateway, tool_response, user

from thrifty.evaluation.dataset import Item, Outcome, OutcomeSet
from thrifty.providers.function import chat_response
from thrifty.scoring.learned import train_scorer
from thrifty.scoring.tools import graded_answer

USAGE = {"prompt_tokens": 100, "completion_tokens": 10}
JUDGED = {"r": {"tiers": [{"model": "a", "threshold": 0.7}, {"model": "big"}],
                "scorer": {"kind": "judge", "judge_model": "judge"}}}


def answers(arguments: str, name: str = "get_weather") -> Any:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if body["model"] == "judge":
            # A judge that sees the call grades it 9; one that sees nothing grades 0.
            return chat_response("judge", "9" if "get_weather" in body["messages"][-1]["content"] else "0", USAGE)
        return tool_response(body["model"], arguments, name)
    return answer


async def test_the_judge_grades_a_tool_call_and_the_cheap_tier_serves_it(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, JUDGED, answers('{"city": "Paris"}'))
    ctx = await gw.handle(user("What is the weather in Paris?", tools=TOOLS))
    judge_prompt = bodies[1]["messages"][-1]["content"]
    assert 'Tool calls: get_weather({"city":"Paris"})' in judge_prompt
    assert [b["model"] for b in bodies] == ["a", "judge"] and ctx.served_model == "a"
    await gw.aclose()


async def test_an_unusable_tool_call_is_rejected_without_a_judge_call(tmp_path: Path) -> None:
    gw, bodies = gateway(tmp_path, JUDGED, answers('{"town": "Paris"}', name="get_wether"))
    ctx = await gw.handle(user("What is the weather in Paris?", tools=TOOLS))
    assert [b["model"] for b in bodies] == ["a", "big"] and ctx.served_model == "big"
    assert "unusable tool call: get_wether" in (ctx.attempts[0].score_reason or "")
    await gw.aclose()


def test_graded_answer_keeps_text_and_renders_tool_calls() -> None:
    req = user("What is the weather in Paris?", tools=TOOLS)
    assert graded_answer(req, chat_response("a", "Sunny", USAGE), "Sunny") == ("Sunny", None)
    text, problem = graded_answer(req, tool_response("a", '{ "city":"Paris" }'), "")
    assert (text, problem) == ('Tool calls: get_weather({"city":"Paris"})', None)
    text, problem = graded_answer(req, tool_response("a", "not json"), "")
    assert text == "" and problem is not None and problem.startswith("unusable tool call")


def test_text_beside_a_call_does_not_hide_that_the_call_is_unusable() -> None:
    # Models often say a word before calling ("Let me check."). The client still gets the call:
    # one that breaks tool_choice or parallel_tool_calls, or names a function not offered, was
    # graded as the text (the judge saw "Let me check." and no problem).
    def with_text(response: dict[str, Any], calls: int = 1) -> dict[str, Any]:
        message = response["choices"][0]["message"]
        message["content"] = "Let me check."
        message["tool_calls"] = message["tool_calls"] * calls
        return response

    named = {"type": "function", "function": {"name": "get_time"}}
    two = [*TOOLS, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    for req, response in [
        (user("Weather?", tools=TOOLS, tool_choice="none"), with_text(tool_response("a", '{"city": "Paris"}'))),
        (user("Weather?", tools=two, tool_choice=named), with_text(tool_response("a", '{"city": "Paris"}'))),
        (user("Weather?", tools=TOOLS, parallel_tool_calls=False), with_text(tool_response("a", '{"city": "Paris"}'), 2)),
        (user("Weather?", tools=TOOLS), with_text(tool_response("a", '{"town": "Paris"}', name="get_wether"))),
    ]:
        text, problem = graded_answer(req, response, "Let me check.")
        assert text == "" and problem is not None and problem.startswith("unusable tool call"), (req.params, problem)
    fine = with_text(tool_response("a", '{"city": "Paris"}'))
    assert graded_answer(user("Weather?", tools=TOOLS), fine, "Let me check.") == ("Let me check.", None)


async def test_the_learned_scorer_reads_the_rendered_call_and_zeroes_an_unusable_one() -> None:
    prompt = "What is the weather in Paris?"
    items = [Item("f", i, [{"role": "user", "content": prompt}], None,
                  {"good": Outcome("Tool calls: get_weather"), "bad": Outcome("")}, {"good": 1.0, "bad": 0.0})
             for i in range(30)]
    scorer = train_scorer(OutcomeSet(items, ["good", "bad"]))
    req = user(prompt, tools=TOOLS)
    usable = await scorer.score(req, tool_response("good", '{"city": "Paris"}'))
    rendered = scorer.probability(prompt, 'Tool calls: get_weather({"city":"Paris"})', "good")
    assert usable.value == round(rendered, 4) and usable.value != round(scorer.probability(prompt, "", "good"), 4)
    unusable = await scorer.score(req, tool_response("good", '{"city": 3}'))
    assert unusable.value == 0.0 and "unusable tool call" in unusable.reason
