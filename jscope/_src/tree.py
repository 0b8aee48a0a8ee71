"""Variable trees: plain nested dicts, flattened to slash-joined paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from jscope import errors
from jscope.typing import VariableTree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a variable tree into a dict keyed by slash-joined paths.

    Works on a whole tree (keys like ``"params/n1/w"``) and on one collection
    (keys like ``"n1/w"``).

    Args:
      tree: A nested dict of arrays, e.g. from `js.init`. Left unchanged.
      prefix: Prepended to every key (joined with ``/``).

    Returns:
      A new dict in creation (insertion) order.

    Raises:
      ArgumentTypeError: ``tree`` is not a mapping (a ``TypeError``).

    Example:
      >>> import jax.numpy as jnp
      >>> flatten({"params": {"n1": {"w": jnp.zeros(2)}}})
      {'params/n1/w': Array([0., 0.], dtype=float32)}
    """
    if not isinstance(tree, Mapping):
        raise errors.ArgumentTypeError(
            f"Expected a variable tree (a nested dict such as js.init returns), got "
            f"{type(tree).__name__}. Pass the dict itself, e.g. "
            "js.flatten(variables), not a list of its leaves or a single array."
        )
    out: dict[str, Any] = {}
    _flatten_into(tree, f"{prefix}/" if prefix else "", out, set(), set())
    return out


def _flatten_into(
    node: Mapping[str, Any], prefix: str, out: dict[str, Any], maps: set, leaves: set
) -> None:
    # `js.apply` flattens the given tree on every call: keep the loop short.
    # prefix: "" or ends with "/". A plain dict is taken by identity; maps,
    # leaves: the other types found to be or not to be a Mapping, asked once per
    # type (an ABC check costs more than the walk).
    for key, value in node.items():
        kind = type(value)
        if kind is dict:
            _flatten_into(value, f"{prefix}{key}/", out, maps, leaves)
        elif kind in leaves:
            out[f"{prefix}{key}"] = value
        elif kind in maps:
            _flatten_into(value, f"{prefix}{key}/", out, maps, leaves)
        elif isinstance(value, Mapping):
            maps.add(kind)
            _flatten_into(value, f"{prefix}{key}/", out, maps, leaves)
        else:
            leaves.add(kind)
            out[f"{prefix}{key}"] = value


def index(variables: Any) -> dict[str, dict[str, Any]]:
    """``{collection: {path: leaf}}`` of a whole variable tree: what `js.apply` reads.

    Raises:
      ArgumentTypeError: ``variables`` or one of its collections is not a
        mapping (a ``TypeError``).
    """
    if type(variables) is not dict and not isinstance(variables, Mapping):
        raise errors.ArgumentTypeError(
            "js.apply expects a variable tree (a dict such as js.init returns), got "
            f"{type(variables).__name__}."
        )
    out = {}
    for coll, sub in variables.items():
        if type(sub) is not dict and not isinstance(sub, Mapping):
            raise errors.ArgumentTypeError(
                f"Collection {coll!r} of the variable tree must be a dict, got "
                f"{type(sub).__name__}. Pass the whole tree from js.init, e.g. "
                "{'params': {...}}, not one array."
            )
        out[coll] = flatten(sub)
    return out


def unflatten(flat: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> VariableTree:
    """Builds a nested dict from ``{path: value}``; the inverse of `flatten`.

    Args:
      flat: A mapping (or pairs) from slash-joined paths to values.

    Returns:
      A new nested dict, keys in the order the paths came.

    Raises:
      PathConflictError: Both ``k`` and ``k/x`` are given.

    Example:
      >>> unflatten({"params/n1/w": 1, "params/n1/b": 2})
      {'params': {'n1': {'w': 1, 'b': 2}}}
    """
    pairs = flat.items() if isinstance(flat, Mapping) else flat
    items = cast("Iterable[tuple[str, Any]]", pairs)
    root: dict[str, Any] = {}
    for path, value in items:
        *parents, leaf = path.split("/")
        node = root
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _conflict("/".join(parents[: i + 1]), path)
            node = child
        if leaf in node:
            if isinstance(node[leaf], dict):
                raise _conflict(path, _first_leaf(path, node[leaf]))
            raise errors.PathConflictError(
                f"Path {path!r} is given twice: unflatten got two values for it. "
                "Give each path once.",
                path,
            )
        node[leaf] = value
    return root


def _first_leaf(prefix: str, node: dict[str, Any]) -> str:
    key, value = next(iter(node.items()))
    path = f"{prefix}/{key}"
    return _first_leaf(path, value) if isinstance(value, dict) else path


def _conflict(short: str, long: str) -> errors.PathConflictError:
    return errors.PathConflictError(
        f"Variable {short} and variable {long} cannot both exist: a nested dict "
        f"cannot hold a value at {short!r} and a subtree below it. Rename one of "
        "them (TF1 allowed this; jscope does not).",
        long,
    )


def check_no_conflict(path: str, leaves: Mapping[str, Any], inner: set[str]) -> None:
    """Raises if ``path`` would conflict with the paths already in a tree.

    Args:
      path: The new path.
      leaves: The paths already holding values.
      inner: Every proper prefix of every path in ``leaves``.

    Raises:
      PathConflictError: ``path`` is a prefix of, or prefixed by, an existing path.
    """
    if path in inner:
        below = next(p for p in leaves if p.startswith(path + "/"))
        raise _conflict(path, below)
    cut = path.rfind("/")
    while cut > 0:
        parent = path[:cut]
        if parent in leaves:
            raise _conflict(parent, path)
        cut = path.rfind("/", 0, cut)


def add_prefixes(path: str, inner: set[str]) -> None:
    """Adds every proper prefix of ``path`` to ``inner``."""
    cut = path.rfind("/")
    while cut > 0:
        parent = path[:cut]
        if parent in inner:
            return
        inner.add(parent)
        cut = path.rfind("/", 0, cut)


def replace_leaves(tree: Mapping[str, Any], updates: Mapping[str, Any]) -> VariableTree:
    """Returns a copy of ``tree`` with the leaves at ``updates``' paths replaced.

    Only the dicts on the updated paths are copied; the rest is shared (the input
    is never mutated, and nothing jscope returns is ever mutated later).
    """
    new = dict(tree)
    copied: dict[str, dict[str, Any]] = {"": new}
    for path, value in updates.items():
        parts = path.split("/")
        node, prefix = new, ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}"
            child = copied.get(prefix)
            if child is None:
                child = dict(node[part])
                node[part] = child
                copied[prefix] = child
            node = child
        node[parts[-1]] = value
    return new
