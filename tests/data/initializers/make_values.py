"""Records the values of every initializer, as a fixture of bit patterns.

``python tests/data/initializers/make_values.py`` writes ``values.npz`` beside
this file: for each case of `CASES` (an initializer factory call, a dtype, a
shape) the bits of ``init(jax.random.key(i), shape, dtype)``, and for each
variable of `model` the bits of its value from `js.init`. The committed file
was written by the release before initializers drew their values flat and
reshaped them; ``tests/test_cold_init.py`` checks today's values against it bit
for bit, so a change of any value shows there.
"""

from __future__ import annotations

import multiprocessing
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jscope as js

HERE = pathlib.Path(__file__).resolve().parent
PATH = HERE / "values.npz"

FLOATS = ("float32", "bfloat16", "float16")
SHAPES = ((), (7,), (4, 1), (2, 3, 4, 5), (1, 1, 3, 1))
HALF_SHAPES = ((), (2, 3, 4, 5))  # bfloat16 and float16
MATRICES = ((3, 4), (4, 3), (2, 3, 4, 5), (1, 1, 3, 1))
LARGE = ((70, 70), (3, 3, 16, 18))  # more than 4096 elements, float32 only

# Factory calls, evaluated with `js.initializers` as `I`.
RANDOM = (
    "I.random_normal()",
    "I.random_normal(0.5, 0.02)",
    "I.truncated_normal()",
    "I.truncated_normal(0.1, 0.3)",
    "I.random_uniform()",
    "I.random_uniform(-0.5, 2.0)",
    "I.glorot_uniform()",
    "I.glorot_normal()",
    "I.default_initializer('float32')",
    "I.variance_scaling(2.0, 'fan_in', 'truncated_normal')",
    "I.variance_scaling(2.0, 'fan_out', 'normal')",
    "I.variance_scaling(2.0, 'fan_avg', 'untruncated_normal')",
    "I.variance_scaling(0.5, 'fan_in', 'uniform')",
)
KEYLESS = ("I.zeros()", "I.ones()", "I.constant(0.25)")
LARGE_CASES = ("I.default_initializer('float32')", "I.truncated_normal(0.0, 0.02)")


def cases():
    """Yields ``(factory, dtype, shape)`` for every recorded value."""
    for factory in RANDOM + KEYLESS:
        for shape in SHAPES:
            yield factory, "float32", shape
        for dtype in FLOATS[1:]:
            for shape in HALF_SHAPES:
                yield factory, dtype, shape
    for shape in MATRICES:
        yield "I.orthogonal(2.0)", "float32", shape
    yield "I.orthogonal(2.0)", "bfloat16", (3, 4)
    yield "I.random_uniform(-3, 300)", "int32", (2, 3, 4, 5)
    yield "I.random_uniform(-3, 300)", "int32", (7,)
    yield "I.random_uniform(0, 10)", "int8", (4, 1)
    yield "I.random_uniform(0, 10)", "uint8", (2, 3, 4, 5)
    for factory in LARGE_CASES:
        for shape in LARGE:
            yield factory, "float32", shape


def name(i: int, factory: str, dtype: str, shape: tuple) -> str:
    return f"{i:04d} {factory} {dtype} {'x'.join(map(str, shape)) or 'scalar'}"


def value(i: int, factory: str, dtype: str, shape: tuple) -> jax.Array:
    """The value of case ``i``: its initializer called with ``jax.random.key(i)``."""
    init = eval(factory, {"I": js.initializers})  # noqa: S307 (the table above)
    return init(jax.random.key(i), shape, jnp.dtype(dtype))


def model():
    """A model whose variables take the default initializer, in several dtypes."""
    shapes = ((3, 3, 16, 18), (4, 4, 16, 18), (1, 1, 8, 8), (64,), (), (5, 7), (2, 9))
    for i, shape in enumerate(shapes):
        with js.variable_scope(f"layer{i}"):
            js.get_variable("w", shape)
            js.get_variable("w16", shape, dtype=jnp.bfloat16)
    js.get_variable("steps", (3,), dtype=jnp.int32)
    with js.variable_scope("other", initializer=js.initializers.random_normal()):
        js.get_variable("v", (2, 3, 4, 5))


def bits(x) -> np.ndarray:
    """The bit pattern of ``x``: floats viewed as unsigned ints of their width."""
    x = np.asarray(x)
    if x.dtype.kind == "f" or x.dtype == jnp.bfloat16:
        return x.view(f"u{x.dtype.itemsize}")
    return x


def _record_case(args: tuple) -> tuple[str, np.ndarray]:
    i, case = args
    return name(i, *case), bits(value(i, *case))


def record() -> dict[str, np.ndarray]:
    """Every case's bits, computed by 3 processes, and the model's `js.init`."""
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        out = dict(pool.map(_record_case, list(enumerate(cases())), chunksize=4))
    tree = js.flatten(js.init(model, jax.random.key(7)))
    for path, x in tree.items():
        out[f"init {path}"] = bits(x)
    return out


if __name__ == "__main__":
    values = record()
    np.savez(PATH, **values)  # pyright: ignore[reportArgumentType]
    print(f"wrote {len(values)} arrays to {PATH}")
