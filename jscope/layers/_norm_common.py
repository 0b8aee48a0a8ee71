"""What the normalization layers share: axes, statistics, ``gamma`` and ``beta``.

Statistics are computed in float32 (or wider, for float64 inputs) whatever the
dtype of the inputs; the result has the dtype of the layer's variables, or the
inputs' dtype when the layer has none. Public API only, like the layers;
imported by `_norm` and `_batch_norm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers._checks import FEATURE_AXES
from jscope.typing import ArrayLike, DTypeLike

Axis: TypeAlias = int | Sequence[int]


# --------------------------------------------------------------------- helpers


def float_inputs(inputs: ArrayLike, layer: str) -> jax.Array:
    x = jnp.asarray(inputs)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise _checks.error(
            LayerTypeError,
            layer,
            f"inputs must be floating point, got dtype {x.dtype}. Cast them "
            "first, e.g. inputs.astype(jnp.float32).",
        )
    return x


def norm_axes(axis: Axis, ndim: int, layer: str) -> tuple[int, ...]:
    """Normalizes ``axis`` (int or ints) to sorted non-negative axes of ``ndim``."""
    raw = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
    indices = [_checks.as_index(a) for a in raw]
    axes = [a for a in indices if a is not None]
    if len(axes) != len(indices):
        raise _checks.error(
            LayerTypeError,
            layer,
            f"axis must be an int or a sequence of ints, got {axis!r}. Pass e.g. "
            "axis=-1 (the last axis) or axis=(1, 2).",
        )
    if not axes:
        raise _checks.error(
            LayerArgumentError,
            layer,
            "axis must name at least one axis, got (). Pass e.g. axis=-1.",
        )
    for a in axes:
        if not -ndim <= a < ndim:
            raise _checks.error(
                LayerArgumentError,
                layer,
                f"axis {a} is out of range for inputs of rank {ndim} (valid: "
                f"{-ndim} to {ndim - 1}). Pass an axis of the inputs.",
            )
    out = sorted(a % ndim for a in axes)
    if len(set(out)) != len(out):
        raise _checks.error(
            LayerArgumentError,
            layer,
            f"axis {axis!r} repeats an axis (as {tuple(out)} of rank {ndim}). "
            "Name each axis once.",
        )
    return tuple(out)


def stat_dtype(x: jax.Array) -> np.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def moments(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return mean, var


def bshape(ndim: int, axes: tuple[int, ...], shape: tuple[int, ...]) -> list[int]:
    """The shape that broadcasts a variable over ``axes`` of the inputs."""
    out = [1] * ndim
    for a in axes:
        out[a] = shape[a]
    return out


def feature_axes(
    value: Any, pshape: tuple[int, ...], variable: str, layer: str
) -> tuple[str | None, ...] | None:
    """The checked logical axes ``<variable>_axes`` of a variable of ``pshape``."""
    return _checks.axes(
        value, pshape, variable=variable, what=f"{variable}_axes", layer=layer,
        default=FEATURE_AXES,
    )  # fmt: skip


def gamma_beta(
    pshape: tuple[int, ...],
    center: bool,
    scale: bool,
    init: tuple[Any, Any],
    reg: tuple[Any, Any],
    axes: tuple[Any, Any],
    dtype: DTypeLike | None,
    layer: str,
    trainable: bool = True,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Gets or creates ``gamma`` (if ``scale``) and ``beta`` (if ``center``)."""
    gamma_axes = feature_axes(axes[0], pshape, "gamma", layer)
    beta_axes = feature_axes(axes[1], pshape, "beta", layer)
    gamma = beta = None
    if scale:
        gamma = js.get_variable(
            "gamma", pshape, dtype, init[0] or js.initializers.ones(), reg[0],
            trainable=trainable, axes=gamma_axes,
        )  # fmt: skip
    if center:
        beta = js.get_variable(
            "beta", pshape, dtype, init[1] or js.initializers.zeros(), reg[1],
            trainable=trainable, axes=beta_axes,
        )  # fmt: skip
    return gamma, beta


def affine(
    y: jax.Array,
    x: jax.Array,
    axes: tuple[int, ...],
    gamma: jax.Array | None,
    beta: jax.Array | None,
) -> jax.Array:
    """Applies ``gamma``/``beta`` along ``axes``; casts to their dtype."""
    shape = bshape(x.ndim, axes, x.shape)
    if gamma is not None:
        y = y * gamma.astype(y.dtype).reshape(shape)
    if beta is not None:
        y = y + beta.astype(y.dtype).reshape(shape)
    ref = gamma if gamma is not None else beta
    return y.astype(x.dtype if ref is None else ref.dtype)
