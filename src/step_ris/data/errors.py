"""The one error type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent (the message says which and what to do)."""
