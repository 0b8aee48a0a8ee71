"""Tests for the variable model: DESIGN §1 (collections), §2 (init/apply) and §4."""

import copy
import enum
import math
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import as_numpy, assert_trees_equal, bump_bn_statistics, dict_ids

import jscope as js
from jscope import errors
from jscope._src.names import stable_hash

KEY = jax.random.key(0)

REUSE_FLAGS = [None, False, True, js.AUTO_REUSE]
FLAG_IDS = ["None", "False", "True", "AUTO_REUSE"]

MSG_EXISTS = (
    "Variable foo/v already exists, disallowed. Did you mean to set reuse=True or "
    "reuse=AUTO_REUSE in VarScope?"
)
MSG_NOT_FOUND = (
    "Variable foo/v does not exist, or was not created with get_variable(). Did you "
    "mean to set reuse=AUTO_REUSE in VarScope?"
)


# ------------------------------------------------------------------- helpers


def uniform_limit(fan_in, fan_out):
    return math.sqrt(6.0 / (fan_in + fan_out))


# ------------------------------------------------------------ reuse table (§4)


def reuse_program(flag, exists, second=True):
    """`foo/v` created first if `exists`; then `get_variable("foo/v")` under `flag`."""

    def fn():
        first = None
        if exists:
            with js.variable_scope("foo"):
                first = js.get_variable("v", [1])
        else:
            js.get_variable("other", [1])
        if not second:
            return first, None
        with js.variable_scope("foo", reuse=flag):
            return first, js.get_variable("v", [1])

    return fn


def expected_outcome(flag, exists):
    if flag is js.AUTO_REUSE:
        return "returned" if exists else "created"
    if flag is True:
        return "returned" if exists else "not_found"
    return "exists_error" if exists else "created"


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "exists"])
@pytest.mark.parametrize("flag", REUSE_FLAGS, ids=FLAG_IDS)
def test_reuse_table(flag, exists):
    fn = reuse_program(flag, exists)
    outcome = expected_outcome(flag, exists)
    if outcome == "exists_error":
        with pytest.raises(errors.VariableExistsError, match=re.escape(MSG_EXISTS)):
            js.init(fn, KEY)
        return
    if outcome == "not_found":
        with pytest.raises(
            errors.VariableNotFoundError, match=re.escape(MSG_NOT_FOUND)
        ):
            js.init(fn, KEY)
        return
    (first, second), variables = js.init_with_output(fn, KEY)
    assert "v" in variables["params"]["foo"]
    stored = variables["params"]["foo"]["v"]
    np.testing.assert_array_equal(second, stored)
    if outcome == "returned":
        np.testing.assert_array_equal(first, second)
        assert list(js.flatten(variables)) == ["params/foo/v"]
    else:
        assert list(js.flatten(variables)) == ["params/other", "params/foo/v"]
    # At apply the same function reads the same value from the tree.
    _, second_a = js.apply(fn, variables)
    np.testing.assert_array_equal(second_a, stored)


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "exists"])
@pytest.mark.parametrize("flag", REUSE_FLAGS, ids=FLAG_IDS)
def test_reuse_table_errors_at_apply(flag, exists):
    """The same errors come at apply, on the tree init made without the 2nd get."""
    outcome = expected_outcome(flag, exists)
    variables = js.init(reuse_program(flag, exists, second=False), KEY)
    before = as_numpy(variables)
    fn = reuse_program(flag, exists)
    if outcome == "exists_error":
        with pytest.raises(errors.VariableExistsError, match=re.escape(MSG_EXISTS)):
            js.apply(fn, variables)
    elif outcome == "not_found":
        with pytest.raises(
            errors.VariableNotFoundError, match=re.escape(MSG_NOT_FOUND)
        ):
            js.apply(fn, variables)
    else:
        # created at apply means read from the tree, which lacks foo/v unless it exists
        if outcome == "created":
            with pytest.raises(errors.UninitializedVariableError, match="foo/v"):
                js.apply(fn, variables)
        else:
            _, second = js.apply(fn, variables)
            np.testing.assert_array_equal(second, variables["params"]["foo"]["v"])
    assert_trees_equal(as_numpy(variables), before)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.VariableExistsError, ValueError),
        (errors.VariableNotFoundError, ValueError),
    ],
)
def test_reuse_error_classes_are_value_errors(cls, builtin):
    assert issubclass(cls, builtin)
    assert issubclass(cls, errors.JscopeError)


def test_reuse_error_carries_path():
    with pytest.raises(errors.VariableExistsError) as info:
        js.init(reuse_program(None, True), KEY)
    assert info.value.path == "foo/v"
    with pytest.raises(errors.VariableNotFoundError) as info:
        js.init(reuse_program(True, False), KEY)
    assert info.value.path == "foo/v"


def test_reuse_true_at_apply_checks_this_run_not_the_tree():
    """The tree holds foo/v, but this run has not created it: does not exist."""
    variables = js.init(lambda: js.get_variable("foo/v", [1]), KEY)

    def fn():
        with js.variable_scope("foo", reuse=True):
            return js.get_variable("v", [1])

    with pytest.raises(errors.VariableNotFoundError, match=re.escape(MSG_NOT_FOUND)):
        js.apply(fn, variables)


def test_creating_twice_at_apply_is_still_an_error():
    def fn(twice):
        js.get_variable("foo/v", [1])
        if twice:
            js.get_variable("foo/v", [1])

    variables = js.init(fn, KEY, False)
    with pytest.raises(errors.VariableExistsError, match=re.escape(MSG_EXISTS)):
        js.apply(fn, variables, True)


def test_reuse_variables_returns_the_same_value():
    def fn():
        with js.variable_scope("foo") as scope:
            v = js.get_variable("v3", [1])
            scope.reuse_variables()
            v1 = js.get_variable("v3", [1])
        return v, v1

    (v, v1), variables = js.init_with_output(fn, KEY)
    np.testing.assert_array_equal(v, v1)
    assert list(js.flatten(variables)) == ["params/foo/v3"]


# --------------------------------------------------------- shapes on reuse (§4)


@pytest.mark.parametrize(
    "requested", [None, (2, 3), (None, 3), (2, None), (None, None), [2, 3]]
)
def test_reuse_compatible_shapes(requested):
    def fn():
        with js.variable_scope("foo"):
            a = js.get_variable("v", (2, 3))
        with js.variable_scope("foo", reuse=True):
            b = js.get_variable("v", requested)
        return a, b

    (a, b), _ = js.init_with_output(fn, KEY)
    np.testing.assert_array_equal(a, b)
    assert b.shape == (2, 3)


@pytest.mark.parametrize(
    "requested, shown",
    [
        ((3, 2), "(3, 2)"),
        ((2,), "(2,)"),
        ((None,), "(None,)"),
        ((2, 3, 1), "(2, 3, 1)"),
    ],
)
def test_reuse_incompatible_shapes(requested, shown):
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v", (2, 3))
        with js.variable_scope("foo", reuse=True):
            js.get_variable("v", requested)

    msg = (
        f"Trying to share variable foo/v, but specified shape {shown} and found "
        "shape (2, 3)."
    )
    with pytest.raises(errors.ShapeMismatchError, match=re.escape(msg)):
        js.init(fn, KEY)


def test_reuse_shape_message_from_design():
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v", [1])
        with js.variable_scope("foo", reuse=js.AUTO_REUSE):
            js.get_variable("v", [2])

    msg = (
        "Trying to share variable foo/v, but specified shape (2,) and found shape (1,)."
    )
    with pytest.raises(ValueError, match=re.escape(msg)) as info:
        js.init(fn, KEY)
    assert isinstance(info.value, errors.ShapeMismatchError)
    assert info.value.path == "foo/v"


# --------------------------------------------------------- dtypes on reuse (§4)


def dtype_reuse_program(stored, arg=None, scope_dtype=None):
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v", [2], dtype=stored)
        with js.variable_scope("foo", reuse=True, dtype=scope_dtype):
            return js.get_variable("v", [2], dtype=arg)

    return fn


@pytest.mark.parametrize(
    "stored, arg, scope_dtype",
    [
        (jnp.float32, None, None),
        (jnp.float32, jnp.float32, None),
        (jnp.float16, jnp.float16, None),
        (jnp.float16, None, jnp.float16),
        (jnp.int32, jnp.int32, None),
        (jnp.int32, None, jnp.int32),
        (jnp.bfloat16, jnp.bfloat16, jnp.float16),
    ],
)
def test_reuse_matching_dtype(stored, arg, scope_dtype):
    out, variables = js.init_with_output(
        dtype_reuse_program(stored, arg, scope_dtype), KEY
    )
    assert out.dtype == np.dtype(stored)
    flat = js.flatten(variables)
    assert len(flat) == 1
    np.testing.assert_array_equal(next(iter(flat.values())), out)


@pytest.mark.parametrize(
    "stored, arg, scope_dtype, requested",
    [
        # requested = argument, else the scope's, else float32
        (jnp.float16, None, None, "float32"),
        (jnp.int32, None, None, "float32"),
        (jnp.float32, jnp.float16, None, "float16"),
        (jnp.float32, jnp.int32, None, "int32"),
        (jnp.float32, None, jnp.float16, "float16"),
        (jnp.float16, jnp.float32, jnp.float16, "float32"),
        (jnp.int32, None, jnp.float32, "float32"),
    ],
)
def test_reuse_mismatched_dtype(stored, arg, scope_dtype, requested):
    found = np.dtype(stored).name
    msg = (
        f"Trying to share variable foo/v, but specified dtype {requested} and found "
        f"dtype {found}"
    )
    with pytest.raises(errors.DtypeMismatchError, match=re.escape(msg)) as info:
        js.init(dtype_reuse_program(stored, arg, scope_dtype), KEY)
    assert isinstance(info.value, ValueError)
    assert info.value.path == "foo/v"


def test_creation_arguments_ignored_on_reuse():
    calls = []

    def counting_init(key, shape, dtype):
        calls.append(shape)
        return jnp.full(shape, 7.0, dtype)

    def reg(w):
        return 100.0 * jnp.sum(w)

    def fn():
        with js.variable_scope("foo"):
            v = js.get_variable("v", [2], initializer=js.initializers.ones())
        with js.variable_scope("foo", reuse=True):
            r = js.get_variable(
                "v", [2], initializer=counting_init, trainable=False, regularizer=reg
            )
        return v, r, js.get_regularization_loss()

    (v, r, loss), variables = js.init_with_output(fn, KEY)
    assert calls == []
    np.testing.assert_array_equal(r, jnp.ones(2))
    np.testing.assert_array_equal(r, v)
    assert list(variables) == ["params"]  # trainable=False on reuse did not move it
    assert float(loss) == 0.0  # the reuse's regularizer added no term
    assert js.apply(fn, variables)[2] == 0.0
    assert calls == []


def test_scope_initializer_ignored_on_reuse():
    def fn():
        with js.variable_scope("foo", initializer=js.initializers.zeros()):
            a = js.get_variable("v", [3])
        with js.variable_scope("foo", reuse=True, initializer=js.initializers.ones()):
            b = js.get_variable("v", [3])
        return a, b

    (a, b), _ = js.init_with_output(fn, KEY)
    np.testing.assert_array_equal(a, jnp.zeros(3))
    np.testing.assert_array_equal(b, jnp.zeros(3))


# ------------------------------------------------------------ value initializers


@pytest.mark.parametrize(
    "value, shape, dtype",
    [
        (3, (), jnp.int32),
        (2.5, (), jnp.float32),
        (True, (), jnp.bool_),
        (np.int8(3), (), jnp.int8),
        (np.float16(1.5), (), jnp.float16),
        (np.arange(6, dtype=np.int8).reshape(2, 3), (2, 3), jnp.int8),
        (np.ones((4,), np.float16), (4,), jnp.float16),
        (np.ones((2,), np.uint8), (2,), jnp.uint8),
        (jnp.arange(5.0, dtype=jnp.bfloat16), (5,), jnp.bfloat16),
        (jnp.array([1, 2], jnp.int32), (2,), jnp.int32),
        ([1.0, 2.0, 3.0], (3,), jnp.float32),
        ([[1, 2], [3, 4]], (2, 2), jnp.int32),
    ],
)
def test_value_initializer_gives_shape_and_dtype(value, shape, dtype):
    def fn():
        return js.get_variable("v", initializer=value)

    out, variables = js.init_with_output(fn, KEY)
    stored = js.flatten(variables)
    assert len(stored) == 1
    ((path, arr),) = stored.items()
    assert path.endswith("/v")
    assert arr.shape == shape
    assert arr.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(arr), np.asarray(value, dtype=dtype))
    np.testing.assert_array_equal(out, arr)
    # at apply the value comes from the tree, not from the initializer
    bumped = jax.tree.map(lambda a: a + jnp.ones((), a.dtype), variables)
    np.testing.assert_array_equal(
        js.apply(fn, bumped), next(iter(js.flatten(bumped).values()))
    )


def test_value_initializer_with_shape_is_an_error():
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v", [2], initializer=np.zeros(2, np.float32))

    with pytest.raises(ValueError, match="foo/v") as info:
        js.init(fn, KEY)
    assert "shape" in str(info.value)


def test_no_initializer_and_no_shape_is_an_error():
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v")

    with pytest.raises(
        ValueError,
        match=r"foo/v.*did not get an initializer, so its shape argument must be "
        r"specified",
    ):
        js.init(fn, KEY)


def test_none_dimension_in_new_variable_is_an_error():
    def fn():
        js.get_variable("foo/v", [None, 2])

    with pytest.raises(ValueError, match="foo/v"):
        js.init(fn, KEY)


@pytest.mark.parametrize(
    "value, dtype",
    [
        (np.zeros(2, np.float32), jnp.int32),
        (np.zeros(2, np.float32), jnp.float16),
        (jnp.zeros(2, jnp.int32), jnp.float32),
        (np.zeros((), np.int8), jnp.int32),
    ],
)
def test_explicit_dtype_disagreeing_with_value_is_an_error(value, dtype):
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("v", initializer=value, dtype=dtype)

    # TF1: ValueError("Initializer type ... and explicit dtype ... don't match.")
    with pytest.raises(ValueError, match="foo/v") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, errors.JscopeError)
    assert np.dtype(dtype).name in str(info.value)


def test_explicit_dtype_agreeing_with_value():
    def fn():
        return js.get_variable(
            "v", initializer=np.ones(2, np.float16), dtype=jnp.float16
        )

    assert js.init_with_output(fn, KEY)[0].dtype == jnp.float16


@pytest.mark.parametrize(
    "value, dtype",
    [
        (np.ones(2, np.float32), jnp.float32),
        (np.ones(2, np.int8), jnp.int8),
        (1.5, jnp.float32),
        (3, jnp.int32),
    ],
)
def test_scope_dtype_does_not_apply_to_value_initializer(value, dtype):
    def fn():
        with js.variable_scope("s", dtype=jnp.float16):
            return js.get_variable("v", initializer=value)

    out, variables = js.init_with_output(fn, KEY)
    assert out.dtype == np.dtype(dtype)
    ((path, stored),) = js.flatten(variables).items()
    assert path.endswith("/s/v")
    assert stored.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(js.apply(fn, variables), out)


def test_scope_dtype_applies_to_callable_initializer():
    def fn():
        with js.variable_scope("s", dtype=jnp.float16):
            return js.get_variable("v", [2], initializer=js.initializers.ones())

    out, variables = js.init_with_output(fn, KEY)
    assert out.dtype == jnp.float16
    assert variables["params"]["s"]["v"].dtype == jnp.float16


def test_value_initializer_at_apply_reads_the_tree_and_checks_shape():
    def fn(value):
        return js.get_variable("v", initializer=value)

    variables = js.init(fn, KEY, np.zeros(3, np.float32))
    with pytest.raises(errors.ShapeMismatchError, match="v"):
        js.apply(fn, variables, np.zeros(4, np.float32))
    with pytest.raises(errors.DtypeMismatchError, match="v"):
        js.apply(fn, variables, np.zeros(3, np.float16))


# ------------------------------------------------------ default initializer (§4)


@pytest.mark.parametrize(
    "shape, fans",
    [
        ((300, 200), (300, 200)),
        ((20000,), (20000, 20000)),
        ((3, 3, 16, 32), (144, 288)),
        ((2, 3, 10, 20, 30), (6 * 10 * 20, 6 * 10 * 30)),
        ((7, 3000), (7, 3000)),
    ],
)
def test_default_initializer_is_glorot_uniform_with_tf1_fans(shape, fans):
    def fn():
        with js.variable_scope("layer"):
            return js.get_variable("w", shape)

    w = np.asarray(js.init_with_output(fn, KEY)[0], np.float64)
    assert w.shape == shape
    limit = uniform_limit(*fans)
    assert np.abs(w).max() <= limit * (1 + 1e-6)  # float32 rounding of the bound
    # Spread of a uniform over [-limit, limit]: it reaches the bounds, and its
    # variance is limit**2 / 3.
    assert np.abs(w).max() >= 0.99 * limit
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.06)
    assert abs(w.mean()) < 0.05 * limit
    # values are spread over both halves of the interval, not bunched in the middle
    assert np.mean(np.abs(w) > limit / 2) == pytest.approx(0.5, abs=0.05)


def test_default_initializer_for_scalars_uses_fans_one():
    n = 400

    def fn():
        return [js.get_variable(f"s{i}", ()) for i in range(n)]

    values = np.asarray(js.init_with_output(fn, KEY)[0], np.float64)
    limit = uniform_limit(1, 1)  # sqrt(3)
    assert np.abs(values).max() <= limit * (1 + 1e-6)
    assert np.abs(values).max() >= 0.95 * limit
    assert values.var() == pytest.approx(limit**2 / 3, rel=0.2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_default_initializer_float_dtypes(dtype):
    def fn():
        return js.get_variable("w", (64, 64), dtype=dtype)

    w = js.init_with_output(fn, KEY)[0]
    assert w.dtype == np.dtype(dtype)
    limit = uniform_limit(64, 64)
    w64 = np.asarray(w.astype(jnp.float32), np.float64)
    assert np.abs(w64).max() <= limit * 1.01
    assert w64.var() == pytest.approx(limit**2 / 3, rel=0.1)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.int16])
def test_default_initializer_ints_are_zero(dtype):
    out, variables = js.init_with_output(lambda: js.get_variable("c", (3,), dtype), KEY)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.zeros(3, dtype))
    assert "c" in variables["state"]


def test_default_initializer_bool_is_false():
    out, variables = js.init_with_output(
        lambda: js.get_variable("flag", (2,), jnp.bool_), KEY
    )
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, [False, False])
    assert "flag" in variables["state"]


@pytest.mark.parametrize("dtype", [jnp.complex64])
def test_complex_without_initializer_is_an_error(dtype):
    def fn():
        with js.variable_scope("foo"):
            js.get_variable("z", (2,), dtype)

    # TF1: ValueError("An initializer for variable foo/z of complex64 is required")
    with pytest.raises(ValueError, match=r"initializer.*foo/z.*required") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, errors.JscopeError)
    assert info.value.path == "foo/z"


def test_complex_with_initializer_works():
    out = js.init_with_output(
        lambda: js.get_variable("z", (2,), jnp.complex64, jax.nn.initializers.zeros),
        KEY,
    )[0]
    assert out.dtype == jnp.complex64
    np.testing.assert_array_equal(out, np.zeros(2, np.complex64))


# -------------------------------------------------- initializer calling convention


def test_initializer_called_with_key_shape_dtype():
    calls = []

    def init3(key, shape, dtype):  # plain three-argument initializer
        calls.append((key, shape, dtype))
        return jnp.full(shape, 2.0, dtype)

    def fn():
        with js.variable_scope("n"):
            return js.get_variable("w", [2, 3], jnp.float16, initializer=init3)

    out, variables = js.init_with_output(fn, KEY)
    assert len(calls) == 1
    key, shape, dtype = calls[0]
    assert tuple(shape) == (2, 3)
    assert np.dtype(dtype) == np.float16
    expected_key = jax.random.fold_in(KEY, stable_hash("n/w"))
    np.testing.assert_array_equal(
        jax.random.key_data(key), jax.random.key_data(expected_key)
    )
    np.testing.assert_array_equal(out, jnp.full((2, 3), 2.0, jnp.float16))


@pytest.mark.parametrize(
    "initializer",
    [
        jax.nn.initializers.zeros,
        jax.nn.initializers.ones,
        jax.nn.initializers.lecun_normal(),
        jax.nn.initializers.normal(0.5),
        jax.nn.initializers.glorot_uniform(),
        jax.nn.initializers.constant(3.0),
    ],
    ids=["zeros", "ones", "lecun_normal", "normal", "glorot_uniform", "constant"],
)
def test_jax_initializers_work_as_they_are(initializer):
    def fn():
        with js.variable_scope("d"):
            return js.get_variable("k", [8, 4], initializer=initializer)

    out = js.init_with_output(fn, KEY)[0]
    expected = initializer(
        jax.random.fold_in(KEY, stable_hash("d/k")), (8, 4), jnp.float32
    )
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)


def test_initializer_returning_wrong_shape_is_an_error():
    def fn():
        js.get_variable("foo/v", [2], initializer=lambda k, s, d: jnp.zeros(3, d))

    with pytest.raises(errors.JscopeError, match="foo/v"):
        js.init(fn, KEY)


# ----------------------------------------------------- path-based randomness (§4)


def test_value_is_initializer_of_folded_key():
    init = jax.nn.initializers.normal(1.0)

    def fn():
        with js.variable_scope("n2"):
            w = js.get_variable("W", [5, 7], initializer=init)
            b = js.get_variable("b", [7])
        return w, b

    rng = jax.random.key(42)
    (w, b), variables = js.init_with_output(fn, rng)
    exp_w = init(jax.random.fold_in(rng, stable_hash("n2/W")), (5, 7), jnp.float32)
    exp_b = js.initializers.glorot_uniform()(
        jax.random.fold_in(rng, stable_hash("n2/b")), (7,), jnp.float32
    )
    np.testing.assert_array_equal(w, exp_w)
    np.testing.assert_array_equal(b, exp_b)
    np.testing.assert_array_equal(variables["params"]["n2"]["W"], exp_w)


def test_adding_a_variable_does_not_change_the_others():
    def small():
        with js.variable_scope("layer"):
            return js.get_variable("w", [4, 4])

    def bigger():
        js.get_variable("extra", [4, 4])
        with js.variable_scope("other"):
            js.get_variable("w", [4, 4])
        with js.variable_scope("layer"):
            return js.get_variable("w", [4, 4])

    a = js.init(small, KEY)["params"]["layer"]["w"]
    b = js.init(bigger, KEY)["params"]["layer"]["w"]
    np.testing.assert_array_equal(a, b)
    other = js.init(bigger, KEY)["params"]["other"]["w"]
    assert not np.array_equal(np.asarray(other), np.asarray(b))


def test_call_order_does_not_matter():
    def forward():
        return js.get_variable("a", [6]), js.get_variable("b", [6])

    def backward():
        b = js.get_variable("b", [6])
        return js.get_variable("a", [6]), b

    fa = js.flatten(js.init(forward, KEY))
    fb = js.flatten(js.init(backward, KEY))
    assert list(fa) == ["params/a", "params/b"]
    assert list(fb) == ["params/b", "params/a"]
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    assert not np.array_equal(np.asarray(fa["params/a"]), np.asarray(fa["params/b"]))


def test_different_rngs_give_different_values_same_rng_same_values():
    fn = lambda: js.get_variable("w", [10])  # noqa: E731
    a = js.init(fn, jax.random.key(1))["params"]["w"]
    b = js.init(fn, jax.random.key(1))["params"]["w"]
    c = js.init(fn, jax.random.key(2))["params"]["w"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


# ------------------------------------------------------------ regularizers (§4)


def l2(w):
    return 0.5 * jnp.sum(jnp.square(w))


def l1(w):
    return 0.1 * jnp.sum(jnp.abs(w))


def regularized_model():
    with js.variable_scope("a", regularizer=l2):
        w = js.get_variable("w", [3, 2])
        b = js.get_variable("b", [2], regularizer=l1)  # argument beats scope
    u = js.get_variable("u", [4])  # no regularizer
    with js.variable_scope("a", reuse=True):
        js.get_variable("w", [3, 2])  # reuse: no second term
    return js.get_regularization_loss(), (w, b, u)


def reference_loss(variables):
    p = variables["params"]
    return l2(p["a"]["w"]) + l1(p["a"]["b"])


def test_regularization_loss_at_init_and_apply():
    (loss, _), variables = js.init_with_output(regularized_model, KEY)
    np.testing.assert_allclose(loss, reference_loss(variables), rtol=1e-6)
    assert float(loss) > 0
    changed = jax.tree.map(lambda a: 3.0 * a + 1.0, variables)
    loss_a, _ = js.apply(regularized_model, changed)
    np.testing.assert_allclose(loss_a, reference_loss(changed), rtol=1e-6)
    assert not np.allclose(loss_a, loss)


def test_regularization_loss_is_zero_without_regularizers():
    def fn():
        js.get_variable("w", [3])
        return js.get_regularization_loss()

    out, variables = js.init_with_output(fn, KEY)
    assert out.shape == ()
    assert float(out) == 0.0
    assert float(js.apply(fn, variables)) == 0.0


def test_regularization_loss_uses_current_values():
    def fn():
        c = js.get_variable(
            "c", [2], regularizer=l2, initializer=js.initializers.ones()
        )
        before = js.get_regularization_loss()
        js.assign(c, jnp.array([3.0, 4.0]))
        return before, js.get_regularization_loss()

    (before, after), variables = js.init_with_output(fn, KEY)
    np.testing.assert_allclose(before, l2(jnp.ones(2)))
    np.testing.assert_allclose(after, l2(jnp.array([3.0, 4.0])))
    (before_a, after_a), _ = js.apply(fn, variables, mutable=True)
    np.testing.assert_allclose(before_a, l2(jnp.ones(2)))
    np.testing.assert_allclose(after_a, l2(jnp.array([3.0, 4.0])))


def test_regularization_loss_counts_only_this_run():
    def fn(n):
        for i in range(n):
            js.get_variable(f"w{i}", [2], regularizer=l2)
        return js.get_regularization_loss()

    loss2, v2 = js.init_with_output(fn, KEY, 2)
    loss1, v1 = js.init_with_output(fn, KEY, 1)
    np.testing.assert_allclose(loss1, l2(v1["params"]["w0"]), rtol=1e-6)
    np.testing.assert_allclose(
        loss2, l2(v2["params"]["w0"]) + l2(v2["params"]["w1"]), rtol=1e-6
    )


def test_regularization_loss_under_grad():
    def loss_fn(variables):
        return js.apply(regularized_model, variables)[0]

    variables = js.init(regularized_model, KEY)
    grads = jax.grad(loss_fn)(variables)
    p = variables["params"]
    np.testing.assert_allclose(grads["params"]["a"]["w"], p["a"]["w"], rtol=1e-6)
    np.testing.assert_allclose(
        grads["params"]["a"]["b"], 0.1 * jnp.sign(p["a"]["b"]), rtol=1e-6
    )
    np.testing.assert_array_equal(grads["params"]["u"], jnp.zeros(4))


# ---------------------------------------------------------------- js.Variable


def test_variable_names_are_uniquified():
    def fn():
        v1 = js.Variable(10, name="name1")
        v2 = js.Variable(10, name="name1")
        u1 = js.Variable(1.0)
        u2 = js.Variable(2.0)
        return v1.name, v2.name, u1.name, u2.name

    names, variables = js.init_with_output(fn, KEY)
    assert names == ("name1", "name1_1", "Variable", "Variable_1")
    flat = js.flatten(variables)
    assert set(flat) == {
        "state/name1",
        "state/name1_1",
        "params/Variable",
        "params/Variable_1",
    }


def test_variable_always_creates_even_under_reuse():
    def fn():
        with js.variable_scope("s", reuse=True):
            a = js.Variable(1.0, name="v")
        with js.variable_scope("t", reuse=js.AUTO_REUSE):
            b = js.Variable(2.0, name="v")
            c = js.Variable(3.0, name="v")
        return a.name, b.name, c.name

    names, variables = js.init_with_output(fn, KEY)
    assert names == ("s/v", "t/v", "t/v_1")
    assert js.flatten(variables) == pytest.approx(
        {"params/s/v": 1.0, "params/t/v": 2.0, "params/t/v_1": 3.0}
    )


def test_variable_lives_in_name_scopes():
    def fn():
        out = []
        with js.name_scope("block"):
            out.append(js.Variable(1.0, name="w").name)
            with js.name_scope("inner"):
                out.append(js.Variable(1.0).name)
            # get_variable ignores name scopes
            js.get_variable("g", [1])
        with js.name_scope("block"):
            out.append(js.Variable(1.0, name="w").name)
        return out

    names, variables = js.init_with_output(fn, KEY)
    assert names == ["block/w", "block/inner/Variable", "block_1/w"]
    assert "g" in variables["params"]


def test_variable_under_reopened_variable_scope():
    def affine(shape):
        w = js.Variable(jax.random.truncated_normal(KEY, -2, 2, shape))
        b = js.Variable(jnp.zeros([shape[1]]))
        return w.name, b.name

    def fn():
        with js.variable_scope("n1"):
            first = affine([4, 3])
        with js.variable_scope("n1"):
            second = affine([4, 3])
        return first, second

    (first, second), variables = js.init_with_output(fn, KEY)
    assert first == ("n1/Variable", "n1/Variable_1")
    assert second == ("n1_1/Variable", "n1_1/Variable_1")
    assert list(js.flatten(variables)) == [
        "params/n1/Variable",
        "params/n1/Variable_1",
        "params/n1_1/Variable",
        "params/n1_1/Variable_1",
    ]


def test_variable_is_invisible_to_get_variable_with_reuse():
    def fn():
        with js.variable_scope("s"):
            js.Variable(1.0, name="x")
        with js.variable_scope("s", reuse=True):
            js.get_variable("x", [])

    with pytest.raises(
        errors.VariableNotFoundError,
        match=re.escape(
            "Variable s/x does not exist, or was not created with get_variable()"
        ),
    ):
        js.init(fn, KEY)


@pytest.mark.parametrize(
    "flag", [None, False, js.AUTO_REUSE], ids=["None", "False", "AUTO"]
)
def test_get_variable_at_a_variable_path_is_an_error(flag):
    def fn():
        with js.variable_scope("s"):
            js.Variable(1.0, name="x")
        with js.variable_scope("s", reuse=flag):
            js.get_variable("x", [])

    with pytest.raises(ValueError, match=r"s/x.*js\.Variable") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, errors.JscopeError)
    assert info.value.path == "s/x"


def test_variable_after_get_variable_is_renamed():
    def fn():
        js.get_variable("x", [1])
        v = js.Variable(2.0, name="x")
        w = js.Variable(3.0, name="x")
        return v.name, w.name

    names, variables = js.init_with_output(fn, KEY)
    assert names == ("x_1", "x_2")
    assert list(js.flatten(variables)) == ["params/x", "params/x_1", "params/x_2"]


def test_variable_callable_initial_value_not_called_at_apply():
    calls = []

    def initial(key):
        calls.append(key)
        return jax.random.normal(key, (3,))

    def fn():
        with js.variable_scope("s"):
            v = js.Variable(initial, name="w")
        return v.value

    out, variables = js.init_with_output(fn, KEY)
    assert len(calls) == 1
    expected = jax.random.normal(jax.random.fold_in(KEY, stable_hash("s/w")), (3,))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(variables["params"]["s"]["w"], expected)
    changed = {"params": {"s": {"w": jnp.arange(3.0)}}}
    np.testing.assert_array_equal(js.apply(fn, changed), jnp.arange(3.0))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "value, dtype, coll",
    [
        (0, jnp.int32, "state"),
        (1.5, jnp.float32, "params"),
        (True, jnp.bool_, "state"),
        ([1, 2, 3], jnp.int32, "state"),
        ([1.0, 2.0], jnp.float32, "params"),
        (np.zeros(2, np.float16), jnp.float16, "params"),
        (np.zeros(2, np.int8), jnp.int8, "state"),
        (jnp.zeros(2, jnp.bfloat16), jnp.bfloat16, "params"),
    ],
)
def test_variable_dtype_inference(value, dtype, coll):
    def fn():
        v = js.Variable(value, name="v")
        return v.dtype, v.shape

    (dt, shape), variables = js.init_with_output(fn, KEY)
    assert dt == np.dtype(dtype)
    assert shape == np.shape(value)
    assert variables[coll]["v"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(variables[coll]["v"], np.asarray(value, dtype))


def test_variable_dtype_argument_casts():
    def fn():
        return js.Variable(3, name="v", dtype=jnp.float32).value

    out, variables = js.init_with_output(fn, KEY)
    assert out.dtype == jnp.float32
    assert float(out) == 3.0
    assert "v" in variables["params"]


def test_variable_handle():
    def fn():
        v = js.Variable(jnp.array([1.0, 2.0]), name="v")
        c = js.Variable(5, name="c")
        out = {
            "name": v.name,
            "shape": v.shape,
            "dtype": v.dtype,
            "value": v.value,
            "asarray": jnp.asarray(v),
            "add": v + 1.0,
            "radd": 1.0 + v,
            "sub": v - 1.0,
            "rsub": 10.0 - v,
            "mul": v * v,
            "div": v / 2.0,
            "neg": -v,
            "pow": v**2,
            "lt": v < 1.5,
            "ge": v >= 2.0,
            "eq": v == 2.0,
            "getitem": v[1],
            "c_mod": c % 3,
            "c_floordiv": c // 2,
        }
        out["assign"] = v.assign(jnp.array([3.0, 4.0]))
        out["after_assign"] = v.value
        out["assign_add"] = v.assign_add(jnp.array([1.0, 1.0]))
        out["assign_sub"] = v.assign_sub(0.5)
        out["final"] = v.value
        out["c_assign_add"] = c.assign_add(1)
        return out

    out, variables = js.init_with_output(fn, KEY)
    x = jnp.array([1.0, 2.0])
    assert out["name"] == "v"
    assert out["shape"] == (2,)
    assert out["dtype"] == jnp.float32
    for key, expected in [
        ("value", x),
        ("asarray", x),
        ("add", x + 1.0),
        ("radd", 1.0 + x),
        ("sub", x - 1.0),
        ("rsub", 10.0 - x),
        ("mul", x * x),
        ("div", x / 2.0),
        ("neg", -x),
        ("pow", x**2),
        ("lt", x < 1.5),
        ("ge", x >= 2.0),
        ("eq", x == 2.0),
        ("getitem", x[1]),
        ("c_mod", jnp.int32(5) % 3),
        ("c_floordiv", jnp.int32(5) // 2),
        ("assign", jnp.array([3.0, 4.0])),
        ("after_assign", jnp.array([3.0, 4.0])),
        ("assign_add", jnp.array([4.0, 5.0])),
        ("assign_sub", jnp.array([3.5, 4.5])),
        ("final", jnp.array([3.5, 4.5])),
        ("c_assign_add", jnp.int32(6)),
    ]:
        np.testing.assert_array_equal(out[key], expected, err_msg=key)
        assert np.asarray(out[key]).dtype == np.asarray(expected).dtype, key
    assert isinstance(out["asarray"], jax.Array)
    # init keeps the initial values
    np.testing.assert_array_equal(variables["params"]["v"], x)
    assert int(variables["state"]["c"]) == 5


def test_variable_handle_at_apply_reads_the_tree():
    def fn():
        v = js.Variable(0.0, name="v")
        return v * 2.0, v.name

    variables = js.init(fn, KEY)
    out, name = js.apply(fn, {"params": {"v": jnp.float32(4.0)}})
    assert float(out) == 8.0
    assert name == "v"
    assert float(js.apply(fn, variables)[0]) == 0.0


# ----------------------------------------------------------------- collections


def test_collections_by_kind():
    def fn():
        js.get_variable("w", [2])
        js.get_variable("frozen", [2], trainable=False)
        js.get_variable("step", [], jnp.int32)
        js.get_variable("step8", [], jnp.int8, trainable=True)
        js.get_variable("mask", [2], jnp.bool_)
        js.get_variable("half", [2], jnp.float16)
        js.get_variable("bf", [2], jnp.bfloat16)
        js.get_variable("mine", [2], collection="batch_stats")
        js.get_variable("mine_int", [], jnp.int32, collection="counters")
        js.get_variable("forced", [], jnp.int32, collection="params")
        js.Variable(1.0, name="tv")
        js.Variable(1.0, name="ntv", trainable=False)
        js.Variable(0, name="counter")
        js.Variable(1.0, name="cv", collection="extra")

    variables = js.init(fn, KEY)
    assert {c: list(sub) for c, sub in variables.items()} == {
        "params": ["w", "half", "bf", "forced", "tv"],
        "state": ["frozen", "step", "step8", "mask", "ntv", "counter"],
        "batch_stats": ["mine"],
        "counters": ["mine_int"],
        "extra": ["cv"],
    }


def test_creation_order_within_collection():
    names = ["zeta", "alpha", "mid", "beta", "omega"]

    def fn():
        for i, n in enumerate(names):
            js.get_variable(n, [1])
            js.get_variable(f"s_{n}", [], jnp.int32)
            if i == 2:
                with js.variable_scope("zz"):
                    js.get_variable("inner", [1])

    variables = js.init(fn, KEY)
    assert list(js.flatten(variables["params"])) == [
        "zeta",
        "alpha",
        "mid",
        "zz/inner",
        "beta",
        "omega",
    ]
    assert list(js.flatten(variables["state"])) == [f"s_{n}" for n in names]


def test_collection_override_at_apply():
    def fn():
        return js.get_variable("m", [2], collection="batch_stats", trainable=False)

    variables = js.init(fn, KEY)
    assert list(variables) == ["batch_stats"]
    np.testing.assert_array_equal(
        js.apply(fn, variables), variables["batch_stats"]["m"]
    )
    moved = {"state": {"m": variables["batch_stats"]["m"]}}
    with pytest.raises(errors.UninitializedVariableError, match="m"):
        js.apply(fn, moved)


# ------------------------------------------------------------------ assignment


def test_assign_with_handle_name_and_array():
    def fn():
        with js.variable_scope("bn"):
            m = js.get_variable("moving_mean", [2], initializer=js.initializers.zeros())
            a = js.assign("moving_mean", m + 1.0)
        b = js.assign("bn/moving_mean", a * 3.0)
        c = js.get_variable("c", [], jnp.int32)
        c2 = js.assign(c, c + 1)
        c3 = js.assign_add(c2, 2)
        c4 = js.assign_sub("c", 1)
        h = js.Variable(1.0, name="h")
        h2 = js.assign(h, 5.0)
        h3 = js.assign_add(h, h)
        return a, b, c2, c3, c4, h2, h3

    out, variables = js.init_with_output(fn, KEY)
    expected = (
        jnp.ones(2),
        3.0 * jnp.ones(2),
        jnp.int32(1),
        jnp.int32(3),
        jnp.int32(2),
        jnp.float32(5.0),
        jnp.float32(10.0),
    )
    for got, exp in zip(out, expected, strict=True):
        np.testing.assert_array_equal(got, exp)
        assert got.dtype == exp.dtype
    # at apply with everything mutable, the last values come back
    out_a, updated = js.apply(fn, variables, mutable=True)
    for got, exp in zip(out_a, expected, strict=True):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(
        updated["params"]["bn"]["moving_mean"], 3.0 * jnp.ones(2)
    )
    assert int(updated["state"]["c"]) == 2
    assert float(updated["params"]["h"]) == 10.0


def test_assign_makes_later_reads_see_the_new_value():
    def fn():
        with js.variable_scope("s"):
            v = js.get_variable("v", [2], initializer=js.initializers.zeros())
            js.assign(v, jnp.array([1.0, 2.0]))
        with js.variable_scope("s", reuse=True):
            return js.get_variable("v", [2])

    out, variables = js.init_with_output(fn, KEY)
    np.testing.assert_array_equal(out, [1.0, 2.0])
    np.testing.assert_array_equal(variables["params"]["s"]["v"], [0.0, 0.0])
    out_a, updated = js.apply(fn, variables, mutable="params")
    np.testing.assert_array_equal(out_a, [1.0, 2.0])
    np.testing.assert_array_equal(updated["params"]["s"]["v"], [1.0, 2.0])


@pytest.mark.parametrize(
    "other",
    [
        lambda c: jnp.zeros((), jnp.int32),
        lambda c: c + 0,
        lambda c: np.int32(0),
        lambda c: [0],
    ],
    ids=["fresh_array", "derived_array", "numpy", "list"],
)
def test_assign_to_other_array_is_an_error(other):
    def fn():
        c = js.get_variable("c", [], jnp.int32)
        js.assign(other(c), c + 1)

    with pytest.raises(errors.AssignmentTargetError, match="name"):
        js.init(fn, KEY)


def test_assign_to_unknown_name_is_an_error():
    def fn():
        with js.variable_scope("bn"):
            js.get_variable("moving_mean", [2])
            js.assign("moving_var", jnp.zeros(2))

    with pytest.raises(errors.JscopeError, match="bn/moving_var"):
        js.init(fn, KEY)


@pytest.mark.parametrize("how", [js.assign, js.assign_add, js.assign_sub])
def test_assign_wrong_shape(how):
    def fn():
        with js.variable_scope("s"):
            v = js.get_variable("v", [2])
            how(v, jnp.zeros(3))

    with pytest.raises(errors.AssignmentShapeError, match=r"s/v") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, ValueError)
    assert "(3,)" in str(info.value) and "(2,)" in str(info.value)


@pytest.mark.parametrize(
    "var_dtype, value",
    [
        (jnp.float32, jnp.zeros(2, jnp.float16)),
        (jnp.float32, jnp.zeros(2, jnp.int32)),
        (jnp.int32, jnp.zeros(2, jnp.float32)),
        (jnp.int32, jnp.zeros(2, jnp.int8)),
        (jnp.float16, np.zeros(2, np.float32)),
    ],
)
def test_assign_other_dtype_is_a_type_error(var_dtype, value):
    def fn():
        with js.variable_scope("s"):
            v = js.get_variable("v", [2], var_dtype)
            js.assign(v, value)

    with pytest.raises(errors.AssignmentDtypeError, match=r"s/v") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "var_dtype, value",
    [
        (jnp.int32, 5),
        (jnp.float32, 1),
        (jnp.float32, 2.5),
        (jnp.float16, 1),
        (jnp.bool_, True),
    ],
)
def test_assign_python_scalars_are_cast(var_dtype, value):
    def fn():
        c = js.get_variable("c", [], var_dtype)
        return js.assign(c, value)

    new = js.init_with_output(fn, KEY)[0]
    assert new.dtype == np.dtype(var_dtype)
    assert new == np.asarray(value, var_dtype)


def test_assign_unrepresentable_scalar_is_a_type_error():
    def fn():
        with js.variable_scope("s"):
            c = js.get_variable("c", [], jnp.int32)
            js.assign(c, 0.4)

    with pytest.raises(errors.AssignmentDtypeError, match=r"s/c") as info:
        js.init(fn, KEY)
    assert isinstance(info.value, TypeError)


def test_assign_outside_run():
    with pytest.raises(errors.NotInRunError):
        js.assign("c", 1)


# ------------------------------------------------------------ apply / mutable (§2)


def counter_step():
    c = js.get_variable("counter", [], jnp.int32)
    w = js.get_variable("w", [2], initializer=js.initializers.ones())
    js.assign(c, c + 1)
    return w * 2.0


def test_apply_mutable_false_returns_only_output():
    variables = js.init(counter_step, KEY)
    for mutable in (False, None):
        with pytest.raises(errors.NotMutableError, match=r"counter.*'state'"):
            js.apply(counter_step, variables, mutable=mutable)

    def read_only():
        return js.get_variable("w", [2]) * 2.0

    out = js.apply(read_only, variables)
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(out, 2.0 * jnp.ones(2))
    out = js.apply(read_only, variables, mutable=False)
    np.testing.assert_array_equal(out, 2.0 * jnp.ones(2))


@pytest.mark.parametrize("mutable", [True, "state", ["state"], ("state",)])
def test_apply_mutable_returns_whole_updated_tree(mutable):
    variables = js.init(counter_step, KEY)
    out, updated = js.apply(counter_step, variables, mutable=mutable)
    np.testing.assert_array_equal(out, 2.0 * jnp.ones(2))
    assert list(updated) == list(variables)
    assert int(updated["state"]["counter"]) == 1
    assert updated["state"]["counter"].dtype == jnp.int32
    np.testing.assert_array_equal(updated["params"]["w"], variables["params"]["w"])
    assert updated is not variables


def test_assigning_non_mutable_collection_names_path_and_collection():
    def fn():
        with js.variable_scope("bn"):
            m = js.get_variable("moving_mean", [2], trainable=False)
            w = js.get_variable("w", [2])
            js.assign(m, m + 1.0)
            js.assign(w, w + 1.0)

    variables = js.init(fn, KEY)
    with pytest.raises(errors.NotMutableError, match=r"bn/w.*'params'"):
        js.apply(fn, variables, mutable=["state"])
    with pytest.raises(errors.NotMutableError, match=r"bn/moving_mean.*'state'"):
        js.apply(fn, variables, mutable=["params"])
    _, updated = js.apply(fn, variables, mutable=["params", "state"])
    np.testing.assert_allclose(
        updated["state"]["bn"]["moving_mean"],
        variables["state"]["bn"]["moving_mean"] + 1,
    )


def test_init_does_not_keep_assignments():
    variables = js.init(counter_step, KEY)
    assert int(variables["state"]["counter"]) == 0


def test_counter_incremented_ten_times():
    def increment():
        counter = js.Variable(0, name="counter")
        return js.assign(counter, counter + 1)

    variables = js.init(increment, KEY)
    assert int(variables["state"]["counter"]) == 0
    seen = []
    for _ in range(10):
        out, variables = js.apply(increment, variables, mutable=True)
        seen.append((int(out), int(variables["state"]["counter"])))
    assert seen == [(i, i) for i in range(1, 11)]
    assert variables["state"]["counter"].dtype == jnp.int32


def test_apply_never_mutates_input_tree():
    def fn():
        bump_bn_statistics()
        w = js.get_variable("w", [2])
        js.assign(w, w * 0.0)
        return w

    variables = js.init(fn, KEY)
    snapshot = copy.deepcopy(as_numpy(variables))
    ids_before = dict_ids(variables)
    leaves_before = {k: id(v) for k, v in js.flatten(variables).items()}
    _, updated = js.apply(fn, variables, mutable=True)
    assert_trees_equal(as_numpy(variables), snapshot)
    assert dict_ids(variables) == ids_before
    assert {k: id(v) for k, v in js.flatten(variables).items()} == leaves_before
    # the returned tree is a new tree that shares no dict with the input
    assert updated is not variables
    assert set(dict_ids(updated).values()).isdisjoint(ids_before.values())
    np.testing.assert_array_equal(updated["params"]["w"], jnp.zeros(2))
    np.testing.assert_array_equal(
        updated["state"]["bn"]["mean"], snapshot["state"]["bn"]["mean"] + 1.0
    )


def test_apply_with_nothing_assigned_returns_a_new_equal_tree():
    def fn():
        return js.get_variable("a/w", [2])

    variables = js.init(fn, KEY)
    ids_before = dict_ids(variables)
    _, updated = js.apply(fn, variables, mutable=True)
    assert_trees_equal(updated, variables)
    assert set(dict_ids(updated).values()).isdisjoint(ids_before.values())


def test_init_returns_fresh_trees():
    fn = lambda: js.get_variable("a/w", [2])  # noqa: E731
    a = js.init(fn, KEY)
    b = js.init(fn, KEY)
    assert_trees_equal(a, b)
    assert set(dict_ids(a).values()).isdisjoint(dict_ids(b).values())


def test_init_tree_is_plain_nested_dict():
    def fn():
        with js.variable_scope("n2"):
            js.get_variable("W", [7, 5])
            js.get_variable("b", [5])
        js.Variable(0, name="counter")

    variables = js.init(fn, KEY)
    assert type(variables) is dict
    assert type(variables["params"]) is dict
    assert type(variables["params"]["n2"]) is dict
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"n2": {"W": (7, 5), "b": (5,)}},
        "state": {"counter": ()},
    }
    for leaf in jax.tree.leaves(variables):
        assert isinstance(leaf, jax.Array)


def test_apply_missing_path_is_uninitialized():
    def fn():
        with js.variable_scope("n1"):
            js.get_variable("w", [2])
            js.get_variable("b", [2])

    variables = js.init(fn, KEY)
    broken = {"params": {"n1": {"w": variables["params"]["n1"]["w"]}}}
    with pytest.raises(
        errors.UninitializedVariableError,
        match=r"n1/b.*uninitialized|uninitialized.*n1/b",
    ) as info:
        js.apply(fn, broken)
    assert isinstance(info.value, ValueError)
    assert info.value.path == "n1/b"
    with pytest.raises(errors.UninitializedVariableError, match=r"n1/w"):
        js.apply(fn, {"params": {}})


def test_apply_missing_variable_handle_is_uninitialized():
    def fn():
        with js.name_scope("blk"):
            js.Variable(0, name="count")

    with pytest.raises(errors.UninitializedVariableError, match=r"blk/count"):
        js.apply(fn, {"state": {}})


@pytest.mark.parametrize(
    "stored",
    [
        jnp.zeros((3,)),
        jnp.zeros((2, 1)),
        jnp.zeros(()),
        jnp.zeros((2,), jnp.float16),
        jnp.zeros((2,), jnp.int32),
    ],
    ids=["shape3", "shape2x1", "scalar", "float16", "int32"],
)
def test_apply_stored_shape_or_dtype_differs(stored):
    def fn():
        with js.variable_scope("n1"):
            return js.get_variable("w", [2], collection="params")

    variables = {"params": {"n1": {"w": stored}}}
    with pytest.raises(errors.JscopeError, match=r"n1/w") as info:
        js.apply(fn, variables)
    assert isinstance(info.value, ValueError)
    expected = (
        errors.ShapeMismatchError if stored.shape != (2,) else errors.DtypeMismatchError
    )
    assert isinstance(info.value, expected)


def test_apply_reads_default_initializer_variables_as_init_made_them():
    # Reads without an initializer take the read path of explicit ones: the
    # collection follows trainable and dtype as at init, the array comes back
    # itself, and a tree leaf of another shape or dtype is still refused.
    def fn():
        with js.variable_scope("blk"):
            got = [
                js.get_variable("w", (2, 3)),
                js.get_variable("frozen", 3, trainable=False),
                js.get_variable("none", [3], trainable=None),
                js.get_variable("count", (), dtype=jnp.int32),
            ]
        with js.variable_scope("half", dtype=jnp.float16):
            got.append(js.get_variable("h", (2,)))
        return got

    variables = js.init(fn, KEY)
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"blk": {"w": (2, 3), "none": (3,)}, "half": {"h": (2,)}},
        "state": {"blk": {"frozen": (3,), "count": ()}},
    }
    got = js.apply(fn, variables)
    stored = [
        variables["params"]["blk"]["w"],
        variables["state"]["blk"]["frozen"],
        variables["params"]["blk"]["none"],
        variables["state"]["blk"]["count"],
        variables["params"]["half"]["h"],
    ]
    assert all(a is b for a, b in zip(got, stored, strict=True))
    swapped = {
        "params": {**variables["params"], "half": {"h": jnp.zeros((2,))}},
        "state": variables["state"],
    }
    with pytest.raises(errors.DtypeMismatchError, match="half/h"):
        js.apply(fn, swapped)
    moved = {"params": variables["params"], "state": {"blk": {}}}
    with pytest.raises(errors.UninitializedVariableError, match="blk/frozen"):
        js.apply(fn, moved)


@pytest.mark.parametrize(
    ("shape", "error"),
    [
        ([2, 3], None),
        ([np.int64(2), 3], None),
        ([True + 1, 3], None),
        ([2.0, 3], errors.ShapeTypeError),
        (["2", 3], errors.ShapeTypeError),
        ([3, 2], errors.ShapeMismatchError),
        ([2, 3, 1], errors.ShapeMismatchError),
        ([2, None], errors.InvalidShapeError),
        ([2, -3], errors.InvalidShapeError),
    ],
)
def test_apply_checks_list_shapes_as_init_does(shape, error):
    # TF1 code writes shapes as lists; at apply a list of the stored ints is
    # read without the full check, and anything else gets the check init makes.
    def fn(shape):
        with js.variable_scope("blk"):
            return js.get_variable("w", shape, initializer=js.initializers.ones())

    tree = {"params": {"blk": {"w": jnp.zeros((2, 3))}}}
    if error is None:
        assert js.apply(fn, tree, shape) is tree["params"]["blk"]["w"]
        assert js.init(fn, KEY, shape)["params"]["blk"]["w"].shape == (2, 3)
        return
    with pytest.raises(error, match="blk/w"):
        js.apply(fn, tree, shape)
    if error is not errors.ShapeMismatchError:  # init makes what it is asked
        with pytest.raises(error, match="blk/w"):
            js.init(fn, KEY, shape)


REUSE_CALLS = {
    "tuple": lambda: js.get_variable("w", (2, 3)),
    "list": lambda: js.get_variable("w", [2, 3]),
    "jnp.float32": lambda: js.get_variable("w", [2, 3], jnp.float32),
    "str dtype": lambda: js.get_variable("w", (2, 3), "float32"),
    "None dim": lambda: js.get_variable("w", (2, None)),
    "no shape": lambda: js.get_variable("w"),
    "other shape": lambda: js.get_variable("w", (3, 2)),
    "float dim": lambda: js.get_variable("w", [2, 3.0]),
    "other dtype": lambda: js.get_variable("w", (2, 3), jnp.int32),
    "int, no dtype": lambda: js.get_variable("n", ()),
    "int": lambda: js.get_variable("n", (), jnp.int32),
    "axes": lambda: js.get_variable("w", (2, 3), axes=("a", "b")),
    "same axes": lambda: js.get_variable("v", (2, 3), axes=("a", "b")),
    "other axes": lambda: js.get_variable("v", (2, 3), axes=("a", "c")),
    "missing": lambda: js.get_variable("missing", (2,)),
    "a js.Variable": lambda: js.get_variable("h", ()),
}


@pytest.mark.parametrize("call", REUSE_CALLS.values(), ids=REUSE_CALLS)
@pytest.mark.parametrize("flag", [True, js.AUTO_REUSE, False])
def test_apply_reuse_reads_as_init(call, flag):
    # A reuse at apply gives what the same call gives at init: the variable's
    # value (the tree's array itself), or the same error.
    def make():
        with js.variable_scope("s"):
            js.get_variable("w", (2, 3))
            js.get_variable("n", (), jnp.int32)
            js.get_variable("v", (2, 3), axes=("a", "b"))
            js.Variable(1.0, name="h")

    def fn():
        make()
        with js.variable_scope("s", reuse=flag):
            return call()

    try:
        want, tree = js.init_with_output(fn, KEY)
    except errors.JscopeError as e:
        with pytest.raises(type(e)):
            js.apply(fn, js.init(make, KEY))
        return
    got = js.apply(fn, tree)
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert any(got is leaf for leaf in jax.tree.leaves(tree))


def test_apply_is_independent_of_tree_order():
    def fn():
        return js.get_variable("a", [2]) + js.get_variable("b", [2])

    variables = js.init(fn, KEY)
    reordered = {
        "params": {"b": variables["params"]["b"], "a": variables["params"]["a"]}
    }
    np.testing.assert_array_equal(js.apply(fn, reordered), js.apply(fn, variables))


def test_nested_apply_inside_init_is_independent():
    inner_fn = lambda: js.get_variable("inner", [2])  # noqa: E731
    inner_vars = js.init(inner_fn, KEY)

    def outer():
        got = js.apply(inner_fn, inner_vars)
        w = js.get_variable("outer", [2])
        return got, w

    (got, _), variables = js.init_with_output(outer, KEY)
    np.testing.assert_array_equal(got, inner_vars["params"]["inner"])
    assert list(js.flatten(variables)) == ["params/outer"]


# -------------------------------------------------------------- TF1 kwargs (§4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"validate_shape": True},
        {"use_resource": None},
        {"caching_device": None},
        {"partitioner": None},
        {"constraint": None},
        {"collections": ["variables"]},
        {"collections": ["trainable_variables"]},
        {"collections": ["variables", "trainable_variables"]},
        {"collections": None},
        {"synchronization": None},
        {"aggregation": None},
        {
            "validate_shape": True,
            "use_resource": None,
            "caching_device": None,
            "partitioner": None,
            "constraint": None,
            "collections": ["variables"],
        },
    ],
)
def test_tf1_kwargs_at_defaults_are_accepted(kwargs):
    def fn():
        with js.variable_scope("s"):
            return js.get_variable("w", [2], **kwargs)

    out, variables = js.init_with_output(fn, KEY)
    np.testing.assert_array_equal(out, variables["params"]["s"]["w"])
    np.testing.assert_array_equal(js.apply(fn, variables), out)


def test_tf1_enum_defaults_are_accepted():
    sync = enum.Enum("VariableSynchronization", "AUTO ON_WRITE ON_READ NONE")
    agg = enum.Enum("VariableAggregation", "NONE SUM MEAN")

    def fn():
        return js.get_variable(
            "w", [2], synchronization=sync.AUTO, aggregation=agg.NONE
        )

    js.init(fn, KEY)

    def bad():
        return js.get_variable("w", [2], synchronization=sync.ON_READ)

    with pytest.raises(errors.UnsupportedArgumentError, match="synchronization"):
        js.init(bad, KEY)


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"collections": ["foo"]}, "collection="),
        ({"collections": ["variables", "losses"]}, "collection="),
        ({"partitioner": lambda shape, dtype: [1, 2]}, "shard"),
        ({"validate_shape": False}, "validate_shape"),
        ({"use_resource": False}, "use_resource"),
        ({"caching_device": "/cpu:0"}, "caching_device"),
        ({"constraint": lambda x: x}, "constraint"),
        ({"synchronization": "on_read"}, "synchronization"),
        ({"aggregation": "sum"}, "aggregation"),
    ],
)
def test_tf1_kwargs_other_values_are_clear_errors(kwargs, phrase):
    def fn():
        with js.variable_scope("s"):
            js.get_variable("w", [2], **kwargs)

    with pytest.raises(
        errors.UnsupportedArgumentError, match=re.escape(phrase)
    ) as info:
        js.init(fn, KEY)
    assert isinstance(info.value, ValueError)


def test_unknown_kwarg_is_a_type_error():
    def fn():
        js.get_variable("w", [2], not_an_argument=1)

    with pytest.raises(TypeError, match="not_an_argument"):
        js.init(fn, KEY)


# ------------------------------------------------------------ context API (§2, §4)


def test_is_initializing():
    def fn():
        js.get_variable("w", [1])
        return js.is_initializing()

    out, variables = js.init_with_output(fn, KEY)
    assert out is True
    assert js.apply(fn, variables) is False


def rng_program():
    keys = [js.next_rng_key("dropout"), js.next_rng_key("dropout")]
    with js.variable_scope("a"):
        keys.append(js.next_rng_key("dropout"))
    with js.variable_scope("b"):
        keys.append(js.next_rng_key("dropout"))
        keys.append(js.next_rng_key())  # "dropout" is the default stream
    return [jax.random.key_data(k) for k in keys]


def test_next_rng_key_at_apply():
    dropout = jax.random.key(7)
    keys = js.apply(rng_program, {}, rngs={"dropout": dropout})
    raw = [tuple(np.asarray(k).ravel()) for k in keys]
    assert len(set(raw)) == len(raw)  # per call and per scope
    again = js.apply(rng_program, {}, rngs={"dropout": dropout})
    for a, b in zip(keys, again, strict=True):
        np.testing.assert_array_equal(a, b)  # same program, same keys
    other = js.apply(rng_program, {}, rngs={"dropout": jax.random.key(8)})
    assert not np.array_equal(np.asarray(keys[0]), np.asarray(other[0]))


def test_next_rng_key_keys_are_usable_for_dropout():
    def fn(x):
        w = js.get_variable("w", [x.shape[-1]], initializer=js.initializers.ones())
        mask = jax.random.bernoulli(js.next_rng_key("dropout"), 0.5, x.shape)
        return jnp.where(mask, x * w, 0.0)

    x = jnp.ones((1000,))
    variables = js.init(fn, KEY, x)
    a = js.apply(fn, variables, x, rngs={"dropout": jax.random.key(1)})
    b = js.apply(fn, variables, x, rngs={"dropout": jax.random.key(2)})
    assert 350 < int(jnp.sum(a)) < 650
    assert not np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("rngs", [None, {"params": jax.random.key(0)}])
def test_missing_rng_stream_names_the_stream(rngs):
    def fn():
        return js.next_rng_key("dropout")

    with pytest.raises(errors.MissingRngError, match="dropout") as info:
        js.apply(fn, {}, rngs=rngs)
    assert isinstance(info.value, ValueError)


def test_next_rng_key_at_init_works():
    keys, _ = js.init_with_output(rng_program, KEY)
    raw = [tuple(np.asarray(k).ravel()) for k in keys]
    assert len(set(raw)) == len(raw)


def test_transform_init_and_apply():
    def fn(x):
        w = js.get_variable("w", [x.shape[-1], 3])
        b = js.get_variable("b", [3], initializer=js.initializers.zeros())
        return x @ w + b

    model = js.transform(fn)
    x = jnp.ones((2, 4))
    variables = model.init(KEY, x)
    assert_trees_equal(variables, js.init(fn, KEY, x))
    out = model.apply(variables, x)
    np.testing.assert_allclose(out, x @ variables["params"]["w"], rtol=1e-6)
    init_out, init_vars = js.init_with_output(fn, KEY, x)
    assert_trees_equal(init_vars, variables)
    np.testing.assert_allclose(init_out, out, rtol=1e-6)


def test_transform_apply_passes_mutable_and_rngs():
    def fn():
        c = js.get_variable("c", [], jnp.int32)
        js.assign(c, c + 1)
        return js.next_rng_key("dropout")

    model = js.transform(fn)
    variables = model.init(KEY)
    key, updated = model.apply(variables, rngs={"dropout": KEY}, mutable=True)
    assert int(updated["state"]["c"]) == 1
    assert key.shape == ()


def test_get_variable_outside_run_says_to_use_init():
    with pytest.raises(errors.NotInRunError, match=r"js\.init"):
        js.get_variable("w", [1])
    with pytest.raises(errors.NotInRunError, match=r"js\.init"):
        js.Variable(1.0)


# ------------------------------------------------------- tree shape (§1) and runs


@pytest.mark.parametrize("order", ["leaf_first", "subtree_first"])
def test_variable_and_subtree_at_same_path_conflict(order):
    def fn():
        if order == "leaf_first":
            js.get_variable("k", [1])
            js.get_variable("k/x", [1])
        else:
            js.get_variable("k/x", [1])
            js.get_variable("k", [1])

    with pytest.raises(errors.PathConflictError) as info:
        js.init(fn, KEY)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "k/x" in message
    assert re.search(r"\bk\b(?!/)", message)


def test_variable_handle_and_subtree_conflict():
    def fn():
        js.Variable(1.0, name="k")
        with js.variable_scope("k"):
            js.get_variable("x", [1])

    with pytest.raises(errors.PathConflictError, match="k/x"):
        js.init(fn, KEY)


def test_flatten_unflatten_round_trip_of_init_tree():
    def fn():
        with js.variable_scope("n2"):
            js.get_variable("W", [3, 2])
            js.get_variable("b", [2])
        js.Variable(0, name="counter")

    variables = js.init(fn, KEY)
    flat = js.flatten(variables)
    assert list(flat) == ["params/n2/W", "params/n2/b", "state/counter"]
    assert list(js.flatten(variables["params"])) == ["n2/W", "n2/b"]
    assert_trees_equal(js.unflatten(flat), variables)


def test_handle_used_after_run_is_an_error():
    def fn():
        return js.Variable(1.0, name="v")

    handle, _ = js.init_with_output(fn, KEY)
    assert handle.name == "v"
    with pytest.raises(errors.NotInRunError, match="v"):
        _ = handle.value


def test_init_under_eval_shape_is_shape_only():
    def fn(x):
        with js.variable_scope("dense"):
            w = js.get_variable("w", [x.shape[-1], 5])
            c = js.get_variable("c", [], jnp.int32)
        return x @ w + c

    x = jnp.ones((2, 3))
    shapes = jax.eval_shape(lambda k: js.init(fn, k, x), KEY)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == {
        "params": {"dense": {"w": ((3, 5), np.dtype("float32"))}},
        "state": {"dense": {"c": ((), np.dtype("int32"))}},
    }


def test_init_and_apply_under_jit_match_eager():
    def fn(x):
        w = js.get_variable("w", [x.shape[-1], 2])
        c = js.get_variable("c", [], jnp.int32)
        js.assign(c, c + 1)
        return x @ w

    x = jnp.arange(6.0).reshape(2, 3)
    eager = js.init(fn, KEY, x)
    jitted = jax.jit(lambda k, x: js.init(fn, k, x))(KEY, x)
    assert_trees_equal(as_numpy(eager), as_numpy(jitted))
    out_e, new_e = js.apply(fn, eager, x, mutable=True)
    out_j, new_j = jax.jit(lambda v, x: js.apply(fn, v, x, mutable=True))(eager, x)
    np.testing.assert_allclose(out_e, out_j, rtol=1e-6)
    np.testing.assert_allclose(out_e, x @ eager["params"]["w"], rtol=1e-6)
    assert_trees_equal(as_numpy(new_e), as_numpy(new_j))
    assert int(new_j["state"]["c"]) == 1


def test_apply_under_vmap_over_inputs():
    def fn(x):
        return jnp.dot(x, js.get_variable("w", [3]))

    variables = js.init(fn, KEY, jnp.ones(3))
    xs = jnp.arange(12.0).reshape(4, 3)
    out = jax.vmap(lambda x: js.apply(fn, variables, x))(xs)
    np.testing.assert_allclose(out, xs @ variables["params"]["w"], rtol=1e-6)


def test_two_threads_init_at_once():
    barrier = threading.Barrier(2)
    results = {}

    def make(name):
        def fn():
            with js.variable_scope(name):
                a = js.get_variable("a", [2])
                barrier.wait(timeout=30)
                b = js.get_variable("b", [2])
            return a, b

        return fn

    def worker(name):
        try:
            results[name] = js.init(make(name), KEY)
        except Exception as e:  # reported below
            results[name] = e

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for name in ("t1", "t2"):
        assert not isinstance(results[name], Exception), results[name]
        assert list(js.flatten(results[name])) == [
            f"params/{name}/a",
            f"params/{name}/b",
        ]


def test_a_name_read_at_apply_in_another_scope_or_run_reads_that_path():
    # get_variable at apply caches nothing per name across scopes or runs: the
    # same name in another scope, or in a later run on another tree, is read
    # from that path of that tree.
    def f():
        out = []
        for scope in ("a", "b", "a/c"):
            with js.variable_scope(scope):
                out.append(
                    js.get_variable("w", (2,), initializer=js.initializers.ones())
                )
        return out

    variables = js.init(f, KEY)
    for scale in (2.0, 3.0):
        tree = jax.tree.map(lambda v, s=scale: v * s, variables)
        tree["params"]["a"]["w"] = tree["params"]["a"]["w"] + 1.0
        got = js.apply(f, tree)
        want = [tree["params"]["a"]["w"], tree["params"]["b"]["w"]]
        want.append(tree["params"]["a"]["c"]["w"])
        assert all(g is w for g, w in zip(got, want, strict=True))
    bad = jax.tree.map(lambda v: v, variables)
    del bad["params"]["b"]["w"]
    with pytest.raises(errors.UninitializedVariableError, match="b/w"):
        js.apply(f, bad)
    bad = jax.tree.map(lambda v: v, variables)
    bad["params"]["a"]["c"]["w"] = jnp.ones(3)
    with pytest.raises(errors.ShapeMismatchError, match="a/c/w"):
        js.apply(f, bad)
