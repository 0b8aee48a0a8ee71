"""jscope.slim's layers beyond the recorded numbers: checkpoints, layouts, state,
sharing and errors (DESIGN §5).

The numbers themselves are checked against TF1 in ``test_slim.py``; here the
same network loads the TF1 checkpoint tf-slim saved, NCHW is checked against
NHWC, and every misuse raises a `jscope.errors` class naming the layer's scope.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
import jscope.errors as jse
import jscope.slim as slim
from tests.test_slim import FIXTURES, net

DATA = pathlib.Path(__file__).resolve().parent / "data" / "slim"
X4 = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))


def init_apply(fn, x, **apply_kwargs):
    v = js.init(fn, jax.random.key(0), x)
    return v, js.apply(fn, v, x, **apply_kwargs)


# --------------------------------------------------------- TF1 checkpoint, losses


def test_tf1_checkpoint_of_a_slim_net_restores_by_name():
    x = FIXTURES["net/x"]
    v = js.init(net, jax.random.key(0), x)
    restored = js.tf1.restore(DATA / "net_ckpt", v)
    names = {name for name, _, _ in js.tf1.list_variables(DATA / "net_ckpt")}
    flat = js.flatten(restored)
    assert {p.split("/", 1)[1] for p in flat} == names
    for path, value in flat.items():
        want = FIXTURES[f"net/after/{path.split('/', 1)[1]}"]
        np.testing.assert_array_equal(np.asarray(value), want)


def test_weights_regularizer_gives_tf1s_regularization_loss():
    def loss(x):
        net(x)
        return js.get_regularization_loss()

    x = FIXTURES["net/x"]
    v = js.init(net, jax.random.key(0), x)
    flat = {
        p: jnp.asarray(FIXTURES[f"net/var/{p.split('/', 1)[1]}"]) for p in js.flatten(v)
    }
    got, _ = js.apply(loss, js.unflatten(flat), x, mutable=["state"])
    np.testing.assert_allclose(float(got), float(FIXTURES["net/reg"]), rtol=1e-6)


def test_regularizers():
    w = jnp.array([1.0, -2.0])
    l1, l2 = slim.l1_regularizer(0.5), slim.l2_regularizer(0.5)
    assert l1 is not None and l2 is not None
    assert float(l1(w)) == 1.5 and float(l2(w)) == 1.25
    assert slim.l2_regularizer(0.0) is None and slim.l1_regularizer(0) is None
    with pytest.raises(jse.LayerArgumentError, match="less than 0"):
        slim.l2_regularizer(-1.0)
    with pytest.raises(jse.ArgumentTypeError, match="scale must be a Python float"):
        slim.l1_regularizer("0.1")  # type: ignore[arg-type]


# ------------------------------------------------------------------ NCHW layout


NCHW_LAYERS = {
    "conv2d": lambda x, df: slim.conv2d(x, 4, 3, stride=2, data_format=df),
    "conv2d_transpose": lambda x, df: slim.conv2d_transpose(
        x, 2, 3, stride=2, data_format=df
    ),
    "separable_conv2d": lambda x, df: slim.separable_conv2d(
        x, 5, 3, depth_multiplier=2, data_format=df
    ),
    "depthwise": lambda x, df: slim.separable_conv2d(x, None, 3, data_format=df),
    "max_pool2d": lambda x, df: slim.max_pool2d(x, 3, padding="SAME", data_format=df),
    "avg_pool2d": lambda x, df: slim.avg_pool2d(x, 3, padding="SAME", data_format=df),
    "batch_norm": lambda x, df: slim.batch_norm(
        x, scale=True, data_format=df, updates_collections=None
    ),
}


@pytest.mark.parametrize("layer", sorted(NCHW_LAYERS))
def test_nchw_is_nhwc_transposed(layer):
    fn = NCHW_LAYERS[layer]
    v = js.init(lambda x: fn(x, "NHWC"), jax.random.key(0), X4)
    v = jax.tree.map(
        lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size, v
    )
    y, nhwc = js.apply(lambda x: fn(x, "NHWC"), v, X4, mutable=True)
    xt = jnp.transpose(X4, (0, 3, 1, 2))
    yt, nchw = js.apply(lambda x: fn(x, "NCHW"), v, xt, mutable=True)
    np.testing.assert_allclose(jnp.transpose(yt, (0, 2, 3, 1)), y, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(nhwc), jax.tree.leaves(nchw), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- state, sharing, modes


def test_batch_norm_state_and_modes():
    def f(x, training):
        return slim.batch_norm(x, is_training=training, updates_collections=None)

    v = js.init(f, jax.random.key(0), X4, True)
    assert set(v) == {"params", "state"}
    assert set(v["state"]["BatchNorm"]) == {"moving_mean", "moving_variance"}
    # Nothing moves at init; training at apply needs a mutable state.
    np.testing.assert_array_equal(v["state"]["BatchNorm"]["moving_mean"], 0.0)
    with pytest.raises(jse.NotMutableError):
        js.apply(f, v, X4, True)
    y = js.apply(f, v, X4, False)  # inference: moving statistics, no update
    np.testing.assert_allclose(y, X4 / np.sqrt(1.001), rtol=1e-6)
    with pytest.raises(jse.LayerTypeError, match="Python bool `is_training`"):
        jax.jit(lambda v, t: js.apply(f, v, X4, t, mutable=True))(v, True)


def test_default_updates_collection_updates_in_place_like_none():
    def f(x, updates):
        return slim.batch_norm(x, updates_collections=updates)

    v = js.init(f, jax.random.key(0), X4, None)
    a = js.apply(f, v, X4, None, mutable=["state"])
    b = js.apply(f, v, X4, "update_ops", mutable=["state"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert not np.allclose(b[1]["state"]["BatchNorm"]["moving_mean"], 0.0)


def test_trainable_false_puts_variables_in_state():
    v = js.init(
        lambda x: slim.fully_connected(x, 3, trainable=False),
        jax.random.key(0),
        jnp.ones((2, 4)),
    )
    assert set(v) == {"state"} and set(v["state"]["fully_connected"]) == {
        "weights",
        "biases",
    }


def test_reuse_shares_and_reuse_off_refuses():
    def shared(x):
        a = slim.conv2d(x, 4, 3, scope="c")
        return slim.conv2d(x, 4, 3, scope="c", reuse=True) - a

    v, y = init_apply(shared, X4)
    assert list(js.flatten(v)) == ["params/c/weights", "params/c/biases"]
    np.testing.assert_array_equal(y, 0.0)

    def twice(x):
        slim.conv2d(x, 4, 3, scope="c")
        return slim.conv2d(x, 4, 3, scope="c")

    with pytest.raises(jse.VariableExistsError, match="c/weights already exists"):
        js.init(twice, jax.random.key(0), X4)


def test_default_scopes_are_uniquified_and_normalizer_nests():
    def f(x):
        with slim.arg_scope([slim.batch_norm], scale=True):
            x = slim.conv2d(x, 4, 3, normalizer_fn=slim.batch_norm)
            x = slim.conv2d(x, 4, 3)
        return slim.layer_norm(slim.fully_connected(slim.flatten(x), 2))

    v = js.init(f, jax.random.key(0), X4)
    assert list(js.flatten(v)) == [
        "params/Conv/weights",
        "params/Conv/BatchNorm/gamma",  # tf-slim's core-layer path: gamma first
        "params/Conv/BatchNorm/beta",
        "params/Conv_1/weights",
        "params/Conv_1/biases",
        "params/fully_connected/weights",
        "params/fully_connected/biases",
        "params/LayerNorm/beta",
        "params/LayerNorm/gamma",
        "state/Conv/BatchNorm/moving_mean",
        "state/Conv/BatchNorm/moving_variance",
    ]


def test_dropout():
    f = lambda x, **kw: slim.dropout(x, keep_prob=0.25, **kw)  # noqa: E731
    x = jnp.ones((4000,))
    y = js.apply(f, {}, x, rngs={"dropout": jax.random.key(3)})
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 4.0}
    assert 0.2 < float(jnp.mean(y > 0)) < 0.3
    seeded = js.apply(
        lambda x: f(x, seed=7), {}, x, rngs={"dropout": jax.random.key(3)}
    )
    assert not np.array_equal(seeded, y)
    np.testing.assert_array_equal(js.apply(lambda x: f(x, is_training=False), {}, x), x)
    np.testing.assert_array_equal(
        js.apply(lambda x: slim.dropout(x, keep_prob=1.0), {}, x), x
    )
    with pytest.raises(jse.MissingRngError):
        js.apply(f, {}, x)
    with pytest.raises(
        jse.LayerArgumentError, match=r"keep_prob must be .* in \(0, 1\]"
    ):
        js.apply(lambda x: slim.dropout(x, keep_prob=0.0), {}, x)
    with pytest.raises(jse.LayerArgumentError, match="noise_shape"):
        js.apply(
            lambda x: slim.dropout(x, noise_shape=(3,)), {}, x, rngs=jax.random.key(0)
        )
    mask = js.apply(
        lambda x: slim.dropout(x, noise_shape=(2, 1)),
        {},
        jnp.ones((2, 50)),
        rngs=jax.random.key(0),
    )
    assert all(len(np.unique(np.asarray(row))) == 1 for row in mask)


def test_repeat_and_stack_with_partial_and_default_names():
    import functools

    fc = functools.partial(slim.fully_connected, activation_fn=None)
    v = js.init(
        lambda x: slim.stack(x, fc, [3, (2,)]), jax.random.key(0), jnp.ones((2, 4))
    )
    assert list(v["params"]["Stack"]) == ["fully_connected_1", "fully_connected_2"]
    with pytest.raises(jse.LayerTypeError, match="stack_args need to be a list"):
        js.init(lambda x: slim.stack(x, fc, 3), jax.random.key(0), jnp.ones((2, 4)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- errors


BAD = [
    (
        lambda x: slim.conv2d(x, 4, 3, padding="FULL"),
        jse.LayerArgumentError,
        "padding must be",
    ),
    (
        lambda x: slim.conv2d(x, 4, 3, data_format="NCDHW"),
        jse.LayerArgumentError,
        "NCHW or NHWC",
    ),
    (lambda x: slim.conv2d(x, 4, [3, 3, 3]), jse.LayerArgumentError, "kernel_size"),
    (
        lambda x: slim.conv2d(x, 0, 3),
        jse.LayerArgumentError,
        "num_outputs must be positive",
    ),
    (
        lambda x: slim.conv2d(x, 4.0, 3),  # type: ignore[arg-type]
        jse.LayerTypeError,
        "num_outputs must be an int",
    ),
    (
        lambda x: slim.conv2d(x, 4, "3"),  # type: ignore[arg-type]
        jse.LayerTypeError,
        "kernel_size must be an int",
    ),
    (lambda x: slim.conv2d(x[0], 4, 3), jse.LayerArgumentError, "rank 4"),
    (
        lambda x: slim.conv2d(x.astype(jnp.int32), 4, 3),
        jse.LayerTypeError,
        "floating-point",
    ),
    (
        lambda x: slim.conv2d(x, 4, 3, variables_collections=["w"]),
        jse.UnsupportedArgumentError,
        "variables_collections",
    ),
    (
        lambda x: slim.fully_connected(x, 4, outputs_collections="end_points"),
        jse.UnsupportedArgumentError,
        "outputs_collections",
    ),
    (
        lambda x: slim.fully_connected(x[0, 0, 0], 4),
        jse.LayerArgumentError,
        "rank >= 2",
    ),
    (
        lambda x: slim.separable_conv2d(x, 4, 3, depth_multiplier=0),
        jse.LayerArgumentError,
        "depth_multiplier",
    ),
    (
        lambda x: slim.conv2d_transpose(x, 4, 3, data_format=None),  # type: ignore[arg-type]
        jse.LayerArgumentError,
        "NCHW or NHWC",
    ),
    (
        lambda x: slim.batch_norm(x, batch_weights=jnp.ones(2)),
        jse.UnsupportedArgumentError,
        "batch_weights",
    ),
    (lambda x: slim.batch_norm(x, renorm=True), jse.UnsupportedArgumentError, "renorm"),
    (
        lambda x: slim.batch_norm(x, zero_debias_moving_mean=True),
        jse.UnsupportedArgumentError,
        "zero_debias",
    ),
    (
        lambda x: slim.batch_norm(x, param_initializers={"gama": None}),
        jse.LayerArgumentError,
        "unknown keys",
    ),
    (
        lambda x: slim.layer_norm(x, begin_norm_axis=4),
        jse.LayerArgumentError,
        "must be < rank",
    ),
    (
        lambda x: slim.layer_norm(x, begin_params_axis=-5),
        jse.LayerArgumentError,
        "begin_params_axis",
    ),
    (
        lambda x: slim.max_pool2d(x, 2, padding="same "),
        jse.LayerArgumentError,
        "padding",
    ),
    (lambda x: slim.flatten(x[0, 0, 0, 0]), jse.LayerArgumentError, "at least 2"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_arguments_raise_errors_naming_the_layer_scope(i):
    fn, cls, phrase = BAD[i]

    def in_scope(x):
        with js.variable_scope("model"):
            return fn(x)

    with pytest.raises(cls, match=phrase) as e:
        js.init(in_scope, jax.random.key(0), X4)
    assert isinstance(e.value, ValueError | TypeError)
    assert "model" in str(e.value) and "slim." in str(e.value)


def test_an_arg_scope_function_in_tf_slims_style():
    def net_arg_scope(weight_decay=1e-4):
        with (
            slim.arg_scope(
                [slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)
            ),
            slim.arg_scope([slim.conv2d], padding="VALID") as sc,
        ):
            return sc

    sc = net_arg_scope()  # built once, outside any run

    def model(x):
        with slim.arg_scope(sc):
            return slim.conv2d(x, 2, 3), js.get_regularization_loss()

    v = js.init(model, jax.random.key(0), X4)
    (y, reg), _ = js.apply(model, v, X4, mutable=True)
    assert y.shape == (2, 4, 4, 2)
    w = v["params"]["Conv"]["weights"]
    np.testing.assert_allclose(reg, 1e-4 * jnp.sum(w**2) / 2, rtol=1e-6)


def test_the_readme_slim_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("### tf-slim", 1)[1].split("```python", 1)[1].split("```")[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape == (2, 10)
    flat = js.flatten(scope["variables"])
    assert "state/conv1/conv1_2/BatchNorm/moving_variance" in flat
    assert not np.allclose(flat["state/conv1/conv1_1/BatchNorm/moving_mean"], 0.0)


@pytest.mark.parametrize("mode", ["FAN_IN", "FAN_OUT", "FAN_AVG"])
@pytest.mark.parametrize("uniform", [False, True])
def test_contrib_variance_scaling_initializer(mode, uniform):
    shape = (3, 3, 40, 60)  # fans: in 360, out 540
    n = {"FAN_IN": 360.0, "FAN_OUT": 540.0, "FAN_AVG": 450.0}[mode]
    init = slim.variance_scaling_initializer(2.0, mode, uniform)
    w = np.asarray(init(jax.random.key(0), shape))
    assert w.shape == shape and w.dtype == np.float32
    if uniform:
        limit = np.sqrt(3 * 2.0 / n)
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
        np.testing.assert_allclose(w.std(), np.sqrt(2.0 / n), rtol=0.02)
    else:  # contrib: a normal of stddev sqrt(1.3 * factor / n), cut at 2 stddevs
        stddev = np.sqrt(1.3 * 2.0 / n)
        assert np.abs(w).max() <= 2 * stddev + 1e-6
        np.testing.assert_allclose(w.std(), stddev * 0.87962566, rtol=0.02)
    seeded = np.asarray(
        slim.variance_scaling_initializer(2.0, mode, uniform, seed=1)(
            jax.random.key(0), shape
        )
    )
    assert not np.array_equal(seeded, w)


def test_xavier_initializer_and_initializer_errors():
    w = slim.xavier_initializer()(jax.random.key(0), (40, 60))
    limit = np.sqrt(6.0 / 100)
    assert float(jnp.abs(w).max()) <= limit
    f = lambda x: slim.fully_connected(  # noqa: E731
        x, 3, weights_initializer=slim.xavier_initializer(uniform=False)
    )
    assert js.init(f, jax.random.key(0), jnp.ones((2, 4)))["params"]
    with pytest.raises(jse.ArgumentTypeError, match="Unknown mode 'fan_in'"):
        slim.variance_scaling_initializer(mode="fan_in")
    with pytest.raises(jse.ArgumentTypeError, match="non-floating point"):
        slim.xavier_initializer(dtype=jnp.int32)
