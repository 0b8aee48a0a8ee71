"""Helpers shared by the test modules (imported as ``helpers``)."""

from __future__ import annotations

from hypothesis import settings

# Hypothesis profiles (registered in conftest.py): name -> base example count.
PROFILES = {"dev": 10, "ci": 200, "thorough": 2000}


def examples(weight: float) -> int:
    """``weight`` times the loaded hypothesis profile's base example count.

    Use it as ``@settings(max_examples=examples(4))``: the profile chosen with
    ``HYPOTHESIS_PROFILE`` (see ``conftest.py``) then scales the test.
    """
    return max(1, round(settings.default.max_examples * weight))
