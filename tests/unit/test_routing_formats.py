"""Task-family detection from the prompt format and answer normalisation."""

from __future__ import annotations

import pytest

from thrifty.routing.formats import (
    agreement_pattern,
    code_signature,
    detect_family,
    extract_answer,
    extract_option,
)

FEW_SHOT = "Q: 1+1?\nA) 2\nB) 3\nC) 4\nAnswer: A\n\nQ: Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"


@pytest.mark.parametrize(("prompt", "family"), [
    (FEW_SHOT, "mc_multi"),
    ("The trophy does not fit in the case because _ is too big.\nOption 1: trophy\nOption 2: case\n\n"
     "Fill the blank.\n1. trophy\n2. case", "mc_binary"),
    ("Write a python function to reverse a string.", "code"),
    ("What's a good name for a cat?", "open"),
])
def test_detect_family(prompt: str, family: str) -> None:
    assert detect_family(prompt) == family


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("(c) whale", "C"), ("The answer is D.", "D"), ("2", "B"), ("a whale is a mammal", None),
    ("", None), ("I think the correct option is (A) because...", "A"),
])
def test_extract_option(text: str, letter: str | None) -> None:
    assert extract_option(text) == letter


def test_code_signature_reads_python_only() -> None:
    assert code_signature("```python\ndef rev(s):\n    return s[::-1]\n```") == "f1"
    assert code_signature("```javascript\nfunction rev(s) { return s }\n```") is None
    assert code_signature("def f(a, b, *rest):\n    return 1\nthis line is cut off (") == "f3"
    assert code_signature("Sorry, I can't help with that.") is None
    assert extract_answer("open", "  Paris!\nIt is the capital.") == "paris"


def test_agreement_pattern_canonical_and_raw() -> None:
    assert agreement_pattern([]) == ""
    assert agreement_pattern(["B", "B", None]) == "0,0,x"
    assert agreement_pattern(["C", "A", "C"]) == "0,1,0"
    assert agreement_pattern(["B", "B", None], raw=True) == "B,B,x"
