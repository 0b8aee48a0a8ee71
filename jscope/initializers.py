"""TF1-named initializer factories on top of `jax.nn.initializers`.

Each factory returns an initializer ``(key, shape, dtype=float32, out_sharding=None)
-> jax.Array``, the JAX convention, so the results work anywhere a
`jax.nn.initializers` initializer does and vice versa. Every factory is also
available under its TF1 name with the ``_initializer`` suffix.

Fans follow TF1: a shape ``[]`` has fan-in and fan-out 1, ``[n]`` has ``n`` and
``n``, ``[a, b]`` has ``a`` and ``b``, and a convolution kernel ``[h, w, i, o]`` has
``h*w*i`` and ``h*w*o``.

Random values are drawn flat and reshaped: `jax.random` gives a shape the same
bits as its flat draw reshaped, and compiles the flat draw several times faster
(under ``jax_threefry_partitionable``, JAX's default, a shaped draw computes an
index per axis). Outside a trace the flat draw is also rounded up to a size
bucket (`draw_size`): element ``i`` of a flat draw does not depend on its
length, so one compiled program per bucket (`variance_scaling`'s
coefficients, which depend on the shape, passed as arguments) serves every
shape, and a model's first `js.init` compiles a few programs instead of one
per shape. Under a mesh (`js.init(..., rules=...)`)
values are drawn in their shape, which XLA computes shard by shard.

Example:
  >>> import jax, jax.numpy as jnp
  >>> init = random_normal(stddev=0.1)
  >>> init(jax.random.key(0), (2, 3)).shape
  (2, 3)
  >>> constant([1, 2])(None, (3,), jnp.int32)
  Array([1, 2, 2], dtype=int32)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from jscope import errors
from jscope._src import jax_compat
from jscope.typing import DTypeLike, Initializer, Shape

__all__ = [
    "Initializer",
    "compute_fans",
    "constant",
    "constant_initializer",
    "default_initializer",
    "glorot_normal",
    "glorot_normal_initializer",
    "glorot_uniform",
    "glorot_uniform_initializer",
    "ones",
    "ones_initializer",
    "orthogonal",
    "orthogonal_initializer",
    "random_normal",
    "random_normal_initializer",
    "random_uniform",
    "random_uniform_initializer",
    "truncated_normal",
    "truncated_normal_initializer",
    "variance_scaling",
    "variance_scaling_initializer",
    "zeros",
    "zeros_initializer",
]

_F32 = jnp.float32


def compute_fans(shape: Sequence[int]) -> tuple[float, float]:
    """Returns TF1's ``(fan_in, fan_out)`` for a variable shape.

    Example:
      >>> compute_fans(()), compute_fans((5,)), compute_fans((3, 3, 4, 8))
      ((1, 1), (5, 5), (36, 72))
    """
    shape = tuple(shape)
    if not shape:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _affine(x: jax.Array, scale: Any, shift: Any) -> jax.Array:
    """``shift + scale * x``; a None scale or shift adds no primitive."""
    if scale is not None:
        x = lax.mul(x, scale)
    if shift is not None:
        x = lax.add(x, shift)
    return x


def _coefficients(scale: float, shift: float, dtype: np.dtype) -> tuple:
    """``(scale, shift)`` as ``dtype`` scalars, None for a unit scale, zero shift."""
    return (
        None if scale == 1.0 else np.asarray(scale, dtype),
        None if shift == 0.0 else np.asarray(shift, dtype),
    )


# ------------------------------------------------------------------- drawing

# Flat draws of at most `_LARGEST` elements are rounded up to a power of two,
# at least `_SMALLEST`: one compiled program per bucket. Larger ones are drawn
# at their size, where drawing takes longer than compiling.
_SMALLEST = 1 << 12
_LARGEST = 1 << 22


def draw_size(size: int) -> int:
    """The length of the flat draw that serves a variable of ``size`` elements.

    Example:
      >>> draw_size(1), draw_size(5000), draw_size(1 << 22), draw_size(5 << 20)
      (4096, 8192, 4194304, 5242880)
    """
    if size > _LARGEST:
        return size
    return max(_SMALLEST, 1 << (size - 1).bit_length())


def _normal(key, shape, dtype, scale, shift):
    return _affine(jax.random.normal(key, shape, dtype), scale, shift)


def _truncated(key, shape, dtype, scale, shift):
    x = jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return _affine(x, scale, shift)


def _uniform(key, shape, dtype, low, high):
    return jax.random.uniform(key, shape, dtype, low, high)


def _randint(key, shape, dtype, low, high):
    return jax.random.randint(key, shape, low, high, dtype)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _flat(sample: Callable, key: Any, size: int, dtype: np.dtype, params: tuple):
    """``sample(key, (size,), dtype, *params)`` as one compiled computation.

    XLA fuses ``a * x + b`` into one fused multiply-add inside a compiled
    computation but not across eager operations, so arithmetic run op by op
    would give other bits eagerly than in a jitted init (`js.init(...,
    rules=...)`). Compiled as one computation, the fusions are the same in both.
    """
    return sample(key, (size,), dtype, *params)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _shaped(sample: Callable, key: Any, shape: tuple, dtype: np.dtype, params):
    """``sample(key, shape, dtype, *params)``: the draw of a sharded value."""
    return sample(key, shape, dtype, *params)


def _draw(
    sample: Callable, key: Any, shape: Sequence[int], dtype: Any, *params: Any
) -> jax.Array:
    """``sample``'s values of ``shape``: a flat draw reshaped (see the module doc).

    Outside a trace the draw's length is `draw_size` and the values are its
    first elements; inside one it is the variable's size, except under a mesh
    or for an empty variable, where the draw is shaped.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    traced = any(isinstance(x, Tracer) for x in (key, *params))
    if size == 0 or (traced and not jax.sharding.get_abstract_mesh().empty):
        return _shaped(sample, key, shape, dtype, params)
    if traced:
        return _flat(sample, key, size, dtype, params).reshape(shape)
    return _prefix(_flat(sample, key, draw_size(size), dtype, params), size, shape)


def _prefix(flat: jax.Array, size: int, shape: tuple) -> jax.Array:
    """``flat[:size].reshape(shape)``, with nothing to compile on a CPU device.

    On CPU the slice and reshape are NumPy views of the draw, copied back to
    its device (committed to it only if the draw is); elsewhere they are one
    small compiled copy.
    """
    devices = flat.devices()
    if len(devices) == 1 and next(iter(devices)).platform == "cpu":
        host = np.asarray(flat)[:size].reshape(shape)
        return jax.device_put(host, flat.sharding if flat.committed else None)
    return _slice_reshape(flat, size, shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _slice_reshape(flat: jax.Array, size: int, shape: tuple) -> jax.Array:
    return lax.slice(flat, (0,), (size,)).reshape(shape)


def keyless(init: Initializer) -> Initializer:
    """Marks an initializer that ignores its key, so no key is derived for it."""
    init.keyless = True  # pyright: ignore[reportFunctionMemberAccess]
    return init


def _float_dtype(dtype: Any, name: str) -> np.dtype:
    dtype = np.dtype(_F32 if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise errors.InitializerError(
            f"The {name} initializer makes floating-point values, but the variable "
            f"has dtype {dtype}. Use a floating dtype, or an initializer for "
            f"{dtype} such as zeros() or constant(...)."
        )
    return dtype


def random_normal(
    mean: float = 0.0, stddev: float = 1.0, dtype: DTypeLike = _F32
) -> Initializer:
    """Normal values with the given mean and standard deviation (TF1's default 1.0).

    Example:
      >>> import jax
      >>> random_normal(stddev=0.1)(jax.random.key(0), (2,)).dtype
      dtype('float32')
    """

    def values(key, shape, dtype):  # constant coefficients, as XLA folds them
        return _normal(key, shape, dtype, *_coefficients(stddev, mean, dtype))

    def init(key, shape, dtype=dtype, out_sharding=None):
        return _draw(values, key, shape, _float_dtype(dtype, "random_normal"))

    return init


def truncated_normal(
    mean: float = 0.0, stddev: float = 1.0, dtype: DTypeLike = _F32
) -> Initializer:
    """Normal values redrawn beyond two standard deviations, as TF1's.

    The standard deviation is that of the normal before truncation (TF1's rule).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> v = truncated_normal(stddev=0.5)(jax.random.key(0), (1000,))
      >>> bool(jnp.all(jnp.abs(v) <= 1.0))
      True
    """

    def values(key, shape, dtype):  # constant coefficients, as XLA folds them
        return _truncated(key, shape, dtype, *_coefficients(stddev, mean, dtype))

    def init(key, shape, dtype=dtype, out_sharding=None):
        return _draw(values, key, shape, _float_dtype(dtype, "truncated_normal"))

    return init


def random_uniform(
    minval: float = 0.0, maxval: float | None = None, dtype: DTypeLike = _F32
) -> Initializer:
    """Uniform values in ``[minval, maxval)``; ``maxval`` defaults to 1 for floats.

    Integer variables need an explicit ``maxval`` (TF1's rule).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> random_uniform(0, 10)(jax.random.key(0), (3,), jnp.int32).dtype
      dtype('int32')
    """

    def floats(key, shape, dtype):
        # Constant bounds: with ``maxval - minval`` an argument, XLA would give
        # other bits than the traced draw, where it folds the constants.
        high = 1.0 if maxval is None else maxval
        return jax.random.uniform(key, shape, dtype, minval, high)

    def init(key, shape, dtype=dtype, out_sharding=None):
        dtype = np.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.integer):
            if maxval is None:
                raise errors.InitializerArgumentError(
                    "Must specify maxval for integer dtype: random_uniform for an "
                    f"integer variable ({dtype}) needs maxval, e.g. "
                    "random_uniform(0, 10)."
                )
            return _draw(_randint, key, shape, dtype, minval, maxval)
        return _draw(floats, key, shape, _float_dtype(dtype, "random_uniform"))

    return init


def check_representable(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if value.dtype == dtype:
        return value
    if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        if jnp.issubdtype(value.dtype, jnp.complexfloating) and not jnp.issubdtype(
            dtype, jnp.complexfloating
        ):
            raise errors.InitializerError(
                f"Cannot initialize a {dtype} variable with complex value {value!r}."
            )
        return value.astype(dtype)
    with np.errstate(all="ignore"):
        cast = value.astype(dtype)
    if not np.array_equal(cast.astype(value.dtype), value):
        raise errors.InitializerError(
            f"Value {value.tolist()!r} is not representable in dtype {dtype}: "
            f"casting gives {cast.tolist()!r}. Use a value of that dtype, or give "
            "the variable a dtype that can hold it."
        )
    return cast


def constant(value: Any = 0, dtype: DTypeLike | None = None) -> Initializer:
    """Fills the variable with ``value``, row-major, as TF1's constant initializer.

    A scalar fills everything; a list shorter than the variable fills row-major
    and repeats its last element; a value not representable in the variable's dtype
    (0.4 for an int32 variable) is an `InitializerError` (a `TypeError`).

    Example:
      >>> import jax.numpy as jnp
      >>> constant([[1, 2], [3, 4]])(None, (2, 2))
      Array([[1., 2.],
             [3., 4.]], dtype=float32)
    """
    base = np.asarray(value)

    @keyless
    def init(key, shape, dtype=dtype, out_sharding=None):
        dtype = np.dtype(_F32 if dtype is None else dtype)
        shape = tuple(shape)
        size = math.prod(shape)
        flat = base.reshape(-1)
        if flat.size == 0:
            raise errors.InitializerArgumentError(
                "constant() needs at least one value."
            )
        if flat.size > size:
            raise errors.InitializerArgumentError(
                f"Too many elements provided: constant() got {flat.size} values for "
                f"a variable of shape "
                f"{shape} ({size} elements). Give at most {size} values."
            )
        if flat.size < size:
            flat = np.concatenate([flat, np.repeat(flat[-1:], size - flat.size)])
        flat = check_representable(flat, dtype)
        return jnp.asarray(flat.reshape(shape), dtype)

    return init


@keyless
def _zeros(key, shape, dtype=_F32, out_sharding=None):
    return _filled(np.zeros((), dtype), tuple(shape))


@keyless
def _ones(key, shape, dtype=_F32, out_sharding=None):
    return _filled(np.ones((), dtype), tuple(shape))


def _filled(fill: np.ndarray, shape: tuple) -> jax.Array:
    """``fill`` broadcast to ``shape``; eagerly, copied from the host.

    An eager broadcast compiles once per shape (most of a cold init's compiles
    for a model of many widths: every bias and norm scale); a host array up to
    the largest draw bucket is copied to the default device instead, the same
    values with nothing to compile. In a trace it stays a broadcast.
    """
    if jax_compat.eager() and math.prod(shape) <= _LARGEST:
        return jax.device_put(np.full(shape, fill, fill.dtype))
    return lax.broadcast_in_dim(fill, shape, ())


@overload
def zeros(dtype: DTypeLike = _F32) -> Initializer: ...
@overload
def zeros(
    key: jax.Array | None,
    shape: Shape,
    dtype: DTypeLike = _F32,
    out_sharding: Any = None,
) -> jax.Array: ...
def zeros(*args: Any, **kwargs: Any) -> Any:
    """Zeros; works called (``zeros()``) and uncalled (``zeros(key, shape, dtype)``).

    Example:
      >>> zeros()(None, (2,))
      Array([0., 0.], dtype=float32)
      >>> zeros(None, (2,))
      Array([0., 0.], dtype=float32)
    """
    return _factory_or_call(_zeros, args, kwargs)


@overload
def ones(dtype: DTypeLike = _F32) -> Initializer: ...
@overload
def ones(
    key: jax.Array | None,
    shape: Shape,
    dtype: DTypeLike = _F32,
    out_sharding: Any = None,
) -> jax.Array: ...
def ones(*args: Any, **kwargs: Any) -> Any:
    """Ones; works called (``ones()``) and uncalled (``ones(key, shape, dtype)``).

    Example:
      >>> ones()(None, (2,))
      Array([1., 1.], dtype=float32)
    """
    return _factory_or_call(_ones, args, kwargs)


def _factory_or_call(fn, args, kwargs):
    if len(args) >= 2 or "shape" in kwargs:
        return fn(*args, **kwargs)
    dtype = args[0] if args else kwargs.get("dtype", _F32)

    @keyless
    def init(key, shape, dtype=dtype, out_sharding=None):
        return fn(key, shape, dtype)

    return init


zeros.keyless = True  # pyright: ignore[reportFunctionMemberAccess]
ones.keyless = True  # pyright: ignore[reportFunctionMemberAccess]


def variance_scaling(
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    dtype: DTypeLike = _F32,
) -> Initializer:
    """Scaled random values with TF1's fans (see `compute_fans`).

    Args:
      scale: Scaling factor (positive).
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"truncated_normal"`` (TF1 also calls it ``"normal"``),
        ``"untruncated_normal"`` or ``"uniform"``.
      dtype: Default dtype.

    Raises:
      InitializerArgumentError: An unknown mode or distribution, or a scale that
        is not positive (a ``ValueError``).

    Example:
      >>> import jax
      >>> w = variance_scaling(2.0, "fan_in", "uniform")(jax.random.key(0), (4, 4))
      >>> bool(abs(w).max() <= (3 * 2.0 / 4) ** 0.5)
      True
    """
    if scale <= 0.0:
        raise errors.InitializerArgumentError(
            f"variance_scaling needs a positive scale, got {scale}. Pass e.g. "
            "scale=1.0 (Glorot/LeCun) or scale=2.0 (He)."
        )
    modes = ("fan_in", "fan_out", "fan_avg")
    if mode not in modes:
        raise errors.InitializerArgumentError(
            f"Invalid mode {mode!r} for variance_scaling; expected one of {modes}. "
            "Pass e.g. mode='fan_in'."
        )
    dists = ("truncated_normal", "untruncated_normal", "normal", "uniform")
    if distribution not in dists:
        raise errors.InitializerArgumentError(
            f"Invalid distribution {distribution!r} for variance_scaling; expected "
            f"one of {dists}. Pass e.g. distribution='truncated_normal'."
        )

    def init(key, shape, dtype=dtype, out_sharding=None):
        dtype = _float_dtype(dtype, "variance_scaling")
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(mode, (fan_in + fan_out) / 2)
        variance = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            low, high = np.asarray(-limit, dtype), np.asarray(limit, dtype)
            return _draw(_uniform, key, shape, dtype, low, high)
        if distribution in ("truncated_normal", "normal"):  # TF1: normal = truncated
            stddev = math.sqrt(variance) / 0.87962566103423978
            params = _coefficients(stddev, 0.0, dtype)
            return _draw(_truncated, key, shape, dtype, *params)
        params = _coefficients(math.sqrt(variance), 0.0, dtype)
        return _draw(_normal, key, shape, dtype, *params)

    return init


def glorot_uniform(dtype: DTypeLike = _F32) -> Initializer:
    """Uniform in ``±sqrt(6 / (fan_in + fan_out))``: TF1's default initializer.

    Unlike `jax.nn.initializers.glorot_uniform`, scalars and vectors are allowed
    (TF1's fans).

    Example:
      >>> import jax
      >>> b = glorot_uniform()(jax.random.key(0), (6,))
      >>> bool(abs(b).max() <= 1.0)
      True
    """
    return variance_scaling(1.0, "fan_avg", "uniform", dtype)


def glorot_normal(dtype: DTypeLike = _F32) -> Initializer:
    """Truncated normal with variance ``2 / (fan_in + fan_out)``, as TF1's."""
    return variance_scaling(1.0, "fan_avg", "truncated_normal", dtype)


def orthogonal(gain: float = 1.0, dtype: DTypeLike = _F32) -> Initializer:
    """A (semi-)orthogonal matrix over the last axis, times ``gain``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = orthogonal()(jax.random.key(0), (3, 3))
      >>> bool(jnp.allclose(q @ q.T, jnp.eye(3), atol=1e-5))
      True
    """

    def init(key, shape, dtype=dtype, out_sharding=None):
        dtype = _float_dtype(dtype, "orthogonal")
        shape = tuple(shape)
        if len(shape) < 2:
            raise errors.InitializerArgumentError(
                "The tensor to initialize must be at least two-dimensional (2 or "
                "more axes): "
                f"orthogonal() got shape {shape}."
            )
        # No half-precision QR on CPU: computed in float32.
        wide = jnp.float32 if dtype.itemsize < 4 else dtype
        if math.prod(shape) == 0 or (
            isinstance(key, Tracer) and not jax.sharding.get_abstract_mesh().empty
        ):
            q = jax.nn.initializers.orthogonal(scale=gain)(key, shape, wide)
        else:
            q = _orthogonal(key, shape, np.dtype(wide), gain)
        return q.astype(dtype)

    return init


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _orthogonal(key: Any, shape: tuple, dtype: np.dtype, gain: float) -> jax.Array:
    """`jax.nn.initializers.orthogonal`'s values, its normal matrix drawn flat."""
    n, m = math.prod(shape) // shape[-1], shape[-1]
    rows, cols = max(n, m), min(n, m)
    z = jax.random.normal(key, (rows * cols,), dtype).reshape(rows, cols)
    q, r = jnp.linalg.qr(z)
    x = q * jnp.expand_dims(jnp.sign(jnp.linalg.diagonal(r)), -2)
    if n < m:
        x = x.mT
    return jnp.array(gain, dtype) * x.reshape(shape)


def default_initializer(dtype: DTypeLike) -> Initializer | None:
    """TF1's default for a dtype: Glorot uniform, zeros for ints, False for bool.

    Returns None for dtypes with no default (complex), which then need an explicit
    initializer.
    """
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return _GLOROT
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
        return _zeros
    return None


_GLOROT = glorot_uniform()

random_normal_initializer = random_normal
truncated_normal_initializer = truncated_normal
random_uniform_initializer = random_uniform
constant_initializer = constant
zeros_initializer = zeros
ones_initializer = ones
variance_scaling_initializer = variance_scaling
glorot_uniform_initializer = glorot_uniform
glorot_normal_initializer = glorot_normal
orthogonal_initializer = orthogonal
