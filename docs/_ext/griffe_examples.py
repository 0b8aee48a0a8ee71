"""Griffe extension: jscope's docstrings as the site shows them.

jscope's docstrings title their doctests ``Example:`` (singular), which griffe
reads as an admonition, rendering the ``>>>`` lines as nested quotes. This
extension retitles them ``Examples:`` before the docstrings are parsed, so the
site shows them as Python sessions; and it writes reST's ``text::`` (a colon
before an indented block, which Markdown shows as code anyway) as ``text:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # reST's "text::" before a block


class ExampleSections(griffe.Extension):
    """Retitles ``Example:`` sections; ``text::`` becomes ``text:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(r"\1:", text)
