"""The depthwise-separable convolution, ``tf.layers.separable_conv2d``."""

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
from jscope.layers._conv_common import BIAS_AXES
from jscope.typing import ArrayLike, Initializer, Regularizer, Reuse

_DEPTHWISE_AXES = (None, None, "conv_in", None)
"""`separable_conv2d`'s default ``depthwise_kernel_axes``."""
_POINTWISE_AXES = (None, None, "conv_in", "conv_out")
"""`separable_conv2d`'s default ``pointwise_kernel_axes``."""


def separable_conv2d(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = "valid",
    data_format: str = "channels_last",
    dilation_rate: int | Sequence[int] = (1, 1),
    depth_multiplier: int = 1,
    activation: Callable[[jax.Array], jax.Array] | None = None,
    use_bias: bool = True,
    depthwise_initializer: Initializer | None = None,
    pointwise_initializer: Initializer | None = None,
    bias_initializer: Initializer | None = js.initializers.zeros,
    depthwise_regularizer: Regularizer | None = None,
    pointwise_regularizer: Regularizer | None = None,
    bias_regularizer: Regularizer | None = None,
    activity_regularizer: Any = None,
    depthwise_constraint: Any = None,
    pointwise_constraint: Any = None,
    bias_constraint: Any = None,
    trainable: bool = True,
    name: str | None = None,
    reuse: Reuse = None,
    precision: lax.PrecisionLike = None,
    depthwise_kernel_axes: Axes | None = (None, None, "conv_in", None),
    pointwise_kernel_axes: Axes | None = (None, None, "conv_in", "conv_out"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A depthwise then pointwise 2-D convolution, ``tf.layers.separable_conv2d``.

    TF1's signature, in TF1's positional order. Each input channel is convolved
    with ``depth_multiplier`` filters of its own (``depthwise_kernel``,
    ``[kh, kw, in, depth_multiplier]``), then a 1x1 convolution mixes the
    ``in * depth_multiplier`` channels into ``filters`` (``pointwise_kernel``,
    ``[1, 1, in * depth_multiplier, filters]``), then ``bias`` (``[filters]``)
    is added: TF1's variables, names and creation order, in the scope
    ``separable_conv2d``, ``separable_conv2d_1``, ... or ``name``. Strides and
    padding apply to the depthwise step. Unlike TF1, strides and dilation may
    both exceed 1 at once.

    Args:
      inputs: An array ``[batch, height, width, in]``, or ``[batch, in,
        height, width]`` with ``data_format="channels_first"``.
      filters: The number of output channels.
      kernel_size: An int or 2 ints, the depthwise window.
      strides: An int or 2 ints.
      padding: ``"valid"`` or ``"same"`` (any case; TF1's rules) or 2
        ``(low, high)`` pairs.
      data_format: ``"channels_last"`` (default) or ``"channels_first"`` (the
        output likewise); the kernels' layouts are the same for both.
      dilation_rate: An int or 2 ints (atrous depthwise convolution).
      depth_multiplier: The depthwise filters per input channel.
      activation: Applied to the result; None for linear.
      use_bias: Whether to add ``bias``.
      depthwise_initializer: None uses the scope's, else Glorot uniform with
        TF1's convolution fans.
      pointwise_initializer: Likewise.
      bias_initializer: The bias's initializer (zeros).
      depthwise_regularizer: ``(kernel) -> scalar`` for
        `js.get_regularization_loss`.
      pointwise_regularizer: Likewise.
      bias_regularizer: ``(bias) -> scalar``, likewise.
      activity_regularizer: TF1's; not supported (a ``TypeError`` that says to
        add the penalty to the loss).
      depthwise_constraint: TF1's; not supported (a ``TypeError`` that says to
        project the params after the optimizer step).
      pointwise_constraint: Likewise.
      bias_constraint: Likewise.
      trainable: Whether the variables go to ``params`` (else ``state``).
      name: The variable scope's name; None picks ``separable_conv2d``, ...
      reuse: ``True`` or `js.AUTO_REUSE` shares an earlier call's variables.
      precision: Passed to `jax.lax.conv_general_dilated`.
      depthwise_kernel_axes: ``depthwise_kernel``'s logical axes for sharding
        rules, one name (or None) per dimension, as `js.get_variable`'s
        ``axes``; defaults from the table in `jscope.layers`. None: no names.
      pointwise_kernel_axes: ``pointwise_kernel``'s logical axes, likewise.
      bias_axes: The bias's logical axes, likewise.

    Returns:
      An array ``[batch, out_height, out_width, filters]`` (channels first
      with ``data_format="channels_first"``).

    Raises:
      LayerArgumentError: Wrong input rank, unknown padding or data format,
        non-positive sizes, or axes that do not name each dimension of their
        variable (a ``ValueError``).
      LayerTypeError: A size that is not an int, axes that are not names, or
        a constraint or activity regularizer (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.separable_conv2d(x, 8, 3, depth_multiplier=2)
      >>> x = jnp.ones((1, 5, 5, 3))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> {p: a.shape for p, a in js.flatten(v).items()}
      {'params/separable_conv2d/depthwise_kernel': (3, 3, 3, 2),
       'params/separable_conv2d/pointwise_kernel': (1, 1, 6, 8),
       'params/separable_conv2d/bias': (8,)}
      >>> js.apply(f, v, x).shape
      (1, 3, 3, 8)
    """
    kind = "separable_conv2d"
    with js.variable_scope(name, default_name=kind, reuse=reuse):
        _checks.unsupported(
            kind, activity_regularizer=activity_regularizer,
            depthwise_constraint=depthwise_constraint,
            pointwise_constraint=pointwise_constraint,
            bias_constraint=bias_constraint,
        )  # fmt: skip
        first = _checks.channels_first(data_format, kind)
        filters = _checks.positive_int(filters, "filters", kind)
        multiplier = _checks.positive_int(depth_multiplier, "depth_multiplier", kind)
        kernel_size = _checks.ints(kernel_size, 2, "kernel_size", kind)
        strides = _checks.ints(strides, 2, "strides", kind)
        dilation = _checks.ints(dilation_rate, 2, "dilation_rate", kind)
        pad = _checks.padding(padding, 2, kind)
        x = jnp.asarray(inputs)
        _checks.rank(x, kind, "4", _checks.layout(2, first))
        x = _checks.to_channels_last(x, first)
        channels = x.shape[-1]
        if channels == 0:
            raise _checks.error(
                LayerArgumentError, kind, "needs at least one input channel."
            )
        d_shape = (*kernel_size, channels, multiplier)
        p_shape = (1, 1, channels * multiplier, filters)
        d_axes = _checks.axes(
            depthwise_kernel_axes, d_shape, variable="depthwise_kernel",
            what="depthwise_kernel_axes", layer=kind, default=_DEPTHWISE_AXES,
        )  # fmt: skip
        p_axes = _checks.axes(
            pointwise_kernel_axes, p_shape, variable="pointwise_kernel",
            what="pointwise_kernel_axes", layer=kind, default=_POINTWISE_AXES,
        )  # fmt: skip
        b_axes = _checks.axes(
            bias_axes, (filters,), variable="bias", what="bias_axes", layer=kind,
            default=BIAS_AXES,
        )  # fmt: skip
        depthwise = js.get_variable(
            "depthwise_kernel", d_shape, None, depthwise_initializer,
            depthwise_regularizer, trainable=trainable, axes=d_axes,
        )  # fmt: skip
        pointwise = js.get_variable(
            "pointwise_kernel", p_shape, None, pointwise_initializer,
            pointwise_regularizer, trainable=trainable, axes=p_axes,
        )  # fmt: skip
        numbers = _conv_common.dimension_numbers(2, "IO")
        # Output channel c * multiplier + m of the depthwise step is input
        # channel c's m-th filter, as in TF1's depthwise_conv2d.
        y = lax.conv_general_dilated(
            x.astype(depthwise.dtype),
            depthwise.reshape(*kernel_size, 1, channels * multiplier),
            window_strides=strides,
            padding=pad,
            rhs_dilation=dilation,
            dimension_numbers=numbers,
            feature_group_count=channels,
            precision=precision,
        )
        y = lax.conv_general_dilated(
            y.astype(pointwise.dtype),
            pointwise,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=numbers,
            precision=precision,
        )
        y = _conv_common.bias_act(
            y, filters, use_bias, bias_initializer, bias_regularizer, trainable,
            None, activation, b_axes,
        )  # fmt: skip
        return _checks.to_channels_first(y, first)
