"""Griffe extension: jscope's docstrings as the site shows them.

jscope's docstrings title their doctests ``Example:`` (singular), which griffe
reads as an admonition, rendering the ``>>>`` lines as nested quotes. This
extension retitles them ``Examples:`` before the docstrings are parsed, so the
site shows them as Python sessions. A doctest in the prose, outside such a
section (as in a module's docstring), is fenced as a ``pycon`` block, which
Markdown would otherwise show as nested quotes. reST's ``text::`` (a colon before
an indented block, which Markdown shows as code anyway) becomes ``text:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # reST's "text::" before a block


_SECTION = re.compile(r"^(\s*)Examples?:\s*$")


def fence_prose_doctests(text: str) -> str:
    """Fences each ``>>>`` session that is not inside an Examples section."""
    out: list[str] = []
    lines = text.split("\n")
    section_indent: int | None = None  # of the open Examples section's title
    number = 0
    while number < len(lines):
        line = lines[number]
        indent = len(line) - len(line.lstrip())
        if line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        title = _SECTION.match(line)
        if title:
            section_indent = len(title[1])
        if section_indent is None and line.lstrip().startswith(">>>"):
            session = []
            while number < len(lines) and lines[number].strip():
                session.append(lines[number])
                number += 1
            pad = " " * indent
            out += [f"{pad}```pycon", *session, f"{pad}```"]
            continue
        out.append(line)
        number += 1
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """Retitles ``Example:`` sections; ``text::`` becomes ``text:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            text = fence_prose_doctests(obj.docstring.value)
            text = _EXAMPLE.sub(r"\1Examples:", text)
            obj.docstring.value = _LITERAL.sub(r"\1:", text)
