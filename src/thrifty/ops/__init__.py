"""Operations: virtual keys, budgets and rate limits, the admin API (see docs/operations.md)."""
