"""Normalization layers: `layer_norm`, `rms_norm`, `group_norm`.

Statistics are computed in float32 (or wider, for float64 inputs) whatever the
dtype of the inputs; the result has the dtype of the layer's variables (as
``dense`` computes in its kernel's dtype, so a scope-level ``dtype`` or a custom
getter that casts variables also sets the output dtype), or the inputs' dtype
when the layer has none.

Variances are the biased ones (mean squared deviation), as ``tf.nn.moments``,
Keras's non-fused batch normalization and Flax compute them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers import _norm_common as nc
from jscope.layers._checks import FEATURE_AXES, Axes
from jscope.layers._norm_common import Axis
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

# ------------------------------------------------------------------ layer_norm


def layer_norm(
    inputs: ArrayLike,
    axis: Axis = -1,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer: Initializer | None = None,
    gamma_initializer: Initializer | None = None,
    beta_regularizer: Regularizer | None = None,
    gamma_regularizer: Regularizer | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    reuse: Reuse = None,
    gamma_axes: Axes | None = FEATURE_AXES,
    beta_axes: Axes | None = FEATURE_AXES,
) -> jax.Array:
    """Layer normalization (Ba et al., 2016), as Keras ``LayerNormalization``.

    Normalizes ``inputs`` over ``axis`` to zero mean and unit variance, then
    scales by ``gamma`` and shifts by ``beta``, both shaped like the normalized
    axes. Variables: ``layer_normalization/gamma`` and ``layer_normalization/beta``.

    ``epsilon`` defaults to Keras's 1e-3 (the layer whose name and variables this
    one takes); Flax's ``LayerNorm`` uses 1e-6 and TF1's
    ``tf.contrib.layers.layer_norm`` 1e-12: pass ``epsilon=`` to match them.

    Args:
      inputs: A floating-point array.
      axis: The axis or axes to normalize over (and that carry the variables).
      epsilon: Added to the variance.
      center: Whether to add ``beta``.
      scale: Whether to multiply by ``gamma``.
      beta_initializer: Defaults to zeros.
      gamma_initializer: Defaults to ones.
      beta_regularizer: ``(beta) -> scalar`` for `js.get_regularization_loss`.
      gamma_regularizer: ``(gamma) -> scalar``.
      dtype: The variables' dtype; defaults to the scope's, else float32.
      name: The variable scope; defaults to ``layer_normalization``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      gamma_axes: ``gamma``'s logical axes (`js.get_variable`'s ``axes``), one
        per normalized axis; default ``(None, ..., "embed")`` (the table in
        `jscope.layers`). None: no names.
      beta_axes: ``beta``'s logical axes, likewise.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      LayerArgumentError: ``axis`` is out of range or repeats an axis, or axes
        do not name each dimension of their variable (a ``ValueError``).
      LayerTypeError: ``inputs`` are not floating point, ``axis`` is not ints,
        or axes are not names (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> f = lambda x: js.layers.layer_norm(x)
      >>> x = jnp.array([[1.0, 2.0, 3.0]])
      >>> v = js.init(f, jax.random.key(0), x)
      >>> js.flatten(v)
      {'params/layer_normalization/gamma': Array([1., 1., 1.], dtype=float32),
       'params/layer_normalization/beta': Array([0., 0., 0.], dtype=float32)}
      >>> np.asarray(js.apply(f, v, x)).round(3)
      array([[-1.224,  0.   ,  1.224]], dtype=float32)
    """
    with js.variable_scope(name, default_name="layer_normalization", reuse=reuse):
        x = nc.float_inputs(inputs, "layer_norm")
        axes = nc.norm_axes(axis, x.ndim, "layer_norm")
        gamma, beta = nc.gamma_beta(
            tuple(x.shape[a] for a in axes),
            center,
            scale,
            (gamma_initializer, beta_initializer),
            (gamma_regularizer, beta_regularizer),
            (gamma_axes, beta_axes),
            dtype,
            "layer_norm",
        )
        x32 = x.astype(nc.stat_dtype(x))
        mean, var = nc.moments(x32, axes)
        y = (x32 - mean) * lax.rsqrt(var + epsilon)
        return nc.affine(y, x, axes, gamma, beta)


# -------------------------------------------------------------------- rms_norm


def rms_norm(
    inputs: ArrayLike,
    axis: Axis = -1,
    epsilon: float = 1e-6,
    scale: bool = True,
    scale_initializer: Initializer | None = None,
    scale_regularizer: Regularizer | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    reuse: Reuse = None,
    scale_axes: Axes | None = FEATURE_AXES,
) -> jax.Array:
    """Root-mean-square normalization (Zhang & Sennrich, 2019).

    ``inputs * rsqrt(mean(inputs**2, axis) + epsilon) * scale``: no centring and
    no shift. The variable is ``rms_norm/scale``, named as in Flax's ``RMSNorm``
    and Keras's ``RMSNormalization`` (TF1 had no such layer), with their
    default ``epsilon`` of 1e-6.

    Args:
      inputs: A floating-point array.
      axis: The axis or axes to normalize over (and that carry ``scale``).
      epsilon: Added to the mean square.
      scale: Whether to multiply by the ``scale`` variable.
      scale_initializer: Defaults to ones.
      scale_regularizer: ``(scale) -> scalar`` for `js.get_regularization_loss`.
      dtype: The variable's dtype; defaults to the scope's, else float32.
      name: The variable scope; defaults to ``rms_norm``, uniquified.
      reuse: Whether to share the variable of an earlier call with this name.
      scale_axes: ``scale``'s logical axes (`js.get_variable`'s ``axes``), one
        per normalized axis; default ``(None, ..., "embed")`` (the table in
        `jscope.layers`). None: no names.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      LayerArgumentError: ``axis`` is out of range or repeats an axis, or axes
        do not name each dimension of their variable (a ``ValueError``).
      LayerTypeError: ``inputs`` are not floating point, ``axis`` is not ints,
        or axes are not names (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> f = lambda x: js.layers.rms_norm(x)
      >>> x = jnp.array([[3.0, 4.0]])
      >>> v = js.init(f, jax.random.key(0), x)
      >>> v
      {'params': {'rms_norm': {'scale': Array([1., 1.], dtype=float32)}}}
      >>> np.asarray(js.apply(f, v, x)).round(3)
      array([[0.849, 1.131]], dtype=float32)
    """
    with js.variable_scope(name, default_name="rms_norm", reuse=reuse):
        x = nc.float_inputs(inputs, "rms_norm")
        axes = nc.norm_axes(axis, x.ndim, "rms_norm")
        x32 = x.astype(nc.stat_dtype(x))
        ms = jnp.mean(jnp.square(x32), axis=axes, keepdims=True)
        y = x32 * lax.rsqrt(ms + epsilon)
        if not scale:
            return y.astype(x.dtype)
        pshape = tuple(x.shape[a] for a in axes)
        s_axes = nc.feature_axes(scale_axes, pshape, "scale", "rms_norm")
        s = js.get_variable(
            "scale", pshape, dtype, scale_initializer or js.initializers.ones(),
            scale_regularizer, axes=s_axes,
        )  # fmt: skip
        y = y * s.astype(y.dtype).reshape(nc.bshape(x.ndim, axes, x.shape))
        return y.astype(s.dtype)


# ------------------------------------------------------------------ group_norm


def group_norm(
    inputs: ArrayLike,
    groups: int = 32,
    axis: int = -1,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer: Initializer | None = None,
    gamma_initializer: Initializer | None = None,
    beta_regularizer: Regularizer | None = None,
    gamma_regularizer: Regularizer | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    reuse: Reuse = None,
    gamma_axes: Axes | None = FEATURE_AXES,
    beta_axes: Axes | None = FEATURE_AXES,
) -> jax.Array:
    """Group normalization (Wu & He, 2018), as Keras ``GroupNormalization``.

    The channels on ``axis`` are split into ``groups`` groups of consecutive
    channels; each example (axis 0 is the batch) is normalized per group over
    the group's channels and every other non-batch axis. Then ``gamma`` and
    ``beta`` (one per channel) scale and shift. Variables:
    ``group_normalization/gamma`` and ``group_normalization/beta``. ``epsilon``
    defaults to Keras's 1e-3 (Flax's ``GroupNorm`` uses 1e-6).

    Args:
      inputs: A floating-point array of rank >= 2, batch on axis 0.
      groups: The number of groups; must divide the number of channels.
      axis: The channel axis (not 0).
      epsilon: Added to the variance.
      center: Whether to add ``beta``.
      scale: Whether to multiply by ``gamma``.
      beta_initializer: Defaults to zeros.
      gamma_initializer: Defaults to ones.
      beta_regularizer: ``(beta) -> scalar`` for `js.get_regularization_loss`.
      gamma_regularizer: ``(gamma) -> scalar``.
      dtype: The variables' dtype; defaults to the scope's, else float32.
      name: The variable scope; defaults to ``group_normalization``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      gamma_axes: ``gamma``'s logical axes (`js.get_variable`'s ``axes``);
        default ``("embed",)`` (the table in `jscope.layers`); None: no names.
      beta_axes: ``beta``'s logical axes, likewise.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      LayerArgumentError: ``groups`` does not divide the channels, the rank is
        below 2, ``axis`` is the batch axis or out of range, or axes do not
        name each dimension of their variable (a ``ValueError``).
      LayerTypeError: ``inputs`` are not floating point, ``groups`` is not an
        int, or axes are not names (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> f = lambda x: js.layers.group_norm(x, groups=2)
      >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])
      >>> v = js.init(f, jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, v)
      {'params': {'group_normalization': {'beta': (4,), 'gamma': (4,)}}}
      >>> np.asarray(js.apply(f, v, x)).round(3)
      array([[-1.,  1., -1.,  1.]], dtype=float32)
    """
    with js.variable_scope(name, default_name="group_normalization", reuse=reuse):
        x = nc.float_inputs(inputs, "group_norm")
        if x.ndim < 2:
            raise _checks.error(
                LayerArgumentError,
                "group_norm",
                f"inputs must have rank >= 2 (batch on axis 0, channels on axis "
                f"{axis}), got shape {tuple(x.shape)}. Add a batch axis, e.g. "
                "inputs[None].",
            )
        (ax,) = nc.norm_axes(axis, x.ndim, "group_norm")
        if ax == 0:
            raise _checks.error(
                LayerArgumentError,
                "group_norm",
                "axis 0 is the batch axis; pass the channel axis, e.g. axis=-1.",
            )
        channels = x.shape[ax]
        if isinstance(groups, bool) or not isinstance(groups, int | np.integer):
            raise _checks.error(
                LayerTypeError,
                "group_norm",
                f"groups must be an int, got {groups!r}. Pass e.g. groups=32.",
            )
        if groups <= 0 or channels % groups:
            raise _checks.error(
                LayerArgumentError,
                "group_norm",
                f"groups={groups} must be positive and divide the {channels} "
                f"channels on axis {ax}. Pass a divisor of {channels}.",
            )
        gamma, beta = nc.gamma_beta(
            (channels,),
            center,
            scale,
            (gamma_initializer, beta_initializer),
            (gamma_regularizer, beta_regularizer),
            (gamma_axes, beta_axes),
            dtype,
            "group_norm",
        )
        x32 = jnp.moveaxis(x.astype(nc.stat_dtype(x)), ax, -1)
        grouped = x32.reshape(*x32.shape[:-1], groups, channels // groups)
        red = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
        mean, var = nc.moments(grouped, red)
        y = ((grouped - mean) * lax.rsqrt(var + epsilon)).reshape(x32.shape)
        y = jnp.moveaxis(y, -1, ax)
        return nc.affine(y, x, (ax,), gamma, beta)
