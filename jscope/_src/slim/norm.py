"""tf-slim's ``batch_norm`` and ``layer_norm``, with TF1's names and numerics.

`batch_norm` follows the implementation tf-slim picks, since the variables'
order and the moving variance differ between them:

- *fused* (inputs of rank 2 or 4 when ``updates_collections`` is not the
  default or the rank is 2, or ``zero_debias_moving_mean``): ``beta`` then
  ``gamma``; normalizes with the biased batch variance, but the moving variance
  moves toward the *unbiased* one (``n / (n - 1)`` times it, ``n`` the values
  per channel);
- *core layer* (the default ``updates_collections`` with rank 3 or 4, or
  ``fused=False``): ``gamma`` then ``beta``; rank 4 with ``fused`` uses the
  fused kernel's statistics as above, other ranks the biased variance;
- *legacy* (any other case): ``beta`` then ``gamma``, the biased variance.

Imports: `jscope.errors`, `jscope.initializers`, `scope`, `variables`, `handle`
(assign), and this package's `arg_scope` and `checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jscope import errors, initializers
from jscope._src.handle import assign
from jscope._src.scope import variable_scope
from jscope._src.slim import checks
from jscope._src.slim.arg_scope import add_arg_scope
from jscope._src.variables import get_variable

Activation = Callable[[jax.Array], jax.Array] | None

_PARAM_NAMES = ("beta", "gamma", "moving_mean", "moving_variance")
_DEFAULT_INIT = {
    "beta": initializers.zeros(),
    "gamma": initializers.ones(),
    "moving_mean": initializers.zeros(),
    "moving_variance": initializers.ones(),
}


def _unsupported(**given: Any) -> None:
    help_ = {
        "batch_weights": "weight the inputs before calling batch_norm instead",
        "renorm": "batch renormalization is not implemented",
        "zero_debias_moving_mean": "the debiased moving mean (moving_mean/biased, "
        "moving_mean/local_step) is not implemented",
        "adjustment": "apply the scale and shift to the outputs yourself",
    }
    for name, value in given.items():
        if value is not None and value is not False:
            raise checks.error(
                errors.UnsupportedArgumentError,
                "batch_norm",
                f"{name}={value!r} is not supported: {help_[name]}. Leave {name} "
                "at its default.",
            )


def _path(rank: int, fused: bool | None, updates_collections: Any) -> str:
    """Which of tf-slim's three implementations TF1 ran (see the module doc)."""
    default_updates = updates_collections == checks.UPDATE_OPS
    fused = True if fused is None else fused
    if fused and rank in (2, 4) and (rank == 2 or not default_updates):
        return "fused"
    return "core" if default_updates else "legacy"


def _dict(value: Any, what: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = dict(value or {})
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise checks.error(
            errors.LayerArgumentError,
            "batch_norm",
            f"{what} has unknown keys {unknown}; the keys are {list(allowed)}.",
        )
    return value


def _moments(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=axes)
    shape = [1 if a in axes else d for a, d in enumerate(x.shape)]
    var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
    return mean, var


def _create(names, params_shape, dtype, inits, regs, trainable):
    """The variables, in the order ``names`` gives; None for those not wanted."""
    made = {}
    for name in names:
        moving = name.startswith("moving")
        made[name] = get_variable(
            name, params_shape, dtype, inits.get(name, _DEFAULT_INIT[name]),
            None if moving else regs.get(name), trainable=trainable and not moving,
            collection="state" if moving else None,
        )  # fmt: skip
    return made


@add_arg_scope
def batch_norm(
    inputs: Any,
    decay: float = 0.999,
    center: bool = True,
    scale: bool = False,
    epsilon: float = 0.001,
    activation_fn: Activation = None,
    param_initializers: Mapping[str, Any] | None = None,
    param_regularizers: Mapping[str, Any] | None = None,
    updates_collections: Any = checks.UPDATE_OPS,
    is_training: bool = True,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    batch_weights: Any = None,
    fused: bool | None = None,
    data_format: str = "NHWC",
    zero_debias_moving_mean: bool = False,
    scope: Any = None,
    renorm: bool = False,
    renorm_clipping: Any = None,
    renorm_decay: float = 0.99,
    adjustment: Any = None,
) -> jax.Array:
    """Batch normalization with tf-slim's variables, defaults and updates.

    Variables (scope ``BatchNorm``, ``BatchNorm_1``, ... or ``scope``): ``beta``
    (if ``center``), ``gamma`` (if ``scale``; off by default), and in ``state``
    ``moving_mean`` and ``moving_variance``, in the order tf-slim's chosen
    implementation creates them (see `jscope.slim`). While training, outputs
    use the batch's mean and biased variance and the moving statistics move:
    ``moving -= (moving - batch) * (1 - decay)``, with the unbiased batch
    variance where TF1 ran its fused kernel; otherwise outputs use the moving
    statistics. ``updates_collections``: jscope has no update ops, so the
    moving statistics are assigned in place (`js.assign`) whatever its value;
    with the default ``tf.GraphKeys.UPDATE_OPS`` that is what TF1 did once the
    train op ran the update ops. At `js.apply` pass ``mutable=["state"]``.

    Args:
      inputs: ``[batch, ..., channels]`` (channels on axis 1 with NCHW).
      decay: The moving averages' decay.
      center: Whether to add ``beta``.
      scale: Whether to multiply by ``gamma``.
      epsilon: Added to the variance (TF 2's fused kernel takes any epsilon;
        TF 1.x's raised one below 1.001e-5 to that).
      activation_fn: Applied last; None (the default) for linear.
      param_initializers: Initializers by name: ``beta``, ``gamma``,
        ``moving_mean``, ``moving_variance``.
      param_regularizers: Regularizers for ``beta`` and ``gamma``.
      updates_collections: ``"update_ops"`` (``tf.GraphKeys.UPDATE_OPS``), None
        or another name; the updates happen in place in every case.
      is_training: A Python bool: batch statistics and updates, or the moving
        statistics.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None.
      outputs_collections: Only None.
      trainable: Whether ``beta`` and ``gamma`` go to ``params`` (else
        ``state``).
      batch_weights: Only None.
      fused: None or True (TF1's fused kernel where it applies) or False.
      data_format: ``"NHWC"`` (channels last) or ``"NCHW"`` (channels on axis
        1).
      zero_debias_moving_mean: Only False.
      scope: The variable scope's name.
      renorm: Only False.
      renorm_clipping: Ignored without ``renorm``.
      renorm_decay: Ignored without ``renorm``.
      adjustment: Only None.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      LayerArgumentError: Rank below 2, a bad ``data_format`` or parameter key.
      LayerTypeError: Non-float inputs or a traced ``is_training``.
      UnsupportedArgumentError: ``batch_weights``, ``renorm``,
        ``zero_debias_moving_mean``, ``adjustment`` or collections.
      NotMutableError: Training at `js.apply` without ``mutable=["state"]``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jscope as js
      >>> import jscope.slim as slim
      >>> f = lambda x: slim.batch_norm(x, decay=0.9, updates_collections=None)
      >>> x = jnp.array([[1.0], [3.0]])
      >>> v = js.init(f, jax.random.key(0), x)
      >>> y, v = js.apply(f, v, x, mutable=["state"])
      >>> np.asarray(y).ravel().round(3), v["state"]["BatchNorm"]["moving_variance"]
      (array([-1.,  1.], dtype=float32), Array([1.1], dtype=float32))
    """
    with variable_scope(scope, default_name="BatchNorm", reuse=reuse):
        op = "batch_norm"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        _unsupported(
            batch_weights=batch_weights, renorm=renorm, adjustment=adjustment,
            zero_debias_moving_mean=zero_debias_moving_mean,
        )  # fmt: skip
        training = checks.python_bool(is_training, "is_training", op)
        first = checks.channels_first(data_format, op)
        x = checks.inputs(inputs, op)
        path = _path(x.ndim, fused, updates_collections)
        inits = _dict(param_initializers, "param_initializers", _PARAM_NAMES)
        regs = _dict(param_regularizers, "param_regularizers", ("beta", "gamma"))
        axis = 1 if first else x.ndim - 1
        wanted = [n for n, on in (("beta", center), ("gamma", scale)) if on]
        names = (wanted[::-1] if path == "core" else wanted) + list(_PARAM_NAMES[2:])
        dtype = x.dtype if path == "legacy" else jnp.float32
        v = _create(names, (x.shape[axis],), dtype, inits, regs, trainable)
        x32 = x.astype(dtype)
        axes = tuple(a for a in range(x.ndim) if a != axis)
        fused_kernel = path == "fused" or (
            path == "core" and x.ndim == 4 and fused is not False
        )
        if training:
            mean, var = _moments(x32, axes)
            n = x.size // x.shape[axis]
            moved = var * (n / max(n - 1, 1)) if fused_kernel else var
            decay_ = jnp.asarray(1.0 - decay, dtype)
            mm, mv = v["moving_mean"], v["moving_variance"]
            assign("moving_mean", mm - (mm - mean) * decay_)
            assign("moving_variance", mv - (mv - moved) * decay_)
        else:
            mean, var = v["moving_mean"], v["moving_variance"]
        shape = [x.shape[axis] if a == axis else 1 for a in range(x.ndim)]
        inv = lax.rsqrt(var + jnp.asarray(epsilon, dtype))
        if "gamma" in v:
            inv = inv * v["gamma"]
        shift = -mean * inv
        if "beta" in v:
            shift = shift + v["beta"]
        y = (x32 * inv.reshape(shape) + shift.reshape(shape)).astype(x.dtype)
        return y if activation_fn is None else activation_fn(y)


@add_arg_scope
def layer_norm(
    inputs: Any,
    center: bool = True,
    scale: bool = True,
    activation_fn: Activation = None,
    reuse: Any = None,
    variables_collections: Any = None,
    outputs_collections: Any = None,
    trainable: bool = True,
    begin_norm_axis: int = 1,
    begin_params_axis: int = -1,
    scope: Any = None,
) -> jax.Array:
    """Layer normalization with tf.contrib.layers' names, axes and epsilon.

    Variables (scope ``LayerNorm``, ... or ``scope``): ``beta`` (if
    ``center``), then ``gamma`` (if ``scale``), both of shape
    ``inputs.shape[begin_params_axis:]``. Each example is normalized over the
    axes from ``begin_norm_axis`` on, with an epsilon of 1e-12 (1e-3 for
    float16), as TF1.

    Args:
      inputs: An array of known rank, floating point.
      center: Whether to add ``beta`` (zeros).
      scale: Whether to multiply by ``gamma`` (ones).
      activation_fn: Applied last; None (the default) for linear.
      reuse: True or `js.AUTO_REUSE` to share the variables of ``scope``.
      variables_collections: Only None.
      outputs_collections: Only None.
      trainable: Whether the variables go to ``params`` (else ``state``).
      begin_norm_axis: The first normalized axis (negative counts from the
        end); all later axes are normalized too.
      begin_params_axis: The first axis of the variables' shape.
      scope: The variable scope's name.

    Returns:
      The normalized array, shaped like ``inputs``.

    Raises:
      LayerArgumentError: An axis beyond the inputs' rank.
      LayerTypeError: Non-float inputs.
      UnsupportedArgumentError: Collections other than None.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> f = lambda x: slim.layer_norm(x)
      >>> v = js.init(f, jax.random.key(0), jnp.ones((2, 3)))
      >>> list(js.flatten(v))
      ['params/LayerNorm/beta', 'params/LayerNorm/gamma']
    """
    with variable_scope(scope, default_name="LayerNorm", reuse=reuse):
        op = "layer_norm"
        checks.no_collections(
            op, variables_collections=variables_collections,
            outputs_collections=outputs_collections,
        )  # fmt: skip
        x = jnp.asarray(inputs)
        x = checks.inputs(x, op, tuple(range(1, max(x.ndim, 1) + 1)))
        rank = x.ndim
        norm = begin_norm_axis + rank if begin_norm_axis < 0 else begin_norm_axis
        if not (0 <= norm < rank and -rank <= begin_params_axis < rank):
            raise checks.error(
                errors.LayerArgumentError,
                op,
                f"begin_params_axis ({begin_params_axis}) and begin_norm_axis "
                f"({begin_norm_axis}) must be < rank(inputs) ({rank}) and not "
                f"below -{rank}. Pass e.g. begin_norm_axis=-1.",
            )
        params_shape = tuple(x.shape[begin_params_axis:])
        made = {}
        for name, on in (("beta", center), ("gamma", scale)):
            if on:
                made[name] = get_variable(
                    name, params_shape, x.dtype, _DEFAULT_INIT[name],
                    trainable=trainable,
                )  # fmt: skip
        axes = tuple(range(norm, rank))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        eps = 1e-3 if x.dtype == jnp.float16 else 1e-12
        inv = lax.rsqrt(var + jnp.asarray(eps, x.dtype))
        if "gamma" in made:
            inv = inv * made["gamma"]
        shift = -mean * inv
        if "beta" in made:
            shift = shift + made["beta"]
        y = x * inv + shift
        return y if activation_fn is None else activation_fn(y)
