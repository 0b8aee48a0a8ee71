"""Bad inputs get a named `jscope.errors` class, never a raw JAX or NumPy error.

Each program below once failed deep inside JAX or NumPy (``MLIRError: invalid
tensor dimension size``, ``AttributeError: 'float' object has no attribute
'shape'``, ...) or with a misleading message. Each must now raise its
`jscope.errors` class, which is also TF1's builtin, name the full variable path
and say how to fix it, and survive pickling (DESIGN §9).
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
from jscope import errors

KEY = jax.random.key(0)
PATH = "blk/w"


def _init(**kwargs):
    def fn():
        with js.variable_scope("blk"):
            return js.get_variable("w", **kwargs)

    return lambda: js.init(fn, KEY)


def _variable(initial_value, **kwargs):
    def fn():
        with js.name_scope("blk"):
            return js.Variable(initial_value, name="w", **kwargs).value

    return lambda: js.init(fn, KEY)


def _apply(leaf, *, use_variable=False, value_initializer=False):
    def fn():
        if use_variable:
            with js.name_scope("blk"):
                return js.Variable(jnp.zeros(2), name="w").value
        with js.variable_scope("blk"):
            if value_initializer:
                return js.get_variable("w", initializer=jnp.zeros(2))
            return js.get_variable("w", (2,))

    return lambda: js.apply(fn, {"params": {"blk": {"w": leaf}}})


def _assign(value, how="assign"):
    def fn():
        with js.variable_scope("blk"):
            w = js.get_variable("w", (2,))
        return getattr(js, how)(w, value)

    return lambda: js.init(fn, KEY)


def _constant(value):
    def init(key, shape, dtype):
        return value

    return init


# name: (program, class, builtin TF1 raised, a phrase of the fix)
CASES = {
    "negative_dimension": (
        _init(shape=(-1, 2)),
        errors.InvalidShapeError,
        ValueError,
        ">= 0",
    ),
    "negative_int_shape": (
        _init(shape=-3),
        errors.InvalidShapeError,
        ValueError,
        ">= 0",
    ),
    "float_dimension": (
        _init(shape=(2.5,)),
        errors.ShapeTypeError,
        TypeError,
        "shape=(3, 4)",
    ),
    "no_shape": (_init(), errors.InvalidShapeError, ValueError, "Pass shape="),
    "undefined_dimension": (
        _init(shape=(None, 2)),
        errors.InvalidShapeError,
        ValueError,
        "Give every dimension a size",
    ),
    "shape_with_value": (
        _init(shape=(2,), initializer=[1.0, 2.0]),
        errors.InvalidShapeError,
        ValueError,
        "the value's shape is used",
    ),
    "dtype_foo": (
        _init(shape=(2,), dtype="foo"),
        errors.InvalidDtypeError,
        TypeError,
        "jnp.float32",
    ),
    "dtype_object": (
        _init(shape=(2,), dtype=object),
        errors.InvalidDtypeError,
        TypeError,
        "jnp.float32",
    ),
    "dtype_str": (
        _init(shape=(2,), dtype=str),
        errors.InvalidDtypeError,
        TypeError,
        "jnp.float32",
    ),
    "initializer_returns_none": (
        _init(shape=(2,), initializer=_constant(None)),
        errors.InitializerError,
        TypeError,
        "must return an array",
    ),
    "initializer_returns_str": (
        _init(shape=(2,), initializer=_constant("ab")),
        errors.InitializerError,
        TypeError,
        "must return an array",
    ),
    "ragged_value": (
        _init(initializer=[[1, 2], [3]]),
        errors.InitialValueError,
        ValueError,
        "rectangular",
    ),
    "str_value": (
        _init(initializer="abc"),
        errors.InitialValueError,
        ValueError,
        "rectangular",
    ),
    "value_with_none": (
        _init(initializer=[1.0, None]),
        errors.InitialValueError,
        ValueError,
        "rectangular",
    ),
    "variable_none": (
        _variable(None),
        errors.InitialValueError,
        ValueError,
        "rectangular",
    ),
    "variable_ragged": (
        _variable([[1.0], [2.0, 3.0]]),
        errors.InitialValueError,
        ValueError,
        "rectangular",
    ),
    "variable_callable_none": (
        _variable(lambda key: None),
        errors.InitializerError,
        TypeError,
        "must return an array",
    ),
    "variable_dtype_foo": (
        _variable(1.0, dtype="foo"),
        errors.InvalidDtypeError,
        TypeError,
        "jnp.float32",
    ),
    "unknown_keyword": (
        _init(shape=(2,), shapes=(2,)),
        errors.UnknownArgumentError,
        TypeError,
        "spelling",
    ),
    "assign_none": (_assign(None), errors.AssignmentDtypeError, TypeError, "jnp.zeros"),
    "assign_str": (_assign("ab"), errors.AssignmentDtypeError, TypeError, "jnp.zeros"),
    "assign_add_none": (
        _assign(None, "assign_add"),
        errors.AssignmentDtypeError,
        TypeError,
        "jnp.zeros",
    ),
    "assign_sub_str": (
        _assign("ab", "assign_sub"),
        errors.AssignmentDtypeError,
        TypeError,
        "jnp.zeros",
    ),
    "assign_ragged": (
        _assign([[1.0], [1.0, 2.0]]),
        errors.AssignmentShapeError,
        ValueError,
        "array of that shape",
    ),
}
for _name, _leaf in [
    ("float", 1.0),
    ("int", 1),
    ("list", [1.0, 2.0]),
    ("str", "ab"),
    ("none", None),
]:
    for _how, _kwargs in [
        ("get_variable", {}),
        ("value_initializer", {"value_initializer": True}),
        ("variable", {"use_variable": True}),
    ]:
        CASES[f"leaf_{_name}_{_how}"] = (
            _apply(_leaf, **_kwargs),
            errors.LeafTypeError,
            TypeError,
            "jnp.asarray",
        )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_named_error_with_path_and_fix(case):
    program, cls, builtin, fix = CASES[case]
    with pytest.raises(cls) as info:
        program()
    e = info.value
    assert type(e) is cls
    assert isinstance(e, builtin)
    assert isinstance(e, errors.JscopeError)
    message = str(e)
    assert PATH in message
    assert e.path == PATH
    assert fix in message
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls
    assert str(back) == message
    assert back.path == PATH


def test_none_leaf_is_not_called_uninitialized():
    # The tree holds the path, with None: not a trainable=/collection= mistake.
    with pytest.raises(errors.LeafTypeError) as info:
        _apply(None)()
    assert not isinstance(info.value, errors.UninitializedVariableError)
    assert "trainable=" not in str(info.value)
    assert "params/blk/w holds None" in str(info.value)


def test_array_leaves_still_read():
    # NumPy arrays and jax arrays are leaves; they come back unchanged.
    for leaf in [np.zeros(2, np.float32), jnp.zeros(2)]:
        assert _apply(leaf)() is leaf


@pytest.mark.parametrize(
    "dtype", [jnp.bfloat16, "float16", np.int8, bool, jnp.complex64, "int4"]
)
def test_numeric_dtypes_are_accepted(dtype):
    init = js.initializers.zeros()
    out = js.init(lambda: js.get_variable("w", (2,), dtype, initializer=init), KEY)
    got = jax.tree.leaves(out)[0]
    assert got.dtype == jnp.dtype(dtype)


# ------------------------------------------- one array returned for two paths


def _two_paths_one_array(x):
    def fn():
        a = js.get_variable("a", initializer=x)
        b = js.get_variable("b", initializer=x)
        assert a is b  # both paths returned the very same array
        js.assign(a, a + 1)

    return fn


def test_an_array_returned_for_two_paths_is_an_ambiguous_target_at_init():
    x = jnp.zeros(2)
    with pytest.raises(errors.AssignmentTargetError, match="ambiguous") as info:
        js.init(_two_paths_one_array(x), KEY)
    assert isinstance(info.value, TypeError)
    assert "a, b" in str(info.value)


def test_an_array_returned_for_two_paths_is_an_ambiguous_target_at_apply():
    # Without the rule the last path to return the array ("b") would be
    # updated silently, though the caller may have meant "a".
    x = jnp.zeros(2)
    variables = {"params": {"a": x, "b": x}}
    with pytest.raises(errors.AssignmentTargetError, match="ambiguous"):
        js.apply(_two_paths_one_array(x), variables, mutable=True)

    def by_name():
        js.get_variable("a", (2,))
        js.get_variable("b", (2,))
        js.assign("a", jnp.ones(2))

    _, new = js.apply(by_name, variables, mutable=True)
    assert np.array_equal(new["params"]["a"], np.ones(2))
    assert np.array_equal(new["params"]["b"], np.zeros(2))
