"""Griffe extension: a Google ``Example:`` section is the Examples section.

jscope's docstrings title their doctests ``Example:`` (singular), which griffe
reads as an admonition, rendering the ``>>>`` lines as nested quotes. This
extension retitles them before the docstrings are parsed, so the site shows them
as Python sessions.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Retitles every ``Example:`` section ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
