"""Rules shared by every way a run reaches a variable.

`get_variable` (`variables.py`), `js.Variable` and `js.assign` (`handle.py`) all
read values from the tree given to `js.apply` (`lookup`), refuse to create, read
or assign variables inside a plain JAX transform opened within the run
(`check_trace`, `check_staged_read`, `check_assign_trace`), and record which
array was returned for which path, so that `js.assign` accepts that very array
as its target (`register`, `returned_path`).

Imports: `jscope.errors`, `context`, `jax_compat`, `values`.

Hot path: `lookup` runs for a `get_variable` at apply whose path the given
tree lacks; a read at apply registers nothing (`returned_path` finds its array
in the given tree), so keep `register`, run at init and by assignments, to one
list append.
"""

from __future__ import annotations

from typing import Any

from jscope import errors
from jscope._src import context, jax_compat, values


def check_trace(frame: context.Frame, path: str, what: str) -> None:
    """Refuses creating a variable inside a plain JAX transform within the run."""
    if not jax_compat.same_trace(jax_compat.trace_state(), frame.trace_state):
        raise errors.JaxTransformError.inside_plain_transform(path, "created", what)


def check_staged_read(frame: context.Frame, path: str) -> None:
    """Refuses reads inside a staged plain JAX transform opened within the run.

    ``jax.jit``, ``jax.checkpoint``, ``jax.lax.scan`` and friends cache the traced
    function, so a value read from the run by closure would be baked into the
    cache and silently reused by later runs with other variables.
    """
    if jax_compat.is_staged_trace_of_its_own(frame.trace_state):
        raise errors.JaxTransformError.inside_plain_transform(path, "read")


def check_assign_trace(frame: context.Frame, path: str) -> None:
    """Refuses an assignment inside a plain JAX transform opened within the run."""
    if not jax_compat.same_trace(jax_compat.trace_state(), frame.trace_state):
        raise errors.JaxTransformError.inside_plain_transform(path, "assigned")


def lookup(frame: context.Frame, path: str, coll: str) -> Any:
    """The value at ``coll/path`` in the tree given to `js.apply`.

    Raises:
      UninitializedVariableError: The tree has no ``coll/path``.
      LeafTypeError: The tree holds None there.
    """
    given = frame.given_tree
    assert given is not None  # a run at apply has its tree
    flat = given.get(coll)
    value = None if flat is None else flat.get(path)
    if value is None:
        if flat is not None and path in flat:
            raise values.leaf_error(path, coll, None)
        elsewhere = [c for c, f in given.items() if path in f]
        hint = (
            f" It is in collection {elsewhere[0]!r}: check trainable=/collection=."
            if elsewhere
            else " Run js.init on this function to create it, or restore it from a "
            "checkpoint."
        )
        raise errors.UninitializedVariableError(
            f"Variable {path} is uninitialized: the tree given to js.apply has no "
            f"{coll}/{path}.{hint}",
            path,
        )
    return value


def lookup_array(frame: context.Frame, path: str, coll: str) -> Any:
    """`lookup`, refusing a leaf that is not an array (a float, list, string).

    Raises:
      LeafTypeError: The leaf has no shape or dtype.
    """
    value = lookup(frame, path, coll)
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise values.leaf_error(path, coll, value)
    return value


def register(frame: context.Frame, value: Any, path: str) -> None:
    """Records that ``value`` was returned for ``path`` (see `returned_path`).

    One append: the index by array is built only when `returned_path` asks.
    """
    frame.read_log.append((value, path))


def returned_path(frame: context.Frame, target: Any) -> str | None:
    """The path ``target`` was returned for in this run, or None if it was not.

    Arrays created at init and assigned values are looked up in what `register`
    recorded; an array `get_variable` read from the given tree is found there
    by `_given_path` (a read at apply records nothing of it).

    Raises:
      AssignmentTargetError: The same array was returned for two paths, so the
        target is ambiguous.
    """
    by_id, log = frame.path_of_array, frame.read_log
    if log:  # index what was returned since the last ask, in order
        for value, path in log:
            key = id(value)
            seen = by_id.get(key)
            if seen is not None and seen[1] != path:
                by_id[key] = (value, None)  # one array, two paths: ambiguous
            else:
                by_id[key] = (value, path)
        log.clear()
    seen = by_id.get(id(target))
    path = None
    if seen is not None and seen[0] is target:
        path = seen[1]
        if path is None:  # one array, two paths
            _ambiguous(frame, target)
    given = _given_path(frame, target) if frame.given_tree is not None else None
    if given is not None and path is not None and given != path:
        _ambiguous(frame, target)
    return path if path is not None else given


def _given_path(frame: context.Frame, target: Any) -> str | None:
    """The path `get_variable` read ``target`` from in the given tree, or None.

    The index from leaf to paths is built once per run, on the first ask.

    Raises:
      AssignmentTargetError: ``target`` is the leaf of two paths read in the run.
    """
    index = frame.given_by_id
    if index is None:
        index = frame.given_by_id = {}
        for coll, flat in frame.given_tree.items():  # pyright: ignore[reportOptionalMemberAccess]
            for path, leaf in flat.items():
                index.setdefault(id(leaf), []).append((leaf, coll, path))
    kind_of, collection_of = frame.kind_of, frame.collection_of
    read = {
        path
        for leaf, coll, path in index.get(id(target), ())
        if leaf is target
        and kind_of.get(path) is context.GET
        and collection_of.get(path) == coll
    }
    if len(read) > 1:
        _ambiguous(frame, target)
    return read.pop() if read else None


def _ambiguous(frame: context.Frame, target: Any) -> None:
    paths = [p for p, v in frame.values.items() if v is target]
    raise errors.AssignmentTargetError(
        "This array was returned for more than one variable "
        f"({', '.join(paths) or 'since reassigned'}), so the target is "
        "ambiguous. Pass the variable's name or js.Variable handle to js.assign "
        "instead.",
        paths[0] if paths else None,
    )
