# pyright: strict
"""A user's script that type-checks under pyright's strict mode.

Strict mode rejects every value whose type pyright cannot know, so this file
checks that the public API hands a user no ``Unknown``: `js.init` and
`js.apply` (with and without ``mutable``), `js.get_variable` under
`js.variable_scope` with reuse, initializers, `js.Variable` handles, layers and
`js.Saver`. `tests/test_typecheck.py` expects no error from pyright; it also
runs as a script (``python tests/typecheck/strict_script.py``), so its calls are
real ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp

import jscope as js
import jscope.typing as jst


def mlp(x: jax.Array, training: bool) -> jax.Array:
    """Two dense layers, batch norm and dropout; a scope reused for a second tower."""
    with js.variable_scope("mlp", initializer=js.initializers.glorot_uniform()):
        w = js.get_variable("w", (x.shape[-1], 8))
        b = js.get_variable("b", (8,), jnp.float32, js.initializers.zeros())
        h = jax.nn.relu(x @ w + b)
        h = js.layers.batch_norm(h, training=training)
        h = js.layers.dropout(h, rate=0.1, training=training)
    with js.variable_scope("head") as head:
        left = js.layers.dense(h, 2, name="out")
    with js.variable_scope(head, reuse=True):
        right = js.layers.dense(h + 1.0, 2, name="out")  # the same variables
    return left + right


def count_calls(x: jax.Array) -> jax.Array:
    """A non-trainable counter, updated through its `js.Variable` handle."""
    calls = js.Variable(0, name="calls", trainable=False)
    calls.assign(calls + 1)
    return x * 2.0


def main() -> None:
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(2), (4, 3))
    variables: jst.VariableTree = js.init(mlp, key, x, False)

    y: jax.Array = js.apply(mlp, variables, x, False)
    print(float(y.sum()))

    def loss(params: jst.VariableTree, rng: jax.Array) -> jax.Array:
        tree = {**variables, "params": params}
        out, _ = js.apply(mlp, tree, x, True, rngs={"dropout": rng}, mutable=["state"])
        return jnp.mean(out**2)

    # jax.grad's own signature holds an Unknown, which strict mode reports.
    grad_fn = cast(
        "Callable[[jst.VariableTree, jax.Array], jst.VariableTree]",
        jax.grad(loss),  # pyright: ignore[reportUnknownMemberType]
    )
    grads = grad_fn(variables["params"], jax.random.key(1))
    print(sorted(js.flatten({"params": grads})))

    counted = js.init(count_calls, key, x)
    z, updated = js.apply(count_calls, counted, x, mutable=True)
    print(z.shape, js.flatten(updated))

    with tempfile.TemporaryDirectory() as d, js.Saver(max_to_keep=1) as saver:
        path = saver.save(variables, f"{d}/model", global_step=1)
        restored = saver.restore(path, variables)
        print(sorted(js.flatten(restored)) == sorted(js.flatten(variables)))


if __name__ == "__main__":
    main()
