"""Response caching: an exact cache keyed on everything that changes the answer, and an opt-in
semantic cache whose hits must pass a verifier. See docs/caching.md.

This package's ``__init__`` imports nothing heavy: ``thrifty.config`` imports
``thrifty.cache.config`` to type the ``cache`` section.
"""
