"""Transposed convolutions, ``tf.layers.conv2d_transpose`` and ``conv3d_transpose``.

Kernels have TF1's layout ``[*kernel_size, filters, in]`` (output channels
before input channels), so checkpoints carry over from TF1.
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
from jscope.layers._conv_common import TRANSPOSE_KERNEL_AXES
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

# ---------------------------------------------------------- transposed convolutions


def _transpose_pads(
    size: int, k: int, s: int, pad: Any, out_pad: int | None, kind: str
) -> tuple[int, int]:
    """Padding of the dilated-input convolution computing TF1's transpose.

    The output length follows Keras's ``deconv_output_length``; the result is the
    gradient of the forward convolution (stride ``s``, padding ``pad``) that maps
    that length back to ``size``, exactly as TF1's ``conv2d_transpose``.
    """
    if pad == "SAME":
        if out_pad is None:
            out = size * s
        else:
            out = (size - 1) * s + k - 2 * (k // 2) + out_pad
        total = max((-(-out // s) - 1) * s + k - out, 0)
        lo, hi = total // 2, total - total // 2
    elif pad == "VALID":
        extra = max(k - s, 0) if out_pad is None else k - s + out_pad
        out = size * s + extra
        lo = hi = 0
    else:
        lo, hi = pad
        out = (size - 1) * s + k - lo - hi + (out_pad or 0)
    rest = out + lo + hi - k - (size - 1) * s
    if out <= 0 or not 0 <= rest < s:
        raise _checks.error(
            LayerArgumentError,
            kind,
            f"no output length maps back to input length {size} with kernel {k}, "
            f"stride {s}, padding {pad!r} and output_padding {out_pad}; "
            f"output_padding must be smaller than the stride ({s}). Pass "
            "output_padding=None, or another padding or kernel size.",
        )
    return k - 1 - lo, k - 1 - hi + rest


def _conv_transpose(
    n: int,
    kind: str,
    inputs: ArrayLike,
    filters: int,
    kernel_size: Any,
    strides: Any,
    padding: Any,
    output_padding: Any,
    dilation_rate: Any,
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
        kernel_size = _checks.ints(kernel_size, n, "kernel_size", kind)
        strides = _checks.ints(strides, n, "strides", kind)
        _checks.not_data_format(output_padding, "output_padding", kind)
        dilation = _checks.ints(dilation_rate, n, "dilation_rate", kind)
        pad = _checks.padding(padding, n, kind)
        if output_padding is None:
            out_pads = (None,) * n
        else:
            out_pads = _checks.ints(output_padding, n, "output_padding", kind, 0)
        x = jnp.asarray(inputs)
        _checks.rank(x, kind, str(n + 2), _checks.layout(n, first))
        x = _checks.to_channels_last(x, first)
        eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
        pads = [
            _transpose_pads(
                x.shape[1 + i],
                eff[i],
                strides[i],
                pad if isinstance(pad, str) else pad[i],
                out_pads[i],
                kind,
            )  # fmt: skip
            for i in range(n)
        ]
        shape = (*kernel_size, filters, x.shape[-1])
        k_axes, b_axes = _conv_common.conv_axes(
            kernel_axes, bias_axes, shape, filters, TRANSPOSE_KERNEL_AXES[n], kind
        )
        kernel = js.get_variable(
            "kernel", shape, dtype, kernel_initializer, kernel_regularizer,
            trainable=trainable, axes=k_axes,
        )  # fmt: skip
        y = lax.conv_general_dilated(
            x.astype(kernel.dtype),
            lax.rev(kernel, tuple(range(n))),
            window_strides=(1,) * n,
            padding=pads,
            lhs_dilation=strides,
            rhs_dilation=dilation,
            dimension_numbers=_conv_common.dimension_numbers(n, "OI"),
            precision=precision,
        )
        y = _conv_common.bias_act(
            y, filters, use_bias, bias_initializer, bias_regularizer, trainable,
            dtype, activation, b_axes,
        )  # fmt: skip
        return _checks.to_channels_first(y, first)


def conv2d_transpose(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    output_padding: int | Sequence[int] | None = None,
    dilation_rate: int | Sequence[int] = 1,
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
    kernel_axes: Axes | None = (None, None, "conv_out", "conv_in"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A transposed 2-D convolution over NHWC inputs, ``tf.layers.conv2d_transpose``.

    The result is TF1's: the gradient, with respect to its input, of a
    `conv2d` with the same kernel, strides, dilation and padding whose input has
    the output's size. Variables (scope ``conv2d_transpose``, ... or ``name``):
    ``kernel`` of TF1's shape ``[kh, kw, filters, in]`` (output channels before
    input channels) and ``bias`` of shape ``[filters]``.

    The output size per spatial axis is Keras's rule, with ``k`` the dilated
    kernel size ``(kernel_size - 1) * dilation_rate + 1``:

    - ``output_padding=None``: ``"SAME"`` gives ``in * stride``, ``"VALID"``
      ``in * stride + max(k - stride, 0)``;
    - with ``output_padding=p`` (each ``p < stride``): ``"SAME"`` gives
      ``(in - 1) * stride + k - 2 * (k // 2) + p``, ``"VALID"``
      ``(in - 1) * stride + k + p``;
    - explicit ``(low, high)`` pairs are the padding of that forward
      convolution: ``(in - 1) * stride + k - low - high + p``.

    Args:
      inputs: An array ``[batch, height, width, in]`` (channels last).
      filters: The number of output channels.
      kernel_size: An int or 2 ints.
      strides: An int or 2 ints (the upsampling factor).
      padding: ``"SAME"``, ``"VALID"`` (any case) or 2 ``(low, high)`` pairs.
      output_padding: None, or an int or 2 ints, each smaller than the stride,
        that pick the output size among those mapping back to ``in``.
      dilation_rate: An int or 2 ints.
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
      name: The variable scope's name; None picks ``conv2d_transpose``, ...
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
        table in `jscope.layers`: ``(None, None, "conv_out", "conv_in")``, the
        kernel's channels being ``[filters, in]``. None: no names.
      bias_axes: The bias's logical axes, likewise (``("conv_out",)``).

    Returns:
      An array ``[batch, out_height, out_width, filters]``.

    Raises:
      LayerArgumentError: Wrong input rank, unknown padding, non-positive sizes,
        an ``output_padding`` not smaller than the stride, or axes that do not
        name each dimension of their variable (a ``ValueError``).
      LayerTypeError: A size that is not an int, axes that are not names, or
        an argument of TF1 that jscope does not support (a
        ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv2d_transpose(x, 4, 3, strides=2)
      >>> x = jnp.ones((2, 5, 5, 3))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv2d_transpose"]["kernel"].shape
      (3, 3, 4, 3)
      >>> js.apply(f, v, x).shape
      (2, 11, 11, 4)
    """
    return _conv_transpose(2, "conv2d_transpose", **locals())


def conv1d_transpose(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    output_padding: int | Sequence[int] | None = None,
    dilation_rate: int | Sequence[int] = 1,
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
    kernel_axes: Axes | None = (None, "conv_out", "conv_in"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A transposed 1-D convolution over NWC inputs (Keras's ``Conv1DTranspose``).

    The arguments and size rules are `conv2d_transpose`'s with one spatial axis:
    ``inputs`` is ``[batch, width, in]``, the kernel ``[k, filters, in]`` (scope
    ``conv1d_transpose``, ...; ``kernel_axes`` default ``(None, "conv_out",
    "conv_in")``, the table in `jscope.layers`).

    Returns:
      An array ``[batch, out_width, filters]``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv1d_transpose(x, 2, 4, strides=2, padding="SAME")
      >>> x = jnp.ones((1, 5, 3))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv1d_transpose"]["kernel"].shape, js.apply(f, v, x).shape
      ((4, 2, 3), (1, 10, 2))
    """
    return _conv_transpose(1, "conv1d_transpose", **locals())


def conv3d_transpose(
    inputs: ArrayLike,
    filters: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    output_padding: int | Sequence[int] | None = None,
    dilation_rate: int | Sequence[int] = 1,
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
    kernel_axes: Axes | None = (None, None, None, "conv_out", "conv_in"),
    bias_axes: Axes | None = ("conv_out",),
) -> jax.Array:
    """A transposed 3-D convolution, as ``tf.layers.conv3d_transpose``.

    The arguments and size rules are `conv2d_transpose`'s with three spatial
    axes: ``inputs`` is ``[batch, depth, height, width, in]``, the kernel
    ``[kd, kh, kw, filters, in]`` (scope ``conv3d_transpose``, ...; ``kernel_axes``
    default ``(None, None, None, "conv_out", "conv_in")``, the table in
    `jscope.layers`).

    Returns:
      An array ``[batch, out_depth, out_height, out_width, filters]``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda x: js.layers.conv3d_transpose(x, 2, 2, strides=2)
      >>> x = jnp.ones((1, 2, 3, 3, 4))
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v["params"]["conv3d_transpose"]["kernel"].shape, js.apply(f, v, x).shape
      ((2, 2, 2, 2, 4), (1, 4, 6, 6, 2))
    """
    return _conv_transpose(3, "conv3d_transpose", **locals())
