"""The fully connected layer, ``tf.layers.dense``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jscope as js
from jscope.layers import _checks
from jscope.layers._checks import Axes
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

_KERNEL_AXES = ("embed", "mlp")
"""`dense`'s default ``kernel_axes`` (the table in `jscope.layers`)."""
_BIAS_AXES = ("mlp",)
"""`dense`'s default ``bias_axes``."""


def dense(
    inputs: ArrayLike,
    units: int,
    activation: Callable[[jax.Array], jax.Array] | None = None,
    use_bias: bool = True,
    kernel_initializer: Initializer | None = None,
    bias_initializer: Initializer | None = js.initializers.zeros,
    kernel_regularizer: Regularizer | None = None,
    bias_regularizer: Regularizer | None = None,
    trainable: bool = True,
    dtype: DTypeLike | None = None,
    precision: lax.PrecisionLike = None,
    name: str | None = None,
    reuse: Reuse = None,
    activity_regularizer: Any = None,
    kernel_constraint: Any = None,
    bias_constraint: Any = None,
    kernel_axes: Axes | None = ("embed", "mlp"),
    bias_axes: Axes | None = ("mlp",),
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
      activity_regularizer: TF1's; not supported (a ``TypeError`` that says to
        add the penalty to the loss).
      kernel_constraint: TF1's; not supported (a ``TypeError`` that says to
        project the params after the optimizer step).
      bias_constraint: Likewise.
      kernel_axes: The kernel's logical axes for sharding rules, one name (or
        None) per dimension, as `js.get_variable`'s ``axes``; defaults from the
        table in `jscope.layers`. The second projection of an MLP block takes
        ``("mlp", "embed")`` with ``bias_axes=("embed",)``. None: no names.
      bias_axes: The bias's logical axes, likewise.

    Returns:
      An array ``[..., units]`` in the kernel's dtype.

    Raises:
      LayerArgumentError: ``units`` is not positive, ``inputs`` is a scalar, or
        axes do not name each dimension of their variable (a ``ValueError``).
      LayerTypeError: ``units`` is not an int, axes are not names, or an
        argument of TF1 that jscope does not support is given (a ``TypeError``).

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
        _checks.unsupported(
            "dense", activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
        )  # fmt: skip
        units = _checks.positive_int(units, "units", "dense")
        x = jnp.asarray(inputs)
        _checks.rank(x, "dense", ">= 1", "[..., features]")
        shape = (x.shape[-1], units)
        k_axes = _checks.axes(
            kernel_axes, shape, variable="kernel", what="kernel_axes",
            layer="dense", default=_KERNEL_AXES,
        )  # fmt: skip
        b_axes = _checks.axes(
            bias_axes, (units,), variable="bias", what="bias_axes",
            layer="dense", default=_BIAS_AXES,
        )  # fmt: skip
        kernel = js.get_variable(
            "kernel", shape, dtype, kernel_initializer, kernel_regularizer,
            trainable=trainable, axes=k_axes,
        )  # fmt: skip
        x = x.astype(kernel.dtype)
        y = lax.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision
        )
        if use_bias:
            bias = js.get_variable(
                "bias", (units,), dtype, bias_initializer, bias_regularizer,
                trainable=trainable, axes=b_axes,
            )  # fmt: skip
            y = y + bias.astype(y.dtype)
        if activation is not None:
            y = activation(y)
        return y
