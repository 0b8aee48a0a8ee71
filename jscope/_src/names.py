"""Paths: validation, joining and stable hashing. No JAX here."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from jscope import errors

_COMPONENT = re.compile(r"[A-Za-z0-9_.\-]+")
PATTERN = "[A-Za-z0-9_.\\-]+ per component, not starting with '-'"


def _bad_component(component: str) -> bool:
    return not _COMPONENT.fullmatch(component) or component.startswith("-")


def validate(name: str, what: str = "variable") -> str:
    """Checks a slash-separated name and returns it unchanged.

    Args:
      name: A name such as ``"W"`` or ``"layer/W"``.
      what: What is being named, for the error message.

    Returns:
      ``name``.

    Raises:
      InvalidNameError: An empty name or component, or a character outside the
        allowed pattern.
      ArgumentTypeError: ``name`` is not a string (a ``TypeError``).
    """
    if type(name) is not str and not isinstance(name, str):
        raise errors.ArgumentTypeError(
            f"A {what} name must be a str, got {type(name).__name__}: {name!r}. "
            "Pass the name as a string, e.g. 'w' or 'layer/w'."
        )
    return _validate(name, what)


@functools.lru_cache(maxsize=65536)
def _validate(name: str, what: str) -> str:
    if not name or any(_bad_component(c) for c in name.split("/")):
        raise errors.InvalidNameError(
            f"Invalid {what} name {name!r}: each '/'-separated component must match "
            f"{PATTERN}; empty components (as in 'a//b', or a leading or trailing "
            "'/'), spaces, ':' and non-ASCII characters are not allowed. "
            "Rename it, e.g. to "
            f"{_suggest(name)!r}.",
            name,
        )
    return name


#: Valid variable path -> its scope part, filled by `valid_path_scope`. The
#: `get_variable` hot path asks this dict first: a plain ``dict.get`` costs a
#: third of a call through ``functools.lru_cache``.
SCOPE_OF: dict[str, str] = {}
_SCOPE_OF_MAX = 65536


def valid_path_scope(path: str) -> str:
    """`validate` of a variable path known to be a str; returns its scope part.

    The part before the last ``/`` ('' at the top level) is kept in `SCOPE_OF`,
    so the next check of the same path is one dict lookup.

    Raises:
      InvalidNameError: As `validate`.

    Example:
      >>> valid_path_scope("block/layer/w"), valid_path_scope("w")
      ('block/layer', '')
    """
    scope = SCOPE_OF.get(path)
    if scope is None:
        scope = _validate(path, "variable").rpartition("/")[0]
        if len(SCOPE_OF) >= _SCOPE_OF_MAX:
            SCOPE_OF.clear()
        SCOPE_OF[path] = scope
    return scope


#: Variable scope names `valid_scope` has checked: `variable_scope` asks this
#: set first, a plain membership test.
VALID_SCOPES: set[str] = set()


def valid_scope(name: str) -> str:
    """`validate` of a variable scope name known to be a str, kept in `VALID_SCOPES`.

    Raises:
      InvalidNameError: As `validate`.
    """
    if name not in VALID_SCOPES:
        _validate(name, "variable scope")
        if len(VALID_SCOPES) >= _SCOPE_OF_MAX:
            VALID_SCOPES.clear()
        VALID_SCOPES.add(name)
    return name


def _suggest(name: str) -> str:
    parts = [re.sub(r"[^A-Za-z0-9_.\-]", "_", p) for p in name.split("/") if p]
    parts = [p.lstrip("-") or "_" for p in parts]
    return "/".join(parts) or "v"


def join(prefix: str, name: str) -> str:
    """Joins a scope prefix (``""`` or ``"a/b"``) and a name."""
    return f"{prefix}/{name}" if prefix else name


@functools.lru_cache(maxsize=65536)
def stable_hash(path: str) -> int:
    """Returns a 31-bit hash of ``path`` that is the same in every process.

    Python's ``hash`` of a str is salted per process (``PYTHONHASHSEED``); this is
    not.

    Example:
      >>> stable_hash("n1/W") == stable_hash("n1/W")
      True
      >>> 0 <= stable_hash("n1/W") < 2**31
      True
    """
    digest = hashlib.blake2b(path.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class Uniquifier:
    """Hands out unique names in a namespace, TF1 graph style.

    The first request for ``x`` gets ``x``; later ones get ``x_1``, ``x_2``, ...
    skipping any name already in use.

    A name ``paths`` maps to ``once`` is in use once more than ``counts`` says:
    a run passes its path -> kind dict and the kind of `get_variable`, so a
    variable read records its path in one dict instead of two.

    Example:
      >>> u = Uniquifier()
      >>> [u.unique("x"), u.unique("x"), u.unique("x_2"), u.unique("x")]
      ['x', 'x_1', 'x_2', 'x_3']
    """

    __slots__ = ("counts", "paths", "once")

    def __init__(self, paths: dict[str, Any] | None = None, once: Any = None):
        #: name -> how many times it was handed out or marked, besides `paths`.
        self.counts: dict[str, int] = {}
        self.paths: dict[str, Any] = {} if paths is None else paths
        self.once = once

    def copy(self, paths: dict[str, Any] | None = None) -> Uniquifier:
        """An independent copy, reading ``paths`` (default: the same dict)."""
        new = Uniquifier(self.paths if paths is None else paths, self.once)
        new.counts = dict(self.counts)
        return new

    def _count(self, name: str) -> int:
        once = self.once
        count = self.counts.get(name, 0)
        if once is not None and self.paths.get(name) is once:
            count += 1
        return count

    def mark(self, name: str) -> None:
        """Records ``name`` as used without renaming it."""
        self.counts[name] = self.counts.get(name, 0) + 1

    def in_use(self, name: str) -> bool:
        """Whether ``name`` has been handed out or marked."""
        return name in self.counts or (
            self.once is not None and self.paths.get(name) is self.once
        )

    def unique(self, name: str) -> str:
        """Returns ``name`` or its first free ``name_i`` and marks it used."""
        counts = self.counts
        i = self._count(name)
        if not i:
            counts[name] = 1
            return name
        taken = i
        while self.in_use(f"{name}_{i}"):
            i += 1
        counts[name] = counts.get(name, 0) + i + 1 - taken
        new = f"{name}_{i}"
        counts[new] = 1
        return new
