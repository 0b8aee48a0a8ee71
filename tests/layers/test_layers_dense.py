"""`layers.dense` against Flax linen's ``nn.Dense`` and hand-written jax.numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import path_match
from layer_checks import Tolerance, check_params_and_input
from layer_checks import numpy_normal as _x

import jscope as js
from jscope import errors, layers

F32 = jnp.float32
BF16 = jnp.bfloat16
KEY = jax.random.key(0)
NORMAL = js.initializers.random_normal(stddev=0.5)


def _check_against(ours, theirs, params, x, dtype):
    return check_params_and_input(ours, theirs, params, x, _tol(dtype))


_tol = Tolerance(bf16=(3e-2, 5e-2), other=(1e-5, 1e-5))
_close = _tol.close
_tree_close = _tol.tree_close


# ------------------------------------------------------------------- numerics


@pytest.mark.parametrize(
    "shape,units,use_bias,activation",
    [
        ((3, 5), 7, True, None),
        ((2, 3, 4, 5), 6, True, jax.nn.relu),
        ((4,), 3, False, None),
        ((2, 1, 8), 1, False, jax.nn.relu),
    ],
    ids=["2d", "4d-relu", "1d-nobias", "units1-nobias-relu"],
)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_dense_matches_flax(shape, units, use_bias, activation, dtype):
    x = _x(shape, dtype)

    def f(x):
        return layers.dense(
            x, units, activation=activation, use_bias=use_bias, dtype=dtype,
            bias_initializer=NORMAL,
        )  # fmt: skip

    v = jax.jit(lambda k, x: js.init(f, k, x))(KEY, x)
    p = v["params"]["dense"]
    assert p["kernel"].shape == (shape[-1], units)
    assert p["kernel"].dtype == dtype
    assert sorted(p) == (["bias", "kernel"] if use_bias else ["kernel"])
    flax_dense = nn.Dense(units, use_bias=use_bias, dtype=dtype, param_dtype=dtype)

    def ours(p, x):
        return js.apply(f, {"params": {"dense": p}}, x)

    def theirs(p, x):
        y = flax_dense.apply({"params": p}, x)
        return y if activation is None else activation(y)

    _check_against(ours, theirs, p, x, dtype)


@pytest.mark.parametrize("runner", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_dense_matches_numpy(runner):
    x = _x((4, 3))
    f = js.transform(lambda x: layers.dense(x, 5, activation=jnp.tanh))
    v = f.init(KEY, x)
    k, b = v["params"]["dense"]["kernel"], v["params"]["dense"]["bias"]
    expected = np.tanh(np.asarray(x) @ np.asarray(k) + np.asarray(b))
    np.testing.assert_allclose(runner(f.apply)(v, x), expected, rtol=1e-5, atol=1e-6)


def test_dense_precision_is_passed_on():
    x = _x((4, 3))

    def f(x, precision):
        return layers.dense(x, 5, precision=precision)

    v = js.init(f, KEY, x, None)
    k = v["params"]["dense"]["kernel"]
    hlo = jax.jit(lambda v, x: js.apply(f, v, x, jax.lax.Precision.HIGHEST)).lower(v, x)
    assert "HIGHEST" in hlo.as_text()
    expected = jnp.matmul(x, k, precision=jax.lax.Precision.HIGHEST)
    _close(js.apply(f, v, x, jax.lax.Precision.HIGHEST), expected)


def test_inputs_are_cast_to_the_kernel_dtype():
    x = _x((2, 3), BF16)
    v = js.init(lambda x: layers.dense(x, 4), KEY, x)
    y = js.apply(lambda x: layers.dense(x, 4), v, x)
    assert y.dtype == F32
    k = v["params"]["dense"]["kernel"]
    _close(y, x.astype(F32) @ k)


def test_scope_dtype_sets_variables_and_compute_dtype():
    def f(x):
        with js.variable_scope("m", dtype=BF16):
            return layers.dense(x, 4)

    x = _x((2, 3))
    v = js.init(f, KEY, x)
    assert v["params"]["m"]["dense"]["kernel"].dtype == BF16
    assert v["params"]["m"]["dense"]["bias"].dtype == BF16
    assert js.apply(f, v, x).dtype == BF16


def test_custom_getter_casting_sets_compute_dtype():
    def to_bf16(getter, name, *args, **kwargs):
        return getter(name, *args, **kwargs).astype(BF16)

    def f(x):
        with js.variable_scope("m", custom_getter=to_bf16):
            return layers.dense(x, 4)

    x = _x((2, 3))
    v = js.init(f, KEY, x)
    assert v["params"]["m"]["dense"]["kernel"].dtype == F32
    y = js.apply(f, v, x)
    assert y.dtype == BF16
    p = v["params"]["m"]["dense"]
    expected = x.astype(BF16) @ p["kernel"].astype(BF16) + p["bias"].astype(BF16)
    _close(y, expected, BF16)


# --------------------------------------------------------- initial values


def test_default_initializers_are_glorot_uniform_and_zeros():
    x = jnp.ones((2, 300))
    v = js.init(lambda x: layers.dense(x, 200), KEY, x)
    k, b = v["params"]["dense"]["kernel"], v["params"]["dense"]["bias"]
    limit = np.sqrt(6.0 / (300 + 200))
    assert float(jnp.max(jnp.abs(k))) <= limit
    assert float(jnp.max(jnp.abs(k))) > 0.95 * limit
    np.testing.assert_allclose(float(jnp.std(k)), limit / np.sqrt(3.0), rtol=0.03)
    np.testing.assert_array_equal(b, np.zeros(200, np.float32))


def test_explicit_initializers_are_used():
    def f(x):
        return layers.dense(
            x, 3, kernel_initializer=js.initializers.constant(0.5),
            bias_initializer=js.initializers.ones(),
        )  # fmt: skip

    v = js.init(f, KEY, jnp.ones((1, 2)))
    np.testing.assert_array_equal(v["params"]["dense"]["kernel"], np.full((2, 3), 0.5))
    np.testing.assert_array_equal(v["params"]["dense"]["bias"], np.ones(3))


def test_scope_initializer_applies_to_the_kernel_only():
    """As tf.layers: the bias initializer is explicit (zeros), never the scope's."""

    def f(x):
        with js.variable_scope("m", initializer=js.initializers.constant(2.0)):
            return layers.dense(x, 3)

    v = js.init(f, KEY, jnp.ones((1, 2)))
    np.testing.assert_array_equal(
        v["params"]["m"]["dense"]["kernel"], np.full((2, 3), 2)
    )
    np.testing.assert_array_equal(v["params"]["m"]["dense"]["bias"], np.zeros(3))


def test_initial_values_depend_on_the_path_only():
    def one(x):
        return layers.dense(x, 3, name="b")

    def two(x):
        layers.dense(x, 3, name="a")
        return layers.dense(x, 3, name="b")

    x = jnp.ones((1, 2))
    np.testing.assert_array_equal(
        js.init(one, KEY, x)["params"]["b"]["kernel"],
        js.init(two, KEY, x)["params"]["b"]["kernel"],
    )


# --------------------------------------------------------------------- names


def test_default_names_count_up():
    def f(x):
        h = layers.dense(x, 4)
        h = layers.dense(h, 4)
        return layers.dense(h, 2)

    x = jnp.ones((1, 3))
    v = js.init(f, KEY, x)
    assert list(js.flatten(v)) == [
        "params/dense/kernel",
        "params/dense/bias",
        "params/dense_1/kernel",
        "params/dense_1/bias",
        "params/dense_2/kernel",
        "params/dense_2/bias",
    ]
    assert js.apply(f, v, x).shape == (1, 2)


def test_golden_paths_of_a_nested_model():
    def mlp(x):
        with js.variable_scope("encoder"):
            h = layers.dense(x, 8, activation=jax.nn.relu)
            h = layers.dense(h, 8, activation=jax.nn.relu, name="hidden")
        with js.variable_scope("head"):
            return layers.dense(h, 2, use_bias=False)

    x = _x((3, 5))
    v = js.init(mlp, KEY, x)
    assert {k: a.shape for k, a in js.flatten(v).items()} == {
        "params/encoder/dense/kernel": (5, 8),
        "params/encoder/dense/bias": (8,),
        "params/encoder/hidden/kernel": (8, 8),
        "params/encoder/hidden/bias": (8,),
        "params/head/dense/kernel": (8, 2),
    }
    p = js.flatten(v["params"])
    h = jax.nn.relu(x @ p["encoder/dense/kernel"] + p["encoder/dense/bias"])
    h = jax.nn.relu(h @ p["encoder/hidden/kernel"] + p["encoder/hidden/bias"])
    _close(js.apply(mlp, v, x), h @ p["head/dense/kernel"])


@pytest.mark.parametrize("reuse", [True, js.AUTO_REUSE], ids=["true", "auto"])
def test_reuse_shares_variables(reuse):
    def siamese(a, b):
        ya = layers.dense(a, 4, name="tower")
        yb = layers.dense(b, 4, name="tower", reuse=reuse)
        return ya, yb

    a, b = _x((2, 3), seed=1), _x((2, 3), seed=2)
    v = js.init(siamese, KEY, a, b)
    assert list(js.flatten(v)) == ["params/tower/kernel", "params/tower/bias"]
    ya, yb = js.apply(siamese, v, a, a)
    np.testing.assert_array_equal(ya, yb)
    single = js.apply(lambda x: layers.dense(x, 4, name="tower"), v, b)
    np.testing.assert_array_equal(js.apply(siamese, v, a, b)[1], single)


def test_reuse_in_an_outer_scope_shares_default_names():
    def model(x):
        with js.variable_scope("net"):
            return layers.dense(layers.dense(x, 4), 2)

    def twice(a, b):
        ya = model(a)
        with js.variable_scope(js.get_variable_scope(), reuse=True):
            yb = model(b)
        return ya, yb

    x = _x((2, 3))
    v = js.init(twice, KEY, x, x)
    assert list(js.flatten(v)) == [
        "params/net/dense/kernel",
        "params/net/dense/bias",
        "params/net/dense_1/kernel",
        "params/net/dense_1/bias",
    ]
    ya, yb = js.apply(twice, v, x, x)
    np.testing.assert_array_equal(ya, yb)


def test_same_name_twice_already_exists():
    def f(x):
        layers.dense(x, 4, name="fc")
        return layers.dense(x, 4, name="fc")

    with pytest.raises(
        errors.VariableExistsError, match=path_match("already exists", "fc/kernel")
    ):
        js.init(f, KEY, jnp.ones((1, 3)))


def test_reuse_of_a_missing_layer_does_not_exist():
    with pytest.raises(ValueError, match=path_match("does not exist", "fc/kernel")):
        js.init(
            lambda x: layers.dense(x, 4, name="fc", reuse=True), KEY, jnp.ones((1, 3))
        )


def test_reuse_with_other_input_size_is_a_shape_error():
    def f(x, z):
        layers.dense(x, 4, name="fc")
        return layers.dense(z, 4, name="fc", reuse=True)

    with pytest.raises(
        errors.ShapeMismatchError,
        match=path_match("Trying to share variable", "fc/kernel"),
    ):
        js.init(f, KEY, jnp.ones((1, 3)), jnp.ones((1, 5)))


def test_apply_with_a_missing_variable_names_the_path():
    f = lambda x: layers.dense(x, 4)  # noqa: E731
    x = jnp.ones((1, 3))
    v = js.init(f, KEY, x)
    del v["params"]["dense"]["bias"]
    with pytest.raises(errors.UninitializedVariableError, match=r"dense/bias"):
        js.apply(f, v, x)


# ------------------------------------------------- regularizers, collections


def test_regularizers_add_one_term_each():
    def l2(w):
        return 0.5 * jnp.sum(w**2)

    def f(x):
        y = layers.dense(
            x, 3, kernel_regularizer=l2, bias_regularizer=jnp.sum,
            bias_initializer=NORMAL,
        )  # fmt: skip
        return y, js.get_regularization_loss()

    x = jnp.ones((1, 2))
    v = js.init(f, KEY, x)
    p = v["params"]["dense"]
    _, reg = js.apply(f, v, x)
    _close(reg, l2(p["kernel"]) + jnp.sum(p["bias"]))


def test_trainable_false_goes_to_state():
    f = lambda x: layers.dense(x, 3, trainable=False)  # noqa: E731
    x = _x((2, 2))
    v = js.init(f, KEY, x)
    assert list(v) == ["state"]
    assert list(v["state"]["dense"]) == ["kernel", "bias"]
    p = v["state"]["dense"]
    _close(js.apply(f, v, x), x @ p["kernel"] + p["bias"])


def test_apply_does_not_mutate_the_tree():
    import copy

    f = lambda x: layers.dense(x, 3)  # noqa: E731
    x = _x((2, 2))
    v = js.init(f, KEY, x)
    before = copy.deepcopy(v)
    js.apply(f, v, x)
    jax.tree.map(np.testing.assert_array_equal, v, before)


def test_eval_shape_init():
    x = jax.ShapeDtypeStruct((2, 3), F32)
    f = lambda x: layers.dense(x, 5)  # noqa: E731
    shapes = jax.eval_shape(lambda k, x: js.init(f, k, x), KEY, x)
    assert shapes["params"]["dense"]["kernel"].shape == (3, 5)
    assert shapes["params"]["dense"]["bias"].shape == (5,)


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize("units", [0, -3])
def test_units_must_be_positive(units):
    def f(x):
        with js.variable_scope("outer"):
            return layers.dense(x, units, name="fc")

    with pytest.raises(
        ValueError, match=path_match("units must be positive", "outer/fc")
    ):
        js.init(f, KEY, jnp.ones((1, 3)))


@pytest.mark.parametrize("units", [2.0, "4", True, None])
def test_units_must_be_an_int(units):
    with pytest.raises(TypeError, match=path_match("units must be an int", "dense")):
        js.init(lambda x: layers.dense(x, units), KEY, jnp.ones((1, 3)))


def test_scalar_inputs_are_refused():
    with pytest.raises(ValueError, match=path_match("rank >= 1", "dense")):
        js.init(lambda x: layers.dense(x, 3), KEY, jnp.ones(()))


def test_units_as_numpy_int():
    x = _x((2, 3))
    v = js.init(lambda x: layers.dense(x, np.int64(4)), KEY, x)
    assert v["params"]["dense"]["kernel"].shape == (3, 4)
    assert js.apply(lambda x: layers.dense(x, np.int64(4)), v, x).shape == (2, 4)


# --------------------------------------------------------------------- scan

L, D = 3, 4


def _block(h, _):
    return layers.dense(h, D, activation=jnp.tanh, bias_initializer=NORMAL), None


@pytest.mark.parametrize("runner", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_stacked_dense_equals_a_loop_over_slices(runner):
    stack = js.scan(
        _block, variable_axes={"params": 0}, split_rngs={"params": True}, length=L
    )

    def f(h):
        return stack(h)[0]

    h0 = _x((2, D))
    v = js.init(f, KEY, h0)
    p = v["params"]["dense"]
    assert p["kernel"].shape == (L, D, D)
    assert p["bias"].shape == (L, D)
    assert not np.array_equal(p["kernel"][0], p["kernel"][1])  # split params rng
    got = runner(lambda v, h: js.apply(f, v, h))(v, h0)

    h = h0
    for i in range(L):
        layer = {"params": {"dense": {"kernel": p["kernel"][i], "bias": p["bias"][i]}}}
        h = js.apply(lambda h: _block(h, None)[0], layer, h)
    _close(got, h)

    def loss_scan(params):
        return jnp.sum(js.apply(f, {"params": params}, h0) ** 2)

    def loss_loop(params):
        h = h0
        for i in range(L):
            h = jnp.tanh(h @ params["dense"]["kernel"][i] + params["dense"]["bias"][i])
        return jnp.sum(h**2)

    _tree_close(jax.grad(loss_scan)(v["params"]), jax.grad(loss_loop)(v["params"]))


def test_shared_dense_over_time_equals_a_loop():
    """No variable_axes: one set of weights for every step (an RNN's reuse)."""

    def step(h, x):
        h = layers.dense(jnp.concatenate([h, x], -1), D, activation=jnp.tanh)
        return h, h

    def f(h, xs):
        return js.scan(step)(h, xs)

    h0, xs = _x((2, D)), _x((5, 2, 3), seed=2)
    v = js.init(f, KEY, h0, xs)
    assert js.flatten(v["params"])["dense/kernel"].shape == (D + 3, D)
    h_last, hs = js.apply(f, v, h0, xs)
    h = h0
    for t in range(5):
        h = js.apply(lambda h, x: step(h, x)[0], v, h, xs[t])
        _close(hs[t], h)
    _close(h_last, h)
