"""A stack of `js.layers` initialized in its shards on a ``(2, 4)`` mesh.

Every variable gets the sharding that its layer's default logical axes (the
table in ``jscope.layers``) map to through the rules: vocabulary-, head- and
column-parallel where the table's GPT rules say ``"model"``, row-parallel for
the MLP's second ``dense`` given ``kernel_axes=("mlp", "embed")``, replicated
norms. The values are those of the unsharded init, bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jscope as js
from jscope import layers

KEY = jax.random.key(0)
# Auto axes: XLA propagates the variables' shardings through the layers' ops (over
# explicit axes, a gather from a vocabulary-sharded table, an einsum contracting
# sharded heads or a convolution with a sharded kernel asks for `out_sharding`:
# js.apply given rules= runs them over Auto axes, test_explicit_mesh.py).
MESH = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
RULES = js.ShardingRules(
    MESH,
    axes={
        "batch": "data",
        "embed": None,
        "mlp": "model",
        "heads": "model",
        "kv": None,
        "vocab": "model",
        "conv_in": None,
        "conv_out": "model",
    },
)
IDS = jnp.arange(10, dtype=jnp.int32).reshape(2, 5) % 16


def model(ids, training=False):
    h = layers.embedding(ids, 16, 8)
    h = h + layers.multi_head_attention(layers.layer_norm(h), num_heads=4)
    h = layers.conv1d(h, 8, 3, padding="SAME")
    h = layers.batch_norm(h, training=training)
    m = layers.dense(layers.rms_norm(h), 32, activation=jax.nn.relu)
    h = h + layers.dense(m, 8, kernel_axes=("mlp", "embed"), bias_axes=("embed",))
    return layers.embedding_attend(h, 16, 8)


MHA = "params/multi_head_attention"
EXPECTED = {
    "params/embedding/embeddings": P("model", None),
    "params/layer_normalization/gamma": P(),
    "params/layer_normalization/beta": P(),
    **{f"{MHA}/{p}/kernel": P(None, "model", None) for p in ("query", "key", "value")},
    **{f"{MHA}/{p}/bias": P("model", None) for p in ("query", "key", "value")},
    f"{MHA}/output/kernel": P("model", None, None),
    f"{MHA}/output/bias": P(),
    "params/conv1d/kernel": P(None, None, "model"),
    "params/conv1d/bias": P("model"),
    "params/batch_normalization/gamma": P(),
    "params/batch_normalization/beta": P(),
    "state/batch_normalization/moving_mean": P(),
    "state/batch_normalization/moving_variance": P(),
    "params/rms_norm/scale": P(),
    "params/dense/kernel": P(None, "model"),
    "params/dense/bias": P("model"),
    "params/dense_1/kernel": P("model", None),
    "params/dense_1/bias": P(),
}


def test_each_layer_variable_is_created_in_the_shards_the_table_says():
    variables = js.flatten(js.init(model, KEY, IDS, rules=RULES))
    assert variables.keys() == EXPECTED.keys()
    for path, value in variables.items():
        want = NamedSharding(MESH, EXPECTED[path])
        assert value.sharding.is_equivalent_to(want, value.ndim), (
            path,
            value.sharding,
        )
    table = variables["params/embedding/embeddings"]
    assert {s.data.shape for s in table.addressable_shards} == {(4, 8)}
    kernel = variables["params/dense_1/kernel"]
    assert {s.data.shape for s in kernel.addressable_shards} == {(8, 8)}


def test_sharded_layers_have_the_unsharded_values_and_outputs():
    sharded = js.init(model, KEY, IDS, rules=RULES)
    plain = js.init(model, KEY, IDS)
    flat_sharded, flat_plain = js.flatten(sharded), js.flatten(plain)
    assert list(flat_sharded) == list(flat_plain)
    for path, value in flat_plain.items():
        np.testing.assert_array_equal(
            np.asarray(flat_sharded[path]), np.asarray(value), err_msg=path
        )
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda v: js.apply(model, v, IDS))(sharded)),
        np.asarray(js.apply(model, plain, IDS)),
        rtol=1e-5,
        atol=1e-5,
    )
