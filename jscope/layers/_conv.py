"""Convolutions, ``tf.layers.conv1d/2d/3d``.

Kernels have TF1's layout ``[*kernel_size, in // groups, filters]``, so
checkpoints and initial values (Glorot uniform with TF1's convolution fans) carry
over from TF1. Inputs are channels last, or channels first with
``data_format="channels_first"`` (transposed to channels last and back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError
from jscope.layers import _checks, _conv_common
from jscope.layers._checks import Axes, Padding
from jscope.layers._conv_common import KERNEL_AXES
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

# ---------------------------------------------------------------- convolutions


def _conv(
    n: int,
    kind: str,
    inputs: ArrayLike,
    filters: int,
    kernel_size: Any,
    strides: Any,
    padding: Any,
    dilation_rate: Any,
    groups: int,
    activation: Any,
    use_bias: bool,
    kernel_initializer: Any,
    bias_initializer: Any,
    kernel_regularizer: Any,
    bias_regularizer: Any,
    trainable: bool,
    dtype: Any,
    precision: Any,
    name: str | None,
    reuse: Any,
    data_format: str,
    activity_regularizer: Any,
    kernel_constraint: Any,
    bias_constraint: Any,
    kernel_axes: Any,
    bias_axes: Any,
) -> jax.Array:
    with js.variable_scope(name, default_name=kind, reuse=reuse):
        _checks.unsupported(
            kind, activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
        )  # fmt: skip
        first = _checks.channels_first(data_format, kind)
        filters = _checks.positive_int(filters, "filters", kind)
        groups = _checks.positive_int(groups, "groups", kind)
        kernel_size = _checks.ints(kernel_size, n, "kernel_size", kind)
        strides = _checks.ints(strides, n, "strides", kind)
        _checks.not_data_format(dilation_rate, "dilation_rate", kind)
        dilation = _checks.ints(dilation_rate, n, "dilation_rate", kind)
        pad = _checks.padding(padding, n, kind, causal=n == 1)
        x = jnp.asarray(inputs)
        _checks.rank(x, kind, str(n + 2), _checks.layout(n, first))
        x = _checks.to_channels_last(x, first)
        channels = x.shape[-1]
        if channels % groups or filters % groups:
            raise _checks.error(
                LayerArgumentError,
                kind,
                f"groups={groups} must divide both the input channels "
                f"({channels}) and filters ({filters}). Pass a common divisor, "
                "e.g. groups=1.",
            )
        if pad == "CAUSAL":
            pad = (((kernel_size[0] - 1) * dilation[0], 0),)
        shape = (*kernel_size, channels // groups, filters)
        k_axes, b_axes = _conv_common.conv_axes(
            kernel_axes, bias_axes, shape, filters, KERNEL_AXES[n], kind
        )
        kernel = js.get_variable(
            "kernel", shape, dtype, kernel_initializer, kernel_regularizer,
            trainable=trainable, axes=k_axes,
        )  # fmt: skip
        y = lax.conv_general_dilated(
            x.astype(kernel.dtype),
            kernel,
            window_strides=strides,
            padding=pad,
            rhs_dilation=dilation,
            dimension_numbers=_conv_common.dimension_numbers(n, "IO"),
            feature_group_count=groups,
            precision=precision,
        )
        y = _conv_common.bias_act(
            y, filters, use_bias, bias_initializer, bias_regularizer, trainable,
            dtype, activation, b_axes,
        )  # fmt: skip
        return _checks.to_channels_first(y, first)


def conv2d(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation_rate: int | Sequence[int] = 1,
    groups: int = 1,
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
    data_format: str = "channels_last",
    activity_regularizer: Any = None,
    kernel_constraint: Any = None,
    bias_constraint: Any = None,
    kernel_axes: Axes | None = (None, None, "conv_in", "conv_out"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A 2-D convolution over NHWC inputs, as ``tf.layers.conv2d``.

    Variables (scope ``conv2d``, ``conv2d_1``, ... or ``name``): ``kernel`` of
    shape ``[kh, kw, in // groups, filters]`` and ``bias`` of shape ``[filters]``.
    The convolution runs in the kernel's dtype (inputs are cast to it). Unlike
    TF1, strides and dilation may both exceed 1 at once.

    Args:
      inputs: An array ``[batch, height, width, in]`` (channels last).
      filters: The number of output channels.
      kernel_size: An int or 2 ints.
      strides: An int or 2 ints.
      padding: ``"SAME"`` or ``"VALID"`` (any case; TF1's rules, the odd pixel
        of ``"SAME"`` padding at the end), or 2 ``(low, high)`` pairs.
      dilation_rate: An int or 2 ints (atrous convolution).
      groups: The number of feature groups (``feature_group_count``); it must
        divide ``in`` and ``filters``.
      activation: Applied to the result; None for linear.
      use_bias: Whether to add ``bias``.
      kernel_initializer: None uses the scope's, else Glorot uniform with TF1's
        convolution fans.
      bias_initializer: The bias's initializer (zeros).
      kernel_regularizer: ``(kernel) -> scalar`` for `js.get_regularization_loss`.
      bias_regularizer: ``(bias) -> scalar``, likewise.
      trainable: Whether the variables go to ``params`` (else ``state``).
      dtype: The variables' dtype; None uses the scope's, else float32.
      precision: Passed to `jax.lax.conv_general_dilated`.
      name: The variable scope's name; None picks ``conv2d``, ``conv2d_1``, ...
      reuse: ``True`` or `js.AUTO_REUSE` shares an earlier call's variables.
      data_format: ``"channels_last"`` (``[batch, height, width, in]``, the
        default) or ``"channels_first"`` (``[batch, in, height, width]``, and
        the output likewise); the kernel's layout is the same for both, as in
        TF1.
      activity_regularizer: TF1's; not supported (a ``TypeError`` that says
        to add the penalty to the loss).
      kernel_constraint: TF1's; not supported (a ``TypeError`` that says to
        project the params after the optimizer step).
      bias_constraint: Likewise.
      kernel_axes: The kernel's logical axes for sharding rules, one name (or
        None) per dimension, as `js.get_variable`'s ``axes``; defaults from the
        table in `jscope.layers`: ``(None, None, "conv_in", "conv_out")``.
        None: no names.
      bias_axes: The bias's logical axes, likewise (``("conv_out",)``).

    Returns:
      An array ``[batch, out_height, out_width, filters]``.

    Raises:
      LayerArgumentError: Wrong input rank, unknown padding, non-positive sizes,
        ``groups`` not dividing the channels, or axes that do not name each
        dimension of their variable (a ``ValueError``).
      LayerTypeError: A size that is not an int, axes that are not names, or
        an argument of TF1 that jscope does not support (a
        ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv2d(x, 8, 3, strides=2, padding="SAME")
      >>> x = jnp.ones((2, 5, 5, 3))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv2d"]["kernel"].shape
      (3, 3, 3, 8)
      >>> js.apply(f, v, x).shape
      (2, 3, 3, 8)
    """
    return _conv(2, "conv2d", **locals())


def conv1d(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation_rate: int | Sequence[int] = 1,
    groups: int = 1,
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
    data_format: str = "channels_last",
    activity_regularizer: Any = None,
    kernel_constraint: Any = None,
    bias_constraint: Any = None,
    kernel_axes: Axes | None = (None, "conv_in", "conv_out"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A 1-D convolution over NWC inputs, as ``tf.layers.conv1d``.

    The arguments are `conv2d`'s with one spatial axis: ``inputs`` is
    ``[batch, width, in]``, the kernel ``[k, in // groups, filters]`` (scope
    ``conv1d``, ...; ``kernel_axes`` default ``(None, "conv_in", "conv_out")``,
    the table in `jscope.layers`). ``padding`` may also be ``"CAUSAL"``
    (Keras): all padding on the left, so output step ``t`` sees inputs up to
    ``t`` only.

    Returns:
      An array ``[batch, out_width, filters]``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv1d(x, 4, 3, padding="causal")
      >>> x = jnp.ones((2, 7, 3))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv1d"]["kernel"].shape, js.apply(f, v, x).shape
      ((3, 3, 4), (2, 7, 4))
    """
    return _conv(1, "conv1d", **locals())


def conv3d(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation_rate: int | Sequence[int] = 1,
    groups: int = 1,
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
    data_format: str = "channels_last",
    activity_regularizer: Any = None,
    kernel_constraint: Any = None,
    bias_constraint: Any = None,
    kernel_axes: Axes | None = (None, None, None, "conv_in", "conv_out"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A 3-D convolution over NDHWC inputs, as ``tf.layers.conv3d``.

    The arguments are `conv2d`'s with three spatial axes: ``inputs`` is
    ``[batch, depth, height, width, in]``, the kernel
    ``[kd, kh, kw, in // groups, filters]`` (scope ``conv3d``, ...; ``kernel_axes``
    default ``(None, None, None, "conv_in", "conv_out")``, the table in
    `jscope.layers`).

    Returns:
      An array ``[batch, out_depth, out_height, out_width, filters]``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv3d(x, 4, (1, 2, 2), padding="VALID")
      >>> x = jnp.ones((1, 3, 4, 4, 2))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv3d"]["kernel"].shape, js.apply(f, v, x).shape
      ((1, 2, 2, 2, 4), (1, 3, 3, 3, 4))
    """
    return _conv(3, "conv3d", **locals())
