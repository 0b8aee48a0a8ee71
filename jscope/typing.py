"""Type aliases of jscope's public API, for annotations in user code and in jscope.

Every alias is a plain `typing` construct over JAX's and NumPy's types, so
annotating with them needs nothing at run time:

  >>> import jscope.typing as jst
  >>> def my_dense(x, units: int, kernel_initializer: jst.Initializer | None = None):
  ...     ...

This module imports nothing from jscope; `jscope/_src` imports from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

import jax
import numpy as np

__all__ = [
    "ArrayLike",
    "AutoReuse",
    "CustomGetter",
    "DTypeLike",
    "Initializer",
    "InitializerLike",
    "Regularizer",
    "Reuse",
    "Shape",
    "SupportsDType",
    "VariableTree",
]

# JAX's own `jax.typing` aliases, written out with NumPy's generics parameterized:
# with NumPy 2.0, whose `np.dtype` and `np.ndarray` have no default type
# arguments, pyright's strict mode reports `jax.typing.DTypeLike` as partially
# unknown in every signature that uses it.
ArrayLike: TypeAlias = (
    jax.Array | np.ndarray[Any, Any] | np.bool_ | np.number[Any] | bool | int | float
    | complex
)  # fmt: skip
"""A value jscope accepts where an array is meant: arrays, NumPy and Python scalars."""


class SupportsDType(Protocol):
    """Anything with a ``dtype`` attribute, such as an array: its dtype is meant."""

    @property
    def dtype(self) -> np.dtype[Any]:  # noqa: D102 (the class says it)
        ...


DTypeLike: TypeAlias = str | type[Any] | np.dtype[Any] | SupportsDType
"""A dtype as JAX accepts one: ``jnp.float32``, ``"bfloat16"``, ``np.int32``."""

Shape: TypeAlias = Sequence[int | None]
"""A variable's shape; None (whole, or in a dimension) matches any size on reuse."""

Initializer: TypeAlias = Callable[..., jax.Array]
"""``(key, shape, dtype[, out_sharding]) -> jax.Array``, as `jax.nn.initializers`."""

InitializerLike: TypeAlias = Initializer | ArrayLike
"""An initializer, or a concrete value that gives the variable its shape and dtype."""

Regularizer: TypeAlias = Callable[[jax.Array], jax.Array]
"""``(value) -> scalar`` loss term, summed by `js.get_regularization_loss`."""

CustomGetter: TypeAlias = Callable[..., Any]
"""``(getter, name, *args, **kwargs) -> value``, wrapping every `get_variable`."""


class AutoReuse:
    """The type of `js.AUTO_REUSE`: get a variable if it exists, else create it."""

    __slots__ = ()
    __module__ = "jscope"

    def __repr__(self) -> str:
        return "AUTO_REUSE"

    def __reduce__(self) -> str:
        return "AUTO_REUSE"


Reuse: TypeAlias = bool | AutoReuse | None
"""A reuse flag: None/False (inherit, create), True (must exist), `AUTO_REUSE`."""

VariableTree: TypeAlias = dict[str, Any]
"""A plain nested dict ``{collection: {scope: {...: {name: jax.Array}}}}``."""
