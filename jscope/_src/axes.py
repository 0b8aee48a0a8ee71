"""A variable's logical axes: checking ``axes=`` at creation and at reuse.

``axes=`` on `get_variable` and `Variable` names each dimension (a str, or
None); `ShardingRules` maps the names to mesh axes. Imports: `jscope.errors`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from jscope import errors

LogicalAxes: TypeAlias = tuple[str | None, ...]
"""A variable's logical axes: one name (or None, no name) per dimension."""


def check_axes(axes: Any, shape: tuple, path: str) -> LogicalAxes:
    """Checks ``axes=`` of the variable at ``path`` against its ``shape``.

    Args:
      axes: A tuple (or list) of logical names, str or None, one per dimension.
      shape: The variable's shape.
      path: Its full path, for messages.

    Returns:
      ``axes`` as a tuple.

    Raises:
      ArgumentTypeError: ``axes`` is not a sequence of str or None.
      ShardingError: It has not one entry per dimension.

    Example:
      >>> check_axes(["embed", None], (4, 3), "dense/kernel")
      ('embed', None)
    """
    if not isinstance(axes, tuple | list) or not all(
        a is None or isinstance(a, str) for a in axes
    ):
        raise errors.ArgumentTypeError(
            f"axes= of variable {path} must be a tuple of logical axis names (str, "
            f"or None for a dimension without one), one per dimension, got "
            f"{axes!r}. Pass e.g. axes=('embed', 'mlp') for a 2-D variable.",
            path,
        )
    axes = tuple(axes)
    if len(axes) != len(shape):
        raise errors.ShardingError(
            f"axes={axes!r} of variable {path} names {len(axes)} dimension(s), but "
            f"its shape {tuple(shape)} has {len(shape)}. Give one logical name (or "
            "None) per dimension.",
            path,
        )
    return axes


def check_reuse_axes(
    recorded: LogicalAxes | None, axes: Any, shape: tuple, path: str
) -> None:
    """Checks the ``axes=`` of a reuse against the axes given at creation.

    A None on either side means "no name": only dimensions both name must
    agree. The creation's axes stay the variable's axes.

    Raises:
      ArgumentTypeError: ``axes`` is not a sequence of str or None.
      ShardingError: It has the wrong length, or names a dimension otherwise.
    """
    axes = check_axes(axes, shape, path)
    if recorded is None:
        return
    for dim, (old, new) in enumerate(zip(recorded, axes, strict=True)):
        if old is not None and new is not None and old != new:
            raise errors.ShardingError(
                f"Trying to share variable {path}, but specified axes={axes!r} and "
                f"it was created with axes={recorded!r} (dimension {dim}: {new!r} "
                f"vs {old!r}). Pass the axes it was created with, or None for a "
                "dimension to accept any name.",
                path,
            )
