"""The instructions thrifty sends the cheap model (kept in one place so they are easy to tune)."""

from __future__ import annotations

COMPRESS_SYSTEM = (
    "You compress system prompts for language models. Rewrite the prompt the user sends so it "
    "keeps every rule, fact, name and number but uses as few tokens as possible. Copy these "
    "verbatim: sentences containing {markers}, these items: {must_keep}, fenced code blocks, and "
    "template placeholders such as {{{{name}}}}, {{name}} or ${{name}}. Answer with the "
    "compressed prompt only, at most {target} tokens, no preamble."
)

SUMMARY_SYSTEM = (
    "Summarise the conversation the user sends in at most {target} tokens: the facts, decisions "
    "and open questions a assistant needs to continue it. Answer with the summary only."
)

JUDGE_SYSTEM = (
    "Two answers to the same question follow. Reply YES if they say the same thing (same facts "
    "and decisions), otherwise NO. Reply with one word."
)
