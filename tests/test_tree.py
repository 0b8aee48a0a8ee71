"""`js.flatten` and `js.unflatten` over plain nested-dict variable trees (§1)."""

import copy
import pickle
import re
import string
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal
from hypothesis import given
from hypothesis import strategies as st

import jscope as js
from jscope import errors

KEY = jax.random.key(0)


def sample_tree():
    return {
        "params": {
            "n2": {"W": jnp.ones((3, 2)), "b": jnp.zeros(2)},
            "n1": {"inner": {"w": jnp.arange(4.0)}},
            "top": jnp.float32(1.5),
        },
        "state": {"counter": jnp.int32(7)},
    }


# ---------------------------------------------------------------------- flatten


def test_flatten_whole_tree_and_one_collection():
    tree = sample_tree()
    flat = js.flatten(tree)
    assert list(flat) == [
        "params/n2/W",
        "params/n2/b",
        "params/n1/inner/w",
        "params/top",
        "state/counter",
    ]
    assert flat["params/n2/W"] is tree["params"]["n2"]["W"]
    assert list(js.flatten(tree["params"])) == ["n2/W", "n2/b", "n1/inner/w", "top"]
    assert list(js.flatten(tree["state"], "state")) == ["state/counter"]


def test_flatten_walks_any_mapping_and_keeps_other_leaves():
    # A read-only Mapping is a node like a dict; a list, a str and a number
    # are leaves, whichever type the walk met first; empty nodes leave no key.
    inner = types.MappingProxyType({"w": "text", "v": [1, 2]})
    tree = {"a": [0], "b": inner, "c": {"d": inner, "e": {}}, 7: 1.5}
    flat = js.flatten(tree, "pre")
    assert list(flat) == [
        "pre/a", "pre/b/w", "pre/b/v", "pre/c/d/w", "pre/c/d/v", "pre/7"
    ]  # fmt: skip
    assert flat["pre/b/v"] is inner["v"] and flat["pre/7"] == 1.5


def test_flatten_of_empty_tree():
    assert js.flatten({}) == {}


@pytest.mark.parametrize("bad", [jnp.zeros(2), [1, 2], None, 3])
def test_flatten_rejects_non_trees(bad):
    with pytest.raises(TypeError, match="nested dict"):
        js.flatten(bad)


# -------------------------------------------------------------------- unflatten


def test_unflatten_builds_nested_dicts_in_path_order():
    flat = {"params/n2/W": 1, "params/n1/w": 2, "params/n2/b": 3, "state/c": 4}
    assert_trees_equal(
        js.unflatten(flat),
        {"params": {"n2": {"W": 1, "b": 3}, "n1": {"w": 2}}, "state": {"c": 4}},
    )


def test_unflatten_takes_pairs():
    pairs = (p for p in [("a/x", 1), ("b", 2), ("a/y", 3)])
    assert_trees_equal(js.unflatten(pairs), {"a": {"x": 1, "y": 3}, "b": 2})


def test_round_trip_from_tree():
    tree = sample_tree()
    back = js.unflatten(js.flatten(tree))
    assert_trees_equal(back, tree)
    assert back is not tree
    assert back["params"] is not tree["params"]


def test_round_trip_from_flat():
    flat = {"z": 1, "a/c/d": 2, "a/b": 3, "m": 4}
    again = js.flatten(js.unflatten(flat))
    assert list(again.items()) == list(flat.items())


def test_round_trip_of_an_init_tree():
    def f():
        with js.variable_scope("n2"):
            js.get_variable("W", (3, 2))
            js.get_variable("b", (2,))
        js.get_variable("step", (), jnp.int32)

    tree = js.init(f, KEY)
    assert_trees_equal(js.unflatten(js.flatten(tree)), tree)


KEYS = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1)
TREES = st.recursive(
    st.integers(),
    lambda children: st.dictionaries(KEYS, children, min_size=1, max_size=4),
    max_leaves=20,
).filter(lambda t: isinstance(t, dict))


@given(TREES)
def test_round_trip_property(tree):
    before = copy.deepcopy(tree)
    flat = js.flatten(tree)
    assert_trees_equal(js.unflatten(flat), tree)
    assert list(js.flatten(js.unflatten(flat)).items()) == list(flat.items())
    assert_trees_equal(tree, before)


# ------------------------------------------------------------- creation order


def test_init_tree_is_in_creation_order():
    def f():
        js.get_variable("z", (1,))
        with js.variable_scope("m"):
            js.get_variable("y", (1,))
            js.get_variable("b", (1,))
        js.get_variable("count", (), jnp.int32)
        js.get_variable("a", (1,))
        js.get_variable("step", (), jnp.int32)

    tree = js.init(f, KEY)
    assert list(js.flatten(tree["params"])) == ["z", "m/y", "m/b", "a"]
    assert list(js.flatten(tree["state"])) == ["count", "step"]
    assert list(tree["params"]) == ["z", "m", "a"]


# ------------------------------------------------------------------- conflicts


@pytest.mark.parametrize(
    ("first", "second"),
    [("k", "k/x"), ("k/x", "k"), ("a/k", "a/k/x/y"), ("a/k/x/y", "a/k")],
)
def test_unflatten_conflict_names_both_paths(first, second):
    short, long = sorted([first, second], key=len)
    with pytest.raises(ValueError, match=re.escape(short)) as info:
        js.unflatten({first: 1, second: 2})
    err = info.value
    assert isinstance(err, errors.PathConflictError)
    assert f"Variable {short} and variable {long}" in str(err)
    assert "cannot both exist" in str(err)


def test_unflatten_duplicate_path_in_pairs():
    with pytest.raises(errors.PathConflictError, match="a/b.*given twice"):
        js.unflatten([("a/b", 1), ("a/b", 2)])


@pytest.mark.parametrize(
    ("first", "second"),
    [("k", "k/x"), ("k/x", "k"), ("a/k", "a/k/x/y"), ("a/k/x/y", "a/k")],
)
def test_init_conflict_names_both_paths(first, second):
    short, long = sorted([first, second], key=len)

    def f():
        js.get_variable(first, (1,))
        js.get_variable(second, (1,))

    with pytest.raises(errors.PathConflictError) as info:
        js.init(f, KEY)
    assert f"Variable {short} and variable {long}" in str(info.value)


def test_init_conflict_through_scopes_and_variables():
    def f():
        js.get_variable("k", (1,))
        with js.variable_scope("k"):
            js.get_variable("x", (1,))

    with pytest.raises(errors.PathConflictError, match="Variable k and variable k/x"):
        js.init(f, KEY)

    def g():
        js.Variable(1.0, name="k")
        with js.variable_scope("k"):
            js.get_variable("x", (1,))

    with pytest.raises(errors.PathConflictError, match="Variable k and variable k/x"):
        js.init(g, KEY)


def test_conflict_error_pickles():
    with pytest.raises(errors.PathConflictError) as info:
        js.unflatten({"k": 1, "k/x": 2})
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is errors.PathConflictError
    assert str(back) == str(info.value)
    assert back.path == info.value.path


# ---------------------------------------------------------- inputs unchanged


def test_flatten_leaves_its_input_unchanged():
    tree = sample_tree()
    before = copy.deepcopy(tree)
    flat = js.flatten(tree)
    flat["params/new"] = jnp.zeros(1)
    del flat["params/n2/W"]
    assert_trees_equal(tree, before)


def test_unflatten_leaves_its_input_unchanged():
    flat = {"params/n2/W": jnp.ones(2), "params/n2/b": jnp.zeros(2)}
    before = copy.deepcopy(flat)
    tree = js.unflatten(flat)
    tree["params"]["n2"]["W"] = None
    tree["params"]["extra"] = 1
    assert list(flat) == list(before)
    for k in flat:
        np.testing.assert_array_equal(flat[k], before[k])


def test_failed_unflatten_leaves_its_input_unchanged():
    flat = {"k": 1, "k/x": 2}
    with pytest.raises(errors.PathConflictError):
        js.unflatten(flat)
    assert flat == {"k": 1, "k/x": 2}


def test_unflatten_returns_fresh_dicts():
    flat = {"a/b": 1}
    one, two = js.unflatten(flat), js.unflatten(flat)
    assert one == two
    assert one is not two
    assert one["a"] is not two["a"]
