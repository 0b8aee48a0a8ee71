"""Variable scopes and names (DESIGN §3), with the scope parts of §2 and §9.

Every rule is checked at `js.init` and again at `js.apply` on the tree that
`js.init` made: the same names, flags and values must come back, and the same
errors must be raised.
"""

import concurrent.futures
import pickle
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal

import jscope as js
from jscope import errors

KEY = jax.random.key(0)
vs = js.variable_scope
gv = js.get_variable
ones = js.initializers.ones()
zeros = js.initializers.zeros()
constant = js.initializers.constant

PATTERN = re.escape("[A-Za-z0-9_.\\-]+")


# ----------------------------------------------------------------------- helpers


def run(fn, *args):
    """Runs ``fn`` at init, then at apply on the tree init made.

    Both runs must return the same output. Returns ``(output, variables)``.
    """
    out, variables = js.init_with_output(fn, KEY, *args)
    assert_trees_equal(out, js.apply(fn, variables, *args))
    return out, variables


def paths(fn, *args):
    """The sorted paths ``fn`` creates (``fn`` is also applied to the tree)."""
    return sorted(js.flatten(run(fn, *args)[1]))


def raises(exc, match, fn):
    """``fn(fail)``: runs cleanly with False; with True raises at init and apply."""
    variables = js.init(fn, KEY, False)
    with pytest.raises(exc, match=match) as at_init:
        js.init(fn, KEY, True)
    with pytest.raises(exc, match=match) as at_apply:
        js.apply(fn, variables, True)
    assert type(at_init.value) is type(at_apply.value)
    assert str(at_init.value) == str(at_apply.value)
    return at_init.value


def shown(name):
    """A regex matching ``name`` as an error message shows it."""
    if not name:
        return re.escape(repr(name))
    return f"(?:{re.escape(name)}|{re.escape(repr(name))})"


# ----------------------------------------------------------------------- nesting


def test_nested_scopes_join_their_names():
    def f():
        with vs("a"), vs("b"):
            gv("w", (1,))

    assert paths(f) == ["params/a/b/w"]


def test_slash_in_scope_or_variable_name_equals_nesting():
    def nested():
        with vs("a"), vs("b"):
            return gv("w", (2,))

    def slashed_scope():
        with vs("a/b") as scope:
            return gv("w", (2,)), scope.name

    def slashed_variable():
        with vs("a"):
            return gv("b/w", (2,))

    w_nested, tree = run(nested)
    (w_scope, name), tree_scope = run(slashed_scope)
    w_var, tree_var = run(slashed_variable)
    assert name == "a/b"
    assert list(js.flatten(tree)) == ["params/a/b/w"]
    assert (
        list(js.flatten(tree_scope)) == list(js.flatten(tree_var)) == ["params/a/b/w"]
    )
    # Same path, same key: the same initial value.
    np.testing.assert_array_equal(w_nested, w_scope)
    np.testing.assert_array_equal(w_nested, w_var)


def test_slash_scope_and_nesting_share_one_variable():
    def f(fail):
        with vs("a/b"):
            first = gv("w", (2,))
        with vs("a"), vs("b", reuse=True):
            again = gv("w", (2,))
        with vs("a"):
            if fail:
                gv("b/w", (2,))
        return first, again

    (first, again), _ = run(f, False)
    np.testing.assert_array_equal(first, again)
    raises(errors.VariableExistsError, "Variable a/b/w already exists", f)


# ----------------------------------------------------------- re-entry by object


def test_reentering_by_object_reopens_its_path_inside_another_scope():
    def f():
        with vs("s") as s:
            gv("w", (1,))
        with vs("other"), vs("deeper"), vs(s) as again:
            gv("v", (1,))
            name = again.name
        return name

    name, tree = run(f)
    assert name == "s"
    assert sorted(js.flatten(tree)) == ["params/s/v", "params/s/w"]


def _logging_getter(log):
    """A custom getter that records every name it is asked for in ``log``."""

    def getter(next_getter, name, *args, **kwargs):
        log.append(name)
        return next_getter(name, *args, **kwargs)

    return getter


def _open_s_with_defaults(getter):
    """Opens and leaves scope ``s`` with an initializer, a dtype and ``getter``."""
    with vs(
        "s", initializer=constant(3.0), dtype=jnp.float16, custom_getter=getter
    ) as s:
        pass
    return s


def test_reentering_by_object_keeps_initializer_dtype_and_getter():
    log = []
    getter = _logging_getter(log)

    def f():
        s = _open_s_with_defaults(getter)
        with vs("elsewhere"), vs(s) as again:
            w = gv("w", (2,))
            return w, again.initializer is s.initializer, again.dtype

    log.clear()
    (w, same_init, dtype), tree = run(f)
    assert same_init
    assert dtype == jnp.float16
    assert w.dtype == jnp.float16
    np.testing.assert_array_equal(w, jnp.full((2,), 3.0, jnp.float16))
    assert tree["params"]["s"]["w"].dtype == jnp.float16
    assert log == ["s/w", "s/w"]  # once at init, once at apply


def test_reopening_by_name_starts_fresh():
    log = []
    getter = _logging_getter(log)

    def f():
        _open_s_with_defaults(getter)
        with vs("s") as again:
            w = gv("w", (4,))
            return w, again.initializer, again.dtype, again.custom_getter

    log.clear()
    (w, init, dtype, getter_), _ = run(f)
    assert init is None and dtype is None and getter_ is None
    assert w.dtype == jnp.float32
    assert not np.array_equal(w, jnp.full((4,), 3.0))
    assert log == []


# ------------------------------------------------------------------ default names


def test_default_names_count_up_under_one_parent():
    def f():
        out = []
        for _ in range(3):
            with vs(None, default_name="dense") as s:
                gv("w", (1,))
                out.append(s.name)
        return out

    names, tree = run(f)
    assert names == ["dense", "dense_1", "dense_2"]
    assert sorted(js.flatten(tree)) == [f"params/{n}/w" for n in names]


def test_explicit_opening_counts_for_default_names():
    def f():
        with vs("dense"):
            gv("w", (1,))
        with vs(None, "dense") as s:
            return s.name

    assert run(f)[0] == "dense_1"


def test_empty_explicit_scope_counts_for_default_names():
    def f():
        with vs("empty"):
            pass
        with vs(None, "empty") as s:
            return s.name

    name, tree = run(f)
    assert name == "empty_1"
    assert tree == {}


def test_explicit_names_are_never_renamed():
    def f():
        out = []
        for name in (None, "dense", "dense_1", None, "dense"):
            with vs(name, "dense") as s:
                out.append(s.name)
        return out

    assert run(f)[0] == ["dense", "dense", "dense_1", "dense_2", "dense"]


def test_default_names_are_per_parent():
    def f():
        out = []
        for parent in ("a", "b", "a/c"):
            with vs(parent), vs(None, "dense") as s:
                gv("w", (1,))
                out.append(s.name)
        return out

    names, tree = run(f)
    assert names == ["a/dense", "b/dense", "a/c/dense"]
    assert len(js.flatten(tree)) == 3


def test_reopening_by_name_restarts_default_names_below_it():
    def f(fail):
        with vs("outer"), vs(None, "dense") as first:
            gv("w", (1,))
        with vs("outer"), vs(None, "dense") as second:
            if fail:
                gv("w", (1,))
        return first.name, second.name

    assert run(f, False)[0] == ("outer/dense", "outer/dense")
    raises(errors.VariableExistsError, "Variable outer/dense/w already exists", f)


def test_reopened_default_layer_shares_when_reused():
    def f():
        with vs("outer"), vs(None, "dense"):
            first = gv("w", (2,))
        with vs("outer", reuse=True), vs(None, "dense") as s:
            again = gv("w", (2,))
        return first, again, s.name

    (first, again, name), tree = run(f)
    assert name == "outer/dense"
    np.testing.assert_array_equal(first, again)
    assert list(js.flatten(tree)) == ["params/outer/dense/w"]


def test_leaving_a_scope_entered_by_name_forgets_deeper_counts():
    def f():
        with vs("outer"), vs("mid"), vs(None, "dense"):
            pass
        with vs("outer"), vs("mid"), vs(None, "dense") as s:
            return s.name

    assert run(f)[0] == "outer/mid/dense"


def test_leaving_a_scope_entered_by_object_restores_counts_below_it():
    def f():
        out = []
        with vs("outer") as outer:
            with vs(None, "dense") as s:
                out.append(s.name)
            with vs(outer):
                for _ in range(2):
                    with vs(None, "dense") as s:
                        out.append(s.name)
            with vs(None, "dense") as s:
                out.append(s.name)
        return out

    names, _ = run(f)
    assert names == ["outer/dense", "outer/dense_1", "outer/dense_2", "outer/dense_1"]


def test_leaving_a_scope_forgets_its_counts_after_an_object_scope_or_a_scan():
    # Leaving a scope entered by name clears the counts below it in the store
    # current at exit: after a scope entered by object inside it put back a copy
    # of the store, or a lifted transform inside it gave its counts back.
    def step(h, x):
        with vs(None, "cell"):
            w = js.get_variable("w", (), initializer=js.initializers.ones())
        return h * w + x, h

    def f():
        names = []
        with vs("o") as o:
            pass
        with vs("a"):
            with vs(None, "dense"), vs(None, "dense"):
                pass
            with vs(o):
                pass
            js.scan(step)(jnp.zeros(()), jnp.ones(3))
            with vs(None, "dense") as s:
                names.append(s.name)
        with vs("a"):
            with vs(None, "dense") as s:
                names.append(s.name)
            with vs(None, "cell") as s:
                names.append(s.name)
        return names

    assert run(f)[0] == ["a/dense_1", "a/dense", "a/cell"]


def test_leaving_a_scope_entered_by_object_restores_every_scopes_counts():
    # TF1 snapshots the whole count store after entering a scope by object and
    # puts the snapshot back when leaving it: counts outside the scope (here
    # `p/t`, reopened through its object inside `o`) come back too.
    def f():
        with vs("o") as o:
            pass
        with vs("p"), vs("t") as t:
            pass
        with vs(o), vs(t):
            pass
        with vs("p"), vs(None, default_name="t") as s:
            first = s.name
        with vs("p"), vs(t):
            pass  # entered by object under `p`: leaving `p` forgets `p/t` again
        with vs("p"), vs(None, default_name="t") as s:
            return first, s.name

    assert run(f)[0] == ("p/t", "p/t")


def test_leaving_nested_scopes_entered_by_object_restores_in_turn():
    def f():
        out = []
        with vs("o") as o:
            pass
        with vs("p") as p, vs("t") as t:
            pass
        with vs(o):
            with vs(o), vs(t):
                pass  # `p/t` opened once more until the inner `o` is left
            with vs(p), vs(None, default_name="t") as s:
                out.append(s.name)
            with vs(t):
                pass  # `p/t` opened once more until the outer `o` is left
            with vs(p), vs(None, default_name="t") as s:
                out.append(s.name)
        with vs("p"), vs(None, default_name="t") as s:
            out.append(s.name)
        return out

    assert run(f)[0] == ["p/t", "p/t_1", "p/t"]


def test_root_counts_last_for_the_whole_run():
    def f():
        out = []
        with vs(None, "dense") as s:
            out.append(s.name)
        with vs("block"), vs(None, "dense") as s:
            out.append(s.name)
        with vs("block"):
            pass
        with vs(None, "dense") as s:
            out.append(s.name)
        return out

    names, _ = run(f)
    assert names == ["dense", "block/dense", "dense_1"]
    # ...and no longer: a second run starts at "dense" again.
    assert js.init_with_output(f, KEY)[0] == names


def test_tf1_positional_values_argument_is_ignored():
    x = jnp.ones((1, 2))

    def f(x):
        out = []
        for _ in range(2):
            with vs(None, "dense", [x]) as s:
                out.append(s.name)
        with vs("named", None, [x]) as s:
            out.append(s.name)
        return out

    assert run(f, x)[0] == ["dense", "dense_1", "named"]


def test_scope_without_name_or_default_is_a_type_error():
    def f(fail):
        if fail:
            with vs(None):
                pass

    raises(TypeError, "name_or_scope", f)


@pytest.mark.parametrize("reuse", [True, js.AUTO_REUSE], ids=["True", "AUTO_REUSE"])
def test_default_name_with_reuse_is_a_value_error(reuse):
    def f(fail):
        if fail:
            with vs(None, "dense", reuse=reuse):
                pass

    err = raises(ValueError, "cannot be used without a name_or_scope", f)
    assert isinstance(err, errors.ScopeArgumentError)


# ------------------------------------------------------------------------- reuse


FLAGS = [True, js.AUTO_REUSE]
FLAG_IDS = ["True", "AUTO_REUSE"]


@pytest.mark.parametrize("parent", [False, True, js.AUTO_REUSE])
@pytest.mark.parametrize("child", [None, False])
def test_none_and_false_inherit_the_parent_flag(parent, child):
    def f():
        with vs("p", reuse=parent), vs("c", reuse=child) as c:
            return c.reuse

    assert run(f)[0] is parent


@pytest.mark.parametrize("reuse", [None, False])
def test_reuse_is_false_not_none_when_not_reusing(reuse):
    def f():
        with vs("a", reuse=reuse) as a:
            return a.reuse, js.get_variable_scope().reuse

    (flag, root), _ = run(f)
    assert flag is False
    assert root is False
    assert js.init_with_output(lambda: js.get_variable_scope().reuse, KEY)[0] is False


def test_reuse_true_propagates_to_sub_scopes():
    def f(fail):
        with vs("a"), vs("b"), vs("c"):
            first = gv("w", (2,))
        with vs("a", reuse=True), vs("b"), vs("c") as c:
            again = gv("w", (2,))
            if fail:
                gv("missing", (2,))
        return first, again, c.reuse

    (first, again, flag), tree = run(f, False)
    assert flag is True
    np.testing.assert_array_equal(first, again)
    assert list(js.flatten(tree)) == ["params/a/b/c/w"]
    raises(errors.VariableNotFoundError, "Variable a/b/c/missing does not exist", f)


def test_sub_scope_cannot_turn_reuse_off():
    def f():
        with vs("a"), vs("b"):
            first = gv("w", (2,))
        with vs("a", reuse=True), vs("b", reuse=False) as b:
            again = gv("w", (2,))
            with vs(b, reuse=False) as same:
                flag = same.reuse
        return first, again, b.reuse, flag

    (first, again, flag, same_flag), _ = run(f)
    assert flag is True
    assert same_flag is True
    np.testing.assert_array_equal(first, again)


def test_false_under_true_still_requires_existing_variables():
    def f(fail):
        with vs("a"):
            gv("w", (1,))
        with vs("a", reuse=True), vs("b", reuse=False) as b:
            if fail:
                gv("v", (1,))
        return b.reuse

    assert run(f, False)[0] is True
    raises(errors.VariableNotFoundError, "Variable a/b/v does not exist", f)


def test_auto_reuse_under_true_creates_missing_variables():
    def f():
        with vs("a"):
            gv("w", (1,))
        with vs("a", reuse=True), vs("sub", reuse=js.AUTO_REUSE) as sub:
            gv("new", (1,))
            gv("new", (1,))
            return sub.reuse

    flag, tree = run(f)
    assert flag is js.AUTO_REUSE
    assert sorted(js.flatten(tree)) == ["params/a/sub/new", "params/a/w"]


def test_true_under_auto_reuse_requires_existing_variables():
    def f(fail):
        with vs("a", reuse=js.AUTO_REUSE):
            gv("w", (1,))
            with vs("b", reuse=True) as b:
                if fail:
                    gv("v", (1,))
                with vs("c", reuse=js.AUTO_REUSE) as c:
                    gv("v", (1,))
        return b.reuse, c.reuse

    flags, tree = run(f, False)
    assert flags[0] is True and flags[1] is js.AUTO_REUSE
    assert sorted(js.flatten(tree)) == ["params/a/b/c/v", "params/a/w"]
    raises(errors.VariableNotFoundError, "Variable a/b/v does not exist", f)


def test_reentry_by_object_ignores_the_parent_flag():
    def f(fail):
        with vs("s") as s:
            gv("w", (1,))
        with vs("p", reuse=js.AUTO_REUSE), vs(s) as again:
            flag = again.reuse
            if fail:
                gv("w", (1,))
        return flag

    assert run(f, False)[0] is False
    raises(errors.VariableExistsError, "Variable s/w already exists", f)


def test_reentry_by_object_creates_under_a_reusing_parent():
    def f():
        with vs("s") as s:
            pass
        with vs("p", reuse=True), vs(s) as again:
            gv("w", (1,))
            return again.reuse

    flag, tree = run(f)
    assert flag is False
    assert list(js.flatten(tree)) == ["params/s/w"]


@pytest.mark.parametrize("flag", FLAGS, ids=FLAG_IDS)
def test_reentry_by_object_takes_the_objects_flag(flag):
    def f():
        with vs("s", reuse=js.AUTO_REUSE):
            gv("w", (1,))
        with vs("s", reuse=flag) as s:
            pass
        with vs(s) as again:
            return again.reuse, gv("w", (1,)).shape

    assert run(f)[0] == (flag, (1,))


@pytest.mark.parametrize("flag", FLAGS, ids=FLAG_IDS)
def test_reentry_by_object_takes_the_argument_flag(flag):
    def f():
        with vs("s") as s:
            gv("w", (1,))
        with vs(s, reuse=flag) as again:
            return again.reuse, gv("w", (1,)).shape

    assert run(f)[0] == (flag, (1,))


@pytest.mark.parametrize("bad", [1, "yes", 0, 1.0, "True"])
def test_other_reuse_values_are_value_errors(bad):
    def f(fail):
        with vs("a", reuse=bad if fail else None):
            gv("w", (1,))

    err = raises(ValueError, "The reuse parameter must be True or False or None", f)
    assert isinstance(err, errors.ReuseFlagError)


# ------------------------------------------------------------- reuse_variables()


def test_reuse_variables_lasts_for_the_rest_of_the_block():
    def f(fail):
        with vs("foo") as scope:
            v = gv("v", (1,))
            with vs("early") as early:
                before = early.reuse
            scope.reuse_variables()
            same = gv("v", (1,))
            with vs("late") as late:
                after = late.reuse
            flag = scope.reuse
        with vs("foo") as reopened:
            if fail:
                gv("v", (1,))
            again = reopened.reuse
        return v, same, before, after, flag, again

    (v, same, before, after, flag, again), _ = run(f, False)
    np.testing.assert_array_equal(v, same)
    assert (before, after, flag, again) == (False, True, True, False)
    raises(errors.VariableExistsError, "Variable foo/v already exists", f)


def test_reuse_variables_through_get_variable_scope():
    def f(fail):
        with vs("foo"):
            gv("v", (1,))
            js.get_variable_scope().reuse_variables()
            gv("v", (1,))
            if fail:
                gv("u", (1,))

    raises(errors.VariableNotFoundError, "Variable foo/u does not exist", f)


def test_reuse_variables_at_root_lasts_for_the_rest_of_the_run():
    def f(fail):
        root = js.get_variable_scope()
        before = root.reuse
        w = gv("w", (2,))
        root.reuse_variables()
        with vs("a") as a:
            pass
        same = gv("w", (2,))
        if fail:
            gv("missing", (1,))
        return before, a.reuse, js.get_variable_scope().reuse, w, same

    (before, a_flag, root_flag, w, same), _ = run(f, False)
    assert (before, a_flag, root_flag) == (False, True, True)
    np.testing.assert_array_equal(w, same)
    raises(errors.VariableNotFoundError, "Variable missing does not exist", f)
    # Not into the next run: a fresh run's root does not reuse.
    assert js.init_with_output(lambda: js.get_variable_scope().reuse, KEY)[0] is False


# ---------------------------------------------- the set_* methods, read-only fields


def _double(getter, name, *args, **kwargs):
    return 2 * getter(name, *args, **kwargs)


def _l1(value):
    return jnp.sum(jnp.abs(value))


SETTERS = [
    ("regularizer", _l1),
    ("dtype", jnp.bfloat16),
    ("custom_getter", _double),
    ("initializer", ones),
]


@pytest.mark.parametrize("nested", [False, True], ids=["same", "nested"])
@pytest.mark.parametrize("field, value", SETTERS, ids=[f for f, _ in SETTERS])
def test_a_setter_acts_as_the_scope_argument_at_init_and_apply(field, value, nested):
    """``scope.set_<field>(value)`` acts as ``variable_scope(..., <field>=value)``.

    For the rest of the block, and in scopes opened inside it after the call;
    at init and again at apply, where a read takes a fast path only in a scope
    without such defaults.
    """

    def f(set_it):
        with vs("s", **({} if set_it else {field: value})) as scope:
            if set_it:
                getattr(scope, f"set_{field}")(value)
            if nested:
                with vs("inner"):
                    w = gv("w", (2, 3))
            else:
                w = gv("w", (2, 3))
            return w, js.get_regularization_loss()

    (w, loss), variables = run(f, True)
    (w_arg, loss_arg), variables_arg = run(f, False)
    assert_trees_equal(variables, variables_arg)
    assert_trees_equal((w, loss), (w_arg, loss_arg))
    # ... and the field did something
    stored = js.flatten(variables)["params/s/inner/w" if nested else "params/s/w"]
    if field == "regularizer":
        assert float(loss) == pytest.approx(float(_l1(stored))) and float(loss) > 0
    elif field == "dtype":
        assert w.dtype == stored.dtype == jnp.bfloat16
    elif field == "custom_getter":
        np.testing.assert_array_equal(w, 2 * stored)
    else:
        np.testing.assert_array_equal(stored, np.ones((2, 3)))


def test_set_initializer_to_a_value_is_checked_at_apply_as_at_init():
    def f(shape):
        with vs("s") as scope:
            scope.set_initializer(np.ones((2, 3), np.float32))
            return gv("w", shape)

    variables = js.init(f, KEY, None)
    match = "do not specify a shape with a value initializer"
    with pytest.raises(errors.InvalidShapeError, match=match):
        js.init(f, KEY, (2, 3))
    with pytest.raises(errors.InvalidShapeError, match=match):
        js.apply(f, variables, (2, 3))


def test_set_custom_getter_to_none_and_back_at_apply():
    def f():
        with vs("s", custom_getter=_double) as scope:
            a = gv("a", (2,), initializer=ones)
            scope.set_custom_getter(None)
            b = gv("b", (2,), initializer=ones)
            scope.set_custom_getter(_double)
            c = gv("c", (2,), initializer=ones)
        return a, b, c

    (a, b, c), _ = run(f)
    np.testing.assert_array_equal(np.stack([a, b, c]), [[2, 2], [1, 1], [2, 2]])


@pytest.mark.parametrize(
    "field", ["name", "reuse", "original_name_scope", *[f for f, _ in SETTERS]]
)
def test_scope_fields_are_read_only_as_in_tf1(field):
    def f():
        with vs("s") as scope:
            before = getattr(scope, field)
            with pytest.raises(AttributeError) as e:
                setattr(scope, field, None if field != "name" else "t")
            assert getattr(scope, field) is before
            gv("w", (1,))
            return str(e.value)

    message, variables = run(f)
    assert list(js.flatten(variables)) == ["params/s/w"]
    if field in dict(SETTERS):
        assert f"set_{field}(" in message
        with vs("s") as scope, pytest.raises(errors.ReadOnlyAttributeError):
            setattr(scope, field, None)


# -------------------------------------------------------------------- attributes


def test_scope_name_attribute():
    def f():
        out = [js.get_variable_scope().name]
        with vs("a") as a:
            out.append(a.name)
            with vs("b/c") as c:
                out.append(c.name)
                out.append(js.get_variable_scope().name)
            out.append(js.get_variable_scope().name)
        out.append(js.get_variable_scope().name)
        return out

    assert run(f)[0] == ["", "a", "a/b/c", "a/b/c", "a", ""]


def test_original_name_scope():
    def f():
        out = [js.get_variable_scope().original_name_scope]
        with vs("n1") as first:
            out.append(first.original_name_scope)
            with vs("inner") as inner:
                out.append(inner.original_name_scope)
        with vs("n1") as second:
            out.append(second.original_name_scope)
        with vs("other"), vs(first) as again:
            out.append(again.original_name_scope)
        with js.name_scope("ns"), vs("x") as x:
            out.append(x.original_name_scope)
        return out

    assert run(f)[0] == ["", "n1/", "n1/inner/", "n1_1/", "n1/", "ns/x/"]


def test_scope_attributes_record_the_arguments():
    def getter(next_getter, name, *args, **kwargs):
        return next_getter(name, *args, **kwargs)

    def reg(v):
        return jnp.sum(v)

    init = constant(2.0)

    def f():
        root = js.get_variable_scope()
        at_root = (root.initializer, root.regularizer, root.dtype, root.custom_getter)
        with vs(
            "a",
            initializer=init,
            regularizer=reg,
            dtype=jnp.float16,
            custom_getter=getter,
        ) as a:
            got = (a.initializer, a.regularizer, a.dtype, a.custom_getter)
        return at_root, got

    (at_root, got), _ = run(f)
    assert at_root == (None, None, None, None)
    assert got[0] is init and got[1] is reg and got[3] is getter
    assert got[2] == jnp.float16


# ------------------------------------------------------------ scope-level defaults


def test_scope_initializer_is_a_default_inherited_and_overridden():
    def f():
        with vs("a", initializer=constant(3.0)):
            own = gv("w", (2,))
            with vs("b"):
                inherited = gv("w", (2,))
            with vs("c", initializer=constant(5.0)):
                sub = gv("w", (2,))
            arg = gv("v", (2,), initializer=zeros)
        return own, inherited, sub, arg

    (own, inherited, sub, arg), tree = run(f)
    for got, want in [(own, 3.0), (inherited, 3.0), (sub, 5.0), (arg, 0.0)]:
        np.testing.assert_array_equal(got, jnp.full((2,), want, jnp.float32))
    np.testing.assert_array_equal(tree["params"]["a"]["c"]["w"], jnp.full((2,), 5.0))


def test_scope_regularizer_is_a_default_inherited_and_overridden():
    def total(v):
        return jnp.sum(v)

    def double(v):
        return 2.0 * jnp.sum(v)

    def f():
        with vs("a", regularizer=total):
            own = gv("w", (3,))
            with vs("b"):
                inherited = gv("w", (3,))
            with vs("c", regularizer=double):
                sub = gv("w", (3,))
            arg = gv("v", (3,), regularizer=lambda v: 10.0 * jnp.sum(v))
        none = gv("plain", (3,))
        return js.get_regularization_loss(), own, inherited, sub, arg, none

    (loss, own, inherited, sub, arg, _), _ = run(f)
    want = jnp.sum(own) + jnp.sum(inherited) + 2.0 * jnp.sum(sub) + 10.0 * jnp.sum(arg)
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_scope_dtype_is_a_default_inherited_and_overridden():
    def f():
        with vs("a", dtype=jnp.float16):
            own = gv("w", (2,))
            with vs("b"):
                inherited = gv("w", (2,))
            with vs("c", dtype=jnp.bfloat16):
                sub = gv("w", (2,))
            arg = gv("v", (2,), dtype=jnp.float32)
        return own.dtype, inherited.dtype, sub.dtype, arg.dtype

    dtypes, tree = run(f)
    assert dtypes == (jnp.float16, jnp.float16, jnp.bfloat16, jnp.float32)
    stored = {k: v.dtype for k, v in js.flatten(tree).items()}
    assert stored == {
        "params/a/w": jnp.float16,
        "params/a/b/w": jnp.float16,
        "params/a/c/w": jnp.bfloat16,
        "params/a/v": jnp.float32,
    }


def test_scope_dtype_is_the_requested_dtype_on_reuse():
    def f(fail):
        with vs("a", dtype=jnp.float16):
            gv("w", (2,))
        with vs("a", reuse=True, dtype=jnp.float16):
            gv("w", (2,))
        with vs("a", reuse=True):
            if fail:
                gv("w", (2,))

    raises(errors.DtypeMismatchError, "Trying to share variable a/w", f)


# ------------------------------------------------------------------ custom getters


def recording_getter(log, label):
    def getter(next_getter, name, *args, **kwargs):
        log.append(f"{label}:enter:{name}")
        value = next_getter(name, *args, **kwargs)
        log.append(f"{label}:exit:{name}")
        return value

    return getter


def test_custom_getter_wraps_every_get_variable_also_on_reuse():
    log = []
    getter = recording_getter(log, "g")

    def f():
        with vs("g", custom_getter=getter) as g:
            gv("w", (1,))
            with vs("sub"):
                gv("v", (1,))
        with vs(g, reuse=True):
            gv("w", (1,))
        with vs("g", reuse=True, custom_getter=getter):
            gv("w", (1,))
        gv("outside", (1,))

    for variables in (None, js.init(f, KEY)):
        log.clear()
        if variables is None:
            js.init(f, KEY)
        else:
            js.apply(f, variables)
        entered = [e.split(":")[2] for e in log if ":enter:" in e]
        assert entered == ["g/w", "g/sub/v", "g/w", "g/w"]


def test_nested_getters_run_inner_first_then_outer_then_the_real_getter():
    log = []
    outer = recording_getter(log, "outer")
    inner = recording_getter(log, "inner")

    def f():
        with vs("o", custom_getter=outer), vs("i", custom_getter=inner):
            return gv("w", (1,))

    for variables in (None, js.init(f, KEY)):
        log.clear()
        w = js.init(f, KEY) if variables is None else js.apply(f, variables)
        assert log == [
            "inner:enter:o/i/w",
            "outer:enter:o/i/w",
            "outer:exit:o/i/w",
            "inner:exit:o/i/w",
        ]
    assert w.shape == (1,)


def test_getter_may_rename_the_variable():
    def rename(next_getter, name, *args, **kwargs):
        return next_getter(name + "_renamed", *args, **kwargs)

    def f():
        with vs("r", custom_getter=rename):
            gv("w", (1,))

    assert paths(f) == ["params/r/w_renamed"]


def test_getter_may_transform_the_value_while_storage_keeps_its_dtype():
    def half(next_getter, name, *args, **kwargs):
        return next_getter(name, *args, **kwargs).astype(jnp.float16)

    def f():
        with vs("mp", custom_getter=half):
            return gv("w", (3,))

    w, tree = run(f)
    stored = tree["params"]["mp"]["w"]
    assert w.dtype == jnp.float16
    assert stored.dtype == jnp.float32
    np.testing.assert_array_equal(w, stored.astype(jnp.float16))


def test_variable_bypasses_getters():
    log = []

    def f():
        with vs("g", custom_getter=recording_getter(log, "g")):
            v = js.Variable(1.0, name="v")
            return v.name

    log.clear()
    name, tree = run(f)
    assert name == "g/v"
    assert log == []
    assert list(js.flatten(tree)) == ["params/g/v"]


# -------------------------------------------------------------------- name scopes


def test_each_variable_scope_entry_opens_a_unique_name_scope():
    def f():
        out = []
        for _ in range(3):
            with vs("n1"):
                out.append(js.Variable(1.0).name)
        return out

    names, tree = run(f)
    assert names == ["n1/Variable", "n1_1/Variable", "n1_2/Variable"]
    assert sorted(js.flatten(tree)) == sorted(f"params/{n}" for n in names)


def test_variable_lives_in_the_name_scope_and_get_variable_ignores_it():
    def f():
        with vs("n1"):
            w1 = gv("w1", (1,))
            v1 = js.Variable(1.0, name="v")
        with vs("n1"):
            w2 = gv("w2", (1,))
            v2 = js.Variable(2.0, name="v")
            v3 = js.Variable(3.0)
        return v1.name, v2.name, v3.name, w1.shape, w2.shape

    out, tree = run(f)
    assert out[:3] == ("n1/v", "n1_1/v", "n1_1/Variable")
    assert sorted(js.flatten(tree)) == [
        "params/n1/v",
        "params/n1/w1",
        "params/n1/w2",
        "params/n1_1/Variable",
        "params/n1_1/v",
    ]


def test_name_scope_alone():
    def f():
        with js.name_scope("block") as ns:
            w = gv("w", (1,))
            v = js.Variable(1.0, name="v")
            scope = js.get_variable_scope().name
        with js.name_scope("block") as ns2:
            v2 = js.Variable(1.0, name="v")
        with vs("a"), js.name_scope("inner") as ns3:
            u = gv("u", (1,))
            v3 = js.Variable(1.0, name="v")
        return ns, ns2, ns3, scope, v.name, v2.name, v3.name, w.shape, u.shape

    out, tree = run(f)
    assert out[:7] == (
        "block/",
        "block_1/",
        "a/inner/",
        "",
        "block/v",
        "block_1/v",
        "a/inner/v",
    )
    assert sorted(js.flatten(tree)) == [
        "params/a/inner/v",
        "params/a/u",
        "params/block/v",
        "params/block_1/v",
        "params/w",
    ]


def test_reentry_by_object_opens_a_new_name_scope_where_it_is_entered():
    # TF1: re-entering a captured scope opens a name scope named after its last
    # component, uniquified under the current name scope; the variable scope
    # (and its original_name_scope) are the object's.
    def f():
        with vs("s") as s:
            first = js.Variable(1.0, name="v").name
        with vs("other"), vs(s) as again:
            second = js.Variable(1.0, name="v").name
            assert again.name == "s"
            assert again.original_name_scope == "s/"
        with vs(s):
            third = js.Variable(1.0, name="v").name
        return first, second, third

    assert run(f)[0] == ("s/v", "other/s/v", "s_1/v")


def test_auxiliary_name_scope_false_keeps_the_current_name_scope():
    def f():
        with js.name_scope("outer"), vs("a", auxiliary_name_scope=False) as a:
            w = gv("w", (1,))
            return js.Variable(1.0).name, a.name, w.shape

    (name, scope, _), tree = run(f)
    assert (name, scope) == ("outer/Variable", "a")
    assert sorted(js.flatten(tree)) == ["params/a/w", "params/outer/Variable"]


# -------------------------------------------------------------------- validation


BAD_NAMES = [
    "",
    "a//b",
    "/a",
    "a/",
    "/",
    "a b",
    " a",
    "a:0",
    "caf\u00e9",
    "\u00b5",
    "a\\b",
    "a>b",
    "-a",
    "a/-b",
    "a\tb",
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_variable_names_are_value_errors(bad):
    def f(fail):
        gv("ok", (1,))
        if fail:
            gv(bad, (1,))

    err = raises(ValueError, shown(bad), f)
    assert isinstance(err, errors.InvalidNameError)
    assert re.search(PATTERN, str(err))


@pytest.mark.parametrize("bad", ["a b", "a:0", "-x", "x/", "\u00e9"], ids=repr)
def test_bad_variable_names_show_the_full_path(bad):
    def f(fail):
        with vs("outer"), vs("scope"):
            if fail:
                gv(bad, (1,))

    err = raises(errors.InvalidNameError, shown(f"outer/scope/{bad}"), f)
    assert re.search(PATTERN, str(err))


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_scope_names_are_value_errors(bad):
    def f(fail):
        if fail:
            with vs(bad):
                gv("w", (1,))

    err = raises(ValueError, shown(bad), f)
    assert isinstance(err, errors.InvalidNameError)
    assert re.search(PATTERN, str(err))


class _Name(str):
    pass


@pytest.mark.parametrize(
    "make",
    [lambda: vs("a b"), lambda: vs(None, default_name="a b"), lambda: vs(_Name("a b"))],
    ids=["name", "default_name", "str subclass"],
)
def test_a_scope_name_is_checked_on_entry_as_in_tf1(make):
    # TF1 checks the name when the scope opens; making the object checks nothing.
    with js.variable_scope("outer"):
        scope = make()  # made, not entered: no error
        with pytest.raises(errors.InvalidNameError, match="outer/a b"):
            scope.__enter__()
        assert js.get_variable_scope().name == "outer"  # nothing was opened


@pytest.mark.parametrize("bad", ["a b", "x:y", "-x"], ids=repr)
def test_bad_scope_names_show_the_full_path(bad):
    def f(fail):
        with vs("outer"):
            if fail:
                with vs(bad):
                    pass

    raises(errors.InvalidNameError, shown(f"outer/{bad}"), f)


@pytest.mark.parametrize("bad", ["a b", "a:0", "-a", "a\\b", "a>b", "\u00e9"], ids=repr)
def test_bad_default_names_are_value_errors(bad):
    def f(fail):
        if fail:
            with vs(None, default_name=bad):
                pass

    raises(errors.InvalidNameError, shown(bad), f)


@pytest.mark.parametrize("bad", ["a b", "a//b", "a:0", "-a", "\u00e9", "a//"], ids=repr)
def test_bad_name_scope_names_are_value_errors(bad):
    def f(fail):
        if fail:
            with js.name_scope(bad):
                js.Variable(1.0, name="v")

    err = raises(errors.InvalidNameError, shown(bad), f)
    assert re.search(PATTERN, str(err))


@pytest.mark.parametrize(
    "bad", ["", "a b", "a//b", "a/", "a:0", "-a", "\u00e9"], ids=repr
)
def test_bad_variable_handle_names_are_value_errors(bad):
    def f(fail):
        if fail:
            js.Variable(1.0, name=bad)

    raises(errors.InvalidNameError, shown(bad), f)


@pytest.mark.parametrize("bad", ["a b", "a:0", "-a"], ids=repr)
def test_bad_variable_handle_names_show_the_full_path(bad):
    def f(fail):
        with js.name_scope("block"):
            if fail:
                js.Variable(1.0, name=bad)

    raises(errors.InvalidNameError, shown(f"block/{bad}"), f)


@pytest.mark.parametrize("good", ["_w", "_", "a.b", "a-b", "w-", "0", "A_9.x-y"])
def test_allowed_names(good):
    def f():
        with vs(good), vs(None, default_name=good):
            gv(good, (1,))
            gv(f"sub/{good}", (2,))
        with js.name_scope(good):
            return js.Variable(1.0, name=good).name

    name, tree = run(f)
    assert name == f"{good}_1/{good}"  # taken by the variable scope
    assert sorted(js.flatten(tree)) == sorted(
        [
            f"params/{good}/{good}/{good}",
            f"params/{good}/{good}/sub/{good}",
            f"params/{good}_1/{good}",
        ]
    )


def test_names_are_case_sensitive():
    def f():
        a = gv("A", (1,))
        b = gv("a", (1,))
        with vs("S"), vs(None, "Dense") as s1:
            gv("w", (1,))
        with vs("s"), vs(None, "dense") as s2:
            gv("w", (1,))
        with vs("Dense"):
            pass
        with vs(None, "dense") as s3:
            pass
        v1 = js.Variable(1.0, name="V")
        v2 = js.Variable(1.0, name="v")
        return a, b, s1.name, s2.name, s3.name, v1.name, v2.name

    (a, b, *names), tree = run(f)
    assert names == ["S/Dense", "s/dense", "dense", "V", "v"]
    assert not np.array_equal(a, b)  # two variables, two keys
    assert sorted(js.flatten(tree)) == [
        "params/A",
        "params/S/Dense/w",
        "params/V",
        "params/a",
        "params/s/dense/w",
        "params/v",
    ]


# ----------------------------------------------------------------- outside a run


def test_scopes_outside_a_run_are_recorded_and_reentered_later():
    with vs("model", initializer=constant(2.0)) as sc:
        assert sc.name == "model"
        assert js.get_variable_scope() is sc
        with vs("head") as head:
            assert head.name == "model/head"
    assert js.get_variable_scope().name == ""

    def f():
        with vs(sc):
            w = gv("w", (2,))
        with vs("elsewhere"), vs(head):
            v = gv("v", (1,))
        return w, v

    (w, v), tree = run(f)
    assert sorted(js.flatten(tree)) == ["params/model/head/v", "params/model/w"]
    np.testing.assert_array_equal(w, jnp.full((2,), 2.0))
    np.testing.assert_array_equal(v, jnp.full((1,), 2.0))


def test_name_scope_outside_a_run():
    with js.name_scope("outside_run_block") as ns:
        assert re.fullmatch(r"outside_run_block(_\d+)?/", ns)
        with js.name_scope("inner") as inner:
            assert inner == ns + "inner/"
        with pytest.raises(errors.NotInRunError):
            js.Variable(1.0)


def test_scopes_outside_a_run_create_nothing_and_do_not_leak_into_runs():
    def f():
        with vs(None, "outside_dense") as d:
            pass
        return js.get_variable_scope().name, d.name, js.Variable(1.0).name

    with vs("outside_dense"), js.name_scope("outside_ns"):
        (name, default, var), tree = run(f)
    assert (name, default, var) == ("", "outside_dense", "Variable")
    assert list(js.flatten(tree)) == ["params/Variable"]


@pytest.mark.parametrize(
    "call",
    [lambda: gv("w", (1,)), lambda: js.Variable(1.0, name="v")],
    ids=["get_variable", "Variable"],
)
def test_variables_outside_a_run_are_errors(call):
    for ctx in (None, "scoped"):
        with pytest.raises(RuntimeError, match=r"js\.init.*js\.apply") as info:
            if ctx is None:
                call()
            else:
                with vs("outside_scope"):
                    call()
        assert isinstance(info.value, errors.NotInRunError)
        assert "outside a run" in str(info.value)


# ------------------------------------------------------------ threads and nesting


def test_scopes_are_per_thread():
    barrier = threading.Barrier(2, timeout=30)

    def f(name):
        with vs(name):
            barrier.wait()  # both threads are inside their scopes now
            gv("w", (1,))
            with vs(None, "dense") as d:
                barrier.wait()
                gv("w", (1,))
        return js.get_variable_scope().name, d.name

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(js.init_with_output, f, KEY, n) for n in "ab"}
        results = {n: fut.result() for n, fut in futures.items()}
    for n, ((root, dense), tree) in results.items():
        assert (root, dense) == ("", f"{n}/dense")
        assert sorted(js.flatten(tree)) == [f"params/{n}/dense/w", f"params/{n}/w"]


def test_scope_outside_a_run_is_not_seen_by_another_thread():
    with vs("main_thread_only"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        name = pool.submit(lambda: js.get_variable_scope().name).result()
    assert name == ""


def test_nested_runs_are_independent_of_the_enclosing_scope():
    def inner():
        with vs(None, "dense") as d:
            return gv("w", (2,)), d.name

    inner_vars = js.init(inner, KEY)

    def outer():
        with vs("outer"), vs(None, "dense"):
            w_apply, name_apply = js.apply(inner, inner_vars)
            nested = js.init(inner, KEY)
            here = js.get_variable_scope().name
            own = gv("w", (2,))
        return w_apply, name_apply, sorted(js.flatten(nested)), here, own.shape

    (w, name, nested, here, _), tree = run(outer)
    assert name == "dense"
    assert nested == ["params/dense/w"]
    assert here == "outer/dense"
    np.testing.assert_array_equal(w, inner_vars["params"]["dense"]["w"])
    assert list(js.flatten(tree)) == ["params/outer/dense/w"]


# -------------------------------------------------------------------- templates


def scale_template(name="scale"):
    return js.make_template(name, lambda x: x * gv("s", (), initializer=constant(1.5)))


def test_template_creates_on_first_call_and_reuses_after():
    scale = scale_template()

    def f(x):
        return scale(x) + scale(x) + scale(x)

    out, tree = run(f, 2.0)
    assert list(js.flatten(tree)) == ["params/scale/s"]
    np.testing.assert_allclose(out, 3 * 2.0 * tree["params"]["scale"]["s"])
    # A new run creates again under the same name.
    assert paths(f, 2.0) == ["params/scale/s"]


def test_two_templates_with_one_name_get_unique_scopes():
    first, second = scale_template(), scale_template()

    def f(x):
        return first(x) + second(x) + first(x) + second(x)

    assert paths(f, 1.0) == ["params/scale/s", "params/scale_1/s"]


def test_template_reuses_its_scope_wherever_it_is_called():
    scale = scale_template()

    def f(x):
        with vs("a"):
            y = scale(x)
        with vs("b"):
            return scale(y)

    out, tree = run(f, 2.0)
    assert list(js.flatten(tree)) == ["params/a/scale/s"]
    s = tree["params"]["a"]["scale"]["s"]
    np.testing.assert_allclose(out, 2.0 * s * s)


# ------------------------------------------------------------- errors (DESIGN §9)


def _scope_errors():
    def collide():
        with vs("outer"), vs(None, "dense"):
            gv("w", (1,))
        with vs("outer"), vs(None, "dense"):
            gv("w", (1,))

    def missing():
        with vs("outer", reuse=True):
            gv("w", (1,))

    cases = [
        (lambda: vs("a", reuse="yes"), errors.ReuseFlagError, ValueError),
        (lambda: vs(None, "d", reuse=True), errors.ScopeArgumentError, ValueError),
        (lambda: vs("a b").__enter__(), errors.InvalidNameError, ValueError),
        (lambda: gv("w", (1,)), errors.NotInRunError, RuntimeError),
        (lambda: js.init(collide, KEY), errors.VariableExistsError, ValueError),
        (lambda: js.init(missing, KEY), errors.VariableNotFoundError, ValueError),
    ]
    return cases


@pytest.mark.parametrize(
    ("make", "cls", "builtin"),
    _scope_errors(),
    ids=["reuse", "default_name", "name", "outside", "exists", "missing"],
)
def test_scope_errors_subclass_the_builtin_and_pickle(make, cls, builtin):
    with pytest.raises(cls) as info:
        make()
    err = info.value
    assert isinstance(err, builtin)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.path == err.path


def test_scope_errors_leave_the_scope_stack_clean():
    def f():
        with pytest.raises(errors.VariableExistsError), vs("a"):
            gv("w", (1,))
            gv("w", (1,))
        with pytest.raises(errors.ReuseFlagError), vs("b", reuse=1):
            pass
        return js.get_variable_scope().name, js.Variable(1.0).name

    (name, var), tree = run(f)
    assert (name, var) == ("", "Variable")
    assert sorted(js.flatten(tree)) == ["params/Variable", "params/a/w"]
