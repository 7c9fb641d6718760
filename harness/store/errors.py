"""The one error type the store raises for anything a user can fix (bad URL, bad file, lock, bad input)."""

from __future__ import annotations


class StoreError(ValueError):
    """A one-line message naming the database, run or field and what would be valid."""
