"""Training on a 2x4 mesh of 8 CPU devices (DESIGN §8): the single-device numbers.

A data- and model-parallel `jax.jit` train step with optax Adam, its state sharded
like the parameters, must give the numbers of the same step on one device (up to
the order of reductions). Two models: one written with logical axes, a scan stack
and `js.constrain`; one ported from TF1 (GPT-2's variable names, no axes at all),
sharded by path rules alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jscope as js

KEY = jax.random.key(0)
D, BATCH, STEPS = 16, 8, 3
TOL = dict(rtol=2e-5, atol=2e-6)  # reduction order only


def auto_mesh(shape=(2, 4)):
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2)


# ------------------------------------------------------------------- models


def logical_model(x):
    """An MLP stack written with logical axes, `js.scan` and `js.constrain`."""

    def block(h, _):
        w1 = js.get_variable("w1", (D, 4 * D), axes=("embed", "mlp"))
        b1 = js.get_variable("b1", (4 * D,), initializer=js.initializers.zeros(),
                             axes=("mlp",))  # fmt: skip
        h1 = js.constrain(jax.nn.gelu(h @ w1 + b1), ("batch", "mlp"))
        w2 = js.get_variable("w2", (4 * D, D), axes=("mlp", "embed"))
        return h + h1 @ w2, None

    x = js.constrain(x, ("batch", "embed"))
    h = js.scan(block, variable_axes={"params": 0}, length=2, axis_name="layers")(x)[0]
    with js.variable_scope("head"):
        return h @ js.get_variable("w", (D, 1), axes=("embed", None))


LOGICAL_AXES = {"batch": "data", "embed": None, "mlp": "model", "layers": None}


def conv1d(x, scope, nf):
    """GPT-2's ``conv1d``: a [1, nx, nf] kernel ``w`` and a bias ``b``."""
    with js.variable_scope(scope):
        nx = x.shape[-1]
        w = js.get_variable(
            "w", [1, nx, nf], initializer=js.initializers.random_normal(stddev=0.02)
        )
        b = js.get_variable("b", [nf], initializer=js.initializers.constant(0))
        return x @ w[0] + b  # fmt: skip


def norm(x, scope):
    with js.variable_scope(scope):
        g = js.get_variable("g", [x.shape[-1]], initializer=js.initializers.ones())
        b = js.get_variable("b", [x.shape[-1]], initializer=js.initializers.zeros())
        mu = x.mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(
            ((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5
        ) * g + b


def gpt2_model(tokens, n_layer=2, n_vocab=32, n_ctx=8):
    """A TF1 model as ported, with GPT-2's variable names and no axes."""
    with js.variable_scope("model"):
        normal = js.initializers.random_normal
        wte = js.get_variable("wte", [n_vocab, D], initializer=normal(stddev=0.02))
        wpe = js.get_variable("wpe", [n_ctx, D], initializer=normal(stddev=0.01))
        h = wte[tokens] + wpe[: tokens.shape[1]]
        for layer in range(n_layer):
            with js.variable_scope(f"h{layer}"):
                a = conv1d(norm(h, "ln_1"), "attn/c_attn", 3 * D)
                q, k, v = jnp.split(a, 3, axis=-1)
                mask = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))
                att = jnp.where(mask, q @ k.swapaxes(-1, -2) / np.sqrt(D), -1e9)
                h = h + conv1d(jax.nn.softmax(att) @ v, "attn/c_proj", D)
                m = jax.nn.gelu(conv1d(norm(h, "ln_2"), "mlp/c_fc", 4 * D))
                h = h + conv1d(m, "mlp/c_proj", D)
        return norm(h, "ln_f") @ wte.T


GPT2_PATHS = [
    (r"attn/c_attn/w$", (None, None, "model")),
    (r"attn/c_attn/b$", ("model",)),
    (r"attn/c_proj/w$", (None, "model", None)),
    (r"mlp/c_fc/w$", (None, None, "model")),
    (r"mlp/c_fc/b$", ("model",)),
    (r"mlp/c_proj/w$", (None, "model", None)),
    (r"^model/wte$", ("model", None)),
]


# -------------------------------------------------------------------- steps


def regression_loss(model, params, x, y, rules):
    pred = js.apply(model, {"params": params}, x, rules=rules)
    return jnp.mean((pred - y) ** 2)


def lm_loss(model, params, tokens, targets, rules):
    logits = js.apply(model, {"params": params}, tokens, rules=rules)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


TX = optax.adam(1e-2)


def make_step(loss, model, rules):
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss, argnums=1)(model, params, x, y, rules)
        updates, opt_state = TX.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def train_single_device(loss, model, x, y):
    params = js.init(model, KEY, x)["params"]
    opt_state = TX.init(params)
    step = jax.jit(make_step(loss, model, None))
    losses = []
    for _ in range(STEPS):
        params, opt_state, value = step(params, opt_state, x, y)
        losses.append(float(value))
    return params, losses


def train_on_mesh(loss, model, x, y, rules):
    mesh = rules.mesh
    variables = js.init(model, KEY, x, rules=rules)
    params = variables["params"]
    param_sh = js.shardings(variables, rules)["params"]
    replicated = NamedSharding(mesh, P())
    opt_sh = optax.tree_utils.tree_map_params(
        TX,
        lambda _, sharding: sharding,
        jax.eval_shape(TX.init, params),
        param_sh,
        transform_non_params=lambda _: replicated,
    )
    opt_state = jax.jit(TX.init, out_shardings=opt_sh)(params)
    batch_sh = NamedSharding(mesh, P("data"))
    x, y = jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
    step = jax.jit(
        make_step(loss, model, rules),
        in_shardings=(param_sh, opt_sh, batch_sh, batch_sh),
        out_shardings=(param_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )
    losses = []
    for _ in range(STEPS):
        params, opt_state, value = step(params, opt_state, x, y)
        losses.append(float(value))
    return params, opt_state, param_sh, losses


def assert_same_training(single, sharded, param_atol=TOL["atol"]):
    params1, losses1 = single
    params8, _, param_sh, losses8 = sharded
    np.testing.assert_allclose(losses8, losses1, **TOL)
    assert losses8[-1] < losses8[0]  # it trains
    flat1, flat8, flat_sh = (
        js.flatten(params1),
        js.flatten(params8),
        js.flatten(param_sh),
    )
    assert list(flat1) == list(flat8)
    for path, value in flat8.items():
        np.testing.assert_allclose(
            value, flat1[path], err_msg=path, rtol=TOL["rtol"], atol=param_atol
        )
        assert value.sharding == flat_sh[path], path


# -------------------------------------------------------------------- tests


def regression_data():
    x = jax.random.normal(jax.random.key(1), (BATCH, D))
    y = jnp.sin(x.sum(-1, keepdims=True))
    return x, y


@pytest.mark.parametrize("shape", [(2, 4), (4, 2)])
def test_data_and_model_parallel_step_gives_the_single_device_numbers(shape):
    rules = js.ShardingRules(auto_mesh(shape), axes=LOGICAL_AXES)
    x, y = regression_data()
    single = train_single_device(regression_loss, logical_model, x, y)
    sharded = train_on_mesh(regression_loss, logical_model, x, y, rules)
    assert_same_training(single, sharded)
    _, opt_state, param_sh, _ = sharded
    adam = opt_state[0]
    for moment in (adam.mu, adam.nu):  # optax state sharded like the parameters
        assert jax.tree.map(lambda a: a.sharding, moment) == param_sh
    assert js.flatten(param_sh)["w1"].spec == P(None, None, "model")


def test_the_step_constrains_activations_by_their_logical_axes():
    mesh = auto_mesh()
    rules = js.ShardingRules(mesh, axes=LOGICAL_AXES)
    x, _ = regression_data()
    variables = js.init(logical_model, KEY, x, rules=rules)

    def hidden(x):  # the first block's activation, constrained
        w1 = variables["params"]["w1"][0]
        return js.constrain(jax.nn.gelu(x @ w1), ("batch", "mlp"))

    out = jax.jit(lambda x: js.apply(hidden, {}, x, rules=rules))(x)
    assert out.sharding == NamedSharding(mesh, P("data", "model"))
    text = (
        jax.jit(lambda v, x: js.apply(logical_model, v, x, rules=rules))
        .lower(variables, x)
        .as_text()
    )
    assert "sharding" in text  # the constraints reach the program


def test_a_tf1_model_shards_by_path_rules_alone():
    rules = js.ShardingRules(auto_mesh(), paths=GPT2_PATHS)
    tokens = jax.random.randint(jax.random.key(2), (BATCH, 8), 0, 32)
    targets = jnp.roll(tokens, -1, axis=1)
    specs = js.partition_specs(gpt2_model, KEY, tokens, rules=rules)
    assert rules.unused(specs) == []
    flat = js.flatten(specs)
    assert flat["params/model/h0/attn/c_attn/w"] == P(None, None, "model")
    assert flat["params/model/h1/mlp/c_proj/w"] == P(None, "model")
    assert flat["params/model/wte"] == P("model")
    assert flat["params/model/h0/ln_1/g"] == P()
    sharded = js.init(gpt2_model, KEY, tokens, rules=rules)
    plain = js.init(gpt2_model, KEY, tokens)
    for path, value in js.flatten(sharded).items():
        assert (
            np.asarray(value).tobytes() == np.asarray(js.flatten(plain)[path]).tobytes()
        )
        assert value.sharding.spec == flat[path]
    # GPT-2's key bias has a zero gradient in exact arithmetic (softmax ignores
    # a shift of the keys): Adam scales its reduction-order noise up by
    # 1/(sqrt(v) + eps), so those parameters agree to lr * 1e-2, not to 2e-6.
    assert_same_training(
        train_single_device(lm_loss, gpt2_model, tokens, targets),
        train_on_mesh(lm_loss, gpt2_model, tokens, targets, rules),
        param_atol=1e-4,
    )


def test_the_step_compiles_to_one_program_per_device_with_sharded_inputs():
    rules = js.ShardingRules(auto_mesh(), axes=LOGICAL_AXES)
    x, y = regression_data()
    variables = js.init(logical_model, KEY, x, rules=rules)
    param_sh = js.shardings(variables, rules)["params"]
    loss = functools.partial(regression_loss, logical_model)
    grad = jax.jit(jax.grad(loss), in_shardings=(param_sh, None, None),
                   static_argnums=(3,))  # fmt: skip
    grads = grad(variables["params"], x, y, rules)
    # gradients come back laid out like the parameters
    for path, g in js.flatten(grads).items():
        assert g.sharding.is_equivalent_to(js.flatten(param_sh)[path], g.ndim), path
