"""Rules with no other test of their own, through the public API only.

- An array returned for two variable paths is an ambiguous assignment target
  (DESIGN §4): `js.assign` refuses it rather than update one of the two.
- `VariableScope.get_variable` (DESIGN §3): `js.get_variable` at the scope's
  path, with the scope's flag and defaults, from wherever it is called.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal

import jscope as js
from jscope import errors

KEY = jax.random.key(0)
vs = js.variable_scope

AMBIGUOUS = "ambiguous"

# ------------------------------------------------- ambiguous assignment target


def _two_reads(target):
    """Reads ``a`` and ``b``, then assigns ``a + 1`` to ``target(a, b)``."""

    def fn():
        a = js.get_variable("a", (2,))
        b = js.get_variable("b", (2,))
        js.assign(target(a, b), a + 1)
        return a is b

    return fn


def test_one_array_at_two_paths_of_the_tree_is_an_ambiguous_target():
    shared = jnp.zeros(2)
    tree = {"params": {"a": shared, "b": shared}}
    fn = _two_reads(lambda a, b: a)
    with pytest.raises(errors.AssignmentTargetError, match=AMBIGUOUS):
        js.apply(fn, tree, mutable=True)
    # By name the target is clear, and only that variable changes.
    same, new = js.apply(_two_reads(lambda a, b: "a"), tree, mutable=True)
    assert same
    np.testing.assert_array_equal(new["params"]["a"], [1.0, 1.0])
    assert new["params"]["b"] is shared


def test_an_initializer_returning_one_array_twice_makes_it_ambiguous():
    const = jnp.ones(2)

    def fn():
        a = js.get_variable("a", (2,), initializer=lambda *_: const)
        b = js.get_variable("b", (2,), initializer=lambda *_: const)
        assert a is b
        js.assign(a, a + 1)

    with pytest.raises(errors.AssignmentTargetError, match=AMBIGUOUS):
        js.init(fn, KEY)


def test_one_array_assigned_to_two_variables_is_an_ambiguous_target():
    def fn(target_by_name):
        a = js.get_variable("a", (2,))
        b = js.get_variable("b", (2,))
        z = jnp.full((2,), 3.0)
        assert js.assign(a, z) is js.assign(b, z) is z
        js.assign("b" if target_by_name else z, b + 1)
        return a

    tree = js.init(fn, KEY, True)
    with pytest.raises(errors.AssignmentTargetError, match=AMBIGUOUS):
        js.apply(fn, tree, False, mutable=True)
    _, new = js.apply(fn, tree, True, mutable=True)
    np.testing.assert_array_equal(new["params"]["a"], [3.0, 3.0])
    np.testing.assert_array_equal(new["params"]["b"], tree["params"]["b"] + 1)


def test_an_array_returned_for_one_path_is_a_clear_target():
    def fn():
        a = js.get_variable("a", (2,))
        b = js.get_variable("b", (2,))
        js.assign(b, b + 1)
        return a

    tree = {"params": {"a": jnp.zeros(2), "b": jnp.zeros(2)}}
    _, new = js.apply(fn, tree, mutable=True)
    np.testing.assert_array_equal(new["params"]["a"], [0.0, 0.0])
    np.testing.assert_array_equal(new["params"]["b"], [1.0, 1.0])


def test_at_apply_only_arrays_read_in_the_run_are_targets():
    # A read at apply records nothing; the target is found in the given tree
    # among the paths get_variable read, in the collection it read them from.
    shared = jnp.zeros(2)
    tree = {
        "params": {"a": shared, "b": shared, "c": jnp.ones(2)},
        "state": {"a": jnp.full((2,), 5.0), "h": jnp.zeros(())},
    }

    def fn(target):
        a = js.get_variable("a", (2,))
        handle = js.Variable(0.0, name="h", collection="state")
        assert handle.value.shape == ()  # its handle, not its array, is a target
        old = a
        js.assign("a", a + 1)  # reassigned: the array read stays its target
        js.assign(target(old), old + 2)

    _, new = js.apply(fn, tree, lambda old: old, mutable=True)
    np.testing.assert_array_equal(new["params"]["a"], [2.0, 2.0])
    assert new["params"]["b"] is shared  # b is not read: a alone is the target
    not_read = [
        lambda old: tree["params"]["c"],  # a leaf of the tree no read returned
        lambda old: tree["state"]["a"],  # a's path, another collection
        lambda old: tree["state"]["h"],  # the array a js.Variable read
    ]
    for target in not_read:
        with pytest.raises(errors.AssignmentTargetError, match="not a variable"):
            js.apply(fn, tree, target, mutable=True)


# ------------------------------------------------- VariableScope.get_variable


def run(fn, *args):
    """``fn`` at init, then at apply on init's tree: same output both times."""
    out, variables = js.init_with_output(fn, KEY, *args)
    assert_trees_equal(out, js.apply(fn, variables, *args))
    return out, variables


def test_scope_get_variable_creates_at_the_scopes_path_from_anywhere():
    def fn():
        with vs("enc") as enc:
            pass
        with vs("dec"):
            w = enc.get_variable("w", (2,))
            inside = js.get_variable_scope().name
        v = enc.get_variable("v", (3,))
        with vs("enc", reuse=True):
            again = js.get_variable("w", (2,))
        return w, v, again, inside

    (w, v, again, inside), tree = run(fn)
    assert list(js.flatten(tree)) == ["params/enc/w", "params/enc/v"]
    assert inside == "dec"  # the caller's scope is left as it was
    assert w.shape == (2,) and v.shape == (3,)
    np.testing.assert_array_equal(w, again)
    np.testing.assert_array_equal(w, tree["params"]["enc"]["w"])


def test_scope_get_variable_uses_the_scopes_defaults_and_the_calls_arguments():
    def fn():
        with vs("s", initializer=js.initializers.constant(2.0), dtype=jnp.bfloat16):
            scope = js.get_variable_scope()
        a = scope.get_variable("a", (2,))
        b = scope.get_variable("b", (2,), jnp.float32, js.initializers.ones())
        c = scope.get_variable("c", (), trainable=False)
        return a, b, c

    (a, b, c), tree = run(fn)
    assert a.dtype == jnp.bfloat16 and b.dtype == jnp.float32
    np.testing.assert_array_equal(a, [2.0, 2.0])
    np.testing.assert_array_equal(b, [1.0, 1.0])
    assert js.flatten(tree)["state/s/c"].dtype == jnp.bfloat16
    assert list(js.flatten(tree)) == ["params/s/a", "params/s/b", "state/s/c"]


def test_scope_get_variable_follows_the_scopes_reuse_flag():
    def fn(mode):
        with vs("s") as plain:
            w = js.get_variable("w", (2,))
        with vs("s", reuse=True) as reusing:
            pass
        with vs("s", reuse=js.AUTO_REUSE) as auto:
            pass
        if mode == "exists":
            plain.get_variable("w", (2,))
        if mode == "missing":
            reusing.get_variable("x", (2,))
        got = reusing.get_variable("w", (2,))
        made = auto.get_variable("y", (2,))
        return w, got, made, auto.get_variable("y", (2,))

    (w, got, made, made_again), tree = run(fn, "ok")
    np.testing.assert_array_equal(w, got)
    np.testing.assert_array_equal(made, made_again)
    assert list(js.flatten(tree)) == ["params/s/w", "params/s/y"]
    with pytest.raises(errors.VariableExistsError, match="Variable s/w already exists"):
        js.init(fn, KEY, "exists")
    with pytest.raises(errors.VariableNotFoundError, match="Variable s/x does not"):
        js.init(fn, KEY, "missing")


def test_scope_get_variable_after_reuse_variables_reuses():
    def fn():
        with vs("s") as scope:
            w = js.get_variable("w", (2,))
            scope.reuse_variables()
        return w, scope.get_variable("w", (2,)), scope.reuse

    (w, again, flag), _ = run(fn)
    assert flag is True
    np.testing.assert_array_equal(w, again)


def test_scope_get_variable_goes_through_the_scopes_custom_getter():
    seen = []

    def getter(next_getter, name, *args, **kwargs):
        seen.append(name)
        return next_getter(name, *args, **kwargs) * 2

    def fn():
        with vs("s", custom_getter=getter) as scope:
            pass
        with vs("other"):
            return scope.get_variable("w", (2,), initializer=js.initializers.ones())

    w, tree = run(fn)
    assert seen == ["s/w", "s/w"]  # at init, then at apply
    np.testing.assert_array_equal(w, [2.0, 2.0])
    np.testing.assert_array_equal(tree["params"]["s"]["w"], [1.0, 1.0])


def test_scope_get_variable_returns_an_assignable_array():
    def fn():
        with vs("s") as scope:
            pass
        c = scope.get_variable("c", (), jnp.int32)
        js.assign(c, c + 1)

    tree = js.init(fn, KEY)
    _, new = js.apply(fn, tree, mutable=True)
    assert int(new["state"]["s"]["c"]) == 1


def test_scope_get_variable_neither_opens_the_scope_nor_a_name_scope():
    # TF1's VariableScope.get_variable creates the variable under the scope's
    # name without entering the scope: no default-name count, no name scope.
    def fn():
        with vs("p"), vs("t") as t:
            pass  # leaving `p` forgets that `p/t` was opened
        t.get_variable("w", (2,))
        with vs("p"), vs(None, default_name="t") as s:
            name = s.name
        with vs("t"):
            x = js.Variable(jnp.zeros(2), name="x")
        return name, x.name

    (name, x_name), tree = run(fn)
    assert name == "p/t"
    assert x_name == "t/x"
    assert list(js.flatten(tree)) == ["params/p/t/w", "params/t/x"]


def test_scope_get_variable_outside_a_run_is_an_error():
    with vs("s") as scope:
        pass
    with pytest.raises(errors.NotInRunError):
        scope.get_variable("w", (2,))
