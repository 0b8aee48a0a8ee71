"""Tests for `jscope.initializers`: TF1's factories, fans and formulas (DESIGN §4)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
from jscope import errors
from jscope import initializers as inits
from jscope._src.names import stable_hash

KEY = jax.random.key(0)
N = 40_000  # samples for statistics; relative error of a variance ~ 1 %

FLOAT_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
FLOAT_IDS = ["float32", "bfloat16", "float16"]


def as64(x):
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def truncated_unit_std():
    """Standard deviation of a unit normal truncated to [-2, 2]."""
    pdf2 = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
    mass = math.erf(2.0 / math.sqrt(2.0))
    return math.sqrt(1.0 - 2.0 * 2.0 * pdf2 / mass)


def tf1_fans(shape):
    """TF1's `_compute_fans`, written out independently."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = 1
    for d in shape[:-2]:
        receptive *= d
    return shape[-2] * receptive, shape[-1] * receptive


# ------------------------------------------------------------------ compute_fans


@pytest.mark.parametrize(
    "shape, fans",
    [
        ((), (1, 1)),
        ((5,), (5, 5)),
        ((3, 7), (3, 7)),
        ((3, 3, 4, 8), (36, 72)),
        ((5, 4, 8), (20, 40)),
        ((2, 3, 5, 4, 8), (120, 240)),
        ([6, 2], (6, 2)),
    ],
)
def test_compute_fans(shape, fans):
    assert tuple(inits.compute_fans(shape)) == fans
    assert tuple(inits.compute_fans(shape)) == tf1_fans(tuple(shape))


def test_truncated_constant_matches_scipy_value():
    # 0.87962566103423978 = scipy.stats.truncnorm.std(a=-2, b=2)
    assert truncated_unit_std() == pytest.approx(0.87962566103423978, rel=1e-12)


# ----------------------------------------------------------------- random_normal


@pytest.mark.parametrize("mean, stddev", [(0.0, 1.0), (2.0, 0.5), (-1.0, 3.0)])
def test_random_normal_statistics(mean, stddev):
    x = as64(inits.random_normal(mean=mean, stddev=stddev)(KEY, (N,)))
    assert x.mean() == pytest.approx(mean, abs=4 * stddev / math.sqrt(N))
    assert x.std() == pytest.approx(stddev, rel=0.03)
    # untruncated: some samples beyond two standard deviations
    assert np.mean(np.abs(x - mean) > 2 * stddev) == pytest.approx(0.0455, abs=0.006)


def test_random_normal_defaults_are_tf1s():
    x = as64(inits.random_normal()(KEY, (N,)))
    assert x.mean() == pytest.approx(0.0, abs=0.03)
    assert x.std() == pytest.approx(1.0, rel=0.03)


def test_random_normal_is_deterministic_in_key():
    init = inits.random_normal(stddev=0.1)
    np.testing.assert_array_equal(init(KEY, (5,)), init(KEY, (5,)))
    assert not np.array_equal(
        np.asarray(init(KEY, (5,))), np.asarray(init(jax.random.key(1), (5,)))
    )


# -------------------------------------------------------------- truncated_normal


@pytest.mark.parametrize("mean, stddev", [(0.0, 1.0), (1.0, 0.5), (-3.0, 2.0)])
def test_truncated_normal_bounds_and_spread(mean, stddev):
    x = as64(inits.truncated_normal(mean=mean, stddev=stddev)(KEY, (N,)))
    # redrawn beyond two standard deviations (of the normal before truncation)
    assert np.all(np.abs(x - mean) <= 2 * stddev * (1 + 1e-6))
    assert np.abs(x - mean).max() >= 1.95 * stddev
    assert x.mean() == pytest.approx(mean, abs=4 * stddev / math.sqrt(N))
    assert x.std() == pytest.approx(stddev * truncated_unit_std(), rel=0.03)


# ---------------------------------------------------------------- random_uniform


@pytest.mark.parametrize("minval, maxval", [(0.0, None), (-2.0, 3.0), (5.0, 5.5)])
def test_random_uniform_float_bounds(minval, maxval):
    x = as64(inits.random_uniform(minval, maxval)(KEY, (N,)))
    high = 1.0 if maxval is None else maxval
    assert x.min() >= minval
    assert x.max() < high
    width = high - minval
    assert x.min() <= minval + 0.01 * width
    assert x.max() >= high - 0.01 * width
    assert x.mean() == pytest.approx((minval + high) / 2, abs=0.02 * width)
    assert x.var() == pytest.approx(width**2 / 12, rel=0.05)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8])
def test_random_uniform_int_with_maxval(dtype):
    x = inits.random_uniform(2, 9)(KEY, (5000,), dtype)
    assert x.dtype == np.dtype(dtype)
    values = np.asarray(x)
    assert values.min() >= 2 and values.max() < 9
    assert set(values.tolist()) == set(range(2, 9))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int16])
def test_random_uniform_int_without_maxval_is_an_error(dtype):
    init = inits.random_uniform()
    # TF1: ValueError("Must specify maxval for integer dtype ...")
    with pytest.raises(ValueError, match="maxval") as info:
        init(KEY, (3,), dtype)
    assert isinstance(info.value, errors.JscopeError)


def test_random_uniform_int_in_get_variable():
    def fn():
        return js.get_variable(
            "i", [100], jnp.int32, initializer=inits.random_uniform(0, 10)
        )

    out, variables = js.init_with_output(fn, KEY)
    assert out.dtype == jnp.int32
    assert int(out.min()) >= 0 and int(out.max()) < 10
    assert "i" in variables["state"]


# ---------------------------------------------------------------------- constant


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.float16, jnp.bfloat16])
def test_constant_scalar_fills(dtype):
    out = inits.constant(3)(None, (2, 3), dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.full((2, 3), 3, np.float32))


def test_constant_default_dtype_is_float32():
    out = inits.constant(1.5)(KEY, (2,))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [1.5, 1.5])


def test_constant_row_major_fill_repeats_last_element():
    value = [0, 1, 2, 3, 4, 5, 6, 7]
    out = inits.constant(value)(None, (3, 4), jnp.float32)
    expected = np.array(value + [7] * 4, np.float32).reshape(3, 4)
    np.testing.assert_array_equal(out, expected)


def test_constant_nested_list_and_exact_size():
    out = inits.constant([[1, 2], [3, 4]])(None, (2, 2), jnp.int32)
    np.testing.assert_array_equal(out, np.array([[1, 2], [3, 4]], np.int32))
    out = inits.constant([[1, 2], [3, 4]])(None, (4,), jnp.float32)
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0, 4.0])
    out = inits.constant([1.0, 2.0])(None, (2, 3), jnp.float32)
    np.testing.assert_array_equal(out, [[1.0, 2.0, 2.0], [2.0, 2.0, 2.0]])


def test_constant_too_many_values_is_an_error():
    init = inits.constant(list(range(8)))
    # TF1: ValueError("Too many elements provided. Needed at most 6, but received 8")
    with pytest.raises(ValueError, match=r"6.*8|8.*6") as info:
        init(None, (2, 3), jnp.float32)
    assert isinstance(info.value, errors.JscopeError)


@pytest.mark.parametrize(
    "value, dtype",
    [(0.4, jnp.int32), ([1, 2.5], jnp.int32), (300, jnp.int8), (-1, jnp.uint8)],
)
def test_constant_unrepresentable_value_is_a_type_error(value, dtype):
    with pytest.raises(TypeError) as info:
        inits.constant(value)(None, (2,), dtype)
    assert isinstance(info.value, errors.InitializerError)
    assert np.dtype(dtype).name in str(info.value)


def test_constant_representable_float_into_int():
    out = inits.constant(2.0)(None, (2,), jnp.int32)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, [2, 2])


def test_constant_unrepresentable_in_get_variable_names_the_path():
    def fn():
        with js.variable_scope("s"):
            js.get_variable("c", [2], jnp.int32, initializer=inits.constant(0.4))

    with pytest.raises(TypeError, match=r"s/c") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, errors.InitializerError)
    assert "0.4" in str(info.value) and "int32" in str(info.value)


def test_constant_in_get_variable():
    def fn():
        return js.get_variable("b", [2, 2], initializer=inits.constant_initializer(0.0))

    out = js.init_with_output(fn, KEY)[0]
    np.testing.assert_array_equal(out, np.zeros((2, 2), np.float32))


# ------------------------------------------------------------------- zeros, ones


@pytest.mark.parametrize(
    "factory, fill", [(inits.zeros, 0), (inits.ones, 1)], ids=["zeros", "ones"]
)
@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.float16, jnp.bfloat16, jnp.int32, jnp.bool_]
)
def test_zeros_ones_called_and_uncalled(factory, fill, dtype):
    expected = np.full((2, 3), fill, np.dtype(dtype))
    for out in (
        factory()(KEY, (2, 3), dtype),  # TF1 style: the factory's result
        factory(KEY, (2, 3), dtype),  # JAX style: the initializer itself
        factory(dtype)(KEY, (2, 3)),  # dtype given to the factory
        factory(KEY, shape=(2, 3), dtype=dtype),
    ):
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("factory, fill", [(inits.zeros, 0.0), (inits.ones, 1.0)])
def test_zeros_ones_default_float32(factory, fill):
    for out in (factory()(KEY, (3,)), factory(KEY, (3,))):
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, np.full(3, fill, np.float32))


@pytest.mark.parametrize(
    "initializer, fill",
    [
        (inits.zeros, 0.0),
        (inits.zeros(), 0.0),
        (inits.zeros_initializer(), 0.0),
        (inits.ones, 1.0),
        (inits.ones(), 1.0),
        (inits.ones_initializer(), 1.0),
    ],
    ids=["zeros", "zeros()", "zeros_initializer()", "ones", "ones()", "ones_init()"],
)
def test_zeros_ones_in_get_variable(initializer, fill):
    def fn():
        return js.get_variable("w", [2, 2], jnp.float16, initializer=initializer)

    out = js.init_with_output(fn, KEY)[0]
    assert out.dtype == jnp.float16
    np.testing.assert_array_equal(out, np.full((2, 2), fill, np.float16))


# ------------------------------------------------------------- variance scaling


SHAPES = [(100, 400), (3, 3, 64, 80), (40_000,)]
SHAPE_IDS = ["dense", "conv", "vector"]


def tf1_variance(scale, mode, shape):
    fan_in, fan_out = tf1_fans(shape)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    return scale / max(1.0, n[mode])


def sample(init, shape, n=N):
    """Enough draws of `init` to estimate its statistics (several keys if small)."""
    size = math.prod(shape)
    reps = max(1, n // size)
    if reps == 1:
        return as64(init(KEY, shape)).ravel()
    keys = jax.random.split(KEY, reps)
    return as64(jax.vmap(lambda k: init(k, shape))(keys)).ravel()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_variance_scaling_uniform(scale, mode, shape):
    x = sample(inits.variance_scaling(scale, mode, "uniform"), shape)
    variance = tf1_variance(scale, mode, shape)
    limit = math.sqrt(3.0 * variance)
    assert np.abs(x).max() <= limit * (1 + 1e-6)
    assert np.abs(x).max() >= 0.99 * limit
    assert x.var() == pytest.approx(variance, rel=0.05)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal"])
def test_variance_scaling_truncated_normal(distribution, mode, shape):
    """TF1's v1 `variance_scaling_initializer` treats "normal" as truncated."""
    x = sample(inits.variance_scaling(2.0, mode, distribution), shape)
    variance = tf1_variance(2.0, mode, shape)
    # TF1 divides the stddev by the truncated normal's std, so the *truncated*
    # samples have the requested variance, and lie within two stddevs.
    stddev = math.sqrt(variance) / 0.87962566103423978
    assert np.abs(x).max() <= 2 * stddev * (1 + 1e-6)
    assert np.abs(x).max() >= 1.9 * stddev
    assert x.var() == pytest.approx(variance, rel=0.05)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_variance_scaling_untruncated_normal(mode, shape):
    x = sample(inits.variance_scaling(0.5, mode, "untruncated_normal"), shape)
    variance = tf1_variance(0.5, mode, shape)
    stddev = math.sqrt(variance)
    assert x.var() == pytest.approx(variance, rel=0.05)
    assert np.mean(np.abs(x) > 2 * stddev) == pytest.approx(0.0455, abs=0.008)


def test_variance_scaling_defaults_are_tf1s():
    """scale=1.0, mode="fan_in", distribution="truncated_normal"."""
    shape = (100, 400)
    x = as64(inits.variance_scaling()(KEY, shape))
    variance = 1.0 / 100
    stddev = math.sqrt(variance) / 0.87962566103423978
    assert np.abs(x).max() <= 2 * stddev * (1 + 1e-6)
    assert x.var() == pytest.approx(variance, rel=0.05)


def test_variance_scaling_scalar_uses_fans_one():
    x = sample(inits.variance_scaling(3.0, "fan_in", "uniform"), ())
    assert np.abs(x).max() <= 3.0 * (1 + 1e-6)
    assert x.var() == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 0.0},
        {"scale": -1.0},
        {"mode": "fan_sum"},
        {"distribution": "cauchy"},
    ],
)
def test_variance_scaling_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        inits.variance_scaling(**kwargs)


# ------------------------------------------------------------------------- glorot


@pytest.mark.parametrize("shape", [(100, 400), (3, 3, 64, 80), (40_000,), ()])
def test_glorot_uniform(shape):
    x = sample(inits.glorot_uniform(), shape)
    fan_in, fan_out = tf1_fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(x).max() <= limit * (1 + 1e-6)
    assert np.abs(x).max() >= 0.99 * limit
    assert x.var() == pytest.approx(limit**2 / 3, rel=0.05)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_glorot_normal(shape):
    x = sample(inits.glorot_normal(), shape)
    fan_in, fan_out = tf1_fans(shape)
    variance = 2.0 / (fan_in + fan_out)
    stddev = math.sqrt(variance) / 0.87962566103423978
    assert np.abs(x).max() <= 2 * stddev * (1 + 1e-6)
    assert x.var() == pytest.approx(variance, rel=0.05)


def test_glorot_uniform_is_the_default_initializer():
    shape = (6, 4)

    def fn():
        with js.variable_scope("d"):
            return js.get_variable("w", shape)

    out = js.init_with_output(fn, KEY)[0]
    expected = inits.glorot_uniform()(
        jax.random.fold_in(KEY, stable_hash("d/w")), shape, jnp.float32
    )
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("n", [1, 4, 16])
def test_orthogonal_square(n):
    q = np.asarray(inits.orthogonal()(KEY, (n, n)), np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(n), atol=1e-5)


def test_orthogonal_wide_and_tall():
    wide = np.asarray(inits.orthogonal()(KEY, (3, 7)), np.float64)
    np.testing.assert_allclose(wide @ wide.T, np.eye(3), atol=1e-5)
    tall = np.asarray(inits.orthogonal()(KEY, (7, 3)), np.float64)
    np.testing.assert_allclose(tall.T @ tall, np.eye(3), atol=1e-5)


def test_orthogonal_conv_shape_flattens_leading_axes():
    q = np.asarray(inits.orthogonal()(KEY, (2, 3, 4)), np.float64)
    flat = q.reshape(6, 4)  # TF1: (prod(shape[:-1]), shape[-1])
    np.testing.assert_allclose(flat.T @ flat, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_orthogonal_gain(gain):
    q = np.asarray(inits.orthogonal(gain=gain)(KEY, (5, 5)), np.float64)
    np.testing.assert_allclose(q @ q.T, gain**2 * np.eye(5), atol=1e-4)


@pytest.mark.parametrize("shape", [(), (4,)])
def test_orthogonal_needs_two_dimensions(shape):
    # TF1: ValueError("The tensor to initialize must be at least two-dimensional")
    with pytest.raises(ValueError, match="2") as info:
        inits.orthogonal()(KEY, shape)
    assert isinstance(info.value, errors.JscopeError)


# ------------------------------------------------------------------------ dtypes


RANDOM_FACTORIES = {
    "random_normal": lambda dt: inits.random_normal(dtype=dt),
    "truncated_normal": lambda dt: inits.truncated_normal(dtype=dt),
    "random_uniform": lambda dt: inits.random_uniform(dtype=dt),
    "glorot_uniform": lambda dt: inits.glorot_uniform(dtype=dt),
    "glorot_normal": lambda dt: inits.glorot_normal(dtype=dt),
    "variance_scaling": lambda dt: inits.variance_scaling(dtype=dt),
    "orthogonal": lambda dt: inits.orthogonal(dtype=dt),
    "constant": lambda dt: inits.constant(0.5, dtype=dt),
    "zeros": lambda dt: inits.zeros(dt),
    "ones": lambda dt: inits.ones(dt),
}


@pytest.mark.parametrize("name", sorted(RANDOM_FACTORIES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_factory_dtypes(name, dtype):
    make = RANDOM_FACTORIES[name]
    # dtype given when calling
    out = make(jnp.float32)(KEY, (8, 8), dtype)
    assert out.dtype == np.dtype(dtype)
    assert out.shape == (8, 8)
    assert np.all(np.isfinite(as64(out)))
    # dtype given to the factory is the default of the initializer
    out = make(dtype)(KEY, (8, 8))
    assert out.dtype == np.dtype(dtype)
    # and the default default is float32
    if name not in ("zeros", "ones"):
        assert RANDOM_FACTORIES[name](jnp.float32)(KEY, (8, 8)).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(RANDOM_FACTORIES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_factories_in_get_variable_with_dtype(name, dtype):
    init = RANDOM_FACTORIES[name](jnp.float32)

    def fn():
        return js.get_variable("w", [4, 4], dtype, initializer=init)

    out, variables = js.init_with_output(fn, KEY)
    assert out.dtype == np.dtype(dtype)
    assert variables["params"]["w"].dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    "name",
    [
        "random_normal",
        "truncated_normal",
        "glorot_uniform",
        "glorot_normal",
        "variance_scaling",
        "orthogonal",
    ],
)
def test_float_only_factories_reject_int_dtype(name):
    init = RANDOM_FACTORIES[name](jnp.float32)
    with pytest.raises(errors.JscopeError, match="int32"):
        init(KEY, (4, 4), jnp.int32)


# ------------------------------------------------------------------------ aliases


@pytest.mark.parametrize(
    "base",
    [
        "random_normal",
        "truncated_normal",
        "random_uniform",
        "constant",
        "zeros",
        "ones",
        "variance_scaling",
        "glorot_uniform",
        "glorot_normal",
        "orthogonal",
    ],
)
def test_initializer_suffix_aliases_are_the_same_objects(base):
    assert getattr(inits, f"{base}_initializer") is getattr(inits, base)
    assert f"{base}_initializer" in inits.__all__
    assert base in inits.__all__


def test_initializers_reachable_from_package():
    assert js.initializers is inits
    assert js.initializers.random_normal_initializer is inits.random_normal


def test_out_sharding_argument_accepted():
    """JAX ≥ 0.10 passes out_sharding; every factory's result takes it."""
    for name, make in RANDOM_FACTORIES.items():
        out = make(jnp.float32)(KEY, (4, 4), jnp.float32, out_sharding=None)
        assert out.shape == (4, 4), name
