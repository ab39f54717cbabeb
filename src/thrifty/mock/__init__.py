"""The mock upstream: a real OpenAI-compatible server with deterministic, scripted behaviour.

It is thrifty's fake LLM provider for tests, demos and benchmarks, and a product feature
(``thrifty mock-upstream``) for users to try a config without spending money.
See docs/mock-upstream.md.
"""

from thrifty.mock.app import MockUpstream, create_app
from thrifty.mock.behaviour import AnswerRule, Faults, MockConfig, ModelBehaviour, Price
from thrifty.mock.server import RunningServer, run_in_thread

__all__ = [
    "AnswerRule",
    "Faults",
    "MockConfig",
    "MockUpstream",
    "ModelBehaviour",
    "Price",
    "RunningServer",
    "create_app",
    "run_in_thread",
]
