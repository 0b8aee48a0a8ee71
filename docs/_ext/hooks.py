"""MkDocs hooks: links from a page to a file of the repository outside docs/.

A page may link a repository file (``[the example](../examples/port_tf1.py)``):
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


def on_page_markdown(markdown: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    """Rewrites the page's links to repository files outside the docs."""
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
