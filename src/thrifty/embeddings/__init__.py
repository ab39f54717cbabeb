"""Pluggable text embedders: a lexical hashing embedder (always available) and a local
sentence model (optional ``embeddings`` extra). Used by the routing classifier and the cache.

    emb = build_embedder("lexical")                 # or "minilm", or {"kind": "lexical", "dim": 1024}
    vecs = emb.embed(["hello world"])               # (n, emb.dim) float32, L2-normalised rows
"""

from thrifty.embeddings.base import Embedder, build_embedder, normalize_rows
from thrifty.embeddings.lexical import LexicalEmbedder

__all__ = ["Embedder", "LexicalEmbedder", "SentenceEmbedder", "build_embedder", "normalize_rows"]


def __getattr__(name: str) -> object:
    # SentenceEmbedder imports nothing heavy at module import, but keep the lazy path explicit.
    if name == "SentenceEmbedder":
        from thrifty.embeddings.sentence import SentenceEmbedder

        return SentenceEmbedder
    raise AttributeError(name)
