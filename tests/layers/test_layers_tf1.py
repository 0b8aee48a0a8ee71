"""`jscope.layers` against ``tf.compat.v1.layers`` (DESIGN §5.4-§5.6).

The fixtures (tests/data/tf1_layers/*.npz) were made by the script there with
TensorFlow: each holds TF1's variable names in creation order, the variables'
(random) values, an input, TF1's output and, for batch normalization, the moving
statistics after one training step. Here the same call runs in jscope on those
values; outputs agree to 1e-5 and names exactly. For ``channels_first`` layers
TF1's CPU kernels refuse NCHW, so their outputs were computed by the same TF1
layer in ``channels_last`` on the transposed input (``manifest.json`` says which).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
from jscope import errors, layers

DATA = pathlib.Path(__file__).parents[1] / "data" / "tf1_layers"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
KEY = jax.random.key(0)
TOL = dict(rtol=1e-5, atol=1e-5)
CF = dict(data_format="channels_first")

# case: the same call in jscope, x -> y.
CALLS = {
    "separable_conv2d_same": lambda x: layers.separable_conv2d(
        x, 5, 3, padding="same", depth_multiplier=2
    ),
    "separable_conv2d_strided": lambda x: layers.separable_conv2d(
        x, 4, (3, 2), strides=2, padding="valid", activation=jax.nn.relu
    ),
    "separable_conv2d_dilated_nobias": lambda x: layers.separable_conv2d(
        x, 3, 3, dilation_rate=2, padding="same", use_bias=False, name="sep"
    ),
    "separable_conv2d_channels_first": lambda x: layers.separable_conv2d(
        x, 4, 3, padding="same", depth_multiplier=2, **CF
    ),
    "conv1d_channels_first": lambda x: layers.conv1d(x, 4, 3, padding="same", **CF),
    "conv2d_channels_first": lambda x: layers.conv2d(
        x, 4, 3, strides=2, padding="same", **CF
    ),
    "conv3d_channels_first": lambda x: layers.conv3d(x, 2, 2, **CF),
    "conv2d_transpose_channels_first": lambda x: layers.conv2d_transpose(
        x, 4, 3, strides=2, padding="same", **CF
    ),
    "max_pooling2d_channels_first": lambda x: layers.max_pool2d(
        x, 3, 2, padding="same", **CF
    ),
    "average_pooling2d_channels_first": lambda x: layers.avg_pool2d(
        x, 3, 2, padding="same", **CF
    ),
    "max_pooling1d_channels_first": lambda x: layers.max_pool1d(x, 2, 2, **CF),
    "average_pooling3d_channels_first": lambda x: layers.avg_pool3d(x, 2, 1, **CF),
}

# case: batch_normalization's keyword arguments there and here.
BATCH_NORMS = {
    "batch_normalization_nhwc": {},
    "batch_normalization_nchw": dict(axis=1),
    "batch_normalization_2d": {},
    "batch_normalization_nhwc_unfused": dict(fused=False),
    "batch_normalization_3d_axis1": dict(axis=1),
    "batch_normalization_momentum": dict(momentum=0.9, epsilon=1e-2, center=False),
}


def _load(case):
    d = np.load(DATA / f"{case}.npz")
    names = [str(n) for n in d["names"]]
    return d, names


def _tree_from(v, d, names):
    """``v`` with each variable replaced by the fixture's value of that name."""
    flat = js.flatten(v)
    paths = {p.split("/", 1)[1]: p for p in flat}
    return js.unflatten({paths[n]: jnp.asarray(d[f"var/{n}"]) for n in names})


def test_every_fixture_has_a_test():
    assert set(MANIFEST["cases"]) == set(CALLS) | set(BATCH_NORMS) | {
        "ema",
        "ema_num_updates",
    }


@pytest.mark.parametrize("case", sorted(CALLS))
def test_layer_matches_tf1(case):
    d, names = _load(case)
    x = jnp.asarray(d["input"])
    v = js.init(CALLS[case], KEY, x)
    # TF1's variable names, in TF1's creation order.
    assert [p.split("/", 1)[1] for p in js.flatten(v)] == names
    v = _tree_from(v, d, names)
    y = jax.jit(lambda v, x: js.apply(CALLS[case], v, x))(v, x)
    assert y.shape == d["output"].shape
    np.testing.assert_allclose(y, d["output"], **TOL)


@pytest.mark.parametrize("case", sorted(BATCH_NORMS))
def test_batch_normalization_matches_tf1(case):
    d, names = _load(case)
    kw = BATCH_NORMS[case]
    x = jnp.asarray(d["input"])

    def f(x, training):
        return layers.batch_normalization(x, training=training, name="bn", **kw)

    v = js.init(f, KEY, x, False)
    assert [p.split("/", 1)[1] for p in js.flatten(v)] == names
    v = _tree_from(v, d, names)
    # Inference, with the moving statistics.
    np.testing.assert_allclose(js.apply(f, v, x, False), d["output"], **TOL)
    # One training step: batch statistics, and the moving statistics updated.
    y, new = js.apply(f, v, x, True, mutable=["state"])
    np.testing.assert_allclose(y, d["output_train"], **TOL)
    for n in ("bn/moving_mean", "bn/moving_variance"):
        got = js.flatten(new)[f"state/{n}"]
        np.testing.assert_allclose(got, d[f"after/{n}"], **TOL)
    # The parameters are left alone.
    for n in names:
        if n.split("/")[-1] in ("gamma", "beta"):
            np.testing.assert_array_equal(js.flatten(new)[f"params/{n}"], d[f"var/{n}"])


@pytest.mark.parametrize(
    "case", ["batch_normalization_nhwc", "batch_normalization_nhwc_unfused"]
)
def test_the_rule_for_the_moving_variance(case):
    """Unbiased where TF1 fused (4-D, axis 1 or 3), biased elsewhere."""
    d, _ = _load(case)
    x = d["input"].astype(np.float64)
    n = x.size // x.shape[-1]
    var = x.reshape(-1, x.shape[-1]).var(0)
    stat = var if case.endswith("unfused") else var * n / (n - 1)
    want = 0.99 * d["var/bn/moving_variance"] + 0.01 * stat
    np.testing.assert_allclose(d["after/bn/moving_variance"], want, rtol=1e-5)


def test_batch_normalization_positional_order_is_tf1s():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 2, 2)), jnp.float32)

    def positional(x):
        # inputs, axis, momentum, epsilon, center, scale: TF1's order.
        return layers.batch_normalization(x, 1, 0.5, 1e-2, False, True)

    v = js.init(positional, KEY, x)
    assert set(js.flatten(v)) == {
        "params/batch_normalization/gamma",
        "state/batch_normalization/moving_mean",
        "state/batch_normalization/moving_variance",
    }
    assert v["params"]["batch_normalization"]["gamma"].shape == (3,)


def test_batch_normalization_trainable_false_keeps_gamma_beta_in_state():
    x = jnp.ones((2, 3))
    v = js.init(lambda x: layers.batch_normalization(x, trainable=False), KEY, x)
    assert "params" not in v
    assert set(v["state"]["batch_normalization"]) == {
        "gamma", "beta", "moving_mean", "moving_variance",
    }  # fmt: skip


def test_batch_norm_short_name_has_the_same_rule():
    d, names = _load("batch_normalization_nhwc")
    x = jnp.asarray(d["input"])
    f = lambda x: layers.batch_norm(x, training=True, name="bn")  # noqa: E731
    v = _tree_from(js.init(f, KEY, x), d, names)
    _, new = js.apply(f, v, x, mutable=["state"])
    got = new["state"]["bn"]["moving_variance"]
    np.testing.assert_allclose(got, d["after/bn/moving_variance"], **TOL)
    # fused=False: the biased variance (Flax's, tf.nn.moments').
    g = lambda x: layers.batch_norm(x, training=True, name="bn", fused=False)  # noqa: E731
    _, biased = js.apply(g, v, x, mutable=["state"])
    assert not np.allclose(biased["state"]["bn"]["moving_variance"], got, rtol=1e-5)


def test_fused_true_refuses_inputs_tf1_could_not_fuse():
    with pytest.raises(errors.LayerArgumentError, match="fused=True needs 4-D"):
        js.init(
            lambda x: layers.batch_normalization(x, fused=True), KEY, jnp.ones((2, 3))
        )


def test_fused_epsilon_is_at_least_tf1s_minimum():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 2, 3)), jnp.float32)
    v = js.init(lambda x: layers.batch_normalization(x), KEY, x)
    v["state"]["batch_normalization"]["moving_variance"] = jnp.zeros(3)

    def f(x, fused):
        return layers.batch_normalization(x, epsilon=1e-9, fused=fused)

    fused = js.apply(f, v, x, True)
    unfused = js.apply(f, v, x, False)
    np.testing.assert_allclose(fused, x / np.sqrt(1.001e-5), rtol=1e-5)
    np.testing.assert_allclose(unfused, x / np.sqrt(1e-9), rtol=1e-4)


# ------------------------------------------- TF1 arguments: work, or say what to do

UNSUPPORTED = {
    "renorm": lambda x: layers.batch_normalization(x, renorm=True),
    "renorm_clipping": lambda x: layers.batch_normalization(
        x, renorm_clipping={"rmax": 3.0}
    ),
    "virtual_batch_size": lambda x: layers.batch_normalization(x, virtual_batch_size=2),
    "adjustment": lambda x: layers.batch_normalization(x, adjustment=lambda s: s),
    "gamma_constraint": lambda x: layers.batch_normalization(
        x, gamma_constraint=jax.nn.relu
    ),
    "beta_constraint": lambda x: layers.batch_normalization(
        x, beta_constraint=jax.nn.relu
    ),
    "kernel_constraint": lambda x: layers.conv2d(x, 2, 1, kernel_constraint=abs),
    "bias_constraint": lambda x: layers.conv2d_transpose(x, 2, 1, bias_constraint=abs),
    "activity_regularizer": lambda x: layers.conv1d(
        x[0], 2, 1, activity_regularizer=jnp.sum
    ),
    "dense_kernel_constraint": lambda x: layers.dense(x, 2, kernel_constraint=abs),
    "dense_activity_regularizer": lambda x: layers.dense(
        x, 2, activity_regularizer=jnp.sum
    ),
    "depthwise_constraint": lambda x: layers.separable_conv2d(
        x, 2, 1, depthwise_constraint=abs
    ),
    "pointwise_constraint": lambda x: layers.separable_conv2d(
        x, 2, 1, pointwise_constraint=abs
    ),
}


@pytest.mark.parametrize("argument", sorted(UNSUPPORTED))
def test_unsupported_tf1_argument_is_a_type_error_naming_it(argument):
    with pytest.raises(errors.LayerTypeError) as info:
        js.init(UNSUPPORTED[argument], KEY, jnp.ones((2, 3, 3, 2)))
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert f"does not support {argument.removeprefix('dense_')}" in message
    assert any(w in message for w in ("Drop it", "Pass renorm=False")), message


def test_bad_data_format_is_named():
    with pytest.raises(errors.LayerArgumentError, match="unknown data_format 'NCHW'"):
        js.init(
            lambda x: layers.conv2d(x, 2, 1, data_format="NCHW"),
            KEY,
            jnp.ones((1, 2, 2, 2)),
        )
    with pytest.raises(
        errors.LayerArgumentError,
        match=r"spatial axes, channels first\), got shape \(2, 3\)",
    ):
        layers.max_pool2d(jnp.ones((2, 3)), 2, data_format="channels_first")


def test_dropout_seed():
    def f(x, seed):
        return layers.dropout(x, 0.5, training=True, seed=seed)

    x = jnp.ones(64)
    rngs = {"dropout": jax.random.key(3)}
    a = js.apply(f, {}, x, 1, rngs=rngs)
    again = js.apply(f, {}, x, 1, rngs=rngs)
    b = js.apply(f, {}, x, 2, rngs=rngs)
    unseeded = js.apply(f, {}, x, None, rngs=rngs)
    np.testing.assert_array_equal(a, again)  # reproducible
    assert not np.array_equal(a, b)  # the seed changes the mask
    assert not np.array_equal(a, unseeded)
    other_step = js.apply(f, {}, x, 1, rngs={"dropout": jax.random.key(4)})
    assert not np.array_equal(a, other_step)  # and so does the step's key
    with pytest.raises(errors.LayerTypeError, match="seed must be an int"):
        js.apply(f, {}, x, "1", rngs=rngs)


def test_tf1_positional_data_format_and_noise_shape_are_named():
    x = jnp.ones((1, 3, 4, 4))
    # TF1: conv2d(inputs, filters, kernel_size, strides, padding, data_format).
    with pytest.raises(
        errors.LayerTypeError, match="Pass data_format='channels_first'"
    ):
        js.init(lambda x: layers.conv2d(x, 2, 1, 1, "same", "channels_first"), KEY, x)
    with pytest.raises(errors.LayerTypeError, match="as output_padding"):
        js.init(
            lambda x: layers.conv2d_transpose(x, 2, 1, 1, "same", "channels_first"),
            KEY,
            x,
        )
    # TF1: dropout(inputs, rate, noise_shape, seed, training).
    with pytest.raises(errors.LayerTypeError, match="pass noise_shape= and seed="):
        layers.dropout(x, 0.5, [1, 3, 1, 1])
