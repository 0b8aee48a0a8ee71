"""Porting gaps: TF1-style initializers, float64 without x64 (DESIGN §4.18, §4.19).

Also checks the README's promises about `js.make_template` and `js.assign`.
"""

import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_source

import jscope as js
from jscope import errors

KEY = jax.random.key(0)


# ------------------------------------------------- TF1-signature initializers


def tf1_lambda(shape, dtype=None, partition_info=None):
    return np.ones(shape)


class TF1Ones:
    """A TF1 initializer class: ``__call__(shape, dtype=None, partition_info=None)``."""

    def __call__(self, shape, dtype=None, partition_info=None):
        return np.ones(shape, np.float32)


def tf1_zeros_shape_only(shape, dtype=None):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize(
    "init",
    [
        lambda shape, dtype=None, partition_info=None: np.ones(shape),
        tf1_lambda,
        TF1Ones(),
        tf1_zeros_shape_only,
    ],
    ids=["lambda", "function", "class", "shape-first"],
)
def test_tf1_signature_initializer_is_named(init):
    def fn():
        with js.variable_scope("net"):
            return js.get_variable("w", (2, 3), initializer=init)

    with pytest.raises(errors.InitializerError) as info:
        js.init(fn, KEY)
    e = info.value
    assert isinstance(e, TypeError)
    assert e.path == "net/w"
    message = str(e)
    assert "variable net/w" in message
    assert "TF1's signature" in message
    assert "(key, shape, dtype)" in message
    assert "lambda key, shape, dtype: tf1_init(shape, dtype)" in message
    # Neither JAX's nor NumPy's deep error text is the message.
    assert "0-d key array" not in message and "too big" not in message
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is type(e) and str(again) == message and again.path == e.path


def test_tf1_initializer_in_a_layer_names_the_layer_variable():
    init = TF1Ones()

    def fn(x):
        return js.layers.dense(x, 3, kernel_initializer=init, name="fc")

    with pytest.raises(errors.InitializerError, match="variable fc/kernel"):
        js.init(fn, KEY, jnp.ones((1, 2)))


def test_tf1_initializer_under_jit_is_named():
    def fn():
        return js.get_variable("w", (4,), initializer=tf1_lambda)

    with pytest.raises(errors.InitializerError, match="variable w has TF1's"):
        jax.jit(lambda k: js.init(fn, k))(KEY)


def test_wrapped_tf1_initializer_works():
    def fn():
        init = TF1Ones()
        wrapped = lambda key, shape, dtype: init(shape, dtype)  # noqa: E731
        return js.get_variable("w", (2, 3), initializer=wrapped)

    v = js.init(fn, KEY)
    np.testing.assert_array_equal(v["params"]["w"], np.ones((2, 3), np.float32))


def test_jscope_initializer_errors_are_not_taken_for_tf1():
    def bad(key, shape, dtype):
        raise ValueError("my own bug")

    def fn():
        return js.get_variable("w", (2,), initializer=bad)

    with pytest.raises(ValueError, match="my own bug"):
        js.init(fn, KEY)

    def wrong_shape(key, shape, dtype):
        return jnp.zeros((5,), dtype)

    with pytest.raises(errors.InitializerError, match=r"returned shape \(5,\)"):
        js.init(lambda: js.get_variable("w", (2,), initializer=wrong_shape), KEY)


# -------------------------------------------------- float64 without jax_enable_x64


@pytest.mark.parametrize(
    "make",
    [
        lambda: js.get_variable("w", (2,), jnp.float64),
        lambda: js.get_variable("w", (2,), "float64"),
        lambda: js.get_variable("w", initializer=np.ones(3)),
        lambda: js.Variable(np.arange(3.0), name="w"),
        lambda: js.Variable(jnp.ones(2), name="w", dtype=np.float64),
        lambda: js.get_variable("w", (2,), np.complex128, js.initializers.zeros()),
    ],
    ids=["dtype", "dtype-str", "value", "Variable", "Variable-dtype", "complex128"],
)  # fmt: skip
def test_float64_without_x64_warns_naming_path(make):
    def fn():
        with js.variable_scope("net"):
            v = make()
            return v.value if isinstance(v, js.Variable) else v

    with pytest.warns(UserWarning, match="jax_enable_x64") as record:
        out, _ = js.init_with_output(fn, KEY)
    assert out.dtype in (np.float32, np.complex64)
    messages = [str(w.message) for w in record]
    assert any("Variable net/w" in m for m in messages), messages


def test_float64_warns_once_per_path():
    def fn():
        for name in ("a", "b"):
            js.get_variable(name, (2,), jnp.float64)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for _ in range(3):
            js.init(fn, KEY)
    texts = [str(w.message) for w in record if "jax_enable_x64" in str(w.message)]
    assert len(texts) == 2
    assert any("Variable a:" in t for t in texts)
    assert any("Variable b:" in t for t in texts)


@pytest.mark.parametrize(
    "make",
    [
        lambda: js.get_variable("w", (2,), jnp.float32),
        lambda: js.get_variable("w", initializer=[1.0, 2.0]),  # TF1: float32
        lambda: js.get_variable("w", initializer=1.5),
        lambda: js.get_variable("w", initializer=np.ones(2, np.float32)),
        lambda: js.get_variable("w", (2,), jnp.bfloat16),
        lambda: js.get_variable("n", (2,), jnp.int32, js.initializers.zeros()),
    ],
)
def test_no_warning_for_32_bit_or_python_floats(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        js.init(make, KEY)


# ------------------------------------------------- README: make_template, assign


_X64_TOGGLED = """
import warnings
import jax, jax.numpy as jnp, numpy as np
import jscope as js
warnings.simplefilter("ignore")  # float64 narrowed while x64 is off: warned
f = lambda: js.get_variable("w", (2,), jnp.float64, js.initializers.ones())
got = [js.init(f, jax.random.key(0))["params"]["w"].dtype]
jax.config.update("jax_enable_x64", True)
v = js.init(f, jax.random.key(0))
got += [v["params"]["w"].dtype, js.apply(f, v).dtype]
jax.config.update("jax_enable_x64", False)
got.append(js.init(f, jax.random.key(0))["params"]["w"].dtype)
print(" ".join(map(str, got)))
"""


def test_float64_follows_x64_switched_on_and_off_in_the_process():
    # The dtype canonicalization cache is keyed by the x64 flag: a float64
    # variable made after x64 is switched on is float64, not the float32 the
    # first call cached. A process of its own: the flag is global.
    out = run_source(_X64_TOGGLED).stdout.split()
    assert out == ["float32", "float64", "float64", "float32"]


def test_make_template_shares_variables_between_calls():
    def layer(x):
        return x * js.get_variable("w", (), initializer=js.initializers.ones())

    def fn(x):
        scale = js.make_template("scale", layer)
        return scale(x) + scale(x)

    v = js.init(fn, KEY, jnp.ones(2))
    assert js.flatten(v).keys() == {"params/scale/w"}
    np.testing.assert_array_equal(js.apply(fn, v, jnp.ones(2)), [2.0, 2.0])


def test_assign_returns_new_value_and_local_name_keeps_old():
    def fn():
        w = js.get_variable("w", (), initializer=js.initializers.zeros())
        new = js.assign("w", w + 3.0)
        return w, new

    v = js.init(lambda: js.get_variable("w", initializer=1.0), KEY)
    (w, new), v2 = js.apply(fn, v, mutable=True)
    assert float(w) == 1.0  # the local name still holds the value read
    assert float(new) == 4.0  # assign returns the new value
    assert float(v2["params"]["w"]) == 4.0  # and the tree has it
