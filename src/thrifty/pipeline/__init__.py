"""The request pipeline: small stages composed by one list (see build.py)."""
