"""Tests for the lifted transforms (DESIGN §6): scan, vmap, remat, cond, while_loop.

Shared collections behave as TF1's ``reuse=True`` across iterations; stacked ones
as separate layers given the same weights. Each transform is checked against the
same code run by Python control flow, and against plain `jax.numpy`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal, path_match

import jscope as js
from jscope import errors

KEY = jax.random.key(0)
T, B, IN, H = 4, 2, 3, 5  # time steps, batch, input and hidden sizes
L, D = 3, 4  # depth and width of a stack of blocks
E = 3  # ensemble members

normal = js.initializers.random_normal


def _xs(seed=1):
    return jax.random.normal(jax.random.key(seed), (T, B, IN))


def _h0():
    return jnp.zeros((B, H))


def _x(seed=2, width=D):
    return jax.random.normal(jax.random.key(seed), (B, width))


def _identity(f):
    return f


RUNNERS = [_identity, jax.jit]
RUNNER_IDS = ["eager", "jit"]


def assert_close(a, b):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6
        ),
        a,
        b,
    )


def shapes(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


# ------------------------------------------------------------------ the RNN


def cell(h, x):
    """An Elman cell: one set of weights, read at every step."""
    w = js.get_variable("w", (H, H), initializer=normal(stddev=0.5))
    u = js.get_variable("u", (IN, H))
    b = js.get_variable("b", (H,), initializer=normal(stddev=0.1))
    h = jnp.tanh(h @ w + x @ u + b)
    return h, 2.0 * h


def plain_cell(p, h, x):
    h = jnp.tanh(h @ p["w"] + x @ p["u"] + p["b"])
    return h, 2.0 * h


def rnn_scan(h0, xs, reverse=False):
    with js.variable_scope("rnn"):
        return js.scan(cell, reverse=reverse)(h0, xs)


def rnn_loop(h0, xs, reverse=False):
    """The same RNN unrolled in Python: TF1's reuse=True from the second step."""
    steps = range(xs.shape[0])
    h, ys = h0, {}
    for n, t in enumerate(reversed(steps) if reverse else steps):
        with js.variable_scope("rnn", reuse=n > 0):
            h, ys[t] = cell(h, xs[t])
    return h, jnp.stack([ys[t] for t in steps])


def rnn_plain(params, h0, xs, reverse=False):
    def step(h, x):
        return plain_cell(params["rnn"], h, x)

    return jax.lax.scan(step, h0, xs, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
def test_scan_shared_rnn_equals_python_loop_with_reuse(run, reverse):
    h0, xs = _h0(), _xs()
    init_scan = run(lambda k: js.init_with_output(rnn_scan, k, h0, xs, reverse))
    init_loop = run(lambda k: js.init_with_output(rnn_loop, k, h0, xs, reverse))
    out_s, v_s = init_scan(KEY)
    out_l, v_l = init_loop(KEY)
    # Same paths, shapes, dtypes and initial values; no stacking axis. (XLA may
    # fuse an initializer's arithmetic differently in two jitted programs.)
    assert_trees_equal(v_s, v_l, exact=run is _identity)
    assert shapes(v_s["params"]["rnn"]) == {
        "w": ((H, H), jnp.float32),
        "u": ((IN, H), jnp.float32),
        "b": ((H,), jnp.float32),
    }
    assert_close(out_s, out_l)
    assert_close(out_s, rnn_plain(v_s["params"], h0, xs, reverse))

    apply_scan = run(lambda v: js.apply(rnn_scan, v, h0, xs, reverse))
    apply_loop = run(lambda v: js.apply(rnn_loop, v, h0, xs, reverse))
    # Other weights than the initial ones, so the apply really reads the tree.
    v2 = jax.tree.map(lambda a: a * 0.7 + 0.05, v_s)
    expected = rnn_plain(v2["params"], h0, xs, reverse)
    assert_close(apply_scan(v2), expected)
    assert_close(apply_loop(v2), expected)

    def loss(fn):
        def f(params):
            h, ys = js.apply(fn, {"params": params}, h0, xs, reverse)
            return jnp.sum(h**2) + jnp.sum(jnp.sin(ys))

        return run(jax.grad(f))

    def plain_loss(params):
        h, ys = rnn_plain(params, h0, xs, reverse)
        return jnp.sum(h**2) + jnp.sum(jnp.sin(ys))

    g_scan = loss(rnn_scan)(v2["params"])
    g_loop = loss(rnn_loop)(v2["params"])
    assert_trees_equal(g_scan, g_loop, exact=False)
    assert_trees_equal(g_scan, jax.grad(plain_loss)(v2["params"]), exact=False)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(g_scan))


def test_scan_reverse_differs_from_forward():
    h0, xs = _h0(), _xs()
    v = js.init(rnn_scan, KEY, h0, xs)
    fwd = js.apply(rnn_scan, v, h0, xs)
    bwd = js.apply(rnn_scan, v, h0, xs, True)
    assert not np.allclose(fwd[0], bwd[0])


def test_scan_in_axes_and_out_axes_move_the_time_axis():
    h0, xs = _h0(), _xs()
    xs_bt = jnp.swapaxes(xs, 0, 1)  # (B, T, IN)

    def batch_major(h0, xs_bt):
        with js.variable_scope("rnn"):
            return js.scan(cell, in_axes=1, out_axes=1)(h0, xs_bt)

    v = js.init(batch_major, KEY, h0, xs_bt)
    assert_trees_equal(v, js.init(rnn_scan, KEY, h0, xs))
    h, ys = js.apply(batch_major, v, h0, xs_bt)
    h_ref, ys_ref = rnn_plain(v["params"], h0, xs)
    assert ys.shape == (B, T, H)
    assert_close((h, ys), (h_ref, jnp.swapaxes(ys_ref, 0, 1)))


# --------------------------------------------------------- a stack of blocks


def block(h, _):
    w = js.get_variable("w", (D, D))
    b = js.get_variable("b", (D,), initializer=normal(stddev=0.1))
    return jnp.tanh(h @ w + b), None


def make_stack(axis=0, split=None, length=L):
    def stack(h):
        with js.variable_scope("stack"):
            return js.scan(
                block,
                variable_axes={"params": axis},
                split_rngs=split,
                length=length,
            )(h)[0]

    return stack


def stack_plain(params, h, axis=0):
    p = params["stack"]
    for i in range(p["w"].shape[axis]):
        w = jnp.take(p["w"], i, axis)
        b = jnp.take(p["b"], i, axis)
        h = jnp.tanh(h @ w + b)
    return h


def _perturb(tree, seed=3):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            a + 0.1 * jax.random.normal(k, a.shape)
            for a, k in zip(leaves, keys, strict=True)
        ],
    )


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_scan_stacked_blocks_equal_separate_blocks(run, axis):
    stack, x = make_stack(axis, {"params": True}), _x()
    out, v = run(lambda k: js.init_with_output(stack, k, x))(KEY)
    w_shape = (L, D, D) if axis == 0 else (D, L, D)
    b_shape = (L, D) if axis == 0 else (D, L)
    assert shapes(v) == {
        "params": {"stack": {"w": (w_shape, jnp.float32), "b": (b_shape, jnp.float32)}}
    }
    assert_close(out, stack_plain(v["params"], x, axis))

    v2 = _perturb(v)
    assert_close(
        run(lambda v: js.apply(stack, v, x))(v2), stack_plain(v2["params"], x, axis)
    )

    def loss(params):
        return jnp.sum(js.apply(stack, {"params": params}, x) ** 2)

    def plain_loss(params):
        return jnp.sum(stack_plain(params, x, axis) ** 2)

    g = run(jax.grad(loss))(v2["params"])
    assert_trees_equal(g, jax.grad(plain_loss)(v2["params"]), exact=False)
    for i in range(L):  # every layer gets its own gradient
        assert float(jnp.abs(jnp.take(g["stack"]["w"], i, axis)).sum()) > 0


@pytest.mark.parametrize("split", [None, {"params": True}], ids=["default", "split"])
def test_scan_stacked_initial_values_differ_per_layer(split):
    stack, x = make_stack(0, split), _x()
    v = js.init(stack, KEY, x)
    w, b = np.asarray(v["params"]["stack"]["w"]), np.asarray(v["params"]["stack"]["b"])
    for i in range(L):
        for j in range(i):
            assert not np.array_equal(w[i], w[j]), (i, j)
            assert not np.array_equal(b[i], b[j]), (i, j)
    # Each layer is initialized for its own shape: Glorot over (D, D) (fans D, D),
    # not over the stacked (L, D, D) (TF1's fans L*D, L*D: a narrower range).
    assert np.all(np.abs(w) <= np.sqrt(6.0 / (D + D)))
    assert np.abs(w).max() > np.sqrt(6.0 / (L * D + L * D))
    # Deterministic for the same key, different for another key.
    assert_trees_equal(v, js.init(stack, KEY, x))
    jitted = jax.jit(lambda k: js.init(stack, k, x))(KEY)
    assert_trees_equal(v, jitted, exact=False, ordered=False)
    other = js.init(stack, jax.random.key(1), x)
    assert not np.array_equal(other["params"]["stack"]["w"], w)


def test_scan_stacked_without_param_split_repeats_one_layer():
    stack, x = make_stack(0, {"params": False}), _x()
    v = js.init(stack, KEY, x)
    w, b = v["params"]["stack"]["w"], v["params"]["stack"]["b"]
    for i in range(1, L):
        np.testing.assert_array_equal(w[i], w[0])
        np.testing.assert_array_equal(b[i], b[0])
    assert_close(js.apply(stack, v, x), stack_plain(v["params"], x))


def test_scan_stacked_wrong_leading_size_at_apply_names_path():
    stack, x = make_stack(0), _x()
    v = js.init(stack, KEY, x)
    short = {
        "params": {
            "stack": {
                "w": v["params"]["stack"]["w"][:2],
                "b": v["params"]["stack"]["b"],
            }
        }
    }
    with pytest.raises(
        errors.ShapeMismatchError, match=path_match("(2, 4, 4)", "stack/w")
    ):
        js.apply(stack, short, x)
    with pytest.raises(
        errors.ShapeMismatchError, match=path_match("(2, 4, 4)", "stack/w")
    ):
        jax.jit(lambda v: js.apply(stack, v, x))(short)


def test_scan_stacked_and_shared_collections_together():
    """A per-layer weight and one scale shared by every layer."""

    def scaled_block(h, _):
        s = js.get_variable(
            "scale", (), initializer=js.initializers.ones(), collection="shared"
        )
        h, _ = block(h, None)
        return h * s, None

    def stack(h):
        with js.variable_scope("stack"):
            return js.scan(scaled_block, variable_axes={"params": 0}, length=L)(h)[0]

    x = _x()
    v = js.init(stack, KEY, x)
    assert v["shared"]["stack"]["scale"].shape == ()
    assert v["params"]["stack"]["w"].shape == (L, D, D)
    v2 = {**v, "shared": {"stack": {"scale": jnp.asarray(0.5)}}}

    p = v2["params"]["stack"]
    h = x
    for i in range(L):
        h = 0.5 * jnp.tanh(h @ p["w"][i] + p["b"][i])
    assert_close(js.apply(stack, v2, x), h)


# ------------------------------------------- stacks as per-iteration inputs
# js.scan hands the stacked variables to jax.lax.scan as xs (js.vmap: as mapped
# arguments) instead of indexing the whole stack in the body, so the program is
# the one written by hand and gradients leave as per-iteration outputs.

INDEXING = {"dynamic_slice", "dynamic_update_slice", "gather", "scatter-add"}


def _primitives(jaxpr):
    """The primitives of a jaxpr and of every jaxpr nested in its equations."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    names |= _primitives(sub)
    return names


def _hlo_instructions(compiled):
    line = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+ = ")
    return sum(1 for s in compiled.as_text().splitlines() if line.match(s))


@pytest.mark.parametrize("axis", [0, 1])
def test_scan_reads_stacks_as_xs_and_returns_gradients_as_ys(axis):
    stack, x = make_stack(axis), _x()
    params = _perturb(js.init(stack, KEY, x))["params"]

    def loss(params):
        return jnp.sum(js.apply(stack, {"params": params}, x) ** 2)

    prims = _primitives(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    assert "scan" in prims
    assert not prims & INDEXING, prims & INDEXING
    g = jax.grad(loss)(params)
    g_ref = jax.grad(lambda p: jnp.sum(stack_plain(p, x, axis) ** 2))(params)
    assert_trees_equal(g, g_ref, exact=False)


def _gained_stack(h):
    """A stack of blocks after a variable of the stack's length the body never reads."""
    h = h * js.get_variable("gain", (L, D), initializer=normal()).sum(0)
    return make_stack(0)(h)


def _gained_stack_by_hand(params, h):
    h = h * params["gain"].sum(0)
    p = params["stack"]

    def body(h, wb):
        return jnp.tanh(h @ wb[0] + wb[1]), None

    return jax.lax.scan(body, h, (p["w"], p["b"]))[0]


def test_scan_training_step_compiles_to_the_hand_written_scan():
    x = _x()
    params = _perturb(js.init(_gained_stack, KEY, x))["params"]

    def step(forward):
        def train(params):
            loss, g = jax.value_and_grad(lambda p: jnp.sum(forward(p) ** 2))(params)
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, g), loss

        return jax.jit(train)

    mine = step(lambda p: js.apply(_gained_stack, {"params": p}, x))
    hand = step(lambda p: _gained_stack_by_hand(p, x))
    assert _hlo_instructions(mine.lower(params).compile()) == _hlo_instructions(
        hand.lower(params).compile()
    )
    assert_close(mine(params), hand(params))


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
def test_vmap_reads_mapped_variables_as_mapped_arguments(run):
    ensemble, x = make_ensemble({"params": True}), _x(width=IN)
    params = _perturb(js.init(ensemble, KEY, x))["params"]

    def loss(params):
        return jnp.sum(jnp.sin(js.apply(ensemble, {"params": params}, x)))

    prims = _primitives(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    assert not prims & INDEXING, prims & INDEXING
    p = params["ens"]
    members = jnp.stack([x @ p["w"][e] + p["b"][e] for e in range(E)])
    assert_close(run(lambda p: js.apply(ensemble, {"params": p}, x))(params), members)


def test_scan_reads_a_stack_of_numpy_arrays():
    stack, x = make_stack(0), _x()
    v = _perturb(js.init(stack, KEY, x))
    as_numpy = jax.tree.map(np.asarray, v)
    assert_close(js.apply(stack, as_numpy, x), stack_plain(v["params"], x))


# ---------------------------------------------------------------------- vmap


def member(x):
    w = js.get_variable("w", (IN, H))
    b = js.get_variable("b", (H,), initializer=normal(stddev=0.1))
    return x @ w + b


def make_ensemble(split=None, fn=member):
    def ensemble(x):
        with js.variable_scope("ens"):
            return js.vmap(
                fn,
                variable_axes={"params": 0},
                split_rngs=split,
                in_axes=None,
                axis_size=E,
            )(x)

    return ensemble


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
def test_vmap_ensemble_equals_loop_over_members(run):
    ensemble, x = make_ensemble({"params": True}), _x(width=IN)
    out, v = run(lambda k: js.init_with_output(ensemble, k, x))(KEY)
    assert shapes(v) == {
        "params": {"ens": {"w": ((E, IN, H), jnp.float32), "b": ((E, H), jnp.float32)}}
    }
    w = np.asarray(v["params"]["ens"]["w"])
    assert not any(np.array_equal(w[i], w[j]) for i in range(E) for j in range(i))

    def members(v):
        p = v["params"]["ens"]
        return jnp.stack([x @ p["w"][e] + p["b"][e] for e in range(E)])

    assert_close(out, members(v))
    v2 = _perturb(v)
    assert_close(run(lambda v: js.apply(ensemble, v, x))(v2), members(v2))

    # A loop of applies of the single member on each member's slice.
    out = js.apply(ensemble, v2, x)
    for e in range(E):
        one = {
            "params": {"ens": jax.tree.map(lambda a, e=e: a[e], v2["params"]["ens"])}
        }

        def single(x):
            with js.variable_scope("ens"):
                return member(x)

        assert_close(out[e], js.apply(single, one, x))

    def loss(params):
        return jnp.sum(jnp.sin(js.apply(ensemble, {"params": params}, x)))

    g = run(jax.grad(loss))(v2["params"])
    g_ref = jax.grad(lambda v: jnp.sum(jnp.sin(members({"params": v}))))(v2["params"])
    assert_trees_equal(g, g_ref, exact=False)


def test_vmap_mapped_inputs_and_no_param_split():
    def ensemble(xs):
        with js.variable_scope("ens"):
            return js.vmap(
                member, variable_axes={"params": 0}, split_rngs={"params": False}
            )(xs)

    xs = jax.random.normal(jax.random.key(5), (E, B, IN))
    v = js.init(ensemble, KEY, xs)
    w = v["params"]["ens"]["w"]
    assert w.shape == (E, IN, H)
    for e in range(1, E):
        np.testing.assert_array_equal(w[e], w[0])
    v2 = _perturb(v)
    p = v2["params"]["ens"]
    expected = jnp.stack([xs[e] @ p["w"][e] + p["b"][e] for e in range(E)])
    assert_close(js.apply(ensemble, v2, xs), expected)


def test_vmap_shared_collection_is_read_by_every_member():
    def scaled(x):
        s = js.get_variable("scale", trainable=False, initializer=1.0)
        return member(x) * s

    ensemble, x = make_ensemble(fn=scaled), _x(width=IN)
    v = js.init(ensemble, KEY, x)
    assert v["state"] == {"ens": {"scale": jnp.asarray(1.0)}}
    assert v["params"]["ens"]["w"].shape == (E, IN, H)
    v2 = {**v, "state": {"ens": {"scale": jnp.asarray(-3.0)}}}
    out = js.apply(ensemble, v2, x)
    p = v["params"]["ens"]
    expected = jnp.stack([-3.0 * (x @ p["w"][e] + p["b"][e]) for e in range(E)])
    assert_close(out, expected)


def test_vmap_assigning_a_shared_collection_is_an_error():
    def counting(x):
        c = js.get_variable("count", (), jnp.int32, trainable=False)
        js.assign(c, c + 1)
        return member(x)

    ensemble, x = make_ensemble(fn=counting), _x(width=IN)
    v = js.init(ensemble, KEY, x)
    with pytest.raises(
        errors.LiftError, match=path_match("assigned inside js.vmap", "ens/count")
    ):
        js.apply(ensemble, v, x, mutable=["state"])
    with pytest.raises(errors.LiftError, match=r"ens/count"):
        js.apply(ensemble, v, x, mutable=True)


def test_vmap_mapped_state_may_be_assigned():
    def counting(x):
        c = js.get_variable("count", (), jnp.int32, trainable=False)
        js.assign(c, c + 1)
        return member(x)

    def ensemble(x):
        with js.variable_scope("ens"):
            return js.vmap(
                counting,
                variable_axes={"params": 0, "state": 0},
                in_axes=None,
                axis_size=E,
            )(x)

    x = _x(width=IN)
    v = js.init(ensemble, KEY, x)
    np.testing.assert_array_equal(v["state"]["ens"]["count"], np.zeros(E, np.int32))
    _, v2 = js.apply(ensemble, v, x, mutable=["state"])
    np.testing.assert_array_equal(v2["state"]["ens"]["count"], np.ones(E, np.int32))
    assert_trees_equal(v2["params"], v["params"])


# --------------------------------------------------------------------- remat


def mlp(x):
    with js.variable_scope("l1"):
        h = jnp.tanh(
            x @ js.get_variable("w", (D, H))
            + js.get_variable("b", (H,), initializer=normal())
        )
    with js.variable_scope("l2"):
        return jnp.sin(h @ js.get_variable("w", (H, 2)))


def mlp_plain(params, x):
    h = jnp.tanh(x @ params["l1"]["w"] + params["l1"]["b"])
    return jnp.sin(h @ params["l2"]["w"])


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
@pytest.mark.parametrize("prevent_cse", [True, False])
def test_remat_same_values_and_gradients(run, prevent_cse):
    x = _x()
    rematted = js.remat(mlp, prevent_cse=prevent_cse)
    out_r, v_r = run(lambda k: js.init_with_output(rematted, k, x))(KEY)
    out_p, v_p = js.init_with_output(mlp, KEY, x)
    eager = run is _identity
    assert_trees_equal(v_r, v_p, exact=eager, ordered=eager)
    assert_close(out_r, out_p)
    v2 = _perturb(v_p)
    assert_close(
        run(lambda v: js.apply(rematted, v, x))(v2), mlp_plain(v2["params"], x)
    )

    def loss(fn):
        return lambda p: jnp.sum(js.apply(fn, {"params": p}, x) ** 2)

    g_r = run(jax.grad(loss(rematted)))(v2["params"])
    g_p = jax.grad(loss(mlp))(v2["params"])
    g_ref = jax.grad(lambda p: jnp.sum(mlp_plain(p, x) ** 2))(v2["params"])
    assert_trees_equal(g_r, g_p, exact=False)
    assert_trees_equal(g_r, g_ref, exact=False)


def test_remat_with_policy_and_inside_scan():
    def stack(h):
        body = js.remat(block, policy=jax.checkpoint_policies.nothing_saveable)
        with js.variable_scope("stack"):
            return js.scan(body, variable_axes={"params": 0}, length=L)(h)[0]

    x = _x()
    v = js.init(stack, KEY, x)
    assert v["params"]["stack"]["w"].shape == (L, D, D)
    v2 = _perturb(v)
    assert_close(js.apply(stack, v2, x), stack_plain(v2["params"], x))
    g = jax.grad(lambda p: jnp.sum(js.apply(stack, {"params": p}, x) ** 2))(
        v2["params"]
    )
    g_ref = jax.grad(lambda p: jnp.sum(stack_plain(p, x) ** 2))(v2["params"])
    assert_trees_equal(g, g_ref, exact=False)


# ----------------------------------------------------------- cond, while_loop


def branch_up(x):
    w = js.get_variable("w", (D, D))
    b = js.get_variable("b", (D,), initializer=normal())
    return x @ w + b


def branch_down(x):
    w = js.get_variable("w", (D, D))
    b = js.get_variable("b", (D,), initializer=normal())
    return jnp.tanh(x @ w) - b


def cond_lifted(x, pred):
    with js.variable_scope("c"):
        return js.cond(pred, branch_up, branch_down, x)


def cond_python(x, pred):
    with js.variable_scope("c"):
        return branch_up(x) if pred else branch_down(x)


@pytest.mark.parametrize("pred", [True, False])
def test_cond_equals_python_if(pred):
    x = _x()
    out_l, v_l = js.init_with_output(cond_lifted, KEY, x, pred)
    out_p, v_p = js.init_with_output(cond_python, KEY, x, pred)
    assert_trees_equal(v_l, v_p)
    assert_close(out_l, out_p)
    v2 = _perturb(v_l)
    assert_close(js.apply(cond_lifted, v2, x, pred), js.apply(cond_python, v2, x, pred))
    # A traced predicate under jit takes the same branch.
    jitted = jax.jit(lambda v, p: js.apply(cond_lifted, v, x, p))
    assert_close(jitted(v2, jnp.asarray(pred)), js.apply(cond_python, v2, x, pred))
    g = jax.grad(lambda p: jnp.sum(js.apply(cond_lifted, {"params": p}, x, pred) ** 2))
    g_ref = jax.grad(
        lambda p: jnp.sum(js.apply(cond_python, {"params": p}, x, pred) ** 2)
    )
    assert_trees_equal(g(v2["params"]), g_ref(v2["params"]), exact=False)


def _branch_extra(x):
    w = js.get_variable("w", (D, D))
    return x @ w * js.get_variable("extra", (D,))


@pytest.mark.parametrize(
    "true_fn, false_fn",
    [(branch_up, _branch_extra), (_branch_extra, branch_up)],
    ids=["extra-in-false", "extra-in-true"],
)
def test_cond_branches_creating_different_variables_is_an_error(true_fn, false_fn):
    def f(x, pred):
        with js.variable_scope("c"):
            return js.cond(pred, true_fn, false_fn, x)

    for pred in [True, False, jnp.asarray(True)]:
        with pytest.raises(
            errors.LiftError, match=path_match("different variables", "c/extra")
        ):
            js.init(f, KEY, _x(), pred)


def test_cond_branch_updates_mutable_state():
    def f(x):
        def bump(x):
            c = js.get_variable("count", (), jnp.int32, trainable=False)
            js.assign(c, c + 1)
            return x

        def skip(x):
            js.get_variable("count", (), jnp.int32, trainable=False)
            return -x

        return js.cond(x > 0, bump, skip, x)

    v = js.init(f, KEY, 1.0)
    assert int(v["state"]["count"]) == 0
    for x, count in [(1.0, 1), (-1.0, 0)]:
        _, v2 = js.apply(f, v, x, mutable=["state"])
        assert int(v2["state"]["count"]) == count


def loop_body(x):
    return x + js.get_variable("step", (), initializer=normal(mean=1.0, stddev=0.2))


def loop_cond(x):
    with js.variable_scope("bounds", reuse=True):
        limit = js.get_variable("limit", ())
    return x < limit


def while_lifted(x):
    with js.variable_scope("loop"):
        js.get_variable("bounds/limit", initializer=6.0)
        return js.while_loop(loop_cond, loop_body, x)


def while_python(x):
    with js.variable_scope("loop", reuse=js.AUTO_REUSE):
        js.get_variable("bounds/limit", initializer=6.0)
        while loop_cond(x):
            x = loop_body(x)
    return x


def test_while_loop_equals_python_loop():
    x = jnp.asarray(0.5)
    out_l, v_l = js.init_with_output(while_lifted, KEY, x)
    out_p, v_p = js.init_with_output(while_python, KEY, x)
    assert_trees_equal(v_l, v_p)
    assert_close(out_l, out_p)
    assert float(out_l) >= 6.0
    v2 = {
        "params": {
            "loop": {"bounds": {"limit": jnp.asarray(9.0)}, "step": jnp.asarray(0.75)}
        }
    }
    expected = js.apply(while_python, v2, x)
    np.testing.assert_allclose(expected, 9.5)
    assert_close(js.apply(while_lifted, v2, x), expected)
    assert_close(jax.jit(lambda v: js.apply(while_lifted, v, x))(v2), expected)


def test_while_loop_condition_creating_a_variable_is_an_error():
    def f(x):
        with js.variable_scope("loop"):
            return js.while_loop(
                lambda x: x < js.get_variable("limit", initializer=6.0), loop_body, x
            )

    with pytest.raises(errors.LiftError, match=path_match("condition", "loop/limit")):
        js.init(f, KEY, 0.5)


def test_while_loop_carries_mutable_state():
    def f(x):
        def body(x):
            c = js.get_variable("iterations", (), jnp.int32, trainable=False)
            js.assign(c, c + 1)
            return x + 1.0

        return js.while_loop(lambda x: x < 5.0, body, x)

    v = js.init(f, KEY, 0.0)
    assert int(v["state"]["iterations"]) == 0
    out, v2 = js.apply(f, v, 0.0, mutable=["state"])
    assert float(out) == 5.0
    assert int(v2["state"]["iterations"]) == 5


# ----------------------------------------------------------- state inside scan


def counting_step(h, x):
    c = js.get_variable("count", (), jnp.int32, trainable=False)
    js.assign(c, c + 1)
    return h, c + 1


def running_mean_step(h, x):
    mean = js.get_variable(
        "mean", (B, IN), trainable=False, initializer=js.initializers.zeros()
    )
    new = 0.9 * mean + 0.1 * x
    js.assign("mean", new)
    return h + jnp.sum(new), new


def scan_state(step):
    def f(xs):
        with js.variable_scope("stats"):
            return js.scan(step)(jnp.asarray(0.0), xs)

    return f


def loop_state(step):
    def f(xs):
        h, ys = jnp.asarray(0.0), []
        for t in range(xs.shape[0]):
            with js.variable_scope("stats", reuse=t > 0):
                h, y = step(h, xs[t])
            ys.append(y)
        return h, jnp.stack(ys)

    return f


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
def test_scan_counter_in_state_ends_at_length(run):
    f, xs = scan_state(counting_step), _xs()
    v = run(lambda k: js.init(f, k, xs))(KEY)
    assert v == {"state": {"stats": {"count": 0}}}  # the initial value is kept
    assert v["state"]["stats"]["count"].dtype == jnp.int32
    step = run(lambda v: js.apply(f, v, xs, mutable=["state"]))
    (_, ys), v1 = step(v)
    assert int(v1["state"]["stats"]["count"]) == T
    np.testing.assert_array_equal(ys, np.arange(1, T + 1))
    (_, ys), v2 = step(v1)
    assert int(v2["state"]["stats"]["count"]) == 2 * T
    np.testing.assert_array_equal(ys, np.arange(T + 1, 2 * T + 1))
    assert int(v["state"]["stats"]["count"]) == 0  # the input tree is unchanged


@pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)
def test_scan_running_mean_equals_python_loop(run):
    xs = _xs()
    f_scan, f_loop = scan_state(running_mean_step), loop_state(running_mean_step)
    v = run(lambda k: js.init(f_scan, k, xs))(KEY)
    assert_trees_equal(v, js.init(f_loop, KEY, xs))
    np.testing.assert_array_equal(v["state"]["stats"]["mean"], np.zeros((B, IN)))
    v = {"state": {"stats": {"mean": jnp.full((B, IN), 0.5)}}}
    out_s, v_s = run(lambda v: js.apply(f_scan, v, xs, mutable=["state"]))(v)
    out_l, v_l = js.apply(f_loop, v, xs, mutable=["state"])
    assert_close(out_s, out_l)
    assert_trees_equal(v_s, v_l, exact=False)
    mean = np.full((B, IN), 0.5, np.float32)
    for t in range(T):
        mean = 0.9 * mean + 0.1 * np.asarray(xs[t])
    np.testing.assert_allclose(v_s["state"]["stats"]["mean"], mean, rtol=1e-5)


@pytest.mark.parametrize(
    "step, path", [(counting_step, "stats/count"), (running_mean_step, "stats/mean")]
)
def test_scan_assignment_without_mutable_is_an_error(step, path):
    f, xs = scan_state(step), _xs()
    v = js.init(f, KEY, xs)
    with pytest.raises(errors.NotMutableError, match=path_match("not mutable", path)):
        js.apply(f, v, xs)
    with pytest.raises(errors.NotMutableError, match=path_match("not mutable", path)):
        js.apply(f, v, xs, mutable=["params"])


def test_scan_carries_state_but_not_stacked_params():
    """Stacked params and a shared, carried counter in the same body."""

    def counted_block(h, _):
        c = js.get_variable("count", (), jnp.int32, trainable=False)
        js.assign_add(c, 1)
        return block(h, None)

    def stack(h):
        with js.variable_scope("stack"):
            return js.scan(counted_block, variable_axes={"params": 0}, length=L)(h)[0]

    x = _x()
    v = js.init(stack, KEY, x)
    assert v["state"]["stack"]["count"].shape == ()
    out, v2 = js.apply(stack, v, x, mutable=["state"])
    assert int(v2["state"]["stack"]["count"]) == L
    assert_trees_equal(v2["params"], v["params"])
    assert_close(out, stack_plain(v["params"], x))


def test_scan_stacked_state_per_layer_counters():
    """Stacked state: each layer its own counter; init keeps the initial zeros."""

    def stack(h):
        return js.scan(counting_step, variable_axes={"state": 0}, length=L)(h)[1]

    v = js.init(stack, KEY, 0.0)
    np.testing.assert_array_equal(v["state"]["count"], np.zeros(L, np.int32))
    ys, v1 = js.apply(stack, v, 0.0, mutable=["state"])
    np.testing.assert_array_equal(v1["state"]["count"], np.ones(L, np.int32))
    np.testing.assert_array_equal(ys, np.ones(L, np.int32))
    v1 = {"state": {"count": jnp.arange(L, dtype=jnp.int32)}}
    ys, v2 = js.apply(stack, v1, 0.0, mutable=["state"])
    np.testing.assert_array_equal(v2["state"]["count"], np.arange(1, L + 1))
    np.testing.assert_array_equal(ys, np.arange(1, L + 1))


# ---------------------------------------------------------------------- rngs


def key_step(h, _):
    return h, jax.random.key_data(js.next_rng_key("dropout"))


@pytest.mark.parametrize("split", [True, False])
def test_scan_split_rngs_gives_per_iteration_keys(split):
    def f(h):
        with js.variable_scope("drop"):
            return js.scan(key_step, split_rngs={"dropout": split}, length=T)(h)[1]

    for keys in [
        js.init_with_output(f, KEY, 0.0)[0],
        js.apply(f, {}, 0.0, rngs={"dropout": jax.random.key(7)}),
        jax.jit(lambda r: js.apply(f, {}, 0.0, rngs={"dropout": r}))(jax.random.key(7)),
    ]:
        keys = np.asarray(keys)
        assert keys.shape[0] == T
        distinct = {k.tobytes() for k in keys}
        assert len(distinct) == (T if split else 1)
    # Deterministic for the same key; another key gives other keys.
    a = js.apply(f, {}, 0.0, rngs={"dropout": jax.random.key(7)})
    b = js.apply(f, {}, 0.0, rngs={"dropout": jax.random.key(7)})
    c = js.apply(f, {}, 0.0, rngs={"dropout": jax.random.key(8)})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scan_dropout_split_per_iteration_masks():
    def step(h, _):
        keep = jax.random.bernoulli(js.next_rng_key("dropout"), 0.5, h.shape)
        return h, keep

    def f(h):
        return js.scan(step, split_rngs={"dropout": True}, length=T)(h)[1]

    masks = js.apply(f, {}, jnp.ones(64), rngs={"dropout": jax.random.key(3)})
    assert masks.shape == (T, 64)
    assert len({np.asarray(m).tobytes() for m in masks}) == T


@pytest.mark.parametrize("split", [True, False])
def test_vmap_split_rngs_gives_per_member_keys(split):
    def keyed(h):
        return jax.random.key_data(js.next_rng_key("dropout"))

    def f(h):
        vmapped = js.vmap(
            keyed, split_rngs={"dropout": split}, in_axes=None, axis_size=E
        )
        return vmapped(h)

    keys = np.asarray(js.apply(f, {}, 0.0, rngs={"dropout": jax.random.key(2)}))
    assert keys.shape[0] == E
    assert len({k.tobytes() for k in keys}) == (E if split else 1)


# -------------------------------------------------------------------- errors


BAD_AXES = [
    ([("params", 0)], "dict"),
    (0, "dict"),
    ({0: 0}, "str"),
    ({"params": -1}, "non-negative int"),
    ({"params": 1.0}, "non-negative int"),
    ({"params": "0"}, "non-negative int"),
    ({"params": None}, "non-negative int"),
]


@pytest.mark.parametrize("axes, phrase", BAD_AXES, ids=[repr(a) for a, _ in BAD_AXES])
@pytest.mark.parametrize("transform", ["scan", "vmap"])
def test_bad_variable_axes_is_a_lift_error(transform, axes, phrase):
    def f(h):
        if transform == "scan":
            return js.scan(block, variable_axes=axes, length=L)(h)[0]
        return js.vmap(member, variable_axes=axes, in_axes=None, axis_size=E)(h)

    with pytest.raises(
        errors.LiftError, match=rf"(?s)variable_axes.*{re.escape(phrase)}"
    ):
        js.init(f, KEY, _x())
    assert issubclass(errors.LiftError, ValueError)


@pytest.mark.parametrize("split", [["dropout"], {"dropout": 1}, {1: True}, "dropout"])
def test_bad_split_rngs_is_a_lift_error(split):
    with pytest.raises(errors.LiftError, match="split_rngs"):
        js.init(lambda h: js.scan(key_step, split_rngs=split, length=T)(h), KEY, 0.0)


def test_scan_without_xs_or_length_is_a_lift_error():
    with pytest.raises(errors.LiftError, match="length"):
        js.init(lambda h: js.scan(block)(h), KEY, _x())


def _run_both(f, good, *args):
    """Yields a runner for init and for apply with the tree of ``good``."""
    v = js.init(good, KEY, *args)
    yield lambda: js.init(f, KEY, *args)
    yield lambda: js.apply(f, v, *args)


def _scan_in_rnn_scope(body):
    """Runners (init, apply) of ``js.scan(body)`` inside ``variable_scope("rnn")``."""

    def f(h0, xs):
        with js.variable_scope("rnn"):
            return js.scan(body)(h0, xs)

    return _run_both(f, rnn_scan, _h0(), _xs())


def test_scan_body_reuse_of_missing_variable_does_not_exist():
    def body(h, x):
        h, y = cell(h, x)
        with js.variable_scope("proj", reuse=True):
            js.get_variable("v", (H, H))
        return h, y

    for run in _scan_in_rnn_scope(body):
        with pytest.raises(
            errors.VariableNotFoundError,
            match=path_match("does not exist", "rnn/proj/v"),
        ):
            run()


def test_scan_body_creating_a_variable_twice_already_exists():
    def body(h, x):
        h, y = cell(h, x)
        js.get_variable("w", (H, H))
        return h, y

    for run in _scan_in_rnn_scope(body):
        with pytest.raises(
            errors.VariableExistsError, match=path_match("already exists", "rnn/w")
        ):
            run()


@pytest.mark.parametrize("axes", [None, {"params": 0}], ids=["shared", "stacked"])
def test_variable_after_scan_with_a_body_name_already_exists(axes):
    def stack(h):
        with js.variable_scope("stack"):
            h = js.scan(block, variable_axes=axes, length=L)(h)[0]
        return h

    def f(h):
        h = stack(h)
        with js.variable_scope("stack"):
            js.get_variable("w", (D, D))
        return h

    for run in _run_both(f, stack, _x()):
        with pytest.raises(
            errors.VariableExistsError, match=path_match("already exists", "stack/w")
        ):
            run()


def test_variable_after_scan_reused_reads_the_body_variable():
    def f(h):
        with js.variable_scope("stack"):
            h = js.scan(block, variable_axes={"params": 0}, length=L)(h)[0]
        with js.variable_scope("stack", reuse=True):
            w = js.get_variable("w")
        return h, w

    x = _x()
    (_, w), v = js.init_with_output(f, KEY, x)
    np.testing.assert_array_equal(w, v["params"]["stack"]["w"])
    assert w.shape == (L, D, D)


@pytest.mark.parametrize("axes", [None, {"params": 0}], ids=["shared", "stacked"])
def test_default_names_advance_past_the_body(axes):
    def dense_block(h, _):
        with js.variable_scope(None, default_name="dense"):
            w = js.get_variable("w", (D, D))
        return jnp.tanh(h @ w), None

    def f(h):
        h = js.scan(dense_block, variable_axes=axes, length=L)(h)[0]
        return dense_block(h, None)[0]

    x = _x()
    v = js.init(f, KEY, x)
    assert list(v["params"]) == ["dense", "dense_1"]
    stacked = (L, D, D) if axes else (D, D)
    assert v["params"]["dense"]["w"].shape == stacked
    assert v["params"]["dense_1"]["w"].shape == (D, D)
    h = x
    for i in range(L):
        w = v["params"]["dense"]["w"]
        h = jnp.tanh(h @ (w[i] if axes else w))
    assert_close(js.apply(f, v, x), jnp.tanh(h @ v["params"]["dense_1"]["w"]))


def test_plain_jax_scan_creating_a_variable_names_the_lifted_transform():
    def f(h):
        with js.variable_scope("stack"):
            return jax.lax.scan(block, h, None, length=L)[0]

    with pytest.raises(
        errors.JaxTransformError, match=path_match("js.scan", "stack/w")
    ):
        js.init(f, KEY, _x())


# -------------------------------------------------------------------- nesting


def test_shared_scan_inside_vmap_ensemble():
    def member_rnn(h0, xs):
        with js.variable_scope("rnn"):
            return js.scan(cell)(h0, xs)[1]

    def ensemble(h0, xs):
        return js.vmap(
            member_rnn, variable_axes={"params": 0}, in_axes=None, axis_size=E
        )(h0, xs)

    h0, xs = _h0(), _xs()
    out, v = js.init_with_output(ensemble, KEY, h0, xs)
    assert shapes(v) == {
        "params": {
            "rnn": {
                "w": ((E, H, H), jnp.float32),
                "u": ((E, IN, H), jnp.float32),
                "b": ((E, H), jnp.float32),
            }
        }
    }
    assert out.shape == (E, T, B, H)
    w = np.asarray(v["params"]["rnn"]["w"])
    assert not np.array_equal(w[0], w[1])
    v2 = _perturb(v)
    out = js.apply(ensemble, v2, h0, xs)
    for e in range(E):
        p = jax.tree.map(lambda a, e=e: a[e], v2["params"])
        assert_close(out[e], rnn_plain(p, h0, xs)[1])


def test_stacked_scan_inside_scan_over_time():
    """A deep RNN: a stack of cells (stacked) applied at every step (shared)."""

    def step(h, x):
        def layer(h, _):
            w = js.get_variable("w", (D, D), initializer=normal(stddev=0.5))
            return jnp.tanh(h @ w + x), None

        with js.variable_scope("deep"):
            h = js.scan(layer, variable_axes={"params": 0}, length=L)(h)[0]
        return h, h

    xs = jax.random.normal(jax.random.key(4), (T, B, D))
    h0 = jnp.zeros((B, D))

    def f(h0, xs):
        return js.scan(step)(h0, xs)

    v = js.init(f, KEY, h0, xs)
    assert v["params"]["deep"]["w"].shape == (L, D, D)
    w = v["params"]["deep"]["w"]
    h, ys = h0, []
    for t in range(T):
        for i in range(L):
            h = jnp.tanh(h @ w[i] + xs[t])
        ys.append(h)
    assert_close(js.apply(f, v, h0, xs), (h, jnp.stack(ys)))


def _dense_layer(h, _=None):
    return jnp.tanh(h @ js.get_variable("w", (D, D))), None


def _deep_ensemble(h):
    def deep(h):
        return js.scan(_dense_layer, variable_axes={"params": 0}, length=L)(h)[0]

    return js.vmap(deep, {"params": 0}, in_axes=None, axis_size=E)(h)


def _deep_ensemble_plain(w, h):
    outs = []
    for e in range(E):
        x = h
        for i in range(L):
            x = jnp.tanh(x @ w[e, i])
        outs.append(x)
    return jnp.stack(outs)


def _stack_of_stacks(h):
    def inner(h, _):
        return js.scan(_dense_layer, variable_axes={"params": 0}, length=T)(h)

    return js.scan(inner, variable_axes={"params": 0}, length=L)(h)[0]


def _stack_of_stacks_plain(w, h):
    for i in range(L):
        for j in range(T):
            h = jnp.tanh(h @ w[i, j])
    return h


def _ensemble_per_step(h):
    def step(h, _):
        member = js.vmap(
            lambda h: _dense_layer(h)[0], {"params": 0}, in_axes=None, axis_size=E
        )
        return member(h).mean(0), None

    return js.scan(step, length=L)(h)[0]


def _ensemble_per_step_plain(w, h):
    for _ in range(L):
        h = jnp.stack([jnp.tanh(h @ w[e]) for e in range(E)]).mean(0)
    return h


NESTED_STACKED = [
    ("stacked-scan-in-vmap", _deep_ensemble, _deep_ensemble_plain, (E, L, D, D)),
    (
        "stacked-scan-in-stacked-scan",
        _stack_of_stacks,
        _stack_of_stacks_plain,
        (L, T, D, D),
    ),
    (
        "mapped-vmap-in-shared-scan",
        _ensemble_per_step,
        _ensemble_per_step_plain,
        (E, D, D),
    ),
]


@pytest.mark.parametrize(
    "fn, plain, shape",
    [c[1:] for c in NESTED_STACKED],
    ids=[c[0] for c in NESTED_STACKED],
)
def test_stacked_transform_nested_in_another(fn, plain, shape):
    x = _x()
    out, v = js.init_with_output(fn, KEY, x)
    assert shapes(v) == {"params": {"w": (shape, jnp.float32)}}
    w = np.asarray(v["params"]["w"]).reshape(-1, D, D)
    assert len({a.tobytes() for a in w}) == len(w)  # every slice its own value
    assert_close(out, plain(v["params"]["w"], x))
    v2 = _perturb(v)
    assert_close(js.apply(fn, v2, x), plain(v2["params"]["w"], x))
    # The inner transform reads its slices from the outer one's per-pass inputs.
    prims = _primitives(jax.make_jaxpr(lambda v: js.apply(fn, v, x))(v2).jaxpr)
    assert not prims & INDEXING, prims & INDEXING


# ----------------------------------------------- eval_shape and tracer leaks


LEAK_CASES = [
    ("rnn", rnn_scan, (_h0(), _xs()), False),
    ("stack", make_stack(0, {"params": True}), (_x(),), False),
    ("state", scan_state(running_mean_step), (_xs(),), True),
    ("ensemble", make_ensemble({"params": True}), (_x(width=IN),), False),
    ("remat", js.remat(mlp), (_x(),), False),
    ("cond", cond_lifted, (_x(), True), False),
    ("while", while_lifted, (jnp.asarray(0.5),), False),
]


@pytest.mark.parametrize(
    "fn, args", [c[1:3] for c in LEAK_CASES], ids=[c[0] for c in LEAK_CASES]
)
def test_shape_only_init_matches_init(fn, args):
    abstract = jax.eval_shape(lambda k: js.init(fn, k, *args), KEY)
    concrete = js.init(fn, KEY, *args)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    assert shapes(abstract) == shapes(concrete)
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(abstract))


@pytest.mark.parametrize(
    "fn, args, mutable", [c[1:] for c in LEAK_CASES], ids=[c[0] for c in LEAK_CASES]
)
def test_no_tracer_leaks_from_jitted_runs(fn, args, mutable):
    v = js.init(fn, KEY, *args)
    expected = js.apply(fn, v, *args, mutable=mutable and ["state"])
    with jax.checking_leaks():
        vi = jax.jit(lambda k: js.init(fn, k, *args))(KEY)
        out = jax.jit(lambda v: js.apply(fn, v, *args, mutable=mutable and ["state"]))(
            v
        )
    assert_trees_equal(vi, v, exact=False, ordered=False)
    assert_close(out, expected)


# ------------------------------------------------- the frame's life, the lift


def _frame(**kwargs):
    from jscope._src import context
    from jscope._src.scope import VariableScope

    return context.Frame(is_run=True, scope=VariableScope(False, ""), **kwargs)


def test_fork_sets_every_slot_and_copies_the_rule_state():
    from jscope._src import context
    from jscope._src.lift import Lift

    outer = _frame(initializing=True, rng=KEY, get_variable=js.get_variable)
    outer.kind_of["a/w"] = context.Kind.GET
    outer.collection_of["a/w"] = "params"
    outer.prefixes.add("a")
    outer.values["a/w"] = jnp.ones(2)
    outer.used_names.mark("a")
    outer.scope_counts.node("a").count = 1
    lift = Lift(
        what="js.scan", axes={}, split={}, index=0, length=1, shared={}, parent=None
    )
    child = outer.fork(lift=lift, given_tree=None, carried={"a/w": jnp.zeros(2)})
    assert all(hasattr(child, slot) for slot in context.Frame.__slots__)
    assert child.lift is lift and child.initializing and child.rng is KEY
    assert child.get_variable is js.get_variable  # for VariableScope.get_variable
    assert child.scope is outer.scope
    for slot in (
        "kind_of",
        "collection_of",
        "prefixes",
        "rng_counts",
        "templates",
        "used_names",
        "scope_counts",
    ):
        assert getattr(child, slot) is not getattr(outer, slot), slot
    assert child.kind_of == outer.kind_of and child.prefixes == outer.prefixes
    assert child.scope_counts.node("a").count == 1
    np.testing.assert_array_equal(child.values["a/w"], jnp.zeros(2))  # carried wins
    child.kind_of["a/v"] = context.Kind.VAR
    assert "a/v" not in outer.kind_of


def test_detach_drops_values_keeps_rule_state_and_adopt_takes_it():
    from jscope._src import context

    outer = _frame(initializing=True, rng=KEY)
    outer.kind_of["old"] = context.Kind.GET
    child = outer.fork(lift=None, given_tree=None, carried={})
    for path, kind in [("b/w", context.Kind.GET), ("a/v", context.Kind.VAR)]:
        child.kind_of[path] = kind
        child.collection_of[path] = "params"
        child.values[path] = jnp.ones(())
    child.assigned["b/w"] = jnp.ones(())
    child.prefixes.update({"a", "b"})
    child.scope_counts.node("b").count = 2
    child.detach()
    assert not child.alive and child.values == {} and child.lift is None
    assert child.rng is None and child.given_tree is None
    assert child.assigned == {"b/w": None}  # which paths, not their values
    kept = outer.scope_counts.node("b")
    assert outer.adopt(child) == ["b/w", "a/v"]  # creation order
    assert outer.kind_of == {
        "old": context.Kind.GET,
        "b/w": context.Kind.GET,
        "a/v": context.Kind.VAR,
    }
    assert outer.prefixes == {"a", "b"}
    assert outer.scope_counts.node("b") is kept and kept.count == 2  # same nodes


def test_old_slot_names_are_gone():
    frame = _frame()
    for old in ("kinds", "inner", "names", "counts", "source", "returned"):
        assert not hasattr(frame, old), old


def test_entered_restores_the_frame_and_runs_on_exit_when_the_body_raises():
    from jscope._src import context

    before = context.peek()
    frame, ended = _frame(), []
    with pytest.raises(KeyError), frame.entered(on_exit=lambda: ended.append(1)):
        assert context.peek() is frame
        assert context.current_run("test") is frame
        raise KeyError("x")
    assert context.peek() is before and ended == [1]


def test_paths_record_their_kind_as_an_enum():
    from jscope._src import context

    def f():
        js.get_variable("w", (1,))
        js.Variable(1.0, name="v")
        frame = context.peek()
        return dict(frame.kind_of)

    kinds, _ = js.init_with_output(f, KEY)
    assert kinds == {"w": context.Kind.GET, "v": context.Kind.VAR}
    assert context.GET is context.Kind.GET and context.VAR is context.Kind.VAR


def test_lift_is_built_from_keywords_only():
    from jscope._src.lift import Lift

    with pytest.raises(TypeError):
        Lift("js.scan", {}, {}, 0, 1, {}, None)  # the old positional form


def test_lift_offers_what_the_crossing_protocol_declares():
    from jscope._src import context
    from jscope._src.lift import Lift

    declared = {n for n in vars(context.Crossing) if not n.startswith("_")}
    assert declared == {"create", "fold_rng"}
    assert all(callable(getattr(Lift, n, None)) for n in declared)


def test_each_lifted_transform_is_a_short_function_over_the_lift():
    import ast
    import inspect

    from jscope._src import transforms

    source = inspect.getsource(transforms)
    module = ast.parse(source)
    for fn in [n for n in module.body if isinstance(n, ast.FunctionDef)]:
        if fn.name.startswith("_"):
            continue
        body = fn.body[1:] if ast.get_docstring(fn) else fn.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        assert lines <= 40, (fn.name, lines)
        assert "LiftedCall(" in ast.get_source_segment(source, fn), fn.name


def test_jax_internals_are_touched_in_jax_compat_only():
    import pathlib

    root = pathlib.Path(js.__file__).parent
    touching = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "jax._src" in p.read_text() or "jax.extend" in p.read_text()
    )
    assert touching == ["_src/jax_compat.py"]


def test_context_imports_no_scope_and_no_module_imports_inside_functions():
    import ast
    import inspect

    from jscope._src import context, lift, run, transforms

    for module in (context, lift, run, transforms):
        tree = ast.parse(inspect.getsource(module))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                assert id(node) in top, (module.__name__, node.lineno)
                names = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom):
                    assert not any(n.startswith("_") for n in names), names
                if module is context and isinstance(node, ast.ImportFrom):
                    assert node.module not in (
                        "jscope._src.scope",
                        "jscope._src.variables",
                    )


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)])
def test_jax_compat_fold_in_equals_jax_random_fold_in(key):
    from jscope._src import jax_compat

    for data in (0, 7, 2**32 - 1):
        got, want = jax_compat.fold_in(key, data), jax.random.fold_in(key, data)
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(got, want)
