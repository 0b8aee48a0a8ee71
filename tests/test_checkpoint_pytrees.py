"""Checkpoints of any pytree: optax states, typed PRNG keys, scalars, tuples."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jscope as js


def model():
    with js.variable_scope("n2"):
        js.get_variable("W", [4, 3])
        js.get_variable("b", [3])


def assert_same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert type(x) is type(y)
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_an_optax_state_round_trips_with_the_variables(tmp_path):
    variables = js.init(model, jax.random.key(0))
    opt = optax.adam(1e-2)
    state = opt.init(variables["params"])
    grads = jax.tree.map(jnp.ones_like, variables["params"])
    _, state = opt.update(grads, state, variables["params"])
    saved = {"variables": variables, "opt": state, "epoch": 3}
    path = js.Saver().save(saved, tmp_path / "model")
    names = [k for k, _ in js.list_variables(path)]
    assert "opt/0/mu/n2/W" in names and "opt/0/count" in names
    assert "variables/params/n2/W" in names  # dicts give today's keys
    fresh = {
        "variables": js.init(model, jax.random.key(1)),
        "opt": opt.init(variables["params"]),
        "epoch": 0,
    }
    restored = js.Saver().restore(path, fresh)
    assert_same(restored, saved)
    assert isinstance(restored["opt"][0], optax.ScaleByAdamState)
    assert restored["epoch"] == 3 and type(restored["epoch"]) is int


def test_a_var_list_path_selects_a_subtree(tmp_path):
    opt_state = optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones(3)})
    tree = {"params": {"w": jnp.ones(3)}, "opt": opt_state}
    path = js.Saver(["opt"]).save(tree, tmp_path / "model")
    assert [k for k, _ in js.list_variables(path)] == ["opt/0/trace/w"]
    path = js.Saver({"momentum": "opt/0"}).save(tree, tmp_path / "m2")
    assert [k for k, _ in js.list_variables(path)] == ["momentum/trace/w"]


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_typed_prng_keys_round_trip(tmp_path, impl):
    key = jax.random.key(42, impl=impl)
    tree = {"rng": {"key": key, "many": jax.random.split(key, 3)}}
    path = js.Saver().save(tree, tmp_path / "model")
    shapes = jax.eval_shape(lambda: tree)
    restored = js.Saver().restore(path, shapes)
    assert_same(restored, tree)
    assert str(jax.random.key_impl(restored["rng"]["key"])) == impl
    loaded = js.load_variable(path, "rng/many")
    assert jax.dtypes.issubdtype(loaded.dtype, jax.dtypes.prng_key)
    assert np.array_equal(
        jax.random.key_data(loaded), jax.random.key_data(tree["rng"]["many"])
    )
    assert np.array_equal(  # the restored key draws the same numbers
        jax.random.normal(restored["rng"]["key"], (3,)), jax.random.normal(key, (3,))
    )


def test_a_key_of_another_implementation_is_a_mismatch(tmp_path):
    path = js.Saver().save(
        {"k": jax.random.key(0, impl="threefry2x32")}, tmp_path / "m"
    )
    # Same data shape (2,) for threefry2x32; unsafe_rbg has (4,).
    with pytest.raises(js.CheckpointMismatchError, match="k: expected shape"):
        js.Saver().restore(path, {"k": jax.random.key(0, impl="unsafe_rbg")})


def test_scalars_are_restored_as_what_the_target_holds(tmp_path):
    tree = {
        "step": 7,
        "lr": 0.125,
        "done": True,
        "np64": np.float64(2.5),
        "i8": np.int8(-3),
    }
    path = js.Saver().save(tree, tmp_path / "model")
    # Saved with the dtype jax gives them (x64 off: float32, int32).
    assert js.load_variable(path, "lr").dtype == jnp.float32
    assert js.load_variable(path, "step").dtype == jnp.int32
    target = {
        "step": 0,
        "lr": 0.0,
        "done": False,
        "np64": np.float64(0),
        "i8": np.int8(0),
    }
    restored = js.Saver().restore(path, target)
    assert_same(restored, tree)


def test_tuples_and_lists_are_keyed_by_position(tmp_path):
    tree = ({"w": jnp.ones(2)}, [jnp.zeros(3), np.arange(4)])
    path = js.Saver().save(tree, tmp_path / "model")
    assert js.list_variables(path) == [("0/w", (2,)), ("1/0", (3,)), ("1/1", (4,))]
    target = ({"w": jnp.zeros(2)}, [jnp.ones(3), np.zeros(4, np.int64)])
    assert_same(js.Saver().restore(path, target), tree)


def test_restore_keeps_the_dict_order_of_the_target(tmp_path):
    tree = {"z": {"b": jnp.ones(1), "a": jnp.ones(1)}, "y": (jnp.ones(1),)}
    path = js.Saver().save(tree, tmp_path / "model")
    target = {"z": {"b": jnp.zeros(1), "a": jnp.zeros(1)}, "y": (jnp.zeros(1),)}
    restored = js.Saver().restore(path, target)
    assert list(restored) == ["z", "y"] and list(restored["z"]) == ["b", "a"]
    assert isinstance(restored["y"], tuple)
