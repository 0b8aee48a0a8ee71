"""Functional guarantees of `js.init` and `js.apply`.

Trees given to a run are never mutated and trees returned are new; runs compose
with `jax.jit`, `jax.grad`, `jax.vmap` and `jax.eval_shape`; runs nest; no tracer
outlives a run; runs in two threads are independent; initial values do not depend
on the process; plain JAX transforms opened inside a run cannot create variables.
"""

import copy
import gc
import hashlib
import os
import pickle
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_no_shared_dicts, assert_trees_equal, dict_ids

import jscope as js

# ------------------------------------------------------------------------ models

IN, HIDDEN, OUT = 3, 8, 2


def dense(x, units, name):
    with js.variable_scope(name):
        w = js.get_variable(
            "w",
            (x.shape[-1], units),
            initializer=js.initializers.random_normal(stddev=0.5),
        )
        b = js.get_variable(
            "b", (units,), initializer=js.initializers.random_normal(stddev=0.1)
        )
    return x @ w + b


def mlp(x):
    with js.variable_scope("mlp"):
        h = jnp.tanh(dense(x, HIDDEN, "hidden"))
        return dense(h, OUT, "out")


def mlp_with_counter(x):
    with js.variable_scope("stats"):
        counter = js.get_variable("counter", (), jnp.int32)
        js.assign(counter, counter + 1)
    return mlp(x)


def plain_mlp(params, x):
    """The same model in plain jax.numpy, reading a params dict."""
    p = params["mlp"]
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    return h @ p["out"]["w"] + p["out"]["b"]


MLP_PATHS = ["mlp/hidden/w", "mlp/hidden/b", "mlp/out/w", "mlp/out/b"]


def _key(seed=0):
    return jax.random.key(seed)


def _x(batch=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, IN))


# ----------------------------------------------------------------------- helpers


# -------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    ("fn", "mutable"),
    [
        (mlp, False),
        (mlp, None),
        (mlp, True),
        (mlp_with_counter, ["state"]),
        (mlp_with_counter, "state"),
        (mlp_with_counter, True),
    ],
)
def test_apply_never_mutates_its_input(fn, mutable):
    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)
    before = copy.deepcopy(variables)
    ids_before = dict_ids(variables)

    result = js.apply(fn, variables, x, mutable=mutable)

    assert_trees_equal(variables, before)
    assert dict_ids(variables) == ids_before
    out = result[0] if mutable else result
    np.testing.assert_allclose(
        out, plain_mlp(before["params"], x), rtol=1e-6, atol=1e-6
    )
    if mutable:
        updated = result[1]
        assert_no_shared_dicts(updated, variables)
        count = 1 if fn is mlp_with_counter else 0
        assert int(updated["state"]["stats"]["counter"]) == count
        assert int(variables["state"]["stats"]["counter"]) == 0
        assert_trees_equal(updated["params"], before["params"])


@pytest.mark.parametrize("mutable", [["state"], True])
def test_mutable_apply_without_assignment_returns_a_new_tree(mutable):
    x = _x()
    variables = js.init(mlp, _key(), x)
    before = copy.deepcopy(variables)
    _, updated = js.apply(mlp, variables, x, mutable=mutable)
    assert updated is not variables
    assert_trees_equal(updated, before)
    assert_no_shared_dicts(updated, variables)
    # Editing the returned tree leaves the input alone.
    updated["params"]["mlp"]["out"]["b"] = jnp.zeros(OUT)
    del updated["params"]["mlp"]["hidden"]
    assert_trees_equal(variables, before)


def test_apply_that_raises_leaves_its_input_untouched():
    def fn(x):
        out = mlp_with_counter(x)
        raise RuntimeError("boom after an assignment")
        return out

    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)
    before = copy.deepcopy(variables)
    ids_before = dict_ids(variables)
    with pytest.raises(RuntimeError, match="boom"):
        js.apply(fn, variables, x, mutable=True)
    assert_trees_equal(variables, before)
    assert dict_ids(variables) == ids_before


def test_init_returns_fresh_trees():
    x = _x()
    first = js.init(mlp_with_counter, _key(), x)
    kept = copy.deepcopy(first)
    second = js.init(mlp_with_counter, _key(), x)
    assert_trees_equal(first, second)
    assert_no_shared_dicts(first, second)
    # The caller owns the tree: editing it changes nothing jscope keeps.
    first["params"]["mlp"]["out"]["w"] = jnp.zeros((HIDDEN, OUT))
    first["state"].clear()
    assert_trees_equal(js.init(mlp_with_counter, _key(), x), kept)


def test_init_with_output_and_transform_return_fresh_trees():
    x = _x()
    model = js.transform(mlp)
    out, a = js.init_with_output(mlp, _key(), x)
    b = model.init(_key(), x)
    assert_trees_equal(a, b)
    assert_no_shared_dicts(a, b)
    np.testing.assert_allclose(out, plain_mlp(a["params"], x), rtol=1e-6)
    np.testing.assert_allclose(model.apply(b, x), out, rtol=1e-6)


# -------------------------------------------------------------------- jax.jit


def test_init_under_jit_equals_eager_init():
    x = _x()
    eager = js.init(mlp_with_counter, _key(), x)
    jitted = jax.jit(lambda k, x: js.init(mlp_with_counter, k, x))(_key(), x)
    assert sorted(js.flatten(jitted)) == sorted(js.flatten(eager))
    for path, value in js.flatten(eager).items():
        got = js.flatten(jitted)[path]
        assert got.dtype == value.dtype, path
        np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7, err_msg=path)


def test_apply_under_jit_equals_plain_jax():
    x = _x()
    variables = js.init(mlp, _key(), x)
    out = jax.jit(lambda v, x: js.apply(mlp, v, x))(variables, x)
    np.testing.assert_allclose(
        out, plain_mlp(variables["params"], x), rtol=1e-6, atol=1e-6
    )


def test_transform_under_jit():
    x = _x()
    model = js.transform(mlp)
    variables = jax.jit(model.init)(_key(), x)
    out = jax.jit(model.apply)(variables, x)
    np.testing.assert_allclose(
        out, plain_mlp(variables["params"], x), rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------- jax.grad


def _targets(x):
    return jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=-1)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_grad_through_apply_equals_plain_jax_grad(jit):
    x = _x(8)
    y = _targets(x)
    variables = js.init(mlp, _key(), x)

    def loss(params):
        return jnp.mean((js.apply(mlp, {"params": params}, x) - y) ** 2)

    def plain_loss(params):
        return jnp.mean((plain_mlp(params, x) - y) ** 2)

    grad = jax.grad(loss)
    if jit:
        grad = jax.jit(grad)
    got = grad(variables["params"])
    want = jax.grad(plain_loss)(variables["params"])
    assert sorted(js.flatten(got)) == sorted(MLP_PATHS)
    for path, value in js.flatten(want).items():
        assert float(jnp.abs(value).max()) > 0, path
        np.testing.assert_allclose(
            js.flatten(got)[path], value, rtol=1e-5, atol=1e-6, err_msg=path
        )


def test_grad_with_respect_to_the_input():
    x = _x(1)[0]
    variables = js.init(mlp, _key(), x)
    got = jax.grad(lambda x: js.apply(mlp, variables, x).sum())(x)
    want = jax.grad(lambda x: plain_mlp(variables["params"], x).sum())(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- jax.vmap


def test_vmapped_apply_equals_a_loop():
    x = _x(5)
    variables = js.init(mlp, _key(), x[0])
    batched = jax.vmap(lambda xi: js.apply(mlp, variables, xi))(x)
    looped = jnp.stack([js.apply(mlp, variables, xi) for xi in x])
    assert batched.shape == (5, OUT)
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)


def test_vmapped_init_gives_one_init_per_key():
    x = _x()
    keys = jax.random.split(_key(), 3)
    stacked = jax.vmap(lambda k: js.init(mlp_with_counter, k, x))(keys)
    flat = js.flatten(stacked)
    singles = [js.flatten(js.init(mlp_with_counter, k, x)) for k in keys]
    assert sorted(flat) == sorted(singles[0])
    for path, value in flat.items():
        assert value.shape[0] == 3, path
        for i, single in enumerate(singles):
            np.testing.assert_allclose(
                value[i], single[path], rtol=1e-6, atol=1e-7, err_msg=path
            )
    for path in MLP_PATHS:
        value = flat[f"params/{path}"]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not np.allclose(value[i], value[j]), (path, i, j)


def test_vmapped_apply_over_stacked_variables_equals_a_loop():
    x = _x()
    keys = jax.random.split(_key(), 3)
    stacked = jax.vmap(lambda k: js.init(mlp, k, x))(keys)
    outs = jax.vmap(lambda v: js.apply(mlp, v, x))(stacked)
    for i, k in enumerate(keys):
        single = js.init(mlp, k, x)
        np.testing.assert_allclose(
            outs[i], plain_mlp(single["params"], x), rtol=1e-5, atol=1e-6
        )


def test_jit_of_vmap_around_init_and_apply():
    x = _x()
    keys = jax.random.split(_key(), 2)
    stacked = jax.jit(jax.vmap(lambda k: js.init(mlp, k, x)))(keys)
    outs = jax.jit(jax.vmap(lambda v: js.apply(mlp, v, x)))(stacked)
    want = jax.vmap(lambda p: plain_mlp(p, x))(stacked["params"])
    np.testing.assert_allclose(outs, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- jax.eval_shape


def test_eval_shape_init_gives_shapes_and_dtypes():
    x = _x()
    shapes = jax.eval_shape(lambda k: js.init(mlp_with_counter, k, x), _key())
    real = js.init(mlp_with_counter, _key(), x)
    assert sorted(js.flatten(shapes)) == sorted(js.flatten(real))
    for path, leaf in js.flatten(shapes).items():
        assert isinstance(leaf, jax.ShapeDtypeStruct), path
        assert leaf.shape == js.flatten(real)[path].shape, path
        assert leaf.dtype == js.flatten(real)[path].dtype, path
    p = shapes["params"]["mlp"]
    assert p["hidden"]["w"].shape == (IN, HIDDEN)
    assert p["hidden"]["b"].shape == (HIDDEN,)
    assert p["out"]["w"].shape == (HIDDEN, OUT)
    assert p["out"]["b"].shape == (OUT,)
    assert shapes["state"]["stats"]["counter"].shape == ()
    assert shapes["state"]["stats"]["counter"].dtype == jnp.int32


def test_eval_shape_apply_on_shapes():
    x = _x(6)
    shapes = jax.eval_shape(lambda k: js.init(mlp, k, x), _key())
    out = jax.eval_shape(lambda v, x: js.apply(mlp, v, x), shapes, x)
    assert out.shape == (6, OUT)
    assert out.dtype == jnp.float32


def test_init_is_staged_not_run_under_tracing():
    jaxpr = str(jax.make_jaxpr(lambda k: js.init(mlp, k, _x()))(_key()))
    # The initializers' random ops are in the program, so they are computed by
    # whoever runs it (eval_shape: nobody), not when the program is built.
    assert "random_bits" in jaxpr
    assert "random_fold_in" in jaxpr


def _live():
    gc.collect()
    arrays = jax.live_arrays()
    return len(arrays), sum(a.nbytes for a in arrays)


def test_eval_shape_of_a_huge_model_allocates_nothing():
    n = 8192

    def huge(x):
        with js.variable_scope("huge"):
            w = js.get_variable(
                "w", (n, n), initializer=js.initializers.random_normal(stddev=0.02)
            )
        return x @ w

    key = _key()
    x = jax.ShapeDtypeStruct((2, n), jnp.float32)
    before = _live()
    shapes = jax.eval_shape(lambda k, x: js.init(huge, k, x), key, x)
    after = _live()
    assert shapes == {
        "params": {"huge": {"w": jax.ShapeDtypeStruct((n, n), jnp.float32)}}
    }
    assert after == before  # not one 256 MiB buffer, not one byte


# ---------------------------------------------------------------------- nesting


def inner_model(x):
    with js.variable_scope(None, default_name="dense"):
        w = js.get_variable("w", (x.shape[-1], 2))
    scope_inside = js.get_variable_scope().name
    handle = js.Variable(jnp.ones(2), name="bias")
    return x @ w + handle.value, scope_inside, handle.name


def test_apply_inside_init_is_independent():
    x = _x()
    inner_vars = js.init(inner_model, _key(5), x)
    want, _, _ = js.apply(inner_model, inner_vars, x)
    seen = {}

    def outer(x):
        with js.variable_scope("outer"):
            js.get_variable("w", (IN, 2))
            with js.name_scope("ns"):
                out, seen["scope"], seen["handle"] = js.apply(
                    inner_model, inner_vars, x
                )
            # The outer run resumes in its own scope, with its own counts.
            seen["resumed"] = js.get_variable_scope().name
            with js.variable_scope(None, default_name="dense"):
                js.get_variable("v", (2,))
        return out

    out, variables = js.init_with_output(outer, _key(), x)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert seen == {"scope": "", "handle": "bias", "resumed": "outer"}
    assert list(js.flatten(variables)) == ["params/outer/w", "params/outer/dense/v"]


def test_init_inside_init_is_independent():
    x = _x()
    alone = js.init(inner_model, _key(5), x)
    seen = {}

    def outer(x):
        with js.variable_scope("dense"):
            w = js.get_variable("w", (IN, 2))
            seen["tree"] = js.init(inner_model, _key(5), x)
            # The same paths as the inner run's are free in this one.
            js.get_variable("bias", (2,))
        with js.variable_scope(None, default_name="dense"):
            js.get_variable("w", (2,))
        return w

    # Eagerly (js.init may run outer shape-only, and seen would keep tracers).
    variables = js.init_with_output(outer, _key(), x)[1]
    assert_trees_equal(seen["tree"], alone)
    assert list(js.flatten(seen["tree"])) == ["params/dense/w", "params/bias"]
    assert list(js.flatten(variables)) == [
        "params/dense/w",
        "params/dense/bias",
        "params/dense_1/w",
    ]
    assert not np.array_equal(
        variables["params"]["dense"]["w"], alone["params"]["dense"]["w"]
    )


def test_apply_inside_apply_is_independent():
    x = _x()
    inner_vars = js.init(mlp, _key(3), x)

    def outer(x):
        with js.variable_scope("head"):
            h = js.apply(mlp, inner_vars, x)
            scale = js.get_variable("scale", (), initializer=js.initializers.ones())
        return h * scale

    variables = js.init(outer, _key(), x)
    assert list(js.flatten(variables)) == ["params/head/scale"]
    out = js.apply(outer, {"params": {"head": {"scale": jnp.array(3.0)}}}, x)
    np.testing.assert_allclose(
        out, 3.0 * plain_mlp(inner_vars["params"], x), rtol=1e-6, atol=1e-6
    )


# ---------------------------------------------------------------- tracer leaks


def test_no_tracer_leaks_under_jit():
    x = _x()
    y = _targets(x)
    with jax.checking_leaks():
        variables = jax.jit(lambda k, x: js.init(mlp_with_counter, k, x))(_key(), x)
        out = jax.jit(lambda v, x: js.apply(mlp, v, x))(variables, x)
        out2, updated = jax.jit(
            lambda v, x: js.apply(mlp_with_counter, v, x, mutable=["state"])
        )(variables, x)
        grads = jax.jit(
            jax.grad(lambda p: jnp.sum((js.apply(mlp, {"params": p}, x) - y) ** 2))
        )(variables["params"])
    np.testing.assert_allclose(out, out2, rtol=1e-6)
    assert int(updated["state"]["stats"]["counter"]) == 1
    assert sorted(js.flatten(grads)) == sorted(MLP_PATHS)


def _with_handle(x):
    v = js.Variable(lambda k: jax.random.normal(k, (IN,)), name="v")
    return v, x * v.value


@pytest.mark.parametrize("how", ["init", "apply", "jit_init", "jit_apply"])
def test_variable_handle_dies_with_its_run(how):
    x = jnp.ones(IN)
    variables = js.init(_with_handle, _key(), x)
    kept = []

    def fn(x):
        handle, out = _with_handle(x)
        kept.append(handle)
        return out

    if how == "init":
        js.init(fn, _key(), x)
    elif how == "apply":
        js.apply(fn, variables, x)
    elif how == "jit_init":
        jax.jit(lambda k, x: js.init(fn, k, x))(_key(), x)
    else:
        jax.jit(lambda v, x: js.apply(fn, v, x))(variables, x)

    (handle,) = kept
    assert handle.name == "v"
    with pytest.raises(js.errors.NotInRunError, match=r"Variable v .*run ended"):
        _ = handle.value
    with pytest.raises(js.errors.NotInRunError, match=r"Variable v "):
        _ = handle + 1.0
    with pytest.raises(js.errors.NotInRunError, match=r"Variable v "):
        _ = handle.shape


def test_variable_handle_returned_from_init_with_output():
    handle, variables = js.init_with_output(
        lambda: _with_handle(jnp.ones(IN))[0], _key()
    )
    assert list(js.flatten(variables)) == ["params/v"]
    with pytest.raises(js.errors.NotInRunError, match=r"Variable v .*run ended"):
        _ = handle.value
    with pytest.raises(js.errors.NotInRunError, match=r"Variable v "):
        js.apply(lambda: js.assign(handle, jnp.zeros(IN)), variables)


# ---------------------------------------------------------------------- threads


def _threaded_model(name, shape, barrier):
    def fn():
        with js.variable_scope(name):
            first = js.get_variable("w", shape)
            barrier.wait()  # both runs are now in progress
            js.get_variable("b", shape[-1:])
            barrier.wait()
            scope = js.get_variable_scope().name
        js.Variable(jnp.zeros(()), name="step")
        return first, scope

    return fn


def test_two_threads_init_at_once():
    barrier = threading.Barrier(2, timeout=30)
    fn_a = _threaded_model("a", (2, 3), barrier)
    fn_b = _threaded_model("b", (4, 5), barrier)
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(js.init_with_output, f, _key()) for f in (fn_a, fn_b)]
        (out_a, tree_a), (out_b, tree_b) = (f.result(timeout=60) for f in futs)

    assert out_a[1] == "a" and out_b[1] == "b"
    assert list(js.flatten(tree_a)) == ["params/a/w", "params/a/b", "params/step"]
    assert list(js.flatten(tree_b)) == ["params/b/w", "params/b/b", "params/step"]
    np.testing.assert_array_equal(out_a[0], tree_a["params"]["a"]["w"])
    np.testing.assert_array_equal(out_b[0], tree_b["params"]["b"]["w"])

    # Each equals the same function run alone (a one-party barrier never waits).
    alone = threading.Barrier(1)
    assert_trees_equal(tree_a, js.init(_threaded_model("a", (2, 3), alone), _key()))
    assert_trees_equal(tree_b, js.init(_threaded_model("b", (4, 5), alone), _key()))


def test_two_threads_apply_at_once():
    barrier = threading.Barrier(2, timeout=30)
    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)

    def fn(x, scale):
        out = mlp_with_counter(x)
        barrier.wait()
        with js.variable_scope("stats", reuse=True):
            js.assign("counter", js.get_variable("counter", (), jnp.int32) * scale)
        return out

    with ThreadPoolExecutor(2) as pool:
        futs = [
            pool.submit(js.apply, fn, variables, x * s, s, mutable=True) for s in (2, 3)
        ]
        results = [f.result(timeout=60) for f in futs]
    for (out, updated), s in zip(results, (2, 3), strict=True):
        np.testing.assert_allclose(
            out, plain_mlp(variables["params"], x * s), rtol=1e-6, atol=1e-6
        )
        assert int(updated["state"]["stats"]["counter"]) == s
    assert int(variables["state"]["stats"]["counter"]) == 0


# ------------------------------------------------- stable across processes

_DIGEST_SRC = """
import hashlib
import jax, jax.numpy as jnp, numpy as np
import jscope as js

def model(x):
    with js.variable_scope("enc"):
        w = js.get_variable("w", (3, 4))
        b = js.get_variable("b", (4,), initializer=js.initializers.random_normal())
    with js.variable_scope("dec"):
        v = js.Variable(lambda k: jax.random.uniform(k, (4, 2)), name="v")
    return jnp.tanh(x @ w + b) @ v.value

def digest():
    tree = js.init(model, jax.random.key(7), jnp.ones((1, 3)))
    h = hashlib.sha256()
    for path, value in js.flatten(tree).items():
        h.update(path.encode())
        h.update(np.asarray(value).tobytes())
    return h.hexdigest()
"""


def test_initial_values_do_not_depend_on_pythonhashseed():
    code = _DIGEST_SRC + "\nprint(digest(), hash('enc/w'))\n"
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        results.append(proc.stdout.split())
    (digest_1, salted_1), (digest_2, salted_2) = results
    assert salted_1 != salted_2  # the two processes really salt str hashes apart
    assert digest_1 == digest_2
    namespace = {}
    exec(compile(_DIGEST_SRC, "<digest>", "exec"), namespace)
    assert namespace["digest"]() == digest_1
    assert len(digest_1) == len(hashlib.sha256().hexdigest())


# ------------------------------------------- plain JAX transforms inside a run


def _in_vmap(body, x):
    return jax.vmap(body)(x)


def _in_scan(body, x):
    return jax.lax.scan(lambda c, xi: (c, body(xi)), None, x)[1]


def _in_checkpoint(body, x):
    return jax.checkpoint(body)(x)


def _in_jit(body, x):
    return jax.jit(body)(x)


TRANSFORMS = [
    pytest.param(_in_vmap, r"js\.vmap", id="vmap"),
    pytest.param(_in_scan, r"js\.scan", id="scan"),
    pytest.param(_in_checkpoint, r"js\.remat", id="checkpoint"),
    pytest.param(_in_jit, r"jax\.jit", id="jit"),
]


@pytest.mark.parametrize("reuse", [None, js.AUTO_REUSE], ids=["reuse_none", "auto"])
@pytest.mark.parametrize(("transform", "hint"), TRANSFORMS)
def test_get_variable_creating_inside_plain_transform_is_an_error(
    transform, hint, reuse
):
    def fn(x):
        with js.variable_scope("mlp", reuse=reuse):
            return transform(lambda xi: dense(xi, HIDDEN, "hidden"), x)

    with pytest.raises(js.errors.JaxTransformError, match=r"mlp/hidden/w\b") as info:
        js.init(fn, _key(), _x())
    assert isinstance(info.value, ValueError)
    assert info.value.path == "mlp/hidden/w"
    assert hint.replace("\\", "") in str(info.value)


@pytest.mark.parametrize(("transform", "hint"), TRANSFORMS)
def test_variable_creating_inside_plain_transform_is_an_error(transform, hint):
    def fn(x):
        with js.variable_scope("blk"):
            return transform(
                lambda xi: xi * js.Variable(jnp.ones(IN), name="g").value, x
            )

    with pytest.raises(js.errors.JaxTransformError, match=r"blk/g\b") as info:
        js.init(fn, _key(), _x())
    assert isinstance(info.value, ValueError)
    assert hint.replace("\\", "") in str(info.value)


@pytest.mark.parametrize(("transform", "hint"), TRANSFORMS)
def test_plain_transform_inside_a_run_fails_under_outer_jit_too(transform, hint):
    def fn(x):
        with js.variable_scope("mlp"):
            return transform(lambda xi: dense(xi, HIDDEN, "hidden"), x)

    with pytest.raises(js.errors.JaxTransformError, match=r"mlp/hidden/w\b"):
        jax.jit(lambda k, x: js.init(fn, k, x))(_key(), _x())


def _reading_fn(transform):
    def layer(xi):
        with js.variable_scope("mlp", reuse=True), js.variable_scope("hidden"):
            w = js.get_variable("w", (IN, HIDDEN))
            b = js.get_variable("b", (HIDDEN,))
        return jnp.tanh(xi @ w + b)

    def fn(x):
        with js.variable_scope("mlp"), js.variable_scope("hidden"):
            js.get_variable("w", (IN, HIDDEN))
            js.get_variable("b", (HIDDEN,))
        return transform(layer, x)

    return fn


def test_reading_existing_variables_inside_plain_vmap_is_allowed():
    fn = _reading_fn(_in_vmap)
    x = _x(5)
    out, variables = js.init_with_output(fn, _key(), x)
    p = variables["params"]["mlp"]["hidden"]
    want = jnp.tanh(x @ p["w"] + p["b"])
    assert list(js.flatten(variables)) == ["params/mlp/hidden/w", "params/mlp/hidden/b"]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    # At apply the values read inside the transform are this run's, not those
    # of an earlier trace of the same layer code.
    new = {"params": {"mlp": {"hidden": {"w": 2 * p["w"], "b": p["b"] - 1}}}}
    got = js.apply(fn, new, x)
    np.testing.assert_allclose(
        got, jnp.tanh(x @ (2 * p["w"]) + p["b"] - 1), rtol=1e-5, atol=1e-6
    )
    got_jit = jax.jit(lambda v, x: js.apply(fn, v, x))(new, x)
    np.testing.assert_allclose(got_jit, got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(_in_scan, id="scan"),
        pytest.param(_in_checkpoint, id="checkpoint"),
        pytest.param(_in_jit, id="jit"),
    ],
)
def test_reading_inside_staged_plain_transform_is_an_error(transform):
    # Staged transforms cache their traced function across runs: a value read by
    # closure would be baked in and silently reused with other variables.
    fn = _reading_fn(transform)
    x = _x(5)
    with pytest.raises(js.errors.JaxTransformError, match=r"mlp/hidden/w\b") as info:
        js.init(fn, _key(), x)
    assert "argument" in str(info.value)
    variables = js.init(_reading_fn(lambda f, x: f(x)), _key(), x)
    with pytest.raises(js.errors.JaxTransformError, match=r"mlp/hidden/w\b"):
        js.apply(fn, variables, x)
    with pytest.raises(js.errors.JaxTransformError, match=r"mlp/hidden/w\b"):
        jax.jit(lambda v, x: js.apply(fn, v, x))(variables, x)


@pytest.mark.parametrize(("transform", "hint"), TRANSFORMS)
def test_assignment_inside_plain_transform_is_an_error(transform, hint):
    # The new value would be a tracer of the inner transform and leak out.
    def fn(x):
        with js.variable_scope("acc"):
            c = js.get_variable("total", (), initializer=js.initializers.zeros())

        def body(xi):
            return js.assign_add(c, xi.sum())

        transform(body, x)
        return x.sum()

    x = _x()
    with pytest.raises(js.errors.JaxTransformError, match=r"acc/total\b") as info:
        js.init(fn, _key(), x)
    assert info.value.path == "acc/total"
    variables = {"params": {"acc": {"total": jnp.zeros(())}}}
    with pytest.raises(js.errors.JaxTransformError, match=r"acc/total\b"):
        js.apply(fn, variables, x, mutable=True)
    assert isinstance(variables["params"]["acc"]["total"], jax.Array)


def test_reading_a_returned_array_inside_plain_vmap_at_apply():
    def fn(x):
        with js.variable_scope("lin"):
            w = js.get_variable("w", (IN, 2))
        return jax.vmap(lambda xi: xi @ w)(x)

    x = _x()
    variables = js.init(fn, _key(), x)
    w = variables["params"]["lin"]["w"]
    np.testing.assert_allclose(js.apply(fn, variables, x), x @ w, rtol=1e-6)


# ------------------------------------------------------- training with optax


def test_optax_adam_training_decreases_the_loss():
    x = _x(32, seed=3)
    y = _targets(x)
    variables = js.init(mlp, _key(), x)
    structure = jax.tree.structure(variables)
    paths = list(js.flatten(variables))
    opt = optax.adam(0.03)
    opt_state = opt.init(variables["params"])

    def loss_fn(params, variables):
        pred = js.apply(mlp, {**variables, "params": params}, x)
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(variables, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(variables["params"], variables)
        updates, opt_state = opt.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {**variables, "params": params}, opt_state, loss

    initial = float(jnp.mean((plain_mlp(variables["params"], x) - y) ** 2))
    losses = []
    for _ in range(50):
        variables, opt_state, loss = step(variables, opt_state)
        losses.append(float(loss))
    final = float(jnp.mean((plain_mlp(variables["params"], x) - y) ** 2))

    assert losses[0] == pytest.approx(initial, rel=1e-5)
    assert np.all(np.isfinite(losses))
    assert final < 0.5 * initial
    assert losses[-1] < losses[0]
    assert jax.tree.structure(variables) == structure
    assert sorted(js.flatten(variables)) == sorted(paths)
    assert isinstance(variables["params"]["mlp"], dict)


# ------------------------------------------------------- mutable under jit


@pytest.mark.parametrize("mutable", [["state"], "state", True])
def test_counter_in_state_under_jit(mutable):
    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)
    params = copy.deepcopy(variables["params"])
    step = jax.jit(lambda v, x: js.apply(mlp_with_counter, v, x, mutable=mutable))
    counts = []
    for _ in range(5):
        out, variables = step(variables, x)
        counts.append(int(variables["state"]["stats"]["counter"]))
        np.testing.assert_allclose(out, plain_mlp(params, x), rtol=1e-6, atol=1e-6)
    assert counts == [1, 2, 3, 4, 5]
    assert variables["state"]["stats"]["counter"].dtype == jnp.int32
    assert_trees_equal(variables["params"], params, ordered=False)


def test_assigning_a_collection_that_is_not_mutable_under_jit():
    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)
    step = jax.jit(lambda v, x: js.apply(mlp_with_counter, v, x, mutable=["params"]))
    with pytest.raises(js.errors.NotMutableError, match=r"stats/counter.*'state'"):
        step(variables, x)


# -------------------------------------------------- keys and mutable, checked


@pytest.mark.parametrize(
    "rng, found",
    [
        (0, "int 0"),
        (True, "bool True"),
        (1.5, "float 1.5"),
        ("key", "str 'key'"),
        (np.uint32(0), "shape () and dtype uint32"),
        (jnp.uint32(7), "shape () and dtype uint32"),
        (jnp.arange(2, dtype=jnp.int32), "shape (2,) and dtype int32"),
        (np.zeros(2, np.float32), "shape (2,) and dtype float32"),
    ],
)
def test_init_with_a_seed_instead_of_a_key_names_jax_random_key(rng, found):
    with pytest.raises(js.errors.RngTypeError, match=re.escape(found)) as info:
        js.init(mlp, rng, _x())
    assert isinstance(info.value, TypeError)
    assert "jax.random.key(0)" in str(info.value)
    assert "js.init's rng" in str(info.value)


def test_a_seed_in_a_dict_of_rngs_names_the_stream():
    with pytest.raises(js.errors.RngTypeError, match=r"rng\['dropout'\] got int 3"):
        js.init(mlp, {"params": _key(), "dropout": 3}, _x())
    with pytest.raises(js.errors.RngTypeError, match=r"rng\['params'\] got int 0"):
        js.init(mlp, {"params": 0}, _x())


def test_apply_with_a_seed_as_rngs_names_jax_random_key():
    variables = js.init(mlp, _key(), _x())
    with pytest.raises(js.errors.RngTypeError, match=r"js.apply's rngs got int 0"):
        js.apply(mlp, variables, _x(), rngs=0)
    with pytest.raises(js.errors.RngTypeError, match=r"rngs\['dropout'\] got"):
        js.apply(mlp, variables, _x(), rngs={"dropout": 1})


def test_legacy_raw_keys_and_traced_keys_are_still_keys():
    x = _x()
    legacy = js.init(mlp, jax.random.PRNGKey(0), x)
    typed = js.init(mlp, jax.random.wrap_key_data(jax.random.PRNGKey(0)), x)
    assert_trees_equal(legacy, typed)
    shapes = jax.eval_shape(lambda k: js.init(mlp, k, x), _key())
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(jnp.shape, typed)
    out = js.apply(mlp, typed, x, rngs={"dropout": None})  # None: no key, no error
    np.testing.assert_allclose(out, js.apply(mlp, typed, x), rtol=0, atol=0)


def test_mutable_naming_a_misspelt_collection_warns_with_the_collections():
    x = _x()
    variables = js.init(mlp_with_counter, _key(), x)
    with pytest.warns(js.errors.UnknownCollectionWarning) as record:
        out, updated = js.apply(
            mlp_with_counter, variables, x, mutable=["stat", "state", "batch"]
        )
    (warning,) = record  # 'batch' is close to no collection: not reported
    message = str(warning.message)
    assert "names 'stat'" in message and "['params', 'state']" in message
    assert "did you mean 'state'?" in message and "batch" not in message
    assert warning.filename == __file__  # points at the caller of js.apply
    assert int(updated["state"]["stats"]["counter"]) == 1  # 'state' still updated
    np.testing.assert_allclose(out, plain_mlp(variables["params"], x), rtol=1e-6)


@pytest.mark.parametrize(
    "mutable", [True, ["state"], "params", [], ["state", "batch_norm"]]
)
def test_mutable_naming_present_or_unrelated_collections_does_not_warn(mutable):
    # A stateless tree with mutable=["state"] is generic code: no warning (and
    # warnings are errors here).
    x = _x()
    variables = js.init(mlp, _key(), x)
    _, updated = js.apply(mlp, variables, x, mutable=mutable)
    assert list(updated) == ["params"]


def _count():
    c = js.get_variable("c", (), jnp.int32)
    js.assign(c, c + 1)


def test_a_failed_run_reports_its_error_not_the_unknown_collection():
    variables = js.init(_count, _key())
    assert list(variables) == ["state"]
    with pytest.raises(js.errors.NotMutableError, match=r"c: collection 'state'"):
        js.apply(_count, variables, mutable=["params"])


@pytest.mark.parametrize(
    "cls", [js.errors.RngTypeError, js.errors.UnknownCollectionWarning]
)
def test_new_run_errors_pickle_and_are_jscope_errors(cls):
    e = cls("js.init's rng got int 0 where a JAX random key belongs.", "a/b")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.path == "a/b"
    assert isinstance(back, js.errors.JscopeError)
