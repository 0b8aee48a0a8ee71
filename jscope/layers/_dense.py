"""The fully connected layer, ``tf.layers.dense``."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jscope as js


def dense(
    inputs: Any,
    units: int,
    activation: Callable[[jax.Array], jax.Array] | None = None,
    use_bias: bool = True,
    kernel_initializer: Any = None,
    bias_initializer: Any = js.initializers.zeros,
    kernel_regularizer: Any = None,
    bias_regularizer: Any = None,
    trainable: bool = True,
    dtype: Any = None,
    precision: Any = None,
    name: str | None = None,
    reuse: Any = None,
) -> jax.Array:
    """A fully connected layer: ``activation(inputs @ kernel + bias)``.

    As ``tf.layers.dense``: it acts on the last axis of inputs of any rank >= 1
    (every leading axis is a batch axis), with variables ``kernel`` of shape
    ``[in, units]`` and ``bias`` of shape ``[units]`` in the scope ``dense``,
    ``dense_1``, ... or ``name``. The product is computed in the kernel's dtype
    (inputs are cast to it), so a scope-level ``dtype`` or a custom getter that
    casts variables also sets the compute dtype.

    Args:
      inputs: An array ``[..., in]``.
      units: The output size, a positive int.
      activation: Applied to the result, e.g. `jax.nn.relu`; None for linear.
      use_bias: Whether to add ``bias``.
      kernel_initializer: The kernel's initializer; None uses the scope's, else
        jscope's default Glorot uniform (TF1's default).
      bias_initializer: The bias's initializer (zeros).
      kernel_regularizer: ``(kernel) -> scalar``, added to
        `js.get_regularization_loss`.
      bias_regularizer: ``(bias) -> scalar``, likewise.
      trainable: Whether the variables go to ``params`` (else ``state``).
      dtype: The variables' dtype; None uses the scope's, else float32.
      precision: Passed to `jax.lax.dot_general`.
      name: The variable scope's name; None picks ``dense``, ``dense_1``, ...
      reuse: ``True`` or `js.AUTO_REUSE` shares the variables of an earlier call
        with the same ``name``.

    Returns:
      An array ``[..., units]`` in the kernel's dtype.

    Raises:
      ValueError: ``units`` is not positive, or ``inputs`` is a scalar.
      TypeError: ``units`` is not an int.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.dense(x, 3, activation=jax.nn.relu)
      >>> v = js.init(f, jax.random.key(0), jnp.ones((2, 4)))
      >>> {path: a.shape for path, a in js.flatten(v).items()}
      {'params/dense/kernel': (4, 3), 'params/dense/bias': (3,)}
      >>> js.apply(f, v, jnp.ones((2, 4))).shape
      (2, 3)
    """
    with js.variable_scope(name, default_name="dense", reuse=reuse):
        path = js.get_variable_scope().name
        units = _positive_int(units, "units", path)
        x = jnp.asarray(inputs)
        if x.ndim < 1:
            raise ValueError(
                f"Layer {path}: dense needs inputs of rank >= 1 (the last axis holds "
                f"the features), got a scalar of shape {x.shape}."
            )
        kernel = js.get_variable(
            "kernel", (x.shape[-1], units), dtype, kernel_initializer,
            kernel_regularizer, trainable=trainable,
        )  # fmt: skip
        x = x.astype(kernel.dtype)
        y = lax.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision
        )
        if use_bias:
            bias = js.get_variable(
                "bias", (units,), dtype, bias_initializer, bias_regularizer,
                trainable=trainable,
            )  # fmt: skip
            y = y + bias.astype(y.dtype)
        if activation is not None:
            y = activation(y)
        return y


def _positive_int(value: Any, what: str, path: str) -> int:
    """``value`` as an int > 0, else a TypeError/ValueError naming the layer."""
    if isinstance(value, bool):
        raise TypeError(f"Layer {path}: {what} must be an int, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"Layer {path}: {what} must be an int, got {value!r}."
        ) from None
    if value <= 0:
        raise ValueError(f"Layer {path}: {what} must be positive, got {value}.")
    return value
