"""thrifty: an OpenAI-compatible gateway and library that cuts LLM API spend.

    from thrifty import Gateway

    async with Gateway.from_config("thrifty.yaml") as gw:
        reply = await gw.chat(model="auto", messages=[{"role": "user", "content": "Hi"}])

``Gateway`` and ``__version__`` are resolved on first use (module ``__getattr__``), so
``import thrifty`` stays cheap: the gateway pulls in the whole pipeline, and
``importlib.metadata`` alone costs more than the rest of this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

    __version__: str

__all__ = ["Gateway", "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thrifty")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from thrifty.gateway import Gateway

        return Gateway
    if name == "__version__":
        globals()["__version__"] = value = _version()
        return value
    raise AttributeError(f"module 'thrifty' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
