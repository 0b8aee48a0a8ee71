"""Cold init: flat, bucketed draws give the values of shaped ones (DESIGN §4).

Every random initializer draws its values flat and reshapes them, from one
compiled program per size bucket (`js.initializers.draw_size`). These tests pin
that no value changed:

- against values recorded by the release that drew in shape
  (``tests/data/initializers/values.npz``, written by ``make_values.py``
  beside it), for every factory, the default initializer and a `js.init`;
- against the shaped `jax.random` call each initializer stands for, written out
  here;
- eagerly, under `jax.jit`, under `jax.vmap` and under a mesh;

and that a model of many shapes compiles one draw per bucket.
"""

from __future__ import annotations

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT

import jscope as js
from jscope import initializers as inits

_spec = importlib.util.spec_from_file_location(
    "make_values", ROOT / "tests" / "data" / "initializers" / "make_values.py"
)
assert _spec is not None and _spec.loader is not None
recorded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorded)

RECORDED = dict(np.load(recorded.PATH))
CASES = list(recorded.cases())
TRUNC = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def bits(x) -> np.ndarray:
    return recorded.bits(x)


def assert_same_bits(new, old, what: str) -> None:
    new, old = bits(new), bits(old)
    assert new.shape == old.shape and new.dtype == old.dtype, what
    differ = int(np.sum(new != old))
    assert differ == 0, f"{what}: {differ} of {new.size} values differ"


# ------------------------------------------------------- the recorded values


def test_the_fixture_records_every_case():
    names = {recorded.name(i, *case) for i, case in enumerate(CASES)}
    assert names <= set(RECORDED)
    assert len(RECORDED) == len(names) + sum(k.startswith("init ") for k in RECORDED)
    factories = {case[0] for case in CASES}
    # every public factory of js.initializers is recorded
    for public in ("random_normal", "truncated_normal", "random_uniform"):
        assert any(f"I.{public}(" in f for f in factories)
    for public in ("variance_scaling", "glorot_uniform", "glorot_normal"):
        assert any(f"I.{public}(" in f for f in factories)
    for public in ("orthogonal", "zeros", "ones", "constant", "default_initializer"):
        assert any(f"I.{public}(" in f for f in factories)


@pytest.mark.parametrize(
    "factory", sorted({case[0] for case in CASES}), ids=lambda f: f[2:]
)
def test_values_equal_the_recorded_release(factory):
    for i, case in enumerate(CASES):
        if case[0] == factory:
            name = recorded.name(i, *case)
            assert_same_bits(recorded.value(i, *case), RECORDED[name], name)


def test_init_of_a_model_equals_the_recorded_release():
    tree = js.flatten(js.init(recorded.model, jax.random.key(7)))
    want = {k[len("init ") :]: v for k, v in RECORDED.items() if k.startswith("init ")}
    assert list(tree) == list(want)  # same paths, same creation order
    for path, value in tree.items():
        assert_same_bits(value, want[path], path)


# ------------------------------------------- the shaped jax.random draws


SHAPES = [(), (4, 1, 3), (1, 2, 3, 5)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def shaped(fn):
    """``fn(key, shape, dtype)`` jitted, as the initializers computed it before."""
    return jax.jit(fn, static_argnums=(1, 2))


def variance(shape, scale, mode):
    fan_in, fan_out = inits.compute_fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(mode, (fan_in + fan_out) / 2)
    return scale / max(1.0, fan)


def old_variance_scaling(scale, mode, distribution):
    def fn(key, shape, dtype):
        var = variance(shape, scale, mode)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        if distribution == "untruncated_normal":
            x = jax.random.normal(key, shape, dtype)
            return x * np.asarray(math.sqrt(var), dtype)
        x = jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
        return x * np.asarray(math.sqrt(var) / TRUNC, dtype)

    return fn


SHAPED = {
    "random_normal()": (
        inits.random_normal(),
        lambda k, s, d: jax.random.normal(k, s, d),
    ),
    "random_normal(0.5, 0.02)": (
        inits.random_normal(0.5, 0.02),
        lambda k, s, d: (
            jax.random.normal(k, s, d) * np.asarray(0.02, d) + np.asarray(0.5, d)
        ),
    ),
    "truncated_normal(0.1, 0.3)": (
        inits.truncated_normal(0.1, 0.3),
        lambda k, s, d: (
            jax.random.truncated_normal(k, -2.0, 2.0, s, d) * np.asarray(0.3, d)
            + np.asarray(0.1, d)
        ),
    ),
    "random_uniform(-0.5, 2.0)": (
        inits.random_uniform(-0.5, 2.0),
        lambda k, s, d: jax.random.uniform(k, s, d, -0.5, 2.0),
    ),
    "default_initializer": (
        inits.default_initializer(jnp.float32),
        old_variance_scaling(1.0, "fan_avg", "uniform"),
    ),
    **{
        f"variance_scaling(2.0, {mode}, {dist})": (
            inits.variance_scaling(2.0, mode, dist),
            old_variance_scaling(2.0, mode, dist),
        )
        for mode, dist in [
            ("fan_in", "truncated_normal"),
            ("fan_out", "untruncated_normal"),
            ("fan_avg", "uniform"),
        ]
    },
}


@pytest.mark.parametrize("name", list(SHAPED))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_flat_draw_equals_the_shaped_draw(name, dtype):
    init, old = SHAPED[name]
    old = shaped(old)
    for i, shape in enumerate(SHAPES):
        key = jax.random.key(i)
        assert_same_bits(init(key, shape, dtype), old(key, shape, dtype), str(shape))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8])
def test_integer_uniform_equals_randint(dtype):
    for i, shape in enumerate(SHAPES):
        key = jax.random.key(i)
        new = inits.random_uniform(-3, 200)(key, shape, dtype)
        old = jax.random.randint(key, shape, -3, 200, dtype)
        assert_same_bits(new, old, str(shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_orthogonal_equals_jax_orthogonal(dtype):
    old = jax.nn.initializers.orthogonal(scale=2.0)
    for i, shape in enumerate([(3, 4), (4, 1, 3)]):
        key = jax.random.key(i)
        new = inits.orthogonal(2.0)(key, shape, dtype)
        assert_same_bits(new, old(key, shape, jnp.float32).astype(dtype), str(shape))


@pytest.mark.parametrize("size", [4095, 4096, 4097, 8193])
def test_values_at_the_bucket_edges_equal_the_shaped_draw(size):
    key = jax.random.key(size)
    shape = (size // 3, 3) if size % 3 == 0 else (1, size)
    init = inits.glorot_uniform()
    old = shaped(old_variance_scaling(1.0, "fan_avg", "uniform"))
    assert_same_bits(init(key, shape), old(key, shape, jnp.float32), str(shape))


def test_draw_size_buckets():
    assert inits.draw_size(1) == inits.draw_size(4096) == 4096
    assert inits.draw_size(4097) == inits.draw_size(8192) == 8192
    assert inits.draw_size(3 << 20) == 4 << 20
    assert inits.draw_size((4 << 20) + 1) == (4 << 20) + 1  # large: drawn exact


# ------------------------------------------------- eager, jit, vmap, mesh


TRACED = [
    inits.glorot_uniform(),
    inits.variance_scaling(2.0, "fan_in", "truncated_normal"),
    inits.random_normal(0.5, 0.02),
    inits.random_uniform(-1, 7),
    inits.orthogonal(),
]


@pytest.mark.parametrize("init", TRACED, ids=lambda f: f.__qualname__.split(".")[0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_jitted_and_vmapped_values_equal_the_eager_ones(init, dtype):
    shape = (3, 3, 4, 6)
    keys = jax.random.split(jax.random.key(1), 3)
    eager = [init(k, shape, dtype) for k in keys]
    jitted = jax.jit(lambda k: init(k, shape, dtype))(keys[0])
    assert_same_bits(jitted, eager[0], "jit")
    vmapped = jax.vmap(lambda k: init(k, shape, dtype))(keys)
    for i in range(3):
        assert_same_bits(vmapped[i], eager[i], f"vmap {i}")


def _random_shapes(jaxpr) -> list[tuple]:
    """Output shapes of the random-bits primitives in a jaxpr, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("random_bits", "threefry2x32"):
            found.extend(tuple(v.aval.shape) for v in eqn.outvars)
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)  # a ClosedJaxpr's jaxpr
            if hasattr(sub, "eqns"):
                found.extend(_random_shapes(sub))
    return found


def test_a_trace_draws_flat_and_a_mesh_trace_draws_in_shape():
    shape = (4, 4, 16, 18)
    init = inits.glorot_uniform()
    flat = jax.make_jaxpr(lambda k: init(k, shape))(jax.random.key(0))
    assert _random_shapes(flat.jaxpr)
    assert all(len(s) == 1 for s in _random_shapes(flat.jaxpr))
    mesh = jax.sharding.AbstractMesh((1,), ("x",))
    with jax.sharding.use_abstract_mesh(mesh):
        sharded = jax.make_jaxpr(lambda k: init(k, shape))(jax.random.key(0))
    assert any(s == shape for s in _random_shapes(sharded.jaxpr))


def test_init_under_rules_equals_the_eager_init():
    def model():
        js.get_variable("w", (4, 4, 16, 18))
        js.get_variable("t", (3, 5), initializer=inits.truncated_normal(0.0, 0.1))

    mesh = jax.make_mesh((1,), ("model",))
    rules = js.ShardingRules(mesh, [])
    eager = js.flatten(js.init(model, jax.random.key(3)))
    sharded = js.flatten(js.init(model, jax.random.key(3), rules=rules))
    for path in eager:
        assert_same_bits(sharded[path], eager[path], path)


# ------------------------------------------------------------- compiles


def test_many_shapes_compile_one_draw_per_bucket():
    widths = range(5, 25)  # 20 kernels of distinct shapes, all of <= 4096 values

    def model():
        for w in widths:
            with js.variable_scope(f"conv{w}"):
                js.get_variable("kernel", (3, 3, 4, w))

    jax.clear_caches()
    js.init(model, jax.random.key(0))
    # One flat draw (the 4096 bucket) for the 20 shapes; jax's cache of it
    # holds one entry.
    assert inits._flat._cache_size() == 1  # pyright: ignore[reportAttributeAccessIssue]


def test_values_are_uncommitted_arrays_on_the_default_device():
    value = inits.glorot_uniform()(jax.random.key(0), (3, 5))
    assert isinstance(value, jax.Array) and not value.committed
    assert value.devices() == {jax.devices()[0]}
    key = jax.device_put(jax.random.key(0), jax.devices()[0])
    committed = inits.glorot_uniform()(key, (3, 5))
    assert committed.committed
    assert_same_bits(committed, value, "committed key")
