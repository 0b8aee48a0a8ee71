"""`name_scope`: TF1's name scopes, which name `js.Variable`s but not `get_variable`.

A name scope is uniquified in the run by the frame's `names.Uniquifier`, which
also holds the name scopes that variable scopes open (`scope.variable_scope`).

Imports: `context`, `names`, `scope` (the current frame).
"""

from __future__ import annotations

from typing import Any

from jscope._src import context, names
from jscope._src.scope import current


class name_scope:  # noqa: N801 (TF1's name)
    """Opens a name scope alone: it prefixes `js.Variable` names, not `get_variable`.

    A name is uniquified in the run (``a``, then ``a_1``); a name ending with ``/``
    (such as a scope's ``original_name_scope``) re-enters exactly that name scope;
    None or ``""`` goes back to the root name scope.

    Example:
      >>> import jscope as js
      >>> with js.name_scope("tour_block") as ns:
      ...     print(ns)
      tour_block/
    """

    __slots__ = ("_name", "_frame", "_saved")
    __module__ = "jscope"

    def __init__(self, name: str | None):
        if name:
            names.validate(name[:-1] if name.endswith("/") else name, "name scope")
        self._name = name

    def __enter__(self) -> str:
        frame = current()
        context.end_plan()  # a name scope is no plan's event
        self._frame = frame
        self._saved = frame.name_scope
        name = self._name
        if not name:
            new = ""
        elif name.endswith("/"):
            new = name[:-1]
        else:
            full = names.validate(names.join(frame.name_scope, name), "name scope")
            new = frame.used_names.unique(full)
        frame.name_scope = new
        return new + "/" if new else ""

    def __exit__(self, *exc_info: Any) -> None:
        self._frame.name_scope = self._saved  # pyright: ignore[reportOptionalMemberAccess]
        self._frame = None
