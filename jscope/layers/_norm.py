"""Normalization layers: `layer_norm`, `rms_norm`, `group_norm`, `batch_norm`.

Statistics are computed in float32 (or wider, for float64 inputs) whatever the
dtype of the inputs; the result has the dtype of the layer's variables (as
``dense`` computes in its kernel's dtype, so a scope-level ``dtype`` or a custom
getter that casts variables also sets the output dtype), or the inputs' dtype
when the layer has none.

Variances are the biased ones (mean squared deviation), as ``tf.nn.moments``,
Keras's non-fused batch normalization and Flax compute them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers._checks import FEATURE_AXES, Axes
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

Axis: TypeAlias = int | Sequence[int]


# --------------------------------------------------------------------- helpers


def _float_inputs(inputs: ArrayLike, layer: str) -> jax.Array:
    x = jnp.asarray(inputs)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise _checks.error(
            LayerTypeError,
            layer,
            f"inputs must be floating point, got dtype {x.dtype}. Cast them "
            "first, e.g. inputs.astype(jnp.float32).",
        )
    return x


def _axes(axis: Axis, ndim: int, layer: str) -> tuple[int, ...]:
    """Normalizes ``axis`` (int or ints) to sorted non-negative axes of ``ndim``."""
    raw = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
    indices = [_checks.as_index(a) for a in raw]
    axes = [a for a in indices if a is not None]
    if len(axes) != len(indices):
        raise _checks.error(
            LayerTypeError,
            layer,
            f"axis must be an int or a sequence of ints, got {axis!r}. Pass e.g. "
            "axis=-1 (the last axis) or axis=(1, 2).",
        )
    if not axes:
        raise _checks.error(
            LayerArgumentError,
            layer,
            "axis must name at least one axis, got (). Pass e.g. axis=-1.",
        )
    for a in axes:
        if not -ndim <= a < ndim:
            raise _checks.error(
                LayerArgumentError,
                layer,
                f"axis {a} is out of range for inputs of rank {ndim} (valid: "
                f"{-ndim} to {ndim - 1}). Pass an axis of the inputs.",
            )
    out = sorted(a % ndim for a in axes)
    if len(set(out)) != len(out):
        raise _checks.error(
            LayerArgumentError,
            layer,
            f"axis {axis!r} repeats an axis (as {tuple(out)} of rank {ndim}). "
            "Name each axis once.",
        )
    return tuple(out)


def _stat_dtype(x: jax.Array) -> np.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _moments(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return mean, var


def _bshape(ndim: int, axes: tuple[int, ...], shape: tuple[int, ...]) -> list[int]:
    """The shape that broadcasts a variable over ``axes`` of the inputs."""
    out = [1] * ndim
    for a in axes:
        out[a] = shape[a]
    return out


def _feature_axes(
    value: Any, pshape: tuple[int, ...], variable: str, layer: str
) -> tuple[str | None, ...] | None:
    """The checked logical axes ``<variable>_axes`` of a variable of ``pshape``."""
    return _checks.axes(
        value, pshape, variable=variable, what=f"{variable}_axes", layer=layer,
        default=FEATURE_AXES,
    )  # fmt: skip


def _gamma_beta(
    pshape: tuple[int, ...],
    center: bool,
    scale: bool,
    init: tuple[Any, Any],
    reg: tuple[Any, Any],
    axes: tuple[Any, Any],
    dtype: DTypeLike | None,
    layer: str,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Gets or creates ``gamma`` (if ``scale``) and ``beta`` (if ``center``)."""
    gamma_axes = _feature_axes(axes[0], pshape, "gamma", layer)
    beta_axes = _feature_axes(axes[1], pshape, "beta", layer)
    gamma = beta = None
    if scale:
        gamma = js.get_variable(
            "gamma", pshape, dtype, init[0] or js.initializers.ones(), reg[0],
            axes=gamma_axes,
        )  # fmt: skip
    if center:
        beta = js.get_variable(
            "beta", pshape, dtype, init[1] or js.initializers.zeros(), reg[1],
            axes=beta_axes,
        )  # fmt: skip
    return gamma, beta


def _affine(
    y: jax.Array,
    x: jax.Array,
    axes: tuple[int, ...],
    gamma: jax.Array | None,
    beta: jax.Array | None,
) -> jax.Array:
    """Applies ``gamma``/``beta`` along ``axes``; casts to their dtype."""
    bshape = _bshape(x.ndim, axes, x.shape)
    if gamma is not None:
        y = y * gamma.astype(y.dtype).reshape(bshape)
    if beta is not None:
        y = y + beta.astype(y.dtype).reshape(bshape)
    ref = gamma if gamma is not None else beta
    return y.astype(x.dtype if ref is None else ref.dtype)


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
        x = _float_inputs(inputs, "layer_norm")
        axes = _axes(axis, x.ndim, "layer_norm")
        gamma, beta = _gamma_beta(
            tuple(x.shape[a] for a in axes),
            center,
            scale,
            (gamma_initializer, beta_initializer),
            (gamma_regularizer, beta_regularizer),
            (gamma_axes, beta_axes),
            dtype,
            "layer_norm",
        )
        x32 = x.astype(_stat_dtype(x))
        mean, var = _moments(x32, axes)
        y = (x32 - mean) * lax.rsqrt(var + epsilon)
        return _affine(y, x, axes, gamma, beta)


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
        x = _float_inputs(inputs, "rms_norm")
        axes = _axes(axis, x.ndim, "rms_norm")
        x32 = x.astype(_stat_dtype(x))
        ms = jnp.mean(jnp.square(x32), axis=axes, keepdims=True)
        y = x32 * lax.rsqrt(ms + epsilon)
        if not scale:
            return y.astype(x.dtype)
        pshape = tuple(x.shape[a] for a in axes)
        s_axes = _feature_axes(scale_axes, pshape, "scale", "rms_norm")
        s = js.get_variable(
            "scale", pshape, dtype, scale_initializer or js.initializers.ones(),
            scale_regularizer, axes=s_axes,
        )  # fmt: skip
        y = y * s.astype(y.dtype).reshape(_bshape(x.ndim, axes, x.shape))
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
        x = _float_inputs(inputs, "group_norm")
        if x.ndim < 2:
            raise _checks.error(
                LayerArgumentError,
                "group_norm",
                f"inputs must have rank >= 2 (batch on axis 0, channels on axis "
                f"{axis}), got shape {tuple(x.shape)}. Add a batch axis, e.g. "
                "inputs[None].",
            )
        (ax,) = _axes(axis, x.ndim, "group_norm")
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
        gamma, beta = _gamma_beta(
            (channels,),
            center,
            scale,
            (gamma_initializer, beta_initializer),
            (gamma_regularizer, beta_regularizer),
            (gamma_axes, beta_axes),
            dtype,
            "group_norm",
        )
        x32 = jnp.moveaxis(x.astype(_stat_dtype(x)), ax, -1)
        grouped = x32.reshape(*x32.shape[:-1], groups, channels // groups)
        red = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
        mean, var = _moments(grouped, red)
        y = ((grouped - mean) * lax.rsqrt(var + epsilon)).reshape(x32.shape)
        y = jnp.moveaxis(y, -1, ax)
        return _affine(y, x, (ax,), gamma, beta)


# ------------------------------------------------------------------ batch_norm


def _check_training(training: Any) -> bool:
    if not isinstance(training, bool | np.bool_):
        raise _checks.error(
            LayerTypeError,
            "batch_norm",
            f"training must be a Python bool, got {training!r}. Choose the mode "
            "when tracing (two jitted functions, or a static argument), not with "
            "a traced value.",
        )
    return bool(training)


def _update_moving(name: str, value: jax.Array, stat: jax.Array, momentum: float):
    """Assigns ``momentum * value + (1 - momentum) * stat`` to the float32 ``name``.

    ``value`` is what `js.get_variable` returned: a custom getter that casts
    every variable (to bfloat16, say) rounds it, though the stored statistic
    stays float32; TF1's mixed-precision getters cast trainable variables only.
    """
    new = momentum * value + (1.0 - momentum) * stat
    try:
        js.assign(name, new.astype(jnp.float32))
    except js.errors.NotMutableError as e:
        raise js.errors.NotMutableError(
            f"batch_norm(training=True) updates its moving statistics, but "
            f"{e.path} is in collection 'state', which is not mutable in this "
            "js.apply. Pass mutable=['state'] to js.apply to get the updated "
            "statistics back, or call the layer with training=False.",
            e.path,
        ) from None


def batch_norm(
    inputs: ArrayLike,
    training: bool = False,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    axis: Axis = -1,
    beta_initializer: Initializer | None = None,
    gamma_initializer: Initializer | None = None,
    moving_mean_initializer: Initializer | None = None,
    moving_variance_initializer: Initializer | None = None,
    beta_regularizer: Regularizer | None = None,
    gamma_regularizer: Regularizer | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    reuse: Reuse = None,
    gamma_axes: Axes | None = FEATURE_AXES,
    beta_axes: Axes | None = FEATURE_AXES,
    moving_mean_axes: Axes | None = FEATURE_AXES,
    moving_variance_axes: Axes | None = FEATURE_AXES,
) -> jax.Array:
    """Batch normalization (Ioffe & Szegedy, 2015): ``tf.layers.batch_normalization``.

    Variables (scope ``batch_normalization``): ``gamma`` and ``beta`` in
    ``params``; ``moving_mean`` and ``moving_variance`` (float32, created with
    ``trainable=False``) in ``state``.

    - ``training=False`` normalizes with the moving statistics.
    - ``training=True`` normalizes with the statistics of this batch (over every
      axis but ``axis``) and updates the moving statistics,
      ``moving = momentum * moving + (1 - momentum) * batch``, with `js.assign`:
      at `js.apply` the ``state`` collection must be mutable
      (``mutable=["state"]``); at `js.init` nothing is updated (the tree keeps
      the initial values). The moving variance takes the biased batch variance,
      as TF1's non-fused kernel and Flax's ``BatchNorm`` do (TF1's fused kernel
      took the unbiased one).

    ``training`` is a Python bool, fixed when tracing, not a tensor as in TF1.

    Args:
      inputs: A floating-point array.
      training: Whether to use and update batch statistics.
      momentum: The decay of the moving statistics.
      epsilon: Added to the variance.
      center: Whether to add ``beta``.
      scale: Whether to multiply by ``gamma``.
      axis: The feature axis or axes (the others are reduced over).
      beta_initializer: Defaults to zeros.
      gamma_initializer: Defaults to ones.
      moving_mean_initializer: Defaults to zeros.
      moving_variance_initializer: Defaults to ones.
      beta_regularizer: ``(beta) -> scalar`` for `js.get_regularization_loss`.
      gamma_regularizer: ``(gamma) -> scalar``.
      dtype: The dtype of ``gamma`` and ``beta``; defaults to the scope's, else
        float32. The moving statistics are always float32.
      name: The variable scope; defaults to ``batch_normalization``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      gamma_axes: ``gamma``'s logical axes (`js.get_variable`'s ``axes``), one
        per feature axis; default ``(None, ..., "embed")`` (the table in
        `jscope.layers`). None: no names.
      beta_axes: ``beta``'s logical axes, likewise.
      moving_mean_axes: ``moving_mean``'s logical axes, likewise.
      moving_variance_axes: ``moving_variance``'s logical axes, likewise.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      NotMutableError: ``training=True`` at `js.apply` without ``state`` mutable.
      LayerArgumentError: ``axis`` is out of range or repeats an axis, or axes
        do not name each dimension of their variable (a ``ValueError``).
      LayerTypeError: ``training`` is not a bool, ``inputs`` not floating
        point, or axes are not names (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> f = lambda x, training: js.layers.batch_norm(x, training=training)
      >>> x = jnp.array([[0.0], [2.0]])
      >>> v = js.init(f, jax.random.key(0), x, False)
      >>> y, v = js.apply(f, v, x, True, mutable=["state"])
      >>> np.asarray(y).round(3)
      array([[-1.],
             [ 1.]], dtype=float32)
      >>> v["state"]
      {'batch_normalization': {'moving_mean': Array([0.01], dtype=float32),
                               'moving_variance': Array([1.], dtype=float32)}}
    """
    with js.variable_scope(name, default_name="batch_normalization", reuse=reuse):
        training = _check_training(training)
        x = _float_inputs(inputs, "batch_norm")
        axes = _axes(axis, x.ndim, "batch_norm")
        red = tuple(a for a in range(x.ndim) if a not in axes)
        pshape = tuple(x.shape[a] for a in axes)
        bshape = _bshape(x.ndim, axes, x.shape)
        mean_axes = _feature_axes(moving_mean_axes, pshape, "moving_mean", "batch_norm")
        var_axes = _feature_axes(
            moving_variance_axes, pshape, "moving_variance", "batch_norm"
        )
        gamma, beta = _gamma_beta(
            pshape,
            center,
            scale,
            (gamma_initializer, beta_initializer),
            (gamma_regularizer, beta_regularizer),
            (gamma_axes, beta_axes),
            dtype,
            "batch_norm",
        )
        moving_mean = js.get_variable(
            "moving_mean", pshape, jnp.float32,
            moving_mean_initializer or js.initializers.zeros(), trainable=False,
            axes=mean_axes,
        )  # fmt: skip
        moving_var = js.get_variable(
            "moving_variance", pshape, jnp.float32,
            moving_variance_initializer or js.initializers.ones(), trainable=False,
            axes=var_axes,
        )  # fmt: skip
        x32 = x.astype(_stat_dtype(x))
        if training:
            mean, var = _moments(x32, red)
            if not js.is_initializing():
                _update_moving(
                    "moving_mean", moving_mean, mean.reshape(pshape), momentum
                )
                _update_moving(
                    "moving_variance", moving_var, var.reshape(pshape), momentum
                )
        else:
            mean = moving_mean.astype(x32.dtype).reshape(bshape)
            var = moving_var.astype(x32.dtype).reshape(bshape)
        y = (x32 - mean) * lax.rsqrt(var + epsilon)
        return _affine(y, x, axes, gamma, beta)
