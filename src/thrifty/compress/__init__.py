"""Fewer input tokens per answer: system-prompt compression, deterministic compaction and
history trimming, run by one pipeline stage (``CompressStage``) placed before the cache.

See docs/compression-and-batching.md.
"""

from thrifty.compress.config import CompressionConfig, RouteCompression

__all__ = ["CompressionConfig", "RouteCompression"]
