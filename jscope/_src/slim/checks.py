"""Checks of tf-slim layer arguments and inputs; each message written once.

Every error is a `jscope.errors.LayerArgumentError` (a ``ValueError``), a
`jscope.errors.LayerTypeError` (a ``TypeError``) or, for a TF1 argument jscope
has no use for, a `jscope.errors.UnsupportedArgumentError` (a ``ValueError``),
whose ``path`` is the layer's variable scope and whose message reads
``slim.<layer> at <path>: <what is wrong>, got <found>. <how to fix it>``.
Call them inside the layer's variable scope so that the path is its own.

Imports: `jscope.errors`, `scope` (the current scope's name).
"""

from __future__ import annotations

import operator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax.core import Tracer

from jscope import errors
from jscope._src.scope import get_variable_scope

E = TypeVar("E", bound=errors.JscopeError)

UPDATE_OPS = "update_ops"
"""``tf.GraphKeys.UPDATE_OPS``: `batch_norm`'s default ``updates_collections``."""


def error(cls: type[E], layer: str, message: str) -> E:
    """``cls`` for the layer at the current scope: ``slim.<layer> at <path>: ...``."""
    path = get_variable_scope().name
    return cls(f"slim.{layer} at {path or '<root>'}: {message}", path)


def ints(value: Any, n: int, what: str, layer: str) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints, as a tuple of ``n`` ints >= 1."""
    one = isinstance(value, int) and not isinstance(value, bool)
    items: Any = (value,) * n if one else value
    try:
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise error(
            errors.LayerTypeError,
            layer,
            f"{what} must be an int or a list of {n} ints, got {value!r}. Pass "
            f"e.g. {what}=3 or {what}={[3] * n}.",
        ) from None
    if len(out) != n or any(v < 1 for v in out):
        raise error(
            errors.LayerArgumentError,
            layer,
            f"{what} must be a positive int or {n} positive ints (one per spatial "
            f"axis), got {value!r}. Pass e.g. {what}={[2] * n}.",
        )
    return out


def positive_int(value: Any, what: str, layer: str) -> int:
    """``value`` as an int >= 1 (``num_outputs``, ``depth_multiplier``, ...)."""
    if isinstance(value, bool):
        value = None
    try:
        out = operator.index(value)
    except TypeError:
        raise error(
            errors.LayerTypeError,
            layer,
            f"{what} must be an int, got {value!r}. Pass a Python int, e.g. {what}=64.",
        ) from None
    if out < 1:
        raise error(
            errors.LayerArgumentError,
            layer,
            f"{what} must be positive, got {out}. Pass an int >= 1.",
        )
    return out


def padding(value: Any, layer: str) -> str:
    """``"SAME"`` or ``"VALID"`` (any case, as TF1 accepted)."""
    if isinstance(value, str) and value.upper() in ("SAME", "VALID"):
        return value.upper()
    raise error(
        errors.LayerArgumentError,
        layer,
        f"padding must be 'SAME' or 'VALID', got {value!r}. Pass padding='SAME'.",
    )


def channels_first(value: Any, layer: str, allow_none: bool = False) -> bool:
    """Whether ``data_format`` is ``"NCHW"`` (else ``"NHWC"``, or None if allowed)."""
    if value == "NCHW":
        return True
    if value == "NHWC" or (allow_none and value is None):
        return False
    raise error(
        errors.LayerArgumentError,
        layer,
        f"data_format has to be either NCHW or NHWC, got {value!r}. Pass "
        "data_format='NHWC' (channels last, the default) or 'NCHW'.",
    )


def inputs(value: Any, layer: str, ranks: tuple[int, ...] | None = None) -> jax.Array:
    """``value`` as a floating-point array of one of ``ranks`` (None: any >= 2)."""
    x = jnp.asarray(value)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise error(
            errors.LayerTypeError,
            layer,
            f"needs floating-point inputs, got dtype {x.dtype}. Cast them first, "
            "e.g. inputs.astype(jnp.float32).",
        )
    ok = x.ndim >= 2 if ranks is None else x.ndim in ranks
    if not ok:
        want = ">= 2" if ranks is None else " or ".join(map(str, ranks))
        raise error(
            errors.LayerArgumentError,
            layer,
            f"needs inputs of rank {want} (batch first), got shape "
            f"{tuple(x.shape)}. Reshape them, e.g. add a batch axis with x[None].",
        )
    return x


def python_bool(value: Any, what: str, layer: str) -> bool:
    """``value`` as a Python bool; a traced value is an error (it picks the graph)."""
    if isinstance(value, Tracer):
        raise error(
            errors.LayerTypeError,
            layer,
            f"needs a Python bool `{what}`, got a traced value. Mark it static "
            f"(jax.jit(..., static_argnames='{what}')) or choose with js.cond.",
        )
    return bool(value)


def no_collections(layer: str, **given: Any) -> None:
    """Refuses ``variables_collections`` / ``outputs_collections`` other than None."""
    for name, value in given.items():
        if value is None:
            continue
        fix = {
            "variables_collections": "jscope keeps variables in the 'params' and "
            "'state' collections of the tree; select them by path instead (e.g. "
            "js.flatten(variables) keys)",
            "outputs_collections": "jscope has no graph collections; return the "
            "tensors you need (end points) from the model function instead",
        }[name]
        raise error(
            errors.UnsupportedArgumentError,
            layer,
            f"{name}={value!r} is not supported: {fix}. Leave {name}=None.",
        )


def to_nhwc(x: jax.Array, first: bool) -> jax.Array:
    """``x`` (``NC...`` when ``first``) with its channels last."""
    return jnp.moveaxis(x, 1, -1) if first else x


def from_nhwc(x: jax.Array, first: bool) -> jax.Array:
    """Undoes `to_nhwc`."""
    return jnp.moveaxis(x, -1, 1) if first else x
