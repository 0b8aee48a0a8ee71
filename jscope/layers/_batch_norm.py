"""Batch normalization: `batch_normalization` (TF1's signature) and `batch_norm`.

The moving variance is updated as TF1 updated it: with the unbiased batch
variance where TF1's fused kernel ran (4-D inputs over axis 1 or 3, unless
``fused=False``), with the biased one elsewhere. The batch itself is always
normalized with the biased variance.
"""

from __future__ import annotations

from typing import Any

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

_MIN_FUSED_EPSILON = 1.001e-5
"""TF1's fused kernel raised a smaller ``epsilon`` to this (``nn.fused_batch_norm``)."""


def _check_training(training: Any, kind: str) -> bool:
    if not isinstance(training, bool | np.bool_):
        raise _checks.error(
            LayerTypeError,
            kind,
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
            "batch_norm(training=True) updates its moving statistics, but "
            f"{e.path} is in collection 'state', which is not mutable in this "
            "js.apply. Pass mutable=['state'] to js.apply to get the updated "
            "statistics back, or call the layer with training=False.",
            e.path,
        ) from None


def _fused(fused: Any, ndim: int, axes: tuple[int, ...], kind: str) -> bool:
    """Whether TF1 would have run its fused kernel (``fused=None``: when it can)."""
    can = ndim == 4 and axes in ((1,), (3,))
    if fused is None:
        return can
    if fused and not can:
        raise _checks.error(
            LayerArgumentError,
            kind,
            f"fused=True needs 4-D inputs normalized over axis 1 or 3 (TF1's "
            f"fused kernel), got rank {ndim} and axis {axes}. Pass fused=None.",
        )
    return bool(fused)


def _batch_norm(
    inputs: ArrayLike,
    axis: Axis,
    momentum: float,
    epsilon: float,
    center: bool,
    scale: bool,
    init: tuple[Any, Any],
    moving_init: tuple[Any, Any],
    reg: tuple[Any, Any],
    *,
    training: Any,
    trainable: bool,
    dtype: DTypeLike | None,
    name: str | None,
    reuse: Any,
    fused: Any,
    kind: str,
    axes: tuple[Any, Any, Any, Any],
    tf1_only: dict[str, Any] | None = None,
) -> jax.Array:
    with js.variable_scope(name, default_name="batch_normalization", reuse=reuse):
        if tf1_only:
            _not_implemented(kind, **tf1_only)
        training = _check_training(training, kind)
        x = nc.float_inputs(inputs, kind)
        feature = nc.norm_axes(axis, x.ndim, kind)
        unbiased = _fused(fused, x.ndim, feature, kind)
        if unbiased:
            epsilon = max(epsilon, _MIN_FUSED_EPSILON)
        red = tuple(a for a in range(x.ndim) if a not in feature)
        pshape = tuple(x.shape[a] for a in feature)
        bshape = nc.bshape(x.ndim, feature, x.shape)
        mean_axes = nc.feature_axes(axes[2], pshape, "moving_mean", kind)
        var_axes = nc.feature_axes(axes[3], pshape, "moving_variance", kind)
        gamma, beta = nc.gamma_beta(
            pshape, center, scale, init, reg, axes[:2], dtype, kind, trainable
        )
        moving_mean = js.get_variable(
            "moving_mean", pshape, jnp.float32,
            moving_init[0] or js.initializers.zeros(), trainable=False,
            axes=mean_axes,
        )  # fmt: skip
        moving_var = js.get_variable(
            "moving_variance", pshape, jnp.float32,
            moving_init[1] or js.initializers.ones(), trainable=False,
            axes=var_axes,
        )  # fmt: skip
        x32 = x.astype(nc.stat_dtype(x))
        if training:
            mean, var = nc.moments(x32, red)
            if not js.is_initializing():
                n = np.prod([x.shape[a] for a in red], dtype=np.int64)
                stat = var * (n / max(n - 1, 1)) if unbiased else var
                _update_moving(
                    "moving_mean", moving_mean, mean.reshape(pshape), momentum
                )
                _update_moving(
                    "moving_variance", moving_var, stat.reshape(pshape), momentum
                )
        else:
            mean = moving_mean.astype(x32.dtype).reshape(bshape)
            var = moving_var.astype(x32.dtype).reshape(bshape)
        y = (x32 - mean) * lax.rsqrt(var + epsilon)
        return nc.affine(y, x, feature, gamma, beta)


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
    fused: bool | None = None,
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
      the initial values). The moving variance takes the batch variance as
      TF1 did (see ``fused``): the unbiased one, ``n / (n - 1)`` times the
      biased one over ``n`` reduced elements, where TF1 ran its fused kernel
      (4-D inputs, ``axis`` 1 or 3, the default for ``fused=None``), else the
      biased one, as ``tf.nn.moments`` and Flax's ``BatchNorm``. The batch is
      always normalized with the biased variance.

    `batch_normalization` is this layer with TF1's full signature and
    positional order.

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
      fused: TF1's choice of kernel, which sets the moving variance's update:
        None fuses (unbiased variance, and ``epsilon`` at least 1.001e-5, as
        TF1's fused kernel) 4-D inputs normalized over axis 1 or 3 only; True
        requires such inputs; False never fuses (the biased variance).
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
      LayerArgumentError: ``axis`` is out of range or repeats an axis, axes
        do not name each dimension of their variable, or ``fused=True`` for
        inputs TF1 could not fuse (a ``ValueError``).
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
    return _batch_norm(
        inputs, axis, momentum, epsilon, center, scale,
        (gamma_initializer, beta_initializer),
        (moving_mean_initializer, moving_variance_initializer),
        (gamma_regularizer, beta_regularizer),
        training=training, trainable=True, dtype=dtype, name=name, reuse=reuse,
        fused=fused, kind="batch_norm",
        axes=(gamma_axes, beta_axes, moving_mean_axes, moving_variance_axes),
    )  # fmt: skip


def batch_normalization(
    inputs: ArrayLike,
    axis: Axis = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer: Initializer | None = None,
    gamma_initializer: Initializer | None = None,
    moving_mean_initializer: Initializer | None = None,
    moving_variance_initializer: Initializer | None = None,
    beta_regularizer: Regularizer | None = None,
    gamma_regularizer: Regularizer | None = None,
    beta_constraint: Any = None,
    gamma_constraint: Any = None,
    training: bool = False,
    trainable: bool = True,
    name: str | None = None,
    reuse: Reuse = None,
    renorm: bool = False,
    renorm_clipping: Any = None,
    renorm_momentum: float = 0.99,
    fused: bool | None = None,
    virtual_batch_size: int | None = None,
    adjustment: Any = None,
    gamma_axes: Axes | None = FEATURE_AXES,
    beta_axes: Axes | None = FEATURE_AXES,
    moving_mean_axes: Axes | None = FEATURE_AXES,
    moving_variance_axes: Axes | None = FEATURE_AXES,
) -> jax.Array:
    """``tf.layers.batch_normalization``, with TF1's signature and positional order.

    `batch_norm`'s computation, variables (``batch_normalization/gamma``,
    ``beta`` in ``params``; ``moving_mean``, ``moving_variance`` in ``state``,
    in that creation order) and moving-variance rule, called as TF1 called it:
    ``batch_normalization(x, 1, 0.9)`` is ``axis=1, momentum=0.9``. The moving
    statistics are updated with `js.assign` when ``training=True`` at
    `js.apply`, so pass ``mutable=["state"]`` there (TF1's ``UPDATE_OPS``).

    Args:
      inputs: A floating-point array.
      axis: The feature axis or axes; ``1`` for ``channels_first`` inputs.
      momentum: The decay of the moving statistics.
      epsilon: Added to the variance (at least 1.001e-5 where fused, as TF1).
      center: Whether to add ``beta``.
      scale: Whether to multiply by ``gamma``.
      beta_initializer: Defaults to zeros.
      gamma_initializer: Defaults to ones.
      moving_mean_initializer: Defaults to zeros.
      moving_variance_initializer: Defaults to ones.
      beta_regularizer: ``(beta) -> scalar`` for `js.get_regularization_loss`.
      gamma_regularizer: ``(gamma) -> scalar``.
      beta_constraint: TF1's; not supported (a ``TypeError`` that says to
        project the params after the optimizer step).
      gamma_constraint: Likewise.
      training: A Python bool: batch statistics (and updates) or moving ones.
      trainable: Whether ``gamma`` and ``beta`` go to ``params`` (else
        ``state``).
      name: The variable scope; defaults to ``batch_normalization``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      renorm: Only False: batch renormalization is not implemented (True is a
        ``TypeError``).
      renorm_clipping: Only None (with ``renorm``).
      renorm_momentum: Ignored, as TF1 ignored it without ``renorm``.
      fused: None (TF1's choice), True or False; sets the moving variance's
        update, see `batch_norm`.
      virtual_batch_size: Only None: ghost batch normalization is not
        implemented (a ``TypeError``).
      adjustment: Only None (a ``TypeError`` otherwise).
      gamma_axes: ``gamma``'s logical axes (`js.get_variable`'s ``axes``), one
        per feature axis; default ``(None, ..., "embed")`` (the table in
        `jscope.layers`). None: no names.
      beta_axes: ``beta``'s logical axes, likewise.
      moving_mean_axes: ``moving_mean``'s logical axes, likewise.
      moving_variance_axes: ``moving_variance``'s logical axes, likewise.

    Returns:
      The normalized array, shaped like ``inputs``, in the dtype of ``gamma``.

    Raises:
      NotMutableError: ``training=True`` at `js.apply` without ``state`` mutable.
      LayerArgumentError: ``axis`` is out of range or repeats an axis, axes do
        not name each dimension of their variable, or ``fused=True`` for inputs
        TF1 could not fuse (a ``ValueError``).
      LayerTypeError: ``training`` is not a bool, ``inputs`` not floating
        point, axes are not names, or an argument of TF1 that is not
        implemented is given (a ``TypeError`` naming it).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> f = lambda x, t: js.layers.batch_normalization(x, 1, 0.9, training=t)
      >>> x = jnp.arange(16.0).reshape(2, 2, 2, 2)  # NCHW: axis 1
      >>> v = js.init(f, jax.random.key(0), x, False)
      >>> _, v = js.apply(f, v, x, True, mutable=["state"])
      >>> # 0.9 * 1 + 0.1 * 138 / 7: the unbiased variance, as TF1 (fused)
      >>> np.asarray(v["state"]["batch_normalization"]["moving_variance"])
      array([2.8714287, 2.8714287], dtype=float32)
    """
    kind = "batch_normalization"
    tf1_only = dict(
        beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
        renorm=renorm, renorm_clipping=renorm_clipping,
        virtual_batch_size=virtual_batch_size, adjustment=adjustment,
    )  # fmt: skip
    return _batch_norm(
        inputs, axis, momentum, epsilon, center, scale,
        (gamma_initializer, beta_initializer),
        (moving_mean_initializer, moving_variance_initializer),
        (gamma_regularizer, beta_regularizer),
        training=training, trainable=trainable, dtype=None, name=name,
        reuse=reuse, fused=fused, kind=kind,
        axes=(gamma_axes, beta_axes, moving_mean_axes, moving_variance_axes),
        tf1_only=tf1_only,
    )  # fmt: skip


_CONSTRAINT = (
    "a constraint projects a variable after each optimizer step, which a layer "
    "cannot do in a pure function. Drop it and project the updated params "
    "yourself after the optimizer step (e.g. with jax.tree.map)"
)
_NOT_IMPLEMENTED = {
    "beta_constraint": _CONSTRAINT,
    "gamma_constraint": _CONSTRAINT,
    "renorm": "batch renormalization is not implemented. Pass renorm=False",
    "renorm_clipping": "it goes with renorm, which is not implemented. Drop it",
    "virtual_batch_size": (
        "ghost batch normalization is not implemented. Drop it, or normalize "
        "each virtual batch yourself (reshape to [n, batch // n, ...] and "
        "js.vmap over n)"
    ),
    "adjustment": (
        "it is not implemented. Drop it, and scale and shift the output yourself"
    ),
}


def _not_implemented(kind: str, **arguments: Any) -> None:
    for name, value in arguments.items():
        if value is not None and value is not False:
            raise _checks.error(
                LayerTypeError,
                kind,
                f"does not support {name}={value!r:.40}: {_NOT_IMPLEMENTED[name]}.",
            )
