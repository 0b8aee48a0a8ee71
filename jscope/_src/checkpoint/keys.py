"""Var lists and checkpoint keys: which leaves a `Saver` saves, under which keys.

A checkpoint key is a canonical slash-joined path: no empty component, no
leading or trailing ``/``. Nested dicts give their paths (``params/n2/W``, as
`js.flatten` does); any other pytree node (a tuple, a NamedTuple such as an optax
state, a dataclass) gives its `jax.tree_util` key path entries (``0``, ``mu``).
`flatten` keeps the dicts' insertion order and returns a function that rebuilds
the same structure from new leaves, so a restore returns the target's structure.

Imports only jscope's `errors`; no Orbax, no file system.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jscope import errors

CheckpointError = errors.CheckpointError
CheckpointTypeError = errors.CheckpointTypeError

Rebuild = Callable[[Mapping[str, Any]], Any]


def canonical(key: str) -> str:
    """The storage key of a path: empty components dropped (``a//b/`` → ``a/b``)."""
    return "/".join(part for part in key.split("/") if part)


# --------------------------------------------------------------------- var list


def handle_path(entry: Any) -> str | None:
    """The full path of a `js.Variable` handle (``collection/name``), else None."""
    name = getattr(entry, "name", None)
    collection = getattr(entry, "collection", None)
    if isinstance(name, str) and isinstance(collection, str):
        return f"{collection}/{name}"
    return None


def _as_path(entry: Any, where: str) -> str:
    if isinstance(entry, str):
        if not canonical(entry):
            raise CheckpointError(f"Saver {where} is an empty path: {entry!r}.", entry)
        return canonical(entry)
    path = handle_path(entry)
    if path is None:
        raise CheckpointTypeError(
            f"Saver {where} must be a variable path such as 'params/n2/W' (or a "
            f"js.Variable handle), got {type(entry).__name__}: {entry!r}."
        )
    return path


def parse_var_list(var_list: Any) -> dict[str, str] | None:
    """Returns ``{checkpoint_key: path}`` (both canonical), or None for every leaf.

    Raises:
      CheckpointError: A path is listed twice, two keys canonicalise equal, or
        one variable is saved under two keys.
      CheckpointTypeError: ``var_list`` is not None, a list or a dict.
    """
    if var_list is None:
        return None
    if isinstance(var_list, Mapping):
        return _parse_mapping(var_list)
    if isinstance(var_list, str | bytes) or not isinstance(var_list, Sequence | set):
        raise CheckpointTypeError(
            "Saver var_list must be None (every variable), a list of variable "
            "paths such as ['params/n2/W'], or a dict {checkpoint_key: path}; "
            f"got {type(var_list).__name__}: {var_list!r}."
        )
    paths = [_as_path(e, f"var_list[{i}]") for i, e in enumerate(var_list)]
    twice = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
    if twice:
        raise CheckpointError(
            f"At least two variables have the same name: {', '.join(twice)}. "
            "Saver var_list lists each of these paths more than once (paths are "
            "compared without empty components: 'a/b/' is 'a/b'); list every "
            "variable once.",
            twice[0],
        )
    return {p: p for p in paths}


def _parse_mapping(var_list: Mapping[Any, Any]) -> dict[str, str]:
    keys: dict[str, str] = {}
    given: dict[str, str] = {}
    for key, entry in var_list.items():
        if not isinstance(key, str) or not canonical(key):
            raise CheckpointTypeError(
                f"Saver var_list keys are checkpoint keys (non-empty strings "
                f"such as 'my_counter'), got {key!r}."
            )
        ckey = canonical(key)
        if ckey in keys:
            raise CheckpointError(
                f"Saver var_list keys {given[ckey]!r} and {key!r} are the same "
                f"checkpoint key {ckey!r} (empty path components are dropped), so "
                "one variable's data would be lost. Give each variable its own key.",
                ckey,
            )
        keys[ckey], given[ckey] = _as_path(entry, f"var_list[{key!r}]"), key
    _check_one_key_per_path(keys)
    return keys


def _check_one_key_per_path(keys: Mapping[str, str]) -> None:
    by_path: dict[str, list[str]] = {}
    for key, path in keys.items():
        by_path.setdefault(path, []).append(key)
    twice = {p: ks for p, ks in by_path.items() if len(ks) > 1}
    if twice:
        lines = "; ".join(
            f"{p} under keys {', '.join(map(repr, ks))}" for p, ks in twice.items()
        )
        raise CheckpointError(
            f"At least two variables have the same name: Saver var_list saves one "
            f"variable under several checkpoint keys: {lines}. Keep one key per "
            "variable.",
            next(iter(twice)),
        )


def select(
    keys: Mapping[str, str] | None, leaves: Mapping[str, Any]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``({checkpoint_key: leaf path}, [(key, listed path) matching no leaf])``.

    A listed path names one leaf, or every leaf below it (a path prefix such as
    ``"opt"``): then the checkpoint keys are the listed key plus the rest.
    """
    if keys is None:
        return {p: p for p in leaves}, []
    chosen: dict[str, str] = {}
    absent = []
    for key, path in keys.items():
        if path in leaves:
            chosen[key] = path
            continue
        below = [p for p in leaves if p.startswith(path + "/")]
        if not below:
            absent.append((key, path))
        for p in below:
            chosen[key + p[len(path) :]] = p
    return chosen, absent


def suggest(path: str, available: Sequence[str]) -> str:
    """A hint for a path given without its collection, or ``""``."""
    near = [p for p in available if p.endswith("/" + path)]
    if near:
        return f" (did you mean {near[0]!r}? paths start with the collection)"
    return ""


# ------------------------------------------------------------------- pytrees


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten(tree: Any, what: str) -> tuple[dict[str, Any], Rebuild]:
    """``({key: leaf}, rebuild)`` of a pytree; dicts in insertion order.

    ``rebuild({key: new_leaf})`` returns a tree of the same structure (new dicts,
    the other nodes rebuilt by their treedefs).

    Raises:
      CheckpointTypeError: ``tree`` is None or a single leaf.
      CheckpointError: Two leaves have the same key (``{"a/b": x, "a": {"b": y}}``).
    """
    if tree is None or (
        not isinstance(tree, Mapping)
        and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))
    ):
        raise CheckpointTypeError(
            f"The {what} must be a variable tree (a nested dict such as js.init "
            "returns) or another pytree of arrays (a tuple, an optax state), got "
            f"{type(tree).__name__}."
        )
    leaves: dict[str, Any] = {}
    structure = _flatten_node(tree, (), leaves)
    return leaves, lambda new: _rebuild(structure, new)


def _add(leaves: dict[str, Any], parts: tuple[str, ...], leaf: Any) -> str:
    key = canonical("/".join(parts))
    if key in leaves:
        raise CheckpointError(
            f"Two leaves of the tree have the same checkpoint key {key!r} (a dict "
            "key containing '/' or an empty name, such as {'a/b': x, 'a': {'b': "
            "y}}), so one would be lost. Rename one of them.",
            key,
        )
    leaves[key] = leaf
    return key


def _flatten_node(node: Any, parts: tuple[str, ...], leaves: dict[str, Any]) -> Any:
    if isinstance(node, Mapping):
        return (
            "dict",
            [(k, _flatten_node(v, (*parts, str(k)), leaves)) for k, v in node.items()],
        )
    pairs, treedef = jax.tree_util.tree_flatten_with_path(
        node, is_leaf=lambda x: isinstance(x, Mapping) and x is not node
    )
    if jax.tree_util.treedef_is_leaf(treedef) and not pairs:
        return ("tree", treedef, [])  # None, (), an empty node
    if jax.tree_util.treedef_is_leaf(treedef):
        return ("leaf", _add(leaves, parts, pairs[0][1]))
    children = [
        _flatten_node(leaf, (*parts, *map(_entry_name, path)), leaves)
        for path, leaf in pairs
    ]
    return ("tree", treedef, children)


def _rebuild(structure: Any, new: Mapping[str, Any]) -> Any:
    kind = structure[0]
    if kind == "leaf":
        return new[structure[1]]
    if kind == "dict":
        return {k: _rebuild(child, new) for k, child in structure[1]}
    _, treedef, children = structure
    return jax.tree_util.tree_unflatten(treedef, [_rebuild(c, new) for c in children])


def step_number(global_step: Any) -> int:
    """``global_step`` as an int; integer scalar arrays accepted."""
    value = np.asarray(global_step) if not isinstance(global_step, int) else None
    if isinstance(global_step, bool) or (
        value is not None
        and (value.shape != () or not np.issubdtype(value.dtype, np.integer))
    ):
        raise CheckpointTypeError(
            f"global_step must be an integer (or an integer scalar array), got "
            f"{global_step!r}."
        )
    return int(global_step)
