"""`js.ExponentialMovingAverage` against TF1's (DESIGN §4.20).

The fixtures (tests/data/tf1_layers/ema*.npz, made by the script there with
TensorFlow) hold TF1's variable names in creation order and the averages after
three updates, with and without ``num_updates``.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
from jscope import errors

DATA = pathlib.Path(__file__).parent / "data" / "tf1_layers"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
KEY = jax.random.key(0)


def net():
    with js.variable_scope("net"):
        js.get_variable("w", (2, 3))
        js.get_variable("b", (3,))


@pytest.mark.parametrize("case", ["ema", "ema_num_updates"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_matches_tf1(case, jit):
    d = np.load(DATA / f"{case}.npz")
    args = MANIFEST["cases"][case]
    ema = js.ExponentialMovingAverage(args["decay"])
    v = js.init(net, KEY)
    v["params"]["net"] = {"w": d["var/net/w"], "b": d["var/net/b"]}
    v = ema.apply(v)  # the shadows start at the initial values, as in TF1
    # TF1's names, in TF1's creation order.
    names = [p.split("/", 1)[1] for p in js.flatten(v)]
    assert names == list(d["names"])
    assert [ema.average_name(p) for p in ("net/w", "net/b")] == list(d["average_names"])
    step = jax.jit(ema.apply) if jit else ema.apply
    for i, n in enumerate(args["steps"]):
        v["params"]["net"] = {"w": d[f"step{i}/net/w"], "b": d[f"step{i}/net/b"]}
        v = step(v, num_updates=n) if args["with_num_updates"] else step(v)
        for p in ("net/w", "net/b"):
            want = d[f"step{i}/{p}/ExponentialMovingAverage"]
            np.testing.assert_allclose(ema.average(v, p), want, rtol=1e-6, atol=1e-7)


def test_num_updates_in_constructor_and_warm_up():
    v = {"params": {"x": jnp.zeros(())}}
    ema = js.ExponentialMovingAverage(0.999, num_updates=0)
    v = ema.apply(v)
    v["params"]["x"] = jnp.ones(())
    # decay = min(0.999, 1 / 10): the shadow moves 90% of the way.
    out = ema.apply(v)
    np.testing.assert_allclose(ema.average(out, "x"), 0.9, rtol=1e-6)
    # The call's own num_updates wins over the constructor's.
    out = ema.apply(v, num_updates=10**9)
    np.testing.assert_allclose(ema.average(out, "x"), 0.001, rtol=1e-3)


def test_var_list_paths_and_tree_left_unchanged():
    v = js.init(net, KEY)
    before = jax.tree.map(np.asarray, v)
    ema = js.ExponentialMovingAverage(0.5)
    out = ema.apply(v, ["net/w"])
    assert set(js.flatten(out)) == {
        "params/net/w",
        "params/net/b",
        "state/net/w/ExponentialMovingAverage",
    }
    out = ema.apply(out, ["params/net/b"])
    assert "state/net/b/ExponentialMovingAverage" in js.flatten(out)
    assert ema.average(out, "net/b") is not None
    assert ema.average(v, "net/w") is None  # as TF1, for one not averaged
    jax.tree.map(np.testing.assert_array_equal, v, before)


def test_averaged_swaps_in_averages_and_runs():
    def f(x):
        return js.layers.dense(x, 2)

    x = jnp.ones((1, 3))
    v = js.init(f, KEY, x)
    ema = js.ExponentialMovingAverage(0.5, name="EMA")
    v = ema.apply(v)
    v["params"]["dense"]["kernel"] = v["params"]["dense"]["kernel"] + 2.0
    v = ema.apply(v)
    swapped = ema.averaged(v)
    np.testing.assert_allclose(
        swapped["params"]["dense"]["kernel"],
        v["params"]["dense"]["kernel"] - 1.0,
        atol=1e-6,
    )
    # A tree with the shadows still runs the model (they sit in 'state').
    y = js.apply(f, swapped, x)
    assert y.shape == (1, 2)
    assert "state/dense/kernel/EMA" in js.flatten(v)


def test_tf1_checkpoint_with_averages_round_trips(tmp_path):
    v = js.init(net, KEY)
    ema = js.ExponentialMovingAverage(0.9)
    v = ema.apply(v)
    v["state"]["net"]["w"]["ExponentialMovingAverage"] = jnp.full((2, 3), 7.0)
    js.tf1.save_checkpoint(v, str(tmp_path / "model.ckpt"))
    names = [n for n, _, _ in js.tf1.list_variables(str(tmp_path / "model.ckpt"))]
    assert "net/w/ExponentialMovingAverage" in names
    fresh = ema.apply(js.init(net, jax.random.key(1)))
    restored = js.tf1.restore(str(tmp_path / "model.ckpt"), fresh)
    np.testing.assert_array_equal(ema.average(restored, "net/w"), np.full((2, 3), 7.0))


def test_errors_name_the_path():
    v = {"params": {"x": jnp.zeros(2)}, "state": {"n": jnp.zeros(2, jnp.int32)}}
    ema = js.ExponentialMovingAverage(0.9)
    with pytest.raises(errors.VariableNotFoundError, match="Variable y does not exist"):
        ema.apply(v, ["y"])
    with pytest.raises(errors.InvalidDtypeError, match="Variable n has dtype int32"):
        ema.apply(v, ["n"])
    with pytest.raises(TypeError, match="takes variable paths"):
        ema.apply(v, [jnp.zeros(2)])
    v = {"state": {"m": jnp.zeros(2)}}
    with pytest.raises(errors.PathConflictError, match="Variable m is in collection"):
        ema.apply(v, ["m"])
    with pytest.raises(ValueError, match="name must be"):
        js.ExponentialMovingAverage(0.9, name="a/b")
