"""tf-slim's layers without weights, its layer combinators and regularizers.

Pooling (``max_pool2d``, ``avg_pool2d``: TF1's padding; an average over
``"SAME"`` padding counts only real pixels), ``flatten``, ``dropout`` (a key
from the ``"dropout"`` stream), ``repeat`` and ``stack`` (scopes named after
the layer function, as tf-slim), and ``l1_regularizer``/``l2_regularizer``
(``tf.contrib.layers``' formulas), and its initializers ``xavier_initializer``
and ``variance_scaling_initializer`` (contrib's, whose normal variant differs a
little from ``tf.compat.v1``'s).

Imports: `jscope.errors`, `jscope.initializers` (fans), `scope`, `rng`, and
this package's `arg_scope` and `checks`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jscope import errors, initializers
from jscope._src.rng import next_rng_key
from jscope._src.scope import variable_scope
from jscope._src.slim import checks
from jscope._src.slim.arg_scope import add_arg_scope

Size = int | Sequence[int]


def _pool(inputs, kernel_size, stride, padding, data_format, op):
    first = checks.channels_first(data_format, op)
    x = checks.to_nhwc(checks.inputs(inputs, op, (4,)), first)
    window = (1, *checks.ints(kernel_size, 2, "kernel_size", op), 1)
    strides = (1, *checks.ints(stride, 2, "stride", op), 1)
    return x, first, window, strides, checks.padding(padding, op)


@add_arg_scope
def max_pool2d(
    inputs: Any,
    kernel_size: Size,
    stride: Size = 2,
    padding: str = "VALID",
    data_format: str = "NHWC",
    outputs_collections: Any = None,
    scope: str | None = None,
) -> jax.Array:
    """2-D max pooling, as slim.max_pool2d (stride 2 and VALID by default).

    Args:
      inputs: ``[batch, height, width, channels]`` (or NCHW).
      kernel_size: An int or ``[kh, kw]``.
      stride: An int or ``[sh, sw]``.
      padding: ``"SAME"`` or ``"VALID"``.
      data_format: ``"NHWC"`` or ``"NCHW"``.
      outputs_collections: Only None.
      scope: Accepted for TF1's signature; pooling creates no variables.

    Returns:
      The pooled array in ``data_format``.

    Raises:
      LayerArgumentError: A wrong rank, padding, data format or size.

    Example:
      >>> import jax.numpy as jnp, jscope.slim as slim
      >>> slim.max_pool2d(jnp.arange(16.0).reshape(1, 4, 4, 1), 2).ravel()
      Array([ 5.,  7., 13., 15.], dtype=float32)
    """
    checks.no_collections("max_pool2d", outputs_collections=outputs_collections)
    x, first, window, strides, pad = _pool(
        inputs, kernel_size, stride, padding, data_format, "max_pool2d"
    )
    y = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pad)
    return checks.from_nhwc(y.astype(x.dtype), first)


@add_arg_scope
def avg_pool2d(
    inputs: Any,
    kernel_size: Size,
    stride: Size = 2,
    padding: str = "VALID",
    data_format: str = "NHWC",
    outputs_collections: Any = None,
    scope: str | None = None,
) -> jax.Array:
    """2-D average pooling, as slim.avg_pool2d; SAME padding is not averaged in.

    Args:
      inputs: ``[batch, height, width, channels]`` (or NCHW).
      kernel_size: An int or ``[kh, kw]``.
      stride: An int or ``[sh, sw]``.
      padding: ``"SAME"`` or ``"VALID"``.
      data_format: ``"NHWC"`` or ``"NCHW"``.
      outputs_collections: Only None.
      scope: Accepted for TF1's signature; pooling creates no variables.

    Returns:
      The pooled array in ``data_format``.

    Raises:
      LayerArgumentError: A wrong rank, padding, data format or size.

    Example:
      >>> import jax.numpy as jnp, jscope.slim as slim
      >>> slim.avg_pool2d(jnp.ones((1, 3, 3, 1)), 2, padding="SAME").ravel()
      Array([1., 1., 1., 1.], dtype=float32)
    """
    checks.no_collections("avg_pool2d", outputs_collections=outputs_collections)
    x, first, window, strides, pad = _pool(
        inputs, kernel_size, stride, padding, data_format, "avg_pool2d"
    )
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, window, strides, pad)
    return checks.from_nhwc((total / count).astype(x.dtype), first)


@add_arg_scope
def flatten(
    inputs: Any, outputs_collections: Any = None, scope: str | None = None
) -> jax.Array:
    """Flattens all axes but the first (the batch): ``[batch, k]``, as slim.flatten.

    Args:
      inputs: An array of rank >= 2.
      outputs_collections: Only None.
      scope: Accepted for TF1's signature.

    Returns:
      ``inputs.reshape(batch, -1)``.

    Raises:
      LayerArgumentError: Inputs of rank below 2.

    Example:
      >>> import jax.numpy as jnp, jscope.slim as slim
      >>> slim.flatten(jnp.ones((2, 3, 4))).shape
      (2, 12)
    """
    checks.no_collections("flatten", outputs_collections=outputs_collections)
    x = jnp.asarray(inputs)
    if x.ndim < 2:
        raise checks.error(
            errors.LayerArgumentError,
            "flatten",
            f"inputs must have at least 2 dimensions (batch first), got shape "
            f"{tuple(x.shape)}. Add a batch axis, e.g. x[None].",
        )
    return x.reshape(x.shape[0], -1)


@add_arg_scope
def dropout(
    inputs: Any,
    keep_prob: float = 0.5,
    noise_shape: Sequence[int] | None = None,
    is_training: bool = True,
    outputs_collections: Any = None,
    scope: str | None = None,
    seed: int | None = None,
) -> jax.Array:
    """Keeps each element with probability ``keep_prob``, scaled by its inverse.

    As slim.dropout, ``is_training`` defaults to True: at `js.apply` pass
    ``rngs={"dropout": key}``. The mask comes from `js.next_rng_key("dropout")`
    in the scope ``Dropout``, ``Dropout_1``, ... or ``scope`` (with ``seed``
    folded in), so it is jax's, not TF1's. With ``is_training=False`` or
    ``keep_prob=1`` the inputs come back unchanged and no key is drawn.

    Args:
      inputs: A floating-point array.
      keep_prob: The probability of keeping an element, in ``(0, 1]``.
      noise_shape: The keep mask's shape, broadcast against ``inputs``.
      is_training: A Python bool.
      outputs_collections: Only None.
      scope: The variable scope's name.
      seed: An int folded into the key, or None.

    Returns:
      An array shaped like ``inputs``.

    Raises:
      LayerArgumentError: ``keep_prob`` outside ``(0, 1]``, or a noise shape
        that does not broadcast.
      LayerTypeError: A traced ``is_training``, or non-float inputs.
      MissingRngError: Training at apply without a "dropout" key.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.dropout(x, keep_prob=0.5)
      >>> y = js.apply(f, {}, jnp.ones(6), rngs={"dropout": jax.random.key(1)})
      >>> bool(jnp.all((y == 0) | (y == 2)))
      True
    """
    with variable_scope(scope, default_name="Dropout"):
        op = "dropout"
        checks.no_collections(op, outputs_collections=outputs_collections)
        training = checks.python_bool(is_training, "is_training", op)
        x = checks.inputs(inputs, op, tuple(range(0, max(jnp.ndim(inputs), 0) + 1)))
        if not isinstance(keep_prob, numbers.Real) or not 0.0 < keep_prob <= 1.0:
            raise checks.error(
                errors.LayerArgumentError,
                op,
                f"keep_prob must be a Python float in (0, 1], got {keep_prob!r}. "
                "Pass e.g. keep_prob=0.5 (the probability of keeping an element).",
            )
        if not training or keep_prob == 1.0:
            return x
        shape = x.shape if noise_shape is None else tuple(noise_shape)
        try:
            jnp.broadcast_shapes(shape, x.shape)
        except ValueError:
            raise checks.error(
                errors.LayerArgumentError,
                op,
                f"noise_shape {shape} does not broadcast to the inputs' shape "
                f"{tuple(x.shape)}. Use the inputs' sizes or 1 on each axis.",
            ) from None
        key = next_rng_key("dropout")
        if seed is not None:
            key = jax.random.fold_in(key, seed)
        keep = jax.random.bernoulli(key, keep_prob, shape)
        scaled = x / np.asarray(keep_prob, x.dtype)
        return jnp.where(keep, scaled, jnp.zeros_like(x))


def _layer_name(layer: Callable[..., Any], default: str) -> str:
    if isinstance(layer, functools.partial):
        layer = layer.func
    return getattr(layer, "__name__", default)


def repeat(
    inputs: Any, repetitions: int, layer: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Applies ``layer`` ``repetitions`` times with the same arguments: slim.repeat.

    The calls run in the variable scope ``scope`` (default ``Repeat``) with the
    scopes ``<name>_1``, ``<name>_2``, ... where ``<name>`` is ``scope``, else
    the layer function's name (``convolution2d`` for `conv2d`, as tf-slim).

    Args:
      inputs: The first call's input; each later call gets the previous output.
      repetitions: The number of calls.
      layer: A layer taking ``scope=``, e.g. `conv2d`.
      *args: Passed to every call after the input.
      **kwargs: Passed to every call; ``scope`` names the block.

    Returns:
      The last call's output.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.repeat(x, 2, slim.conv2d, 4, [3, 3], scope="conv1")
      >>> v = js.init(f, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
      >>> list(v["params"]["conv1"])
      ['conv1_1', 'conv1_2']
    """
    scope = kwargs.pop("scope", None)
    with variable_scope(scope, default_name="Repeat"):
        name = scope if scope is not None else _layer_name(layer, "repeat")
        outputs = inputs
        for i in range(repetitions):
            outputs = layer(outputs, *args, **kwargs, scope=f"{name}_{i + 1}")
        return outputs


def stack(
    inputs: Any, layer: Callable[..., Any], stack_args: Sequence[Any], **kwargs: Any
) -> Any:
    """Applies ``layer`` once per entry of ``stack_args``: slim.stack.

    Scopes as `repeat` (default ``Stack``, then ``<name>_1``, ...). Each entry
    of ``stack_args`` is the positional arguments after the input: a tuple or
    list, or a single value.

    Args:
      inputs: The first call's input; each later call gets the previous output.
      layer: A layer taking ``scope=``, e.g. `fully_connected`.
      stack_args: One entry per call.
      **kwargs: Passed to every call; ``scope`` names the block.

    Returns:
      The last call's output.

    Raises:
      LayerTypeError: ``stack_args`` is not a list or tuple.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.stack(x, slim.fully_connected, [8, 4], scope="fc")
      >>> v = js.init(f, jax.random.key(0), jnp.ones((2, 3)))
      >>> js.apply(f, v, jnp.ones((2, 3))).shape
      (2, 4)
    """
    scope = kwargs.pop("scope", None)
    if not isinstance(stack_args, list | tuple):
        raise errors.LayerTypeError(
            f"slim.stack: stack_args need to be a list or tuple, got "
            f"{type(stack_args).__name__}. Pass one entry per layer, e.g. [64, 32].",
            "",
        )
    with variable_scope(scope, default_name="Stack"):
        name = scope if scope is not None else _layer_name(layer, "stack")
        outputs = inputs
        for i, layer_args in enumerate(stack_args):
            if not isinstance(layer_args, list | tuple):
                layer_args = [layer_args]
            outputs = layer(outputs, *layer_args, **kwargs, scope=f"{name}_{i + 1}")
        return outputs


def _check_scale(scale: Any, name: str) -> float | None:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise errors.ArgumentTypeError(
            f"slim.{name}: scale must be a Python float, got {scale!r}. Pass e.g. "
            f"{name}(1e-4).",
            "",
        )
    if scale < 0.0:
        raise errors.LayerArgumentError(
            f"slim.{name}: setting a scale less than 0 on a regularizer: {scale}. "
            "Pass a scale >= 0.",
            "",
        )
    return None if scale == 0.0 else float(scale)


def l1_regularizer(
    scale: float, scope: str | None = None
) -> Callable[[jax.Array], jax.Array] | None:
    """``scale * sum(|w|)``, as tf.contrib.layers.l1_regularizer.

    Args:
      scale: A float >= 0; 0 gives None (no regularizer, as TF1 added no loss).
      scope: Accepted for TF1's signature.

    Returns:
      ``(weights) -> scalar``, or None for ``scale=0``.

    Raises:
      ArgumentTypeError: ``scale`` is not a number.
      LayerArgumentError: ``scale`` is negative.
    """
    s = _check_scale(scale, "l1_regularizer")
    if s is None:
        return None
    return lambda w: jnp.asarray(s, w.dtype) * jnp.sum(jnp.abs(w))


def l2_regularizer(
    scale: float, scope: str | None = None
) -> Callable[[jax.Array], jax.Array] | None:
    """``scale * sum(w ** 2) / 2`` (``tf.nn.l2_loss``), as contrib's l2_regularizer.

    Args:
      scale: A float >= 0; 0 gives None (no regularizer, as TF1 added no loss).
      scope: Accepted for TF1's signature.

    Returns:
      ``(weights) -> scalar``, or None for ``scale=0``.

    Raises:
      ArgumentTypeError: ``scale`` is not a number.
      LayerArgumentError: ``scale`` is negative.

    Example:
      >>> import jax.numpy as jnp, jscope.slim as slim
      >>> slim.l2_regularizer(0.1)(jnp.array([1.0, 2.0]))
      Array(0.25, dtype=float32)
    """
    s = _check_scale(scale, "l2_regularizer")
    if s is None:
        return None
    return lambda w: jnp.asarray(s, w.dtype) * jnp.sum(jnp.square(w)) / 2


def variance_scaling_initializer(
    factor: float = 2.0,
    mode: str = "FAN_IN",
    uniform: bool = False,
    seed: int | None = None,
    dtype: Any = jnp.float32,
) -> Callable[..., jax.Array]:
    """tf.contrib.layers' variance scaling (He by default): ``factor / n``.

    ``n`` is ``fan_in``, ``fan_out`` or their mean (TF1's fans). Uniform values
    lie in ``±sqrt(3 * factor / n)``; normal ones are a normal of standard
    deviation ``sqrt(1.3 * factor / n)`` truncated at two deviations, as contrib
    (``tf.compat.v1``'s truncated normal divides by 0.8796 instead).

    Args:
      factor: The scale, > 0.
      mode: ``"FAN_IN"``, ``"FAN_OUT"`` or ``"FAN_AVG"``.
      uniform: Uniform rather than truncated normal values.
      seed: An int folded into the variable's key, or None.
      dtype: The default dtype (floating point).

    Returns:
      ``(key, shape, dtype) -> array``.

    Raises:
      ArgumentTypeError: An unknown ``mode``, or a dtype that is not floating
        point (TF1's ``TypeError``).

    Example:
      >>> import jax, jscope.slim as slim
      >>> w = slim.variance_scaling_initializer(uniform=True)(jax.random.key(0), (8, 4))
      >>> bool(abs(w).max() <= (3 * 2.0 / 8) ** 0.5)
      True
    """
    if mode not in ("FAN_IN", "FAN_OUT", "FAN_AVG"):
        raise errors.ArgumentTypeError(
            f"Unknown mode {mode!r} [FAN_IN, FAN_OUT, FAN_AVG]. Pass e.g. "
            "mode='FAN_IN' (upper case, as tf.contrib.layers).",
            "",
        )
    _float_dtype(dtype)

    def init(key, shape, dtype=dtype, out_sharding=None):
        dtype = _float_dtype(dtype)
        shape = tuple(shape)
        fan_in, fan_out = initializers.compute_fans(shape)
        n = {"FAN_IN": fan_in, "FAN_OUT": fan_out}.get(mode, (fan_in + fan_out) / 2)
        if seed is not None:
            key = jax.random.fold_in(key, seed)
        if uniform:
            limit = float(np.sqrt(3.0 * factor / n))
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        stddev = np.asarray(np.sqrt(1.3 * factor / n), dtype)
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev

    return init


def xavier_initializer(
    uniform: bool = True, seed: int | None = None, dtype: Any = jnp.float32
) -> Callable[..., jax.Array]:
    """Glorot's initializer, as tf.contrib.layers' ``xavier_initializer``.

    It is ``variance_scaling_initializer(1.0, "FAN_AVG", uniform)``; uniform, it
    draws as `js.initializers.glorot_uniform`.

    Args:
      uniform: Uniform rather than truncated normal values.
      seed: An int folded into the variable's key, or None.
      dtype: The default dtype (floating point).

    Returns:
      ``(key, shape, dtype) -> array``.
    """
    return variance_scaling_initializer(1.0, "FAN_AVG", uniform, seed, dtype)


def _float_dtype(dtype: Any) -> Any:
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise errors.ArgumentTypeError(
            f"Cannot create initializer for non-floating point type {dt}. Pass a "
            "floating dtype, e.g. jnp.float32.",
            "",
        )
    return dt
