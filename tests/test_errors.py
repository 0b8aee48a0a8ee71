"""Tests for `jscope.errors` (DESIGN §9): classes, builtins, pickling, clean failure."""

import copy
import pickle

import jax
import jax.numpy as jnp
import pytest
from helpers import as_numpy, assert_trees_equal, bump_bn_statistics, dict_ids

import jscope as js
from jscope import errors

KEY = jax.random.key(0)

# The builtin each class also is. DESIGN §9 fixes ValueError for reuse, shape,
# dtype-on-reuse and name errors, TypeError for assignment dtypes and
# unrepresentable initializer values; the rest follow what TF1 raised.
EXPECTED_BUILTIN = {
    "ArgumentTypeError": TypeError,
    "AssignmentDtypeError": TypeError,
    "AssignmentShapeError": ValueError,
    "AssignmentTargetError": TypeError,
    "CheckpointCorruptError": ValueError,
    "CheckpointError": ValueError,
    "CheckpointLockError": ValueError,
    "CheckpointMismatchError": ValueError,
    "CheckpointNotFoundError": ValueError,
    "CheckpointTypeError": TypeError,
    "CheckpointWriteError": OSError,
    "DtypeMismatchError": ValueError,
    "InitialValueError": ValueError,
    "InitializerArgumentError": ValueError,
    "InitializerError": TypeError,
    "InvalidDtypeError": TypeError,
    "InvalidNameError": ValueError,
    "InvalidShapeError": ValueError,
    "JaxTransformError": ValueError,
    "LeafTypeError": TypeError,
    "LayerArgumentError": ValueError,
    "LayerTypeError": TypeError,
    "LiftError": ValueError,
    "MissingRngError": ValueError,
    "NotInRunError": RuntimeError,
    "NotMutableError": ValueError,
    "PathConflictError": ValueError,
    "ReadOnlyAttributeError": AttributeError,
    "ReuseFlagError": ValueError,
    "RngTypeError": TypeError,
    "ScopeArgumentError": ValueError,
    "ShapeMismatchError": ValueError,
    "ShapeTypeError": TypeError,
    "ShardingError": ValueError,
    "UninitializedVariableError": ValueError,
    "UnknownCollectionWarning": UserWarning,
    "UnknownArgumentError": TypeError,
    "UnsupportedArgumentError": ValueError,
    "VariableExistsError": ValueError,
    "VariableNotFoundError": ValueError,
}

CLASS_NAMES = sorted(n for n in errors.__all__ if n != "JscopeError")


# ---------------------------------------------------------------------- classes


def test_all_lists_every_exception_class():
    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    assert defined == set(errors.__all__)
    assert set(CLASS_NAMES) == set(EXPECTED_BUILTIN)
    assert js.errors is errors


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_class_subclasses_builtin_and_base(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.JscopeError)
    assert issubclass(cls, EXPECTED_BUILTIN[name])
    assert issubclass(cls, Exception)


def test_base_class():
    assert issubclass(errors.JscopeError, Exception)
    e = errors.JscopeError("Variable a/b is wrong.", "a/b")
    assert str(e) == "Variable a/b is wrong."
    assert e.path == "a/b"
    assert errors.JscopeError("no path").path is None


@pytest.mark.parametrize(
    "name",
    [
        "VariableExistsError",
        "VariableNotFoundError",
        "ShapeMismatchError",
        "DtypeMismatchError",
        "InvalidNameError",
        "ReuseFlagError",
    ],
)
def test_design_value_errors(name):
    """Reuse, shape, dtype-on-reuse and name errors are ValueErrors (DESIGN §9)."""
    assert issubclass(getattr(errors, name), ValueError)


@pytest.mark.parametrize("name", ["AssignmentDtypeError", "InitializerError"])
def test_design_type_errors(name):
    """Assignment dtypes and unrepresentable initializer values: TypeError."""
    assert issubclass(getattr(errors, name), TypeError)


# --------------------------------------------------------------------- pickling


def roundtrip(e):
    return pickle.loads(pickle.dumps(e))


@pytest.mark.parametrize("name", ["JscopeError", *CLASS_NAMES])
@pytest.mark.parametrize("path", ["n1/w", None])
def test_pickle_keeps_class_message_and_path(name, path):
    cls = getattr(errors, name)
    e = cls(f"Something about {path}: expected this, found that.", path)
    back = roundtrip(e)
    assert type(back) is cls
    assert str(back) == str(e)
    assert back.path == path
    assert back.args == e.args
    # and again, through every pickle protocol
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(e, protocol=protocol))
        assert type(again) is cls and str(again) == str(e) and again.path == path


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_copy_keeps_class_message_and_path(name):
    cls = getattr(errors, name)
    e = cls("message for a/b", "a/b")
    for c in (copy.copy(e), copy.deepcopy(e)):
        assert type(c) is cls and str(c) == str(e) and c.path == "a/b"


# -------------------------------------------- every error, raised by real programs


def _dup():
    js.get_variable("foo/v", [1])
    js.get_variable("foo/v", [1])


def _not_found():
    with js.variable_scope("foo", reuse=True):
        js.get_variable("v", [1])


def _shape():
    js.get_variable("foo/v", [1])
    with js.variable_scope("foo", reuse=True):
        js.get_variable("v", [2])


def _dtype():
    js.get_variable("foo/v", [1], jnp.float16)
    with js.variable_scope("foo", reuse=True):
        js.get_variable("v", [1])


def _bad_name():
    js.get_variable("foo/a b", [1])


def _conflict():
    js.get_variable("foo", [1])
    js.get_variable("foo/x", [1])


def _bad_reuse():
    with js.variable_scope("foo", reuse=1):
        pass


def _assign_scope_field():
    with js.variable_scope("foo") as scope:
        scope.dtype = jnp.float16


def _default_name_reuse():
    with js.variable_scope(None, default_name="foo", reuse=True):
        pass


def _unrepresentable():
    js.get_variable("foo/c", [2], jnp.int32, initializer=js.initializers.constant(0.4))


def _unsupported():
    js.get_variable("foo/v", [1], collections=["foo"])


def _assign_shape():
    v = js.get_variable("foo/v", [2])
    js.assign(v, jnp.zeros(3))


def _assign_dtype():
    v = js.get_variable("foo/v", [2])
    js.assign(v, jnp.zeros(2, jnp.int32))


def _assign_target():
    js.get_variable("foo/v", [2])
    js.assign(jnp.zeros(2), jnp.zeros(2))


def _in_vmap():
    def body(x):
        return x * js.get_variable("foo/v", [])

    return jax.vmap(body)(jnp.ones(3))


def _read(path, shape=(1,), dtype=None):
    def fn():
        return js.get_variable(path, shape, dtype)

    return fn


def _assign_counter():
    c = js.get_variable("foo/c", [], jnp.int32)
    js.assign(c, c + 1)


def _dropout():
    with js.variable_scope("foo"):
        return js.next_rng_key("dropout")


def _restore_mismatch():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        saver = js.Saver()
        path = saver.save({"params": {"foo": {"v": jnp.ones(2)}}}, f"{d}/m")
        saver.restore(path, {"params": {"foo": {"v": jnp.ones(3)}}})


def _restore_corrupt():
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = js.Saver().save({"params": {"foo": {"v": jnp.ones(2)}}}, f"{d}/m")
        os.truncate(os.path.join(path, "_CHECKSUMS"), 10)
        js.Saver().restore(path, {"params": {"foo": {"v": jnp.ones(2)}}})


def _save_locked():
    import subprocess
    import sys
    import tempfile

    hold = (
        "import fcntl, sys, time; f = open(sys.argv[1] + '/.checkpoint.lock', 'w'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    with tempfile.TemporaryDirectory() as d:
        child = subprocess.Popen(
            [sys.executable, "-c", hold, d], stdout=subprocess.PIPE, text=True
        )
        try:
            child.stdout.readline()
            js.Saver().save({"params": {"v": jnp.ones(2)}}, f"{d}/m")
        finally:
            child.kill()
            child.wait()
            child.stdout.close()


ERROR_PROGRAMS = {
    # name: (how to raise it, class, path named in the message or None)
    "exists": (lambda: js.init(_dup, KEY), errors.VariableExistsError, "foo/v"),
    "not_found": (
        lambda: js.init(_not_found, KEY),
        errors.VariableNotFoundError,
        "foo/v",
    ),
    "shape": (lambda: js.init(_shape, KEY), errors.ShapeMismatchError, "foo/v"),
    "checkpoint_empty": (lambda: js.Saver([]), errors.CheckpointError, None),
    "checkpoint_type": (lambda: js.Saver(42), errors.CheckpointTypeError, None),
    "checkpoint_none": (
        lambda: js.Saver().restore(None, {}),
        errors.CheckpointNotFoundError,
        None,
    ),
    "checkpoint_mismatch": (
        lambda: _restore_mismatch(),
        errors.CheckpointMismatchError,
        "params/foo/v",
    ),
    "checkpoint_corrupt": (_restore_corrupt, errors.CheckpointCorruptError, None),
    "checkpoint_lock": (_save_locked, errors.CheckpointLockError, None),
    "checkpoint_write": (  # /sys refuses new directories (EPERM)
        lambda: js.Saver().save({"v": jnp.ones(2)}, "/sys/jscope-checkpoint/m"),
        errors.CheckpointWriteError,
        None,
    ),
    "lift": (
        lambda: js.init(
            lambda: js.cond(
                True,
                lambda: js.get_variable("foo/t", (1,)),
                lambda: js.get_variable("foo/f", (1,)),
            ),
            KEY,
        ),
        errors.LiftError,
        "foo/t",
    ),
    "initializer_required": (
        lambda: js.init(lambda: js.get_variable("foo/z", [2], jnp.complex64), KEY),
        errors.InitializerArgumentError,
        "foo/z",
    ),
    "dtype": (lambda: js.init(_dtype, KEY), errors.DtypeMismatchError, "foo/v"),
    "name": (lambda: js.init(_bad_name, KEY), errors.InvalidNameError, "foo/a b"),
    "conflict": (lambda: js.init(_conflict, KEY), errors.PathConflictError, "foo/x"),
    "reuse_flag": (lambda: js.init(_bad_reuse, KEY), errors.ReuseFlagError, None),
    "read_only": (
        lambda: js.init(_assign_scope_field, KEY),
        errors.ReadOnlyAttributeError,
        "foo",
    ),
    "scope_args": (
        lambda: js.init(_default_name_reuse, KEY),
        errors.ScopeArgumentError,
        None,
    ),
    "uninitialized": (
        lambda: js.apply(_read("foo/v"), {"params": {}}),
        errors.UninitializedVariableError,
        "foo/v",
    ),
    "read_shape": (
        lambda: js.apply(_read("foo/v", (2,)), {"params": {"foo": {"v": jnp.ones(3)}}}),
        errors.ShapeMismatchError,
        "foo/v",
    ),
    "read_dtype": (
        lambda: js.apply(
            _read("foo/v", (3,), jnp.float16), {"params": {"foo": {"v": jnp.ones(3)}}}
        ),
        errors.DtypeMismatchError,
        "foo/v",
    ),
    "initializer": (
        lambda: js.init(_unrepresentable, KEY),
        errors.InitializerError,
        "foo/c",
    ),
    "unsupported": (
        lambda: js.init(_unsupported, KEY),
        errors.UnsupportedArgumentError,
        None,
    ),
    "not_mutable": (
        lambda: js.apply(_assign_counter, js.init(_assign_counter, KEY)),
        errors.NotMutableError,
        "foo/c",
    ),
    "assign_shape": (
        lambda: js.init(_assign_shape, KEY),
        errors.AssignmentShapeError,
        "foo/v",
    ),
    "assign_dtype": (
        lambda: js.init(_assign_dtype, KEY),
        errors.AssignmentDtypeError,
        "foo/v",
    ),
    "assign_target": (
        lambda: js.init(_assign_target, KEY),
        errors.AssignmentTargetError,
        None,
    ),
    "missing_rng": (lambda: js.apply(_dropout, {}), errors.MissingRngError, None),
    "rng_type": (lambda: js.init(_dup, 0), errors.RngTypeError, None),
    "unknown_collection": (  # a warning; raised under filterwarnings=error
        lambda: js.apply(_dropout, {"state": {}}, rngs=KEY, mutable=["stat"]),
        errors.UnknownCollectionWarning,
        None,
    ),
    "not_in_run": (
        lambda: js.get_variable("foo/v", [1]),
        errors.NotInRunError,
        None,
    ),
    "jax_transform": (
        lambda: js.init(_in_vmap, KEY),
        errors.JaxTransformError,
        "foo/v",
    ),
    "negative_dimension": (
        lambda: js.init(_read("foo/v", (-1,)), KEY),
        errors.InvalidShapeError,
        "foo/v",
    ),
    "shape_type": (
        lambda: js.init(_read("foo/v", (1.5,)), KEY),
        errors.ShapeTypeError,
        "foo/v",
    ),
    "dtype_type": (
        lambda: js.init(_read("foo/v", (1,), "foo"), KEY),
        errors.InvalidDtypeError,
        "foo/v",
    ),
    "ragged_value": (
        lambda: js.init(lambda: js.get_variable("foo/v", initializer=[[1], []]), KEY),
        errors.InitialValueError,
        "foo/v",
    ),
    "leaf_type": (
        lambda: js.apply(_read("foo/v"), {"params": {"foo": {"v": 1.0}}}),
        errors.LeafTypeError,
        "foo/v",
    ),
    "unknown_argument": (
        lambda: js.init(lambda: js.get_variable("foo/v", [1], shapes=[1]), KEY),
        errors.UnknownArgumentError,
        "foo/v",
    ),
    "argument_type": (lambda: js.flatten([1]), errors.ArgumentTypeError, None),
    "sharding": (
        lambda: js.init(lambda: js.get_variable("foo/v", [2], axes=("a", "b")), KEY),
        errors.ShardingError,
        "foo/v",
    ),
    "layer_argument": (
        lambda: js.init(lambda: js.layers.dense(jnp.ones((1, 2)), 0, name="fc"), KEY),
        errors.LayerArgumentError,
        "fc",
    ),
    "layer_type": (
        lambda: js.init(lambda: js.layers.dense(jnp.ones((1, 2)), 2.5), KEY),
        errors.LayerTypeError,
        "dense",
    ),
}


def test_every_class_is_raised_by_some_program():
    raised = {cls.__name__ for _, cls, _ in ERROR_PROGRAMS.values()}
    assert raised == set(CLASS_NAMES)


@pytest.mark.parametrize("case", sorted(ERROR_PROGRAMS))
def test_real_errors_class_path_and_pickle(case):
    run, cls, path = ERROR_PROGRAMS[case]
    with pytest.raises(cls) as info:
        run()
    e = info.value
    assert type(e) is cls
    assert isinstance(e, EXPECTED_BUILTIN[cls.__name__])
    message = str(e)
    assert message
    if path is not None:
        assert path in message
        assert e.path == path
    back = roundtrip(e)
    assert type(back) is cls
    assert str(back) == message
    assert back.path == e.path


def test_missing_rng_names_the_stream():
    with pytest.raises(errors.MissingRngError, match="'dropout'"):
        js.apply(_dropout, {})


def test_builtin_except_clauses_catch_jscope_errors():
    """Ported `except ValueError:` code keeps working."""
    try:
        js.init(_dup, KEY)
    except ValueError as e:
        caught = e
    assert isinstance(caught, errors.VariableExistsError)
    try:
        js.init(_assign_dtype, KEY)
    except TypeError as e:
        caught = e
    assert isinstance(caught, errors.AssignmentDtypeError)


# ------------------------------------------------------- no half-built trees


def good():
    with js.variable_scope("good"):
        return js.get_variable("w", [2])


@pytest.mark.parametrize(
    "bad",
    [_dup, _shape, _conflict, _assign_shape, _unrepresentable, _in_vmap],
    ids=["exists", "shape", "conflict", "assign", "initializer", "vmap"],
)
def test_failed_init_leaves_nothing_behind(bad):
    result = None
    with pytest.raises(errors.JscopeError):
        result = js.init(bad, KEY)
    assert result is None
    # the context is back to the outside of a run
    assert js.get_variable_scope().name == ""
    with pytest.raises(errors.NotInRunError):
        js.get_variable("w", [1])
    # a second init of a correct function works and holds only its own variables
    variables = js.init(good, KEY)
    assert list(js.flatten(variables)) == ["params/good/w"]
    assert_trees_equal(variables, js.init(good, KEY))


def test_user_exception_in_init_leaves_nothing_behind():
    def fn():
        with js.variable_scope("partial"):
            js.get_variable("a", [2])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        js.init(fn, KEY)
    assert js.get_variable_scope().name == ""
    variables = js.init(good, KEY)
    assert list(js.flatten(variables)) == ["params/good/w"]


def test_error_inside_scope_restores_scopes_for_next_run():
    def fn():
        with js.variable_scope("outer", reuse=True), js.name_scope("ns"):
            js.get_variable("missing", [1])

    with pytest.raises(errors.VariableNotFoundError, match="outer/missing"):
        js.init(fn, KEY)

    def probe():
        js.get_variable("w", [1])
        v = js.Variable(1.0, name="h")
        return js.get_variable_scope().name, js.get_variable_scope().reuse, v.name

    (name, reuse, vname), variables = js.init_with_output(probe, KEY)
    assert (name, reuse, vname) == ("", False, "h")
    assert list(js.flatten(variables)) == ["params/w", "params/h"]


def stateful(fail):
    bump_bn_statistics()
    w = js.get_variable("w", [2])
    if fail == "not_mutable":
        js.assign(w, w * 2.0)
    elif fail == "shape":
        js.assign(w, jnp.zeros(5))
    elif fail == "user":
        raise KeyError("boom")
    elif fail == "missing":
        js.get_variable("extra", [1])
    return w


@pytest.mark.parametrize(
    "fail, exc",
    [
        ("not_mutable", errors.NotMutableError),
        ("shape", errors.AssignmentShapeError),
        ("user", KeyError),
        ("missing", errors.UninitializedVariableError),
    ],
)
def test_error_at_apply_leaves_input_tree_unchanged(fail, exc):
    variables = js.init(stateful, KEY, None)
    snapshot = copy.deepcopy(as_numpy(variables))
    ids = dict_ids(variables)
    leaf_ids = {k: id(v) for k, v in js.flatten(variables).items()}
    mutable = ["state"] if fail == "not_mutable" else True
    with pytest.raises(exc):
        js.apply(stateful, variables, fail, mutable=mutable)
    assert_trees_equal(as_numpy(variables), snapshot)
    assert dict_ids(variables) == ids
    assert {k: id(v) for k, v in js.flatten(variables).items()} == leaf_ids
    # the same tree still works afterwards
    _, updated = js.apply(stateful, variables, None, mutable=["state"])
    assert int(updated["state"]["bn"]["count"]) == 1
    assert_trees_equal(as_numpy(variables), snapshot)
