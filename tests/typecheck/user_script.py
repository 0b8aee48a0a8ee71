"""A user's training script over jscope's public API, checked by pyright.

`tests/test_typecheck.py` runs pyright on this file and expects no error: every
call below is one a user writes (init/apply, variable scopes with reuse,
`get_variable` with initializers and regularizers, `Variable` handles, layers,
`Saver`, a lifted `scan`), annotated with the aliases of `jscope.typing`. It also
runs as a script (`python tests/typecheck/user_script.py`), so its calls are
real ones, not just well-typed ones.
"""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import optax

import jscope as js
import jscope.typing as jst
from jscope import errors

# ------------------------------------------------------------------ a model


def tower(x: jax.Array, units: int, initializer: jst.Initializer | None = None):
    """Two dense layers under one scope; called twice with reuse below."""
    h = js.layers.dense(
        x, units, activation=jax.nn.relu, kernel_initializer=initializer
    )
    h = js.layers.layer_norm(h)
    return js.layers.dense(h, 2, name="logits")


def l2(scale: float) -> jst.Regularizer:
    return lambda w: scale * jnp.sum(jnp.square(w))


def model(x: jax.Array, training: bool) -> jax.Array:
    reuse: jst.Reuse = js.AUTO_REUSE
    with js.variable_scope("encoder", initializer=js.initializers.glorot_normal()):
        w = js.get_variable(
            "w",
            (x.shape[-1], 8),
            initializer=js.initializers.truncated_normal(stddev=0.1),
            regularizer=l2(1e-4),
        )
        b = js.get_variable("b", [8], jnp.float32, js.initializers.zeros())
        h = jax.nn.relu(x @ w + b)
        h = js.layers.batch_norm(h, training=training)
        h = js.layers.dropout(h, rate=0.1, training=training)
    with js.variable_scope("head") as head_scope:
        left = tower(h, 16, js.initializers.variance_scaling(2.0, "fan_in", "uniform"))
    with js.variable_scope(head_scope, reuse=True):
        right = tower(h + 1.0, 16)  # the same variables as `left`
    with js.variable_scope("head", reuse=reuse):
        js.get_variable("bias", (2,), initializer=js.initializers.constant(0.5))
    scope: js.VariableScope = js.get_variable_scope()
    assert scope is not None
    return left + right


# ------------------------------------------------------- a Variable handle


def counter(x: jax.Array) -> jax.Array:
    steps = js.Variable(0, name="steps", trainable=False)
    total = js.Variable(jnp.zeros(3), name="total", trainable=False)
    scaled = total * 0.5 + 1.0  # arithmetic acts on the handle's value
    doubled: jax.Array = 2 * total - total
    steps.assign(steps + 1)
    total.assign_add(x)
    js.assign_sub(total, jnp.ones(3) * 0.0)
    name: str = steps.name
    del name
    return scaled + doubled


# ------------------------------------------------------------- a lifted scan


def rnn_model(xs: jax.Array) -> jax.Array:
    cell = functools.partial(js.layers.gru_cell, units=4)
    state = js.layers.gru_zero_state(xs.shape[0], 4)
    outputs, _ = js.layers.rnn(cell, xs, state)

    def body(carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = js.layers.dense(carry + x, 4, name="step")
        return y, y

    final, _ = js.scan(body)(jnp.zeros((xs.shape[0], 4)), jnp.moveaxis(outputs, 1, 0))
    return final


# -------------------------------------------------------------- the script


def main() -> None:
    key = jax.random.key(0)
    x = jnp.ones((4, 3))
    variables: jst.VariableTree = js.init(model, key, x, False)
    print(js.summary(model, key, x, False))
    # Without `mutable`, apply returns fn's own result: an array here.
    print(js.apply(model, variables, x, False).sum())

    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(variables["params"])

    def loss_fn(params: dict, state: dict, rng: jax.Array):
        tree = {"params": params, "state": state}
        y, new = js.apply(
            model, tree, x, True, rngs={"dropout": rng}, mutable=["state"]
        )
        return jnp.mean(y**2) + js.apply(
            lambda: js.get_regularization_loss(), tree
        ), new["state"]

    grads, state = jax.grad(loss_fn, has_aux=True)(
        variables["params"], variables["state"], jax.random.key(1)
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], updates)
    variables = {"params": params, "state": state}

    y, counted = js.apply(counter, js.init(counter, key, jnp.ones(3)), jnp.ones(3),
                          mutable=True)  # fmt: skip
    print(y.shape, js.flatten(counted))

    seq = jnp.ones((2, 5, 3))
    rnn_vars = js.init(rnn_model, key, seq)
    print(js.apply(rnn_model, rnn_vars, seq).shape)

    saver = js.Saver(max_to_keep=2)
    with tempfile.TemporaryDirectory() as d:
        path = saver.save(variables, f"{d}/model", global_step=1)
        latest = js.latest_checkpoint(d)
        assert latest is not None and path is not None
        restored = saver.restore(latest, variables)
        print(sorted(js.flatten(restored)))
        print(js.list_variables(latest)[:2])

    def missing() -> jax.Array:
        with js.variable_scope("missing", reuse=True):
            return js.get_variable("w", (2,))

    try:
        js.init(missing, key)
    except errors.VariableNotFoundError as e:
        print(type(e).__name__, e.path)
    except ValueError:
        raise


if __name__ == "__main__":
    main()
