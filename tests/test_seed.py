"""The TF1 variables tutorial, snippet by snippet, ported to jscope.

Each test ports one snippet of "TensorFlow variables, variable sharing and
scoping" (changing the import and the session, nothing else) and asserts what the
tutorial says it does. The saving and restoring snippets are not ported here.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js

KEY = jax.random.key(0)


def _x(batch=2):
    return jax.random.normal(jax.random.key(42), (batch, 784))


# ------------------------------------------------------------ using variables


def seed_variables_tf_style():
    """The first snippet as written: `tf.Variable` with initial values."""
    weights = js.Variable(
        lambda key: js.initializers.random_normal(stddev=0.1)(
            key, [784, 100], jnp.float32
        ),
        name="W",
    )
    biases = js.Variable(jnp.zeros([100]), name="b")
    counter = js.Variable(0, name="counter")
    # Add an op to increment a counter.
    increment = js.assign(counter, counter + 1)
    del weights, increment
    return biases.value


def seed_variables_get_variable():
    """The same variables created by `get_variable` with initializers."""
    js.get_variable(
        "W",
        [784, 100],
        initializer=js.initializers.random_normal_initializer(stddev=0.1),
    )
    biases = js.get_variable(
        "b", [100], initializer=js.initializers.zeros_initializer()
    )
    counter = js.get_variable("counter", initializer=0)
    js.assign(counter, counter + 1)
    return biases


SEED_MODELS = [
    pytest.param(seed_variables_tf_style, id="Variable"),
    pytest.param(seed_variables_get_variable, id="get_variable"),
]


@pytest.mark.parametrize("model", SEED_MODELS)
def test_variables_are_created_by_their_initializers(model):
    b, variables = js.init_with_output(model, KEY)

    assert list(variables) == ["params", "state"]
    assert list(variables["params"]) == ["W", "b"]
    assert list(variables["state"]) == ["counter"]
    w = variables["params"]["W"]
    assert w.shape == (784, 100) and w.dtype == jnp.float32
    assert abs(float(jnp.mean(w))) < 0.003
    assert float(jnp.std(w)) == pytest.approx(0.1, rel=0.03)
    assert variables["params"]["b"].shape == (100,)
    assert variables["params"]["b"].dtype == jnp.float32
    np.testing.assert_array_equal(variables["params"]["b"], np.zeros(100))
    counter = variables["state"]["counter"]
    assert counter.shape == () and counter.dtype == jnp.int32
    # The initializer's values, not the increment run inside the function.
    assert int(counter) == 0
    # "Retrieve the value of a variable": b is zeros, at init and at apply.
    np.testing.assert_array_equal(b, np.zeros(100))
    out, updated = js.apply(model, variables, mutable=True)
    np.testing.assert_array_equal(out, np.zeros(100))
    assert int(updated["state"]["counter"]) == 1


def test_both_spellings_give_the_same_initial_values():
    a = js.init(seed_variables_tf_style, KEY)
    b = js.init(seed_variables_get_variable, KEY)
    assert list(js.flatten(a)) == list(js.flatten(b))
    for path, value in js.flatten(a).items():
        np.testing.assert_array_equal(value, js.flatten(b)[path], err_msg=path)


# ----------------------------------------------- incrementing the counter


def increment_counter():
    counter = js.Variable(0, name="counter")
    increment = js.assign(counter, counter + 1)
    return increment


@pytest.mark.parametrize("mutable", [True, ["state"], "state"])
def test_counter_incremented_ten_times(mutable):
    variables = js.init(increment_counter, KEY)
    assert variables == {"state": {"counter": 0}}
    first = variables
    seen = []
    for _ in range(10):
        count, variables = js.apply(increment_counter, variables, mutable=mutable)
        seen.append(int(count))
    assert seen == list(range(1, 11))
    assert int(variables["state"]["counter"]) == 10
    assert variables["state"]["counter"].dtype == jnp.int32
    assert int(first["state"]["counter"]) == 0


# --------------------------------------------- tf.Variable always creates new


def test_variable_always_creates_a_new_variable():
    def fn():
        v1 = js.Variable(10, name="name1")
        v2 = js.Variable(10, name="name1")
        assert v1 is not v2
        return v1.name, v2.name

    names, variables = js.init_with_output(fn, KEY)
    assert names == ("name1", "name1_1")
    assert list(js.flatten(variables)) == ["state/name1", "state/name1_1"]
    for value in js.flatten(variables).values():
        assert value.dtype == jnp.int32 and int(value) == 10
    assert js.apply(fn, variables) == ("name1", "name1_1")


# ---------------------------------------------------- two sets of W and b


def affine(x, shape, matmul):
    W = js.Variable(lambda key: jax.random.truncated_normal(key, -2.0, 2.0, shape))
    b = js.Variable(jnp.zeros([shape[1]]))

    model = jax.nn.relu(matmul(x, W) + b)
    return model


def two_affines(x, matmul):
    with js.variable_scope("n1"):
        n1 = affine(x, [784, 500], matmul)

    with js.variable_scope("n1"):
        n2 = affine(x, [784, 500], matmul)
    return n1, n2


def _relu_affine(x, w, b):
    return jnp.maximum(x @ w + b, 0.0)


# tf.matmul(x, W) ports to `x @ W`, or to `jnp.matmul(x, W.value)`: jax 0.10 lets
# only operators and jnp.asarray consume a handle's __jax_array__.
MATMULS = [
    pytest.param(operator.matmul, id="at"),
    pytest.param(lambda x, w: jnp.matmul(x, w.value), id="jnp_matmul_value"),
    pytest.param(lambda x, w: jnp.matmul(x, jnp.asarray(w)), id="jnp_matmul_asarray"),
]


@pytest.mark.parametrize("matmul", MATMULS)
def test_affine_with_variable_creates_two_sets(matmul):
    x = _x()
    (n1, n2), variables = js.init_with_output(two_affines, KEY, x, matmul)

    paths = ["n1/Variable", "n1/Variable_1", "n1_1/Variable", "n1_1/Variable_1"]
    assert list(js.flatten(variables["params"])) == paths
    p = js.flatten(variables["params"])
    for scope in ("n1", "n1_1"):
        assert p[f"{scope}/Variable"].shape == (784, 500)
        assert float(jnp.abs(p[f"{scope}/Variable"]).max()) <= 2.0
        np.testing.assert_array_equal(p[f"{scope}/Variable_1"], np.zeros(500))
    assert not np.allclose(p["n1/Variable"], p["n1_1/Variable"])
    want1 = _relu_affine(x, p["n1/Variable"], p["n1/Variable_1"])
    want2 = _relu_affine(x, p["n1_1/Variable"], p["n1_1/Variable_1"])
    np.testing.assert_allclose(n1, want1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(n2, want2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(n1, n2)

    a1, a2 = js.apply(two_affines, variables, x, matmul)
    np.testing.assert_allclose(a1, want1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a2, want2, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- one shared set


def affine_reuseable(x, shape):
    W = js.get_variable(
        "W", shape, initializer=js.initializers.random_normal_initializer()
    )
    b = js.get_variable(
        "b", [shape[1]], initializer=js.initializers.constant_initializer(0.0)
    )
    model = jax.nn.relu(jnp.matmul(x, W) + b)
    return model


def shared_affines(x):
    with js.variable_scope("n2"):
        nn1 = affine_reuseable(x, [784, 500])

    with js.variable_scope("n2", reuse=True):
        nn2 = affine_reuseable(x, [784, 500])
    return nn1, nn2


def test_affine_reuseable_shares_one_set():
    x = _x()
    (nn1, nn2), variables = js.init_with_output(shared_affines, KEY, x)

    assert list(js.flatten(variables)) == ["params/n2/W", "params/n2/b"]
    w, b = variables["params"]["n2"]["W"], variables["params"]["n2"]["b"]
    assert w.shape == (784, 500) and b.shape == (500,)
    assert float(jnp.std(w)) == pytest.approx(1.0, rel=0.02)
    np.testing.assert_array_equal(b, np.zeros(500))
    np.testing.assert_array_equal(nn1, nn2)
    np.testing.assert_allclose(nn1, _relu_affine(x, w, b), rtol=1e-5, atol=1e-4)

    new = {"params": {"n2": {"W": -w, "b": b + 0.5}}}
    a1, a2 = js.apply(shared_affines, new, x)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(a1, _relu_affine(x, -w, b + 0.5), rtol=1e-5, atol=1e-4)


def test_get_variable_returns_the_existing_variable():
    shape = [784, 500]

    def fn(x):
        with js.variable_scope("n2"):
            affine_reuseable(x, shape)
        with js.variable_scope("n2", reuse=True):
            W = js.get_variable(
                "W", shape, initializer=js.initializers.random_normal_initializer()
            )
            # Creation arguments are ignored on reuse.
            W_again = js.get_variable("W", shape, initializer=js.initializers.zeros())
        return W, W_again

    (W, W_again), variables = js.init_with_output(fn, KEY, _x())
    assert list(js.flatten(variables)) == ["params/n2/W", "params/n2/b"]
    np.testing.assert_array_equal(W, variables["params"]["n2"]["W"])
    np.testing.assert_array_equal(W_again, variables["params"]["n2"]["W"])


def test_reuse_in_a_scope_that_was_never_created_fails():
    # The tutorial's "nl1" snippet: nothing was created under nl1, so reuse=True
    # cannot find nl1/W (TF1 raises the same error).
    def fn(x):
        with js.variable_scope("n2"):
            affine_reuseable(x, [784, 500])
        with js.variable_scope("nl1", reuse=True):
            return affine_reuseable(x, [784, 500])

    with pytest.raises(ValueError, match=r"Variable nl1/W does not exist") as info:
        js.init(fn, KEY, _x())
    assert isinstance(info.value, js.errors.VariableNotFoundError)


# ------------------------------------------------------------ reuse errors


def already_exists():
    with js.variable_scope("foo"):
        v = js.get_variable("v", [1])
        v1 = js.get_variable("v", [1])
        # Raises ValueError("... v already exists ...").
    return v, v1


def does_not_exist():
    with js.variable_scope("foo", reuse=True):
        v = js.get_variable("v", [1])
        # Raises ValueError("... v does not exist ...").
    return v


REUSE_ERRORS = [
    pytest.param(
        already_exists,
        js.errors.VariableExistsError,
        r"Variable foo/v already exists, disallowed\. Did you mean to set "
        r"reuse=True or reuse=AUTO_REUSE in VarScope\?",
        id="already_exists",
    ),
    pytest.param(
        does_not_exist,
        js.errors.VariableNotFoundError,
        r"Variable foo/v does not exist, or was not created with get_variable\(\)\. "
        r"Did you mean to set reuse=AUTO_REUSE in VarScope\?",
        id="does_not_exist",
    ),
]


@pytest.mark.parametrize(("fn", "error", "message"), REUSE_ERRORS)
@pytest.mark.parametrize("run", ["init", "apply"])
def test_reuse_errors(fn, error, message, run):
    with pytest.raises(ValueError, match=message) as info:
        if run == "init":
            js.init(fn, KEY)
        else:
            # The same rules hold at apply, even with the variable in the tree.
            js.apply(fn, {"params": {"foo": {"v": jnp.zeros(1)}}})
    assert isinstance(info.value, error)
    assert info.value.path == "foo/v"


# ---------------------------------------------------------- reuse properly


def reuse_properly():
    with js.variable_scope("foo"):
        v = js.get_variable("v2", [1])
    with js.variable_scope("foo", reuse=True):
        v1 = js.get_variable("v2", [1])
    assert v1 == v
    first = (v, v1)

    with js.variable_scope("foo") as scope:
        v = js.get_variable("v3", [1])
        scope.reuse_variables()
        v1 = js.get_variable("v3", [1])
    assert v1 == v
    return first, (v, v1)


def test_reuse_true_and_reuse_variables_share_the_variable():
    ((v2, v2_again), (v3, v3_again)), variables = js.init_with_output(
        reuse_properly, KEY
    )
    assert list(js.flatten(variables)) == ["params/foo/v2", "params/foo/v3"]
    np.testing.assert_array_equal(v2, variables["params"]["foo"]["v2"])
    np.testing.assert_array_equal(v2_again, v2)
    np.testing.assert_array_equal(v3, variables["params"]["foo"]["v3"])
    np.testing.assert_array_equal(v3_again, v3)
    assert not np.array_equal(v2, v3)

    new = {"params": {"foo": {"v2": jnp.array([3.0]), "v3": jnp.array([-4.0])}}}
    (a, a_again), (b, b_again) = js.apply(reuse_properly, new)
    np.testing.assert_array_equal(a, [3.0])
    np.testing.assert_array_equal(a_again, [3.0])
    np.testing.assert_array_equal(b, [-4.0])
    np.testing.assert_array_equal(b_again, [-4.0])
