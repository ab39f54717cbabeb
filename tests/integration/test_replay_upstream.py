"""The replay upstream over real HTTP, driven by the official openai SDK."""

import csv
import sys

import openai
import pytest

from thrifty.evaluation.dataset import load_outcomes
from thrifty.evaluation.replay_server import create_replay_app
from thrifty.mock.server import run_in_thread
from thrifty.providers.replay import ReplayIndex

csv.field_size_limit(sys.maxsize)


@pytest.fixture(scope="module")
def subset(data_dir, tmp_path_factory):
    src = data_dir / "routerbench" / "winograde_train.csv"
    out = tmp_path_factory.mktemp("replay") / "winograde_train.csv"
    with src.open(newline="") as fh, out.open("w", newline="") as dst:
        reader = csv.reader(fh)
        writer = csv.writer(dst)
        for i, row in enumerate(reader):
            if i > 10:
                break
            writer.writerow(row)
    return load_outcomes(out)


@pytest.fixture(scope="module")
def client(subset):
    with run_in_thread(create_replay_app(ReplayIndex(subset))) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_known_prompt_returns_the_recorded_answer_and_cost(client, subset):
    item = subset.items[3]
    model = "mistralai/mixtral-8x7b-chat"
    reply = client.chat.completions.create(model=model, messages=item.messages)
    assert reply.choices[0].message.content == item.outcomes[model].response
    usage = reply.usage.model_dump()
    assert usage["cost"] == pytest.approx(item.outcomes[model].cost)
    assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0


def test_streaming_carries_the_same_answer(client, subset):
    item = subset.items[1]
    stream = client.chat.completions.create(model="gpt-4-1106-preview", messages=item.messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == item.outcomes["gpt-4-1106-preview"].response


def test_unknown_prompt_and_unknown_model_are_404(client, subset):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4-1106-preview",
                                       messages=[{"role": "user", "content": "not in the data"}])
    assert exc.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=subset.items[0].messages)


def test_models_lists_the_recorded_models(client, subset):
    assert sorted(m.id for m in client.models.list()) == sorted(subset.models)
