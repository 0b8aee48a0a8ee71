"""Layers without variables: dropout, pooling and flatten, as in ``tf.layers``.

They open a variable scope all the same (``dropout``, ``max_pooling2d``, ...), as
TF1's layers did, so default names of later layers come out as in TF1 and each
dropout draws its keys under its own scope path.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers._checks import Padding
from jscope.typing import ArrayLike, DTypeLike, Shape

# ---------------------------------------------------------------------- dropout


def dropout(
    inputs: ArrayLike,
    rate: float = 0.5,
    training: bool = False,
    noise_shape: Shape | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> jax.Array:
    """Zeroes each element with probability ``rate`` while training, as TF1.

    Kept elements are scaled by ``1 / (1 - rate)`` so the expected value is
    unchanged; with ``training=False`` (the default, as ``tf.layers.dropout``) or
    ``rate=0`` the inputs come back as they are and no key is drawn. The key is
    `js.next_rng_key("dropout")` in the scope ``dropout``, ``dropout_1``, ... or
    ``name``: at `js.apply`, pass ``rngs={"dropout": key}`` (a missing key is a
    `jscope.errors.MissingRngError`); at `js.init` it derives from the init rng.

    Args:
      inputs: An array.
      rate: The drop probability, a Python float in ``[0, 1)``.
      training: A Python bool (not a traced value: the key is drawn only when
        training).
      noise_shape: The shape of the keep mask, broadcast against ``inputs``:
        each entry is ``inputs``' size on that axis, 1 (one mask value shared
        along the axis), or None (``inputs``' size). E.g. ``(batch, 1, 1,
        channels)`` drops whole feature maps.
      seed: TF1's op seed: an int folded into the key, so that two dropouts
        given different seeds draw different masks from the same ``rngs``;
        None draws the key alone. The mask still changes from step to step
        with the ``rngs`` key, as TF1's did from run to run.
      name: The variable scope's name; None picks ``dropout``, ``dropout_1``, ...

    Returns:
      An array of the inputs' shape and dtype.

    Raises:
      LayerArgumentError: ``rate`` is not in ``[0, 1)``, ``noise_shape`` does
        not broadcast to ``inputs``, or ``inputs`` are not floating point (a
        ``ValueError``, TF1's error).
      LayerTypeError: ``training`` or ``rate`` is a traced value, or ``seed``
        is not an int (a ``TypeError``).
      MissingRngError: At apply, while training, ``rngs`` has no "dropout" key.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.dropout(x, rate=0.5, training=True)
      >>> y = js.apply(f, {}, jnp.ones(6), rngs={"dropout": jax.random.key(1)})
      >>> bool(jnp.all((y == 0) | (y == 2)))
      True
    """
    with js.variable_scope(name, default_name="dropout"):
        if isinstance(training, Tracer) or isinstance(rate, Tracer):
            raise _checks.error(
                LayerTypeError,
                "dropout",
                "needs a Python bool `training` and a Python float `rate`, got a "
                "traced value. Mark them static (e.g. jax.jit(..., "
                "static_argnames='training')) or use js.cond.",
            )
        if isinstance(training, list | tuple | str):
            raise _checks.error(
                LayerTypeError,
                "dropout",
                f"training must be a Python bool, got {training!r}. TF1's order was "
                "(inputs, rate, noise_shape, seed, training); jscope's is (inputs, "
                "rate, training, noise_shape, seed): pass noise_shape= and seed= by "
                "keyword.",
            )
        rate = _checks.rate(float(rate), "rate", "dropout")
        x = jnp.asarray(inputs)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise _checks.error(
                LayerArgumentError,
                "dropout",
                "needs floating-point inputs (kept values are scaled by "
                f"1 / (1 - rate)), got dtype {x.dtype}. Cast them first, e.g. "
                "inputs.astype(jnp.float32).",
            )
        shape = _noise_shape(noise_shape, x.shape)
        if not training or rate == 0.0:
            return x
        key = js.next_rng_key("dropout")
        if seed is not None:
            key = jax.random.fold_in(key, _seed(seed))
        keep = jax.random.bernoulli(key, 1.0 - rate, shape)
        return lax.select(
            jnp.broadcast_to(keep, x.shape),
            x / np.asarray(1.0 - rate, x.dtype),
            jnp.zeros_like(x),
        )


def _seed(seed: object) -> int:
    index = _checks.as_index(seed)
    if index is None:
        raise _checks.error(
            LayerTypeError,
            "dropout",
            f"seed must be an int, got {seed!r}. Pass a Python int, e.g. seed=1, "
            "or None.",
        )
    return index % 2**32


def _noise_shape(noise_shape: Shape | None, shape: tuple) -> tuple[int, ...]:
    if noise_shape is None:
        return shape
    try:
        out = tuple(
            n if d is None else operator.index(d)
            for d, n in zip(noise_shape, shape, strict=True)
        )
    except (TypeError, ValueError):
        out = None
    if out is None or any(d not in (1, n) for d, n in zip(out, shape, strict=True)):
        raise _checks.error(
            LayerArgumentError,
            "dropout",
            f"noise_shape {noise_shape!r} does not broadcast to the inputs' shape "
            f"{shape}. Give one entry per axis: the inputs' size, 1 or None.",
        )
    return out


# ---------------------------------------------------------------------- pooling


def _pool(
    kind: str,
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
    n: int | None,
    name: str | None,
    data_format: str,
) -> jax.Array:
    x = jnp.asarray(inputs)
    rank_n = x.ndim - 2 if n is None else n
    spatial = rank_n in (1, 2, 3)
    default = f"{kind}_pooling{rank_n}d" if spatial else f"{kind}_pooling"
    with js.variable_scope(name, default_name=default):
        what = "max_pool" if kind == "max" else "avg_pool"
        first = _checks.channels_first(data_format, what)
        expected = "3, 4 or 5" if n is None else str(n + 2)
        where = "first" if first else "last"
        _checks.rank(x, what, expected, f"batch, spatial axes, channels {where}")
        return _checks.to_channels_first(
            _pool_last(kind, _checks.to_channels_last(x, first), pool_size,
                       strides, padding, rank_n, what),
            first,
        )  # fmt: skip


def _pool_last(
    kind: str, x: jax.Array, pool_size: Any, strides: Any, padding: Any,
    rank_n: int, what: str,
) -> jax.Array:  # fmt: skip
    """Pools channels-last ``x`` (rank checked) over its ``rank_n`` spatial axes."""
    window = _checks.ints(pool_size, rank_n, "pool_size", what)
    if strides is not None:
        strides = _checks.ints(strides, rank_n, "strides", what)
    strides = window if strides is None else strides
    pad = _checks.padding(padding, rank_n, what)
    if isinstance(pad, str):
        pad = lax.padtype_to_pads(x.shape[1:-1], window, strides, pad)
    pads = ((0, 0), *pad, (0, 0))
    dims, steps = (1, *window, 1), (1, *strides, 1)
    if kind == "max":
        return lax.reduce_window(x, _lowest(x.dtype), lax.max, dims, steps, pads)
    zero = np.zeros((), x.dtype)
    total = lax.reduce_window(x, zero, lax.add, dims, steps, pads)
    if all(lo == hi == 0 for lo, hi in pads):
        return total / np.asarray(math.prod(window), x.dtype)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    count = lax.reduce_window(ones, zero, lax.add, dims, steps, pads)
    return total / count


def _lowest(dtype: DTypeLike) -> np.ndarray:
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.asarray(-np.inf, dtype)
    return np.asarray(jnp.iinfo(dtype).min, dtype)


def max_pool(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """The maximum over each window, as ``tf.layers.max_pooling{1,2,3}d``.

    The number of spatial axes comes from the rank of ``inputs`` (3, 4 or 5:
    batch and channels are always present); `max_pool1d`, `max_pool2d` and
    `max_pool3d` check it instead. Padded positions never win the maximum.
    The scope is ``max_pooling2d`` (for 2-D), ... or ``name``.

    Args:
      inputs: An array ``[batch, *spatial, channels]`` (channels last).
      pool_size: The window, an int or one int per spatial axis.
      strides: An int or one per spatial axis; None (default) is ``pool_size``.
      padding: ``"VALID"`` (default) or ``"SAME"`` (any case; TF1's rules, the
        odd element of padding at the end), or ``(low, high)`` pairs.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``
        (``[batch, channels, *spatial]`` in and out), as in TF1.
      name: The variable scope's name.

    Returns:
      An array ``[batch, *out_spatial, channels]``.

    Raises:
      LayerArgumentError: Wrong rank, unknown padding or non-positive sizes (a
        ``ValueError``).
      LayerTypeError: A size that is not an int (a ``TypeError``).

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> js.layers.max_pool(x, 2)[0, ..., 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    return _pool("max", inputs, pool_size, strides, padding, None, name, data_format)


def avg_pool(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """The mean over each window, as ``tf.layers.average_pooling{1,2,3}d``.

    As in TF1, a window that overlaps the padding averages only the inputs it
    covers (padding is not counted). The number of spatial axes comes from the
    rank of ``inputs`` (3, 4 or 5); `avg_pool1d`, `avg_pool2d` and `avg_pool3d`
    check it instead. The scope is ``average_pooling2d`` (for 2-D), ... or
    ``name``.

    Args:
      inputs: An array ``[batch, *spatial, channels]`` (channels last).
      pool_size: The window, an int or one int per spatial axis.
      strides: An int or one per spatial axis; None (default) is ``pool_size``.
      padding: ``"VALID"`` (default) or ``"SAME"`` (any case; TF1's rules, the
        odd element of padding at the end), or ``(low, high)`` pairs.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``
        (``[batch, channels, *spatial]`` in and out), as in TF1.
      name: The variable scope's name.

    Returns:
      An array ``[batch, *out_spatial, channels]``.

    Raises:
      LayerArgumentError: Wrong rank, unknown padding or non-positive sizes (a
        ``ValueError``).
      LayerTypeError: A size that is not an int (a ``TypeError``).

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
      >>> js.layers.avg_pool(x, 2, padding="SAME")[0, :, 0]
      Array([1.5, 3. ], dtype=float32)
    """
    return _pool(
        "average", inputs, pool_size, strides, padding, None, name, data_format
    )


def max_pool1d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`max_pool` over ``[batch, width, channels]`` inputs only.

    The scope is ``max_pooling1d``, ... or ``name``; ``data_format`` as in
    `max_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.max_pool1d(jnp.ones((1, 4, 2)), 2).shape
      (1, 2, 2)
    """
    return _pool("max", inputs, pool_size, strides, padding, 1, name, data_format)


def max_pool2d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`max_pool` over ``[batch, height, width, channels]`` inputs only.

    The scope is ``max_pooling2d``, ... or ``name``; ``data_format`` as in
    `max_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.max_pool2d(jnp.ones((1, 4, 4, 2)), 2).shape
      (1, 2, 2, 2)
    """
    return _pool("max", inputs, pool_size, strides, padding, 2, name, data_format)


def max_pool3d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`max_pool` over ``[batch, depth, height, width, channels]`` inputs only.

    The scope is ``max_pooling3d``, ... or ``name``; ``data_format`` as in
    `max_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.max_pool3d(jnp.ones((1, 4, 4, 4, 2)), 2).shape
      (1, 2, 2, 2, 2)
    """
    return _pool("max", inputs, pool_size, strides, padding, 3, name, data_format)


def avg_pool1d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`avg_pool` over ``[batch, width, channels]`` inputs only.

    The scope is ``average_pooling1d``, ... or ``name``; ``data_format`` as in
    `avg_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.avg_pool1d(jnp.ones((1, 4, 2)), 2).shape
      (1, 2, 2)
    """
    return _pool("average", inputs, pool_size, strides, padding, 1, name, data_format)


def avg_pool2d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`avg_pool` over ``[batch, height, width, channels]`` inputs only.

    The scope is ``average_pooling2d``, ... or ``name``; ``data_format`` as in
    `avg_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.avg_pool2d(jnp.ones((1, 4, 4, 2)), 2).shape
      (1, 2, 2, 2)
    """
    return _pool("average", inputs, pool_size, strides, padding, 2, name, data_format)


def avg_pool3d(
    inputs: ArrayLike,
    pool_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    data_format: str = "channels_last",
    name: str | None = None,
) -> jax.Array:
    """`avg_pool` over ``[batch, depth, height, width, channels]`` inputs only.

    The scope is ``average_pooling3d``, ... or ``name``; ``data_format`` as in
    `avg_pool`.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.avg_pool3d(jnp.ones((1, 4, 4, 4, 2)), 2).shape
      (1, 2, 2, 2, 2)
    """
    return _pool("average", inputs, pool_size, strides, padding, 3, name, data_format)


# ---------------------------------------------------------------------- flatten


def flatten(inputs: ArrayLike, name: str | None = None) -> jax.Array:
    """Flattens every axis but the first (batch), as ``tf.layers.flatten``.

    A rank-1 input ``[batch]`` becomes ``[batch, 1]`` (Keras's rule).

    Args:
      inputs: An array of rank >= 1.
      name: The variable scope's name; None picks ``flatten``, ...

    Returns:
      An array ``[batch, prod(other axes)]``.

    Raises:
      LayerArgumentError: ``inputs`` is a scalar (a ``ValueError``).

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> js.layers.flatten(jnp.ones((2, 3, 4))).shape
      (2, 12)
    """
    with js.variable_scope(name, default_name="flatten"):
        x = jnp.asarray(inputs)
        _checks.rank(x, "flatten", ">= 1", "a batch axis first")
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))
