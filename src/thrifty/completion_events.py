"""A whole legacy text completion (``object: text_completion``) as the chunks its stream carries.

Two users need the same chunks: the mock upstream streams its completions with them
(mock/text_apis.py), and the gateway turns a provider's whole JSON completion into them when the
provider ignored ``stream: true`` (server/completions_legacy.py). One builder, so the mock cannot
test the gateway against a shape the gateway does not produce (as responses_events.py for the
Responses API).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from thrifty.responses_events import text_pieces

# The fields of a completion that every chunk repeats, in OpenAI's order.
_HEAD = ("id", "object", "created", "model", "system_fingerprint", "service_tier")


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def completion_chunks(completion: dict[str, Any], words_per_chunk: int, *,
                      with_usage: bool = True) -> Iterator[dict[str, Any]]:
    """The chunks of ``completion`` (its ``choices`` each a dict with a string ``text``): each
    choice's text every ``words_per_chunk`` words, its ``finish_reason`` in its last chunk, then,
    when ``with_usage`` and the completion has usage, a ``choices: []`` chunk carrying it, the
    earlier chunks then carrying ``usage: null`` as OpenAI's do under ``include_usage``."""
    head: dict[str, Any] = {k: "text_completion" if k == "object" else completion[k]
                            for k in _HEAD if k == "object" or k in completion}
    usage = completion.get("usage") if with_usage else None
    if usage is not None:
        head["usage"] = None

    def chunk(choice: dict[str, Any], text: str, finish: Any, logprobs: Any) -> dict[str, Any]:
        return {**head, "choices": [{"text": text, "index": _index(choice), "logprobs": logprobs,
                                     "finish_reason": finish}]}

    for choice in sorted(completion["choices"], key=_index):
        if choice.get("logprobs") is not None:
            # Token logprobs do not split along words: the text comes whole with them.
            yield chunk(choice, choice["text"], choice.get("finish_reason"), choice["logprobs"])
            continue
        for piece in text_pieces(choice["text"], words_per_chunk):
            yield chunk(choice, piece, None, None)
        yield chunk(choice, "", choice.get("finish_reason"), None)
    if usage is not None:
        yield {**head, "choices": [], "usage": usage}
