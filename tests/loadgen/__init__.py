"""Load generators for tests that need more connections than a full client library
can open in CI time (see churn.py)."""
