"""MkDocs hooks: list items indented as on GitHub; links to repository files.

**Lists.** The pages are written for CommonMark (GitHub), where what continues a
list item (a paragraph, a code block, a table, a nested list) is indented to the
item's text: two spaces after ``- ``. Python-Markdown, which MkDocs uses, wants
four, and renders a two-space continuation outside the list. `commonmark_lists`
re-indents each item's continuation to four spaces per level before the page is
rendered; fenced code moves as a whole, its own indentation kept.

**TF1 originals.** A ```` ```python tf1 ```` block (TF1 code shown beside its
port, compiled by the tests but never run) is shown as Python titled "TF1".

**Links.** A page may link a repository file (``[x](../examples/port_tf1.py)``):
the file is not part of the site, so the link would be broken there. Each
such link is checked (a missing file fails the strict build, like any broken
link) and pointed at the file in the repository when ``repo_url`` is set in
mkdocs.yml; without it, the link's text stays and the link goes.
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.repository_links")

_LINK = re.compile(
    r"\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)\s#]+)(?P<anchor>#[^)\s]*)?\)"
)


_ITEM = re.compile(r"^(?P<indent> *)(?P<marker>[-*+]|\d+[.)]) +(?=\S)")
_FENCE = re.compile(r"^ *(`{3,}|~{3,})")
_TF1_FENCE = re.compile(r"^( *`{3,})python tf1[ \t]*$", re.MULTILINE)


def commonmark_lists(markdown: str) -> str:
    """Re-indents list continuations from the item's text column to 4 per level."""
    out: list[str] = []
    items: list[tuple[int, int]] = []  # (content column as written, as rendered)
    fence: tuple[str, int] | None = None  # (closing fence, shift of its lines)
    for line in markdown.split("\n"):
        if fence is not None:
            closing, shift = fence
            out.append(" " * shift + line if line.strip() else line)
            if line.strip() == closing:
                fence = None
            continue
        if not line.strip():
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        while items and indent < items[-1][0]:
            items.pop()
        new = indent - items[-1][0] + items[-1][1] if items else indent
        shift = new - indent
        opening = _FENCE.match(line)
        if opening:
            fence = (opening[1], shift)
        else:
            item = _ITEM.match(line)
            if item:
                items.append((item.end(), new + 4))
        out.append(" " * new + line[indent:])
    return "\n".join(out)


def on_page_markdown(markdown: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    """Fixes the page's lists, and its links to repository files outside the docs."""
    markdown = commonmark_lists(markdown)
    markdown = _TF1_FENCE.sub(r'\1python title="TF1"', markdown)
    docs = pathlib.Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match[str]) -> str:
        target = (here / match["target"]).resolve()
        if target.is_relative_to(docs) or not target.is_relative_to(root):
            return match[0]
        relative = target.relative_to(root).as_posix()
        if not target.exists():
            log.warning(
                "%s links %s, which does not exist", page.file.src_path, relative
            )
            return match[0]
        if repo_url:
            anchor = match["anchor"] or ""
            return f"[{match['text']}]({repo_url}/blob/main/{relative}{anchor})"
        return match["text"]

    return _LINK.sub(rewrite, markdown)
