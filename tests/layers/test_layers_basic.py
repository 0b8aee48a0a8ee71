"""Dropout, pooling and flatten: rules, Flax linen's pools and NumPy loops."""

import itertools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import path_match
from layer_checks import Tolerance
from layer_checks import numpy_normal as _x

import jscope as js
from jscope import errors, layers

F32 = jnp.float32
BF16 = jnp.bfloat16
KEY = jax.random.key(0)
RNGS = {"dropout": jax.random.key(7)}


_tol = Tolerance(bf16=(2e-2, 2e-2), other=(1e-6, 1e-6))
_close = _tol.close


# ------------------------------------------------------------------- dropout


def _drop(rate=0.5, training=True, noise_shape=None, name=None):
    def f(x):
        return layers.dropout(
            x, rate, training=training, noise_shape=noise_shape, name=name
        )

    return f


@pytest.mark.parametrize(
    "rate,training", [(0.5, False), (0.0, True), (0.0, False)], ids=str
)
def test_inactive_dropout_returns_the_inputs_and_needs_no_key(rate, training):
    x = _x((3, 4))
    f = _drop(rate, training)
    assert js.init(f, KEY, x) == {}
    np.testing.assert_array_equal(js.apply(f, {}, x), x)  # no rngs given
    np.testing.assert_array_equal(jax.jit(lambda x: js.apply(f, {}, x))(x), x)


def test_missing_dropout_rng_at_apply_is_a_missing_rng_error():
    def f(x):
        with js.variable_scope("net"):
            return layers.dropout(x, 0.5, training=True)

    x = _x((3, 4))
    with pytest.raises(
        errors.MissingRngError, match=path_match("'dropout'", "net/dropout")
    ):
        js.apply(f, {}, x)
    with pytest.raises(errors.MissingRngError, match=r"rngs=\{'dropout': key\}"):
        js.apply(f, {}, x, rngs={"params": jax.random.key(1)})


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.75])
@pytest.mark.parametrize("runner", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_kept_values_are_scaled_and_the_kept_fraction_is_one_minus_rate(rate, runner):
    x = _x((200, 100)) + 3.0  # no zeros in the inputs
    f = _drop(rate)
    y = np.asarray(
        runner(lambda x, r: js.apply(f, {}, x, rngs={"dropout": r}))(x, RNGS["dropout"])
    )
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    n = kept.size
    # Within five standard deviations of a Binomial(n, 1 - rate).
    assert abs(kept.sum() - n * (1 - rate)) < 5 * math.sqrt(n * rate * (1 - rate))


def test_mask_comes_from_the_dropout_stream_of_the_layer_scope():
    x = _x((4, 5)) + 3.0
    rate = 0.4

    def reference_key():
        with js.variable_scope("outer"), js.variable_scope("dropout"):
            return js.next_rng_key("dropout")

    def f(x):
        with js.variable_scope("outer"):
            return layers.dropout(x, rate, training=True)

    key = js.apply(reference_key, {}, rngs=RNGS)
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    expected = jnp.where(keep, x / (1 - rate), 0.0)
    _close(js.apply(f, {}, x, rngs=RNGS), expected)


def test_masks_are_deterministic_per_key_and_differ_per_layer():
    def two(x):
        return layers.dropout(x, 0.5, training=True), layers.dropout(
            x, 0.5, training=True
        )

    x = jnp.ones((64,))
    a1, b1 = js.apply(two, {}, x, rngs=RNGS)
    a2, b2 = js.apply(two, {}, x, rngs=RNGS)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(a1, b1)  # dropout and dropout_1 draw other keys
    a3, _ = js.apply(two, {}, x, rngs={"dropout": jax.random.key(8)})
    assert not np.array_equal(a1, a3)


def test_dropout_at_init_derives_its_key_from_the_init_rng():
    x = jnp.ones((64,))
    f = _drop(0.5)
    y1, v = js.init_with_output(f, KEY, x)
    y2, _ = js.init_with_output(f, KEY, x)
    assert v == {}
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(np.asarray(y1))) == {0.0, 2.0}


def test_gradient_is_the_scaled_mask():
    x = _x((6, 7))
    f = _drop(0.25)
    y = js.apply(f, {}, x, rngs=RNGS)
    g = jax.grad(lambda x: jnp.sum(js.apply(f, {}, x, rngs=RNGS)))(x)
    np.testing.assert_allclose(
        g, np.where(np.asarray(y) != 0, 1 / 0.75, 0.0), rtol=1e-6
    )


@pytest.mark.parametrize(
    "noise_shape,shared_axes",
    [((8, 1, 6), (1,)), ((1, 5, 1), (0, 2)), ((None, 1, None), (1,))],
    ids=["feature-maps", "time", "none-entries"],
)
def test_noise_shape_shares_the_mask_along_axes(noise_shape, shared_axes):
    x = jnp.ones((8, 5, 6))
    y = np.asarray(js.apply(_drop(0.5, noise_shape=noise_shape), {}, x, rngs=RNGS))
    for axis in shared_axes:
        first = np.take(y, [0], axis=axis)
        np.testing.assert_array_equal(y, np.broadcast_to(first, y.shape))
    assert 0 < (y == 0).mean() < 1


@pytest.mark.parametrize("noise_shape", [(8, 2, 6), (8, 5), (8, 5, 6, 1), (8, "a", 6)])
def test_bad_noise_shape(noise_shape):
    with pytest.raises(ValueError, match=path_match("noise_shape", "dropout")):
        js.apply(
            _drop(0.5, noise_shape=noise_shape), {}, jnp.ones((8, 5, 6)), rngs=RNGS
        )


def test_bfloat16_dropout():
    x = _x((50, 40), BF16) + 3
    y = js.apply(_drop(0.5), {}, x, rngs=RNGS)
    assert y.dtype == BF16
    kept = np.asarray(y != 0)
    _close(np.asarray(y, np.float32)[kept], np.asarray(x, np.float32)[kept] * 2, BF16)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ValueError, match=path_match("rate must be in [0, 1)", "drop")):
        js.apply(_drop(rate, name="drop"), {}, jnp.ones(3), rngs=RNGS)


def test_integer_inputs_are_refused_as_tf1_did():
    with pytest.raises(
        ValueError, match=path_match("floating-point inputs", "dropout")
    ):
        js.apply(_drop(0.5), {}, jnp.ones(3, jnp.int32), rngs=RNGS)


def test_traced_training_flag_is_a_type_error():
    def f(x, training):
        return layers.dropout(x, 0.5, training=training)

    with pytest.raises(
        TypeError, match=path_match("Python bool `training`", "dropout")
    ):
        jax.jit(lambda x, t: js.apply(f, {}, x, t, rngs=RNGS))(jnp.ones(3), True)
    # A static flag is fine under jit.
    out = jax.jit(lambda x, t: js.apply(f, {}, x, t, rngs=RNGS), static_argnums=1)(
        jnp.ones(3), False
    )
    np.testing.assert_array_equal(out, np.ones(3))


@pytest.mark.parametrize("split", [True, False])
def test_dropout_under_scan_splits_keys_per_step_when_asked(split):
    def step(c, x):
        return c, layers.dropout(x, 0.5, training=True)

    def f(xs):
        return js.scan(step, split_rngs={"dropout": split})(0, xs)[1]

    xs = jnp.ones((4, 64))
    ys = np.asarray(js.apply(f, {}, xs, rngs=RNGS))
    same = [np.array_equal(ys[0], ys[i]) for i in range(1, 4)]
    assert same == [not split] * 3
    assert set(np.unique(ys)) == {0.0, 2.0}


# ------------------------------------------------------------------- pooling

# (input shape, pool_size, strides, padding)
POOL_CASES = [
    ((2, 9, 3), 2, None, "VALID"),
    ((2, 9, 3), 3, 2, "SAME"),
    ((2, 7, 8, 3), (2, 3), (2, 1), "SAME"),
    ((1, 6, 6, 2), 3, 2, "valid"),
    ((1, 5, 6, 2), 2, 1, ((1, 0), (0, 1))),
    ((1, 4, 5, 6, 2), 2, (1, 2, 2), "SAME"),
]
POOL_IDS = ["1d-valid", "1d-same", "2d-same", "2d-valid", "2d-explicit", "3d-same"]


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _flax_pool(kind, x, pool, strides, padding):
    n = x.ndim - 2
    window = _tuple(pool, n)
    strides = window if strides is None else _tuple(strides, n)
    padding = padding.upper() if isinstance(padding, str) else padding
    if kind == "max":
        return nn.max_pool(x, window, strides, padding)
    return nn.avg_pool(x, window, strides, padding, count_include_pad=False)


POOLS = {
    ("max", None): layers.max_pool,
    ("avg", None): layers.avg_pool,
    ("max", 1): layers.max_pool1d,
    ("max", 2): layers.max_pool2d,
    ("max", 3): layers.max_pool3d,
    ("avg", 1): layers.avg_pool1d,
    ("avg", 2): layers.avg_pool2d,
    ("avg", 3): layers.avg_pool3d,
}


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("named", [False, True], ids=["generic", "ranked"])
def test_pool_matches_flax(case, kind, named):
    shape, pool, strides, padding = case
    pool_fn = POOLS[kind, len(shape) - 2 if named else None]
    x = _x(shape)

    def f(x):
        return pool_fn(x, pool, strides=strides, padding=padding)

    assert js.init(f, KEY, x) == {}

    @jax.jit
    def both(x):
        ours = lambda x: js.apply(f, {}, x)  # noqa: E731
        theirs = lambda x: _flax_pool(kind, x, pool, strides, padding)  # noqa: E731
        return [
            (g(x), jax.grad(lambda x, g=g: jnp.sum(g(x) * jnp.cos(g(x))))(x))
            for g in (ours, theirs)
        ]

    (y1, g1), (y2, g2) = both(x)
    assert y1.shape == y2.shape
    _close(y1, y2)
    _close(g1, g2)


def _numpy_pool_2d(kind, x, k, s, padding):
    """Pooling written out with TF1's padding rule; padding never counts."""
    out = []
    for size, kk, ss in zip(x.shape[1:3], k, s, strict=True):
        if padding == "SAME":
            n_out = -(-size // ss)
            lo = max((n_out - 1) * ss + kk - size, 0) // 2
        else:
            n_out, lo = (size - kk) // ss + 1, 0
        out.append(
            [(max(o * ss - lo, 0), min(o * ss - lo + kk, size)) for o in range(n_out)]
        )
    reduce = np.max if kind == "max" else np.mean
    y = np.empty((x.shape[0], len(out[0]), len(out[1]), x.shape[3]), x.dtype)
    for (i, (a, b)), (j, (c, d)) in itertools.product(
        enumerate(out[0]), enumerate(out[1])
    ):
        y[:, i, j] = reduce(x[:, a:b, c:d], axis=(1, 2))
    return y


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "size,k,s,padding",
    [
        ((5, 6), (2, 2), (2, 2), "SAME"),
        ((7, 7), (3, 2), (2, 3), "SAME"),
        ((6, 5), (3, 3), (1, 2), "VALID"),
    ],
)
def test_pool_matches_numpy_windows(kind, size, k, s, padding):
    x = _x((2, *size, 3))
    y = js.apply(lambda x: POOLS[kind, 2](x, k, s, padding), {}, x)
    np.testing.assert_allclose(
        y, _numpy_pool_2d(kind, np.asarray(x), k, s, padding), rtol=1e-6, atol=1e-6
    )


def test_same_avg_pool_counts_only_the_inputs_covered():
    x = jnp.ones((1, 5, 5, 1))
    y = js.apply(lambda x: layers.avg_pool2d(x, 3, 2, "SAME"), {}, x)
    np.testing.assert_array_equal(y, np.ones((1, 3, 3, 1)))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_bfloat16(kind):
    x = _x((2, 6, 6, 3), BF16)
    y = js.apply(lambda x: POOLS[kind, None](x, 2, padding="SAME"), {}, x)
    assert y.dtype == BF16
    _close(y, _flax_pool(kind, x.astype(F32), 2, None, "SAME"), BF16)


def test_max_pool_of_integers_pads_with_the_lowest_value():
    x = -jnp.arange(1, 26, dtype=jnp.int32).reshape(1, 5, 5, 1)
    y = js.apply(lambda x: layers.max_pool(x, 2, padding="SAME"), {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(
        y, _numpy_pool_2d("max", np.asarray(x), (2, 2), (2, 2), "SAME")
    )


def test_pooling_works_outside_a_run():
    x = jnp.arange(8.0).reshape(1, 8, 1)
    np.testing.assert_array_equal(layers.max_pool1d(x, 2)[0, :, 0], [1, 3, 5, 7])
    np.testing.assert_array_equal(layers.avg_pool1d(x, 4)[0, :, 0], [1.5, 5.5])


@pytest.mark.parametrize(
    "fn,shape,phrase",
    [
        (lambda x: layers.max_pool2d(x, 2), (1, 4, 4), "rank 4"),
        (lambda x: layers.avg_pool1d(x, 2), (1, 4, 4, 1), "rank 3"),
        (lambda x: layers.max_pool3d(x, 2), (1, 4, 4, 1), "rank 5"),
        (lambda x: layers.max_pool(x, 2), (4, 4), "rank 3, 4 or 5"),
        (lambda x: layers.avg_pool(x, 2), (1, 2, 2, 2, 2, 1), "rank 3, 4 or 5"),
        (lambda x: layers.max_pool(x, (2, 2)), (1, 4, 1), "pool_size"),
        (lambda x: layers.avg_pool(x, 0), (1, 4, 1), "pool_size"),
        (lambda x: layers.max_pool(x, 2, strides=(1, 0)), (1, 4, 4, 1), "strides"),
        (lambda x: layers.avg_pool(x, 2, padding="FULL"), (1, 4, 1), "unknown padding"),
    ],
)
def test_bad_pool_arguments(fn, shape, phrase):
    def f(x):
        with js.variable_scope("net"):
            return fn(x)

    with pytest.raises(ValueError, match=r"(?s)Layer net/.*" + re.escape(phrase)):
        js.apply(f, {}, jnp.ones(shape))


def test_variable_free_layers_take_tf1_default_scope_names():
    """Each opens its TF1 scope, so a later scope of that name is uniquified."""
    seen = []

    def f(x):
        y = layers.max_pool2d(x, 2)
        y = layers.avg_pool(y, 2, padding="SAME")
        y = layers.dropout(y, 0.5)
        y = layers.flatten(y)
        for kind in ("max_pooling2d", "average_pooling2d", "dropout", "flatten"):
            with js.variable_scope(None, default_name=kind) as scope:
                seen.append(scope.name)
        with js.variable_scope("named"):
            layers.dropout(y, 0.5, name="drop")
            with js.variable_scope(None, default_name="drop") as scope:
                seen.append(scope.name)
        return y

    js.apply(f, {}, jnp.ones((1, 4, 4, 2)))
    assert seen == [
        "max_pooling2d_1",
        "average_pooling2d_1",
        "dropout_1",
        "flatten_1",
        "named/drop_1",
    ]


# ------------------------------------------------------------------- flatten


@pytest.mark.parametrize(
    "shape,expected",
    [((2, 3, 4), (2, 12)), ((5,), (5, 1)), ((3, 1), (3, 1)), ((0, 4, 2), (0, 8))],
)
def test_flatten_keeps_the_batch_axis(shape, expected):
    x = jnp.arange(math.prod(shape), dtype=F32).reshape(shape)
    y = js.apply(layers.flatten, {}, x)
    assert y.shape == expected
    np.testing.assert_array_equal(y, np.asarray(x).reshape(expected))
    np.testing.assert_array_equal(
        jax.jit(lambda x: js.apply(layers.flatten, {}, x))(x), y
    )


def test_flatten_of_a_scalar_is_refused():
    with pytest.raises(ValueError, match=path_match("batch axis", "flatten")):
        js.apply(layers.flatten, {}, jnp.ones(()))


def test_a_small_cnn_with_every_basic_layer():
    def cnn(x, training):
        h = layers.conv2d(x, 4, 3, padding="SAME", activation=jax.nn.relu)
        h = layers.max_pool2d(h, 2)
        h = layers.dropout(h, 0.25, training=training, noise_shape=(None, 1, 1, None))
        h = layers.avg_pool2d(h, 2, padding="SAME")
        return layers.dense(layers.flatten(h), 3)

    x = _x((2, 8, 8, 1))
    v = js.init(cnn, KEY, x, True)
    assert list(js.flatten(v)) == [
        "params/conv2d/kernel",
        "params/conv2d/bias",
        "params/dense/kernel",
        "params/dense/bias",
    ]
    assert v["params"]["dense"]["kernel"].shape == (2 * 2 * 4, 3)
    p = js.flatten(v["params"])
    h = jax.nn.relu(
        jax.lax.conv_general_dilated(
            x,
            p["conv2d/kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + p["conv2d/bias"]
    )
    h = nn.max_pool(h, (2, 2), (2, 2))
    h = nn.avg_pool(h, (2, 2), (2, 2), "SAME", count_include_pad=False)
    expected = h.reshape(2, -1) @ p["dense/kernel"] + p["dense/bias"]
    _close(js.apply(cnn, v, x, False), expected)
    with pytest.raises(errors.MissingRngError):
        js.apply(cnn, v, x, True)
    assert js.apply(cnn, v, x, True, rngs=RNGS).shape == (2, 3)
