"""What the convolutions share: default logical axes, layouts, bias and activation.

Public API only, like the layers; imported by `_conv`, `_conv_transpose` and
`_separable`.
"""

from __future__ import annotations

from typing import Any

import jax

import jscope as js
from jscope.layers import _checks

# The default logical axes (the table in `jscope.layers`): spatial dimensions
# unnamed, then the channels; a transposed kernel has its channels swapped.
KERNEL_AXES = {n: (None,) * n + ("conv_in", "conv_out") for n in (1, 2, 3)}
TRANSPOSE_KERNEL_AXES = {n: (None,) * n + ("conv_out", "conv_in") for n in (1, 2, 3)}
BIAS_AXES = ("conv_out",)


def dimension_numbers(n: int, kernel: str) -> tuple[str, str, str]:
    """The channels-last layouts of `jax.lax.conv_general_dilated`; kernel "IO"/"OI"."""
    s = _checks.SPATIAL[n]
    return f"N{s}C", f"{s}{kernel}", f"N{s}C"


def bias_act(
    y: jax.Array, units: int, use_bias: bool, init: Any, reg: Any,
    trainable: bool, dtype: Any, activation: Any, axes: Any,
) -> jax.Array:  # fmt: skip
    """Adds the variable ``bias`` of shape ``[units]`` (if ``use_bias``), activates."""
    if use_bias:
        bias = js.get_variable(
            "bias", (units,), dtype, init, reg, trainable=trainable, axes=axes
        )
        y = y + bias.astype(y.dtype)
    return y if activation is None else activation(y)


def conv_axes(
    kernel_axes: Any, bias_axes: Any, kernel_shape: tuple[int, ...], filters: int,
    default: Any, kind: str,
) -> tuple[Any, Any]:  # fmt: skip
    """The checked ``(kernel_axes, bias_axes)`` of a convolution ``kind``."""
    k_axes = _checks.axes(
        kernel_axes, kernel_shape, variable="kernel", what="kernel_axes",
        layer=kind, default=default,
    )  # fmt: skip
    b_axes = _checks.axes(
        bias_axes, (filters,), variable="bias", what="bias_axes", layer=kind,
        default=BIAS_AXES,
    )  # fmt: skip
    return k_axes, b_axes
