"""Wrong uses of jscope's public API that a type checker must report.

`tests/test_typecheck.py` runs pyright on this file and expects an error on
every line that ends in an ``expected error`` comment, and on no other line.
Nothing here is run: the functions are only type-checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jscope as js


def model(x: jax.Array) -> jax.Array:
    return js.layers.dense(x, 4)


def wrong_arguments(x: jax.Array, images: jax.Array) -> None:
    js.layers.dense(x, "4")  # expected error: units is an int
    js.layers.dense(x, 4, kernel_initializer="glorot")  # expected error
    js.layers.dense(x, 4, reuse="yes")  # expected error: not a reuse flag
    js.layers.conv2d(images, 8, kernel_size="3")  # expected error
    js.layers.dropout(x, noise_shape="8")  # expected error: a str as shape
    js.layers.batch_norm(x, axis=1.5)  # expected error
    js.initializers.zeros(None, "3")  # expected error: a str as shape
    js.initializers.variance_scaling(scale="2")  # expected error
    js.init(model)  # expected error: no rng
    js.summary(model, 0, x)  # expected error: an int is not a key


def wrong_return(x: jax.Array) -> str:
    return js.layers.dense(x, 4)  # expected error: an array, not a str


def wrong_apply(x: jax.Array) -> jax.Array:
    variables = js.init(model, jax.random.key(0), x)
    return js.apply(model, variables, x, mutable=True)  # expected error: a pair


def wrong_state(x: jax.Array) -> jax.Array:
    outputs, state = js.layers.lstm_cell(x, js.layers.lstm_zero_state(2, 3), 3)
    return outputs + jnp.ones(3) + state  # expected error: state is a pair
