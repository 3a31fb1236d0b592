"""Shared helpers for matching error messages in tests."""

from __future__ import annotations

import re


def exact(text: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``text``: the whole message, with
    no regex metacharacters in it taken as such."""
    return "^" + re.escape(text) + "$"
