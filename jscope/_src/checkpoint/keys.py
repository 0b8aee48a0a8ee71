"""Var lists and checkpoint keys: which variables a `Saver` saves, under which keys.

Owns the parsing of ``var_list`` (paths, `js.Variable` handles, ``{key: path}``)
and the flattening of the tree to save or restore into. Imports only jscope's
`errors` and `tree`.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jscope import errors
from jscope._src import tree

CheckpointError = errors.CheckpointError
CheckpointTypeError = errors.CheckpointTypeError

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
        if not entry:
            raise CheckpointError(f"Saver {where} is an empty path.", entry)
        return entry
    path = handle_path(entry)
    if path is None:
        raise CheckpointTypeError(
            f"Saver {where} must be a variable path such as 'params/n2/W' (or a "
            f"js.Variable handle), got {type(entry).__name__}: {entry!r}."
        )
    return path


def parse_var_list(var_list: Any) -> dict[str, str] | None:
    """Returns ``{checkpoint_key: path}``, or None for every variable."""
    if var_list is None:
        return None
    if isinstance(var_list, Mapping):
        keys: dict[str, str] = {}
        for key, entry in var_list.items():
            if not isinstance(key, str) or not key:
                raise CheckpointTypeError(
                    f"Saver var_list keys are checkpoint keys (non-empty strings), "
                    f"got {key!r}."
                )
            keys[key] = _as_path(entry, f"var_list[{key!r}]")
        _check_one_key_per_path(keys)
        return keys
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
            "Saver var_list lists each of these paths more than once; list every "
            "variable once.",
            twice[0],
        )
    return {p: p for p in paths}


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


def suggest(path: str, available: Sequence[str]) -> str:
    near = [p for p in available if p.endswith("/" + path)]
    if near:
        return f" (did you mean {near[0]!r}? paths start with the collection)"
    return ""


def flatten_tree(variables: Any, what: str) -> dict[str, Any]:
    if not isinstance(variables, Mapping):
        raise CheckpointTypeError(
            f"The {what} must be a variable tree (a nested dict such as js.init "
            f"returns), got {type(variables).__name__}."
        )
    return tree.flatten(variables)


def step_number(global_step: Any) -> int:
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
