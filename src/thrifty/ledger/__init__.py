"""The ledger: every request and every upstream attempt, with exact cost and baseline cost."""
