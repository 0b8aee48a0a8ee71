"""tf-slim's layers with weights: convolutions and ``fully_connected``.

Each opens ``variable_scope(scope, <TF1 default name>, reuse=reuse)`` and creates
``weights`` (and ``biases`` unless a ``normalizer_fn`` replaces them) with
TF1's shapes, dtypes (the inputs') and creation order, then applies
``normalizer_fn(outputs, **normalizer_params)`` inside the same scope (so a
`batch_norm` there is ``<scope>/BatchNorm``) and ``activation_fn`` (ReLU by
default, as in tf-slim). The functions are named as tf-slim's
(``convolution2d``, ...; ``conv2d`` is the same function), since `repeat` and
`stack` name their scopes after them.

Imports: `jscope.errors`, `jscope.initializers`, `scope`, `variables`, and this
package's `arg_scope` and `checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jscope import initializers
from jscope._src.scope import variable_scope
from jscope._src.slim import checks
from jscope._src.slim.arg_scope import add_arg_scope
from jscope._src.variables import get_variable

Activation = Callable[[jax.Array], jax.Array] | None
Normalizer = Callable[..., jax.Array] | None
Init = Callable[..., jax.Array] | None
Reg = Callable[[jax.Array], jax.Array] | None
Size = int | Sequence[int]

_XAVIER = initializers.glorot_uniform()
_ZEROS = initializers.zeros()
_NHWC = ("NHWC", "HWIO", "NHWC")


def _finish(
    y: jax.Array,
    num_outputs: int,
    *,
    first: bool,
    normalizer_fn: Normalizer,
    normalizer_params: Mapping[str, Any] | None,
    biases_initializer: Init,
    biases_regularizer: Reg,
    trainable: bool,
    activation_fn: Activation,
) -> jax.Array:
    """Biases (channels last), back to the data format, normalizer, activation."""
    if normalizer_fn is None and biases_initializer is not None:
        biases = get_variable(
            "biases", (num_outputs,), y.dtype, biases_initializer,
            biases_regularizer, trainable=trainable,
        )  # fmt: skip
        y = y + biases
    y = checks.from_nhwc(y, first)
    if normalizer_fn is not None:
        y = normalizer_fn(y, **(normalizer_params or {}))
    return y if activation_fn is None else activation_fn(y)


@add_arg_scope
def convolution2d(
    inputs: Any,
    num_outputs: int,
    kernel_size: Size,
    stride: Size = 1,
    padding: str = "SAME",
    data_format: str | None = None,
    rate: Size = 1,
    activation_fn: Activation = jax.nn.relu,
    normalizer_fn: Normalizer = None,
    normalizer_params: Mapping[str, Any] | None = None,
    weights_initializer: Init = _XAVIER,
    weights_regularizer: Reg = None,
    biases_initializer: Init = _ZEROS,
    biases_regularizer: Reg = None,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    scope: Any = None,
) -> jax.Array:
    """A 2-D convolution, then ``normalizer_fn`` or biases, then ReLU: slim.conv2d.

    Variables (scope ``Conv``, ``Conv_1``, ... or ``scope``): ``weights``
    ``[kh, kw, in, num_outputs]`` (Glorot uniform), then ``biases``
    ``[num_outputs]`` (zeros) unless ``normalizer_fn`` is given or
    ``biases_initializer`` is None. ``padding="SAME"`` pads as TF1 (the odd
    pixel at the end); ``rate`` dilates the kernel (atrous convolution). Unlike
    TF1, ``stride`` and ``rate`` may both exceed 1.

    Args:
      inputs: ``[batch, height, width, in]`` (``[batch, in, height, width]``
        with ``data_format="NCHW"``), floating point.
      num_outputs: The number of output channels.
      kernel_size: An int or ``[kh, kw]``.
      stride: An int or ``[sh, sw]``.
      padding: ``"SAME"`` or ``"VALID"``.
      data_format: None or ``"NHWC"`` (channels last), or ``"NCHW"``.
      rate: An int or ``[rh, rw]``: the dilation rate.
      activation_fn: Applied last; None for linear. Defaults to ReLU.
      normalizer_fn: E.g. `batch_norm`; replaces the biases.
      normalizer_params: Keyword arguments for ``normalizer_fn``.
      weights_initializer: ``(key, shape, dtype) -> array``; Glorot uniform.
      weights_regularizer: ``(weights) -> scalar`` for
        `js.get_regularization_loss`, e.g. `l2_regularizer`.
      biases_initializer: None for no biases; zeros by default.
      biases_regularizer: ``(biases) -> scalar``.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None (see `jscope.slim`).
      outputs_collections: Only None (see `jscope.slim`).
      trainable: Whether the variables go to ``params`` (else ``state``).
      scope: The variable scope's name (or a `js.VariableScope`).

    Returns:
      ``[batch, out_height, out_width, num_outputs]`` in ``data_format``.

    Raises:
      LayerArgumentError: A wrong input rank, padding, data format or size.
      LayerTypeError: Non-float inputs, or a size that is not an int.
      UnsupportedArgumentError: Collections other than None.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.conv2d(x, 8, [3, 3], stride=2)
      >>> v = js.init(f, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
      >>> jax.tree.map(jnp.shape, v)
      {'params': {'Conv': {'biases': (8,), 'weights': (3, 3, 3, 8)}}}
    """
    with variable_scope(scope, default_name="Conv", reuse=reuse):
        op = "conv2d"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        first = checks.channels_first(data_format, op, allow_none=True)
        x = checks.to_nhwc(checks.inputs(inputs, op, (4,)), first)
        num_outputs = checks.positive_int(num_outputs, "num_outputs", op)
        kernel = checks.ints(kernel_size, 2, "kernel_size", op)
        strides = checks.ints(stride, 2, "stride", op)
        dilation = checks.ints(rate, 2, "rate", op)
        pad = checks.padding(padding, op)
        weights = get_variable(
            "weights", (*kernel, x.shape[-1], num_outputs), x.dtype,
            weights_initializer, weights_regularizer, trainable=trainable,
        )  # fmt: skip
        y = lax.conv_general_dilated(
            x, weights, strides, pad, rhs_dilation=dilation, dimension_numbers=_NHWC
        )
        return _finish(
            y, num_outputs, first=first, normalizer_fn=normalizer_fn,
            normalizer_params=normalizer_params,
            biases_initializer=biases_initializer,
            biases_regularizer=biases_regularizer, trainable=trainable,
            activation_fn=activation_fn,
        )  # fmt: skip


conv2d = convolution2d


def _transpose_pads(size: int, k: int, s: int, pad: str) -> tuple[int, int]:
    """The (low, high) padding of the dilated input that TF1's output size needs.

    TF1's transposed convolution makes ``size * s`` outputs with SAME padding
    and ``size * s + max(k - s, 0)`` with VALID: the gradient of a convolution
    of that output with TF1's padding for it (``max(k - s, 0)`` split with the
    odd pixel at the end for SAME, none for VALID).
    """
    before = max(k - s, 0) // 2 if pad == "SAME" else 0
    out = size * s if pad == "SAME" else size * s + max(k - s, 0)
    low = k - 1 - before
    return low, out - (size - 1) * s - 1 + k - 1 - low


@add_arg_scope
def convolution2d_transpose(
    inputs: Any,
    num_outputs: int,
    kernel_size: Size,
    stride: Size = 1,
    padding: str = "SAME",
    data_format: str = "NHWC",
    activation_fn: Activation = jax.nn.relu,
    normalizer_fn: Normalizer = None,
    normalizer_params: Mapping[str, Any] | None = None,
    weights_initializer: Init = _XAVIER,
    weights_regularizer: Reg = None,
    biases_initializer: Init = _ZEROS,
    biases_regularizer: Reg = None,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    scope: Any = None,
) -> jax.Array:
    """A transposed 2-D convolution, as slim.conv2d_transpose.

    Variables (scope ``Conv2d_transpose``, ... or ``scope``): ``weights``
    ``[kh, kw, num_outputs, in]`` (TF1's transposed layout), then ``biases``
    unless ``normalizer_fn`` is given or ``biases_initializer`` is None. The
    output has ``in_size * stride`` pixels per axis with ``"SAME"`` and
    ``in_size * stride + max(k - stride, 0)`` with ``"VALID"``, as TF1.

    Args:
      inputs: ``[batch, height, width, in]`` (or NCHW), floating point.
      num_outputs: The number of output channels.
      kernel_size: An int or ``[kh, kw]``.
      stride: An int or ``[sh, sw]``: the upsampling factor.
      padding: ``"SAME"`` or ``"VALID"``.
      data_format: ``"NHWC"`` or ``"NCHW"``.
      activation_fn: Applied last; None for linear. Defaults to ReLU.
      normalizer_fn: E.g. `batch_norm`; replaces the biases.
      normalizer_params: Keyword arguments for ``normalizer_fn``.
      weights_initializer: Glorot uniform by default.
      weights_regularizer: ``(weights) -> scalar``.
      biases_initializer: None for no biases; zeros by default.
      biases_regularizer: ``(biases) -> scalar``.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None.
      outputs_collections: Only None.
      trainable: Whether the variables go to ``params`` (else ``state``).
      scope: The variable scope's name.

    Returns:
      ``[batch, out_height, out_width, num_outputs]`` in ``data_format``.

    Raises:
      LayerArgumentError: A wrong input rank, padding, data format or size.
      LayerTypeError: Non-float inputs, or a size that is not an int.
      UnsupportedArgumentError: Collections other than None.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.conv2d_transpose(x, 2, 3, stride=2)
      >>> x = jnp.ones((1, 4, 4, 3))
      >>> js.apply(f, js.init(f, jax.random.key(0), x), x).shape
      (1, 8, 8, 2)
    """
    with variable_scope(scope, default_name="Conv2d_transpose", reuse=reuse):
        op = "conv2d_transpose"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        first = checks.channels_first(data_format, op)
        x = checks.to_nhwc(checks.inputs(inputs, op, (4,)), first)
        num_outputs = checks.positive_int(num_outputs, "num_outputs", op)
        kernel = checks.ints(kernel_size, 2, "kernel_size", op)
        strides = checks.ints(stride, 2, "stride", op)
        pad = checks.padding(padding, op)
        weights = get_variable(
            "weights", (*kernel, num_outputs, x.shape[-1]), x.dtype,
            weights_initializer, weights_regularizer, trainable=trainable,
        )  # fmt: skip
        pads = [
            _transpose_pads(x.shape[1 + i], kernel[i], strides[i], pad)
            for i in range(2)
        ]
        y = lax.conv_general_dilated(
            x,
            lax.rev(weights, (0, 1)),
            (1, 1),
            pads,
            lhs_dilation=strides,
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
        )
        return _finish(
            y, num_outputs, first=first, normalizer_fn=normalizer_fn,
            normalizer_params=normalizer_params,
            biases_initializer=biases_initializer,
            biases_regularizer=biases_regularizer, trainable=trainable,
            activation_fn=activation_fn,
        )  # fmt: skip


conv2d_transpose = convolution2d_transpose


@add_arg_scope
def separable_convolution2d(
    inputs: Any,
    num_outputs: int | None,
    kernel_size: Size,
    depth_multiplier: int = 1,
    stride: Size = 1,
    padding: str = "SAME",
    data_format: str = "NHWC",
    rate: Size = 1,
    activation_fn: Activation = jax.nn.relu,
    normalizer_fn: Normalizer = None,
    normalizer_params: Mapping[str, Any] | None = None,
    weights_initializer: Init = _XAVIER,
    pointwise_initializer: Init = None,
    weights_regularizer: Reg = None,
    biases_initializer: Init = _ZEROS,
    biases_regularizer: Reg = None,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    scope: Any = None,
) -> jax.Array:
    """A depthwise-separable 2-D convolution, as slim.separable_conv2d.

    Variables (scope ``SeparableConv2d``, ... or ``scope``):
    ``depthwise_weights`` ``[kh, kw, in, depth_multiplier]``, then (unless
    ``num_outputs`` is None) ``pointwise_weights`` ``[1, 1, in *
    depth_multiplier, num_outputs]``, then ``biases`` unless ``normalizer_fn``
    is given or ``biases_initializer`` is None. With ``num_outputs=None`` only
    the depthwise convolution runs (``in * depth_multiplier`` outputs, input
    channel ``c`` giving outputs ``c * depth_multiplier + m``). ``stride`` and
    ``rate`` apply to the depthwise step; the pointwise step is a 1x1
    convolution.

    Args:
      inputs: ``[batch, height, width, in]`` (or NCHW), floating point.
      num_outputs: The number of output channels, or None (depthwise only).
      kernel_size: An int or ``[kh, kw]`` of the depthwise kernel.
      depth_multiplier: Depthwise outputs per input channel.
      stride: An int or ``[sh, sw]``.
      padding: ``"SAME"`` or ``"VALID"``.
      data_format: ``"NHWC"`` or ``"NCHW"``.
      rate: An int or ``[rh, rw]``: the depthwise dilation rate.
      activation_fn: Applied last; None for linear. Defaults to ReLU.
      normalizer_fn: E.g. `batch_norm`; replaces the biases.
      normalizer_params: Keyword arguments for ``normalizer_fn``.
      weights_initializer: The depthwise weights' (and, by default, the
        pointwise weights') initializer; Glorot uniform.
      pointwise_initializer: The pointwise weights' initializer; None uses
        ``weights_initializer``.
      weights_regularizer: Applied to both weights.
      biases_initializer: None for no biases; zeros by default.
      biases_regularizer: ``(biases) -> scalar``.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None.
      outputs_collections: Only None.
      trainable: Whether the variables go to ``params`` (else ``state``).
      scope: The variable scope's name.

    Returns:
      The convolved array in ``data_format``.

    Raises:
      LayerArgumentError: A wrong input rank, padding, data format or size.
      LayerTypeError: Non-float inputs, or a size that is not an int.
      UnsupportedArgumentError: Collections other than None.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.separable_conv2d(x, 8, 3, depth_multiplier=2)
      >>> v = js.init(f, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
      >>> [k for k in js.flatten(v)]
      ['params/SeparableConv2d/depthwise_weights',
       'params/SeparableConv2d/pointwise_weights', 'params/SeparableConv2d/biases']
    """
    with variable_scope(scope, default_name="SeparableConv2d", reuse=reuse):
        op = "separable_conv2d"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        first = checks.channels_first(data_format, op)
        x = checks.to_nhwc(checks.inputs(inputs, op, (4,)), first)
        mult = checks.positive_int(depth_multiplier, "depth_multiplier", op)
        if num_outputs is not None:
            num_outputs = checks.positive_int(num_outputs, "num_outputs", op)
        kernel = checks.ints(kernel_size, 2, "kernel_size", op)
        strides = checks.ints(stride, 2, "stride", op)
        dilation = checks.ints(rate, 2, "rate", op)
        pad = checks.padding(padding, op)
        channels = x.shape[-1]
        depthwise = get_variable(
            "depthwise_weights", (*kernel, channels, mult), x.dtype,
            weights_initializer, weights_regularizer, trainable=trainable,
        )  # fmt: skip
        y = lax.conv_general_dilated(
            x,
            depthwise.reshape(*kernel, 1, channels * mult),
            strides,
            pad,
            rhs_dilation=dilation,
            dimension_numbers=_NHWC,
            feature_group_count=channels,
        )
        if num_outputs is None:
            num_outputs = channels * mult
        else:
            pointwise = get_variable(
                "pointwise_weights", (1, 1, channels * mult, num_outputs), x.dtype,
                pointwise_initializer or weights_initializer, weights_regularizer,
                trainable=trainable,
            )  # fmt: skip
            y = lax.conv_general_dilated(
                y, pointwise, (1, 1), "VALID", dimension_numbers=_NHWC
            )
        return _finish(
            y, num_outputs, first=first, normalizer_fn=normalizer_fn,
            normalizer_params=normalizer_params,
            biases_initializer=biases_initializer,
            biases_regularizer=biases_regularizer, trainable=trainable,
            activation_fn=activation_fn,
        )  # fmt: skip


separable_conv2d = separable_convolution2d


@add_arg_scope
def fully_connected(
    inputs: Any,
    num_outputs: int,
    activation_fn: Activation = jax.nn.relu,
    normalizer_fn: Normalizer = None,
    normalizer_params: Mapping[str, Any] | None = None,
    weights_initializer: Init = _XAVIER,
    weights_regularizer: Reg = None,
    biases_initializer: Init = _ZEROS,
    biases_regularizer: Reg = None,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    scope: Any = None,
) -> jax.Array:
    """A fully connected layer over the last axis, then ReLU: slim.fully_connected.

    Variables (scope ``fully_connected``, ``fully_connected_1``, ... or
    ``scope``): ``weights`` ``[in, num_outputs]`` (Glorot uniform), then
    ``biases`` unless ``normalizer_fn`` is given or ``biases_initializer`` is
    None. Inputs of rank above 2 are multiplied on their last axis, as TF1.

    Args:
      inputs: ``[batch, ..., in]``, floating point, rank >= 2.
      num_outputs: The number of outputs.
      activation_fn: Applied last; None for linear. Defaults to ReLU.
      normalizer_fn: E.g. `batch_norm`; replaces the biases.
      normalizer_params: Keyword arguments for ``normalizer_fn``.
      weights_initializer: Glorot uniform by default.
      weights_regularizer: ``(weights) -> scalar``.
      biases_initializer: None for no biases; zeros by default.
      biases_regularizer: ``(biases) -> scalar``.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None.
      outputs_collections: Only None.
      trainable: Whether the variables go to ``params`` (else ``state``).
      scope: The variable scope's name.

    Returns:
      ``[batch, ..., num_outputs]``.

    Raises:
      LayerArgumentError: Inputs of rank below 2, or ``num_outputs`` below 1.
      LayerTypeError: Non-float inputs, or ``num_outputs`` not an int.
      UnsupportedArgumentError: Collections other than None.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.fully_connected(x, 3, scope="fc1")
      >>> v = js.init(f, jax.random.key(0), jnp.ones((2, 4)))
      >>> jax.tree.map(jnp.shape, v)
      {'params': {'fc1': {'biases': (3,), 'weights': (4, 3)}}}
    """
    with variable_scope(scope, default_name="fully_connected", reuse=reuse):
        op = "fully_connected"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        x = checks.inputs(inputs, op)
        num_outputs = checks.positive_int(num_outputs, "num_outputs", op)
        weights = get_variable(
            "weights", (x.shape[-1], num_outputs), x.dtype, weights_initializer,
            weights_regularizer, trainable=trainable,
        )  # fmt: skip
        y = jnp.matmul(x, weights)
        return _finish(
            y, num_outputs, first=False, normalizer_fn=normalizer_fn,
            normalizer_params=normalizer_params,
            biases_initializer=biases_initializer,
            biases_regularizer=biases_regularizer, trainable=trainable,
            activation_fn=activation_fn,
        )  # fmt: skip
