"""`js.apply` over a plain ``jax.make_mesh`` mesh, whose axes are Explicit.

jax's default mesh types every array's sharding, and refuses a gather from a
vocabulary-sharded table, a contraction over sharded heads or a convolution
with a sharded kernel unless the code names the output's sharding. Given
``rules=``, `js.apply` runs the model over the mesh's Auto twin (as `js.init`
does), so the layers work there unchanged, eagerly, under `jax.jit` and in a
train step, with the single-device numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jscope as js
from jscope import layers

KEY = jax.random.key(0)
TOL = dict(rtol=2e-5, atol=2e-5)  # reduction order only
MESH = jax.make_mesh((2, 4), ("data", "model"))  # jax's default: Explicit axes
AXES = {
    "batch": "data",
    "embed": None,
    "mlp": "model",
    "heads": "model",
    "kv": None,
    "vocab": "model",
    "conv_in": None,
    "conv_out": "model",
}
RULES = js.ShardingRules(MESH, axes=AXES)
IDS = jnp.arange(40, dtype=jnp.int32).reshape(4, 10) % 16


def model(ids, training=False):
    """Embedding, attention, a convolution, dense layers: each fails by itself."""
    h = layers.embedding(ids, 16, 8)
    h = h + layers.multi_head_attention(layers.layer_norm(h), num_heads=4)
    h = layers.conv1d(h, 8, 3, padding="SAME")
    h = layers.batch_norm(h, training=training)
    m = layers.dense(layers.rms_norm(h), 32, activation=jax.nn.relu)
    h = h + layers.dense(m, 8, kernel_axes=("mlp", "embed"), bias_axes=("embed",))
    return layers.dense(h, 16, kernel_axes=("embed", "vocab"), bias_axes=("vocab",))


def batch(x):
    return jax.device_put(x, NamedSharding(MESH, P("data")))


def test_the_mesh_is_explicit_and_the_layers_refuse_it_without_rules():
    assert set(MESH.axis_types) == {AxisType.Explicit}
    assert RULES.is_explicit
    variables = js.init(model, KEY, IDS, rules=RULES)
    with pytest.raises(Exception, match="out_sharding"):
        jax.jit(lambda v, i: js.apply(model, v, i))(variables, batch(IDS))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_apply_gives_the_single_device_output_typed_by_the_batch(jit):
    variables = js.init(model, KEY, IDS, rules=RULES)
    want = js.apply(model, js.init(model, KEY, IDS), IDS)

    def run(v, ids):
        return js.apply(model, v, ids, rules=RULES)

    out = (jax.jit(run) if jit else run)(variables, batch(IDS))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), **TOL)
    # typed over the explicit mesh again, batch-sharded like the ids
    assert out.sharding == NamedSharding(MESH, P("data", None, None))
    assert jax.typeof(out).sharding.spec == P("data", None, None)
    # the variables stayed in their shards: nothing was gathered on the way in
    table = variables["params"]["embedding"]["embeddings"]
    assert {s.data.shape for s in table.addressable_shards} == {(4, 8)}


def test_an_output_keeps_the_spec_of_its_last_constrain():
    variables = js.init(model, KEY, IDS, rules=RULES)

    def pinned(ids):
        return js.constrain(model(ids), ("batch", None, "vocab"))

    out = jax.jit(lambda v, i: js.apply(pinned, v, i, rules=RULES))(
        variables, batch(IDS)
    )
    assert out.sharding == NamedSharding(MESH, P("data", None, "model"))
    unsharded_ids = jax.jit(lambda v, i: js.apply(model, v, i, rules=RULES))(
        variables, IDS
    )  # no sharded argument: the output is replicated
    assert unsharded_ids.sharding.is_fully_replicated


def test_updated_state_comes_back_in_the_shardings_it_came_in():
    rules = js.ShardingRules(MESH, paths=[("moving_", ("model",))], axes=AXES)
    variables = js.init(model, KEY, IDS, rules=rules)
    mean = variables["state"]["batch_normalization"]["moving_mean"]
    assert mean.sharding.spec == P("model")
    out, updated = jax.jit(
        lambda v, i: js.apply(model, v, i, True, mutable="state", rules=rules)
    )(variables, batch(IDS))
    _, want = js.apply(model, js.init(model, KEY, IDS), IDS, True, mutable="state")
    for path, value in js.flatten(updated).items():
        came_in = js.flatten(variables)[path].sharding
        assert value.sharding.is_equivalent_to(came_in, value.ndim), path
    for path, value in js.flatten(want["state"]).items():
        np.testing.assert_allclose(
            np.asarray(js.flatten(updated["state"])[path]), value, **TOL
        )
    # eagerly, a variable that was not assigned is the very array passed in
    _, eager = js.apply(model, variables, batch(IDS), True, mutable="state",
                        rules=rules)  # fmt: skip
    gamma = eager["params"]["batch_normalization"]["gamma"]
    assert gamma is variables["params"]["batch_normalization"]["gamma"]


def test_a_train_step_on_the_explicit_mesh_gives_the_single_device_numbers():
    targets = jnp.roll(IDS, -1, axis=1)
    tx = optax.adam(1e-2)

    def loss(params, state, ids, targets, rules):
        logits = js.apply(model, {"params": params, **state}, ids, rules=rules)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(params, opt_state, state, ids, targets, rules=None):
        value, grads = jax.value_and_grad(loss)(params, state, ids, targets, rules)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    variables = js.init(model, KEY, IDS)
    params, state = variables["params"], {"state": variables["state"]}
    opt_state, single = tx.init(params), []
    for _ in range(3):
        params, opt_state, value = jax.jit(step)(params, opt_state, state, IDS,
                                                 targets)  # fmt: skip
        single.append(float(value))

    variables = js.init(model, KEY, IDS, rules=RULES)
    sh = js.shardings(variables, RULES)
    p8, s8 = variables["params"], {"state": variables["state"]}
    sharded = []
    jitted = jax.jit(lambda p, o, s, i, t: step(p, o, s, i, t, RULES),
                     out_shardings=(sh["params"], None, None))  # fmt: skip
    with jax.set_mesh(MESH):  # as explicit-axes code runs: optax's init needs it
        o8 = jax.jit(tx.init)(p8)  # the moments come out typed like the parameters
        for _ in range(3):
            p8, o8, value = jitted(p8, o8, s8, batch(IDS), batch(targets))
            sharded.append(float(value))
    np.testing.assert_allclose(sharded, single, **TOL)
    assert sharded[-1] < sharded[0]
    for path, value in js.flatten(p8).items():
        # The key bias's gradient is zero in exact arithmetic (softmax ignores a
        # shift of the keys): Adam scales its reduction-order noise up to a step
        # of lr, so it agrees to steps * lr only.
        tol = dict(rtol=0, atol=3 * 1e-2) if path.endswith("key/bias") else TOL
        np.testing.assert_allclose(
            np.asarray(value), js.flatten(params)[path], err_msg=path, **tol
        )
        assert value.sharding == js.flatten(sh["params"])[path], path
    mu = js.flatten(o8[0].mu)["multi_head_attention/output/kernel"]
    want = NamedSharding(MESH, P("model"))  # Adam's moments sharded like the weights
    assert mu.sharding.is_equivalent_to(want, mu.ndim)
