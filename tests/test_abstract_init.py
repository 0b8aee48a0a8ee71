"""`js.init` traces its function shape-only first (`jscope._src.coldinit`).

Every model here is initialized twice: by `js.init` (the abstract pass and
eager draws, or its fallback) and by `js.init_with_output` (always the eager
run). The trees must be equal bit for bit, with the same key order. A spy on
`coldinit.init` tells which path `js.init` took: the fast path must be taken
for plain models and must compile nothing of the forward pass, the eager run
must follow wherever the abstract pass cannot stand for it, and errors and
warnings must be the eager run's.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.core import Tracer

import jscope as js
from jscope import errors
from jscope._src import coldinit

KEY = jax.random.key(0)


@pytest.fixture
def path_taken(monkeypatch):
    """A list that receives "fast" or "eager" for every `js.init` of the test."""
    taken: list[str] = []
    real = coldinit.init

    def spy(*args, **kwargs):
        built = real(*args, **kwargs)
        taken.append("eager" if built is None else "fast")
        return built

    monkeypatch.setattr(coldinit, "init", spy)
    return taken


def both(fn, *args, rng: Any = KEY, **kwargs):
    """``js.init``'s tree, checked equal (bits, key order) to the eager run's."""
    fast = js.init(fn, rng, *args, **kwargs)
    eager = js.init_with_output(fn, rng, *args, **kwargs)[1]
    assert_trees_equal(fast, eager)
    assert list(js.flatten(fast)) == list(js.flatten(eager))
    return fast


# ------------------------------------------------------------------ models

X = jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)


def mlp(x):
    h = js.layers.dense(x, 5, name="d1")
    h = js.layers.layer_norm(jax.nn.relu(h), name="ln")
    return js.layers.dense(h, 3, name="d2", use_bias=False)


def conv_bn(x, training=True):
    h = js.layers.conv2d(x[..., None], 4, 3, name="conv")
    h = js.layers.batch_norm(h, training=training, name="bn")
    return js.layers.dense(h.reshape(h.shape[0], -1), 2, name="out")


def variables_and_handles(x):
    w = js.get_variable("w", (4, 3), initializer=js.initializers.truncated_normal())
    v = js.Variable(lambda key: jax.random.normal(key, (3,)), name="v")
    c = js.Variable(np.arange(3, dtype=np.float32), name="c")  # a concrete value
    s = js.get_variable("s", initializer=np.array([1, 2, 3]), trainable=False)
    i = js.get_variable("i", (2,), dtype=jnp.int32)
    k = js.get_variable("k", (2, 2), initializer=js.initializers.constant([1.0, 2.0]))
    js.get_variable("o", (3,), collection="extra")
    return x @ w + v.value + c.value + s.sum() + i.sum() + k.sum()


def reuse_and_templates(x):
    dense = js.make_template("shared", lambda h: js.layers.dense(h, 4, name="d"))
    h = dense(x)
    h = dense(h)
    with js.variable_scope("a"):
        js.get_variable("w", (2,))
    with js.variable_scope("a", reuse=True):
        js.get_variable("w", (2,))
    with js.variable_scope("b", reuse=js.AUTO_REUSE):
        js.get_variable("w", (2,))
        js.get_variable("w", (2,))
    return h


def custom_getter(x):
    def scaled(getter, name, *args, **kwargs):
        return getter(name, *args, **kwargs) * 2.0

    with js.variable_scope("g", custom_getter=scaled):
        return js.layers.dense(x, 3, name="d")


def vmap_shared(x):
    def member(h):
        return js.layers.dense(h, 2, name="d")

    return js.vmap(member)(x)  # params shared: created once, outside


def rng_streams(x):
    h = js.layers.dense(x, 6, name="d")
    keep = jax.random.bernoulli(js.next_rng_key("dropout"), 0.5, h.shape)
    return jnp.where(keep, h, 0.0)


def assign_at_init(x):
    counter = js.Variable(np.zeros((), np.int32), name="count", trainable=False)
    w = js.get_variable("w", (4, 2))
    js.assign(counter, counter.value + 1)
    js.assign("w", w * 0.0)
    return x @ w


FAST_MODELS = {
    "mlp": (mlp, X),
    "conv_bn": (conv_bn, X),
    "variables_and_handles": (variables_and_handles, X),
    "reuse_and_templates": (reuse_and_templates, X),
    "custom_getter": (custom_getter, X),
    "vmap_shared": (vmap_shared, X),
    "rng_streams": (rng_streams, X),
    "assign_at_init": (assign_at_init, X),
}


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
def test_fast_path_equals_the_eager_run(name, path_taken):
    fn, x = FAST_MODELS[name]
    both(fn, x)
    assert path_taken == ["fast"]


def test_fast_path_with_a_dict_of_rngs_and_kwargs(path_taken):
    rngs = {"params": jax.random.key(3), "dropout": jax.random.key(4)}
    both(conv_bn, X, rng=rngs, training=False)
    assert path_taken == ["fast"]


def test_assign_at_init_keeps_the_initial_values(path_taken):
    tree = both(assign_at_init, X)
    assert int(tree["state"]["count"]) == 0
    assert np.any(np.asarray(tree["params"]["w"]) != 0.0)
    assert path_taken == ["fast"]


# ------------------------------------------------------------- fallbacks


def data_dependent(x):
    # The initial value comes from the input: only the eager run has it.
    return js.Variable(x.mean(axis=0), name="mean").value


def from_another_variable(x):
    w = js.get_variable("w", (4, 2))
    return js.get_variable("w2", initializer=w * 2.0) + x.sum()


def concretizes(x):
    h = js.layers.dense(x, 3, name="d")
    if float(h.sum()) > 0:  # Python control flow on a value
        js.get_variable("pos", (2,))
    else:
        js.get_variable("neg", (2,))
    return h


def to_numpy(x):
    h = np.asarray(js.layers.dense(x, 3, name="d"))
    return js.get_variable("b", initializer=h.mean(axis=(0, 1))) + 1.0


def rng_feeds_a_value(x):
    noise = jax.random.normal(js.next_rng_key("noise"), (4,))
    return js.Variable(noise, name="noise").value + x


def after_assign(x):
    with js.variable_scope("s"):
        w = js.get_variable("w", (4, 2))
        js.assign("w", w + 1.0)
    with js.variable_scope("s", reuse=True):
        now = js.get_variable("w")
    return js.Variable(now * 1.0, name="copy").value


def array_made_inside(x):
    # Traced, jnp.zeros is a tracer too: the eager run makes this one.
    return js.Variable(jnp.zeros((3,)), name="z").value + x.sum()


def scan_stacked(x):
    def body(h, _):
        return jax.nn.tanh(js.layers.dense(h, 4, name="d")), None

    stacked = js.scan(body, variable_axes={"params": 0}, length=3)
    return stacked(x[0], None)[0]


def initializer_closes_over_input(x):
    scale = x.std()

    def init(key, shape, dtype):
        return jax.random.normal(key, shape, dtype) * scale

    return js.get_variable("w", (4, 2), initializer=init)


FALLBACK_MODELS = {
    "data_dependent": data_dependent,
    "from_another_variable": from_another_variable,
    "concretizes": concretizes,
    "to_numpy": to_numpy,
    "rng_feeds_a_value": rng_feeds_a_value,
    "after_assign": after_assign,
    "array_made_inside": array_made_inside,
    "scan_stacked": scan_stacked,
    "initializer_closes_over_input": initializer_closes_over_input,
}


@pytest.mark.parametrize("name", sorted(FALLBACK_MODELS))
def test_eager_run_follows_where_the_trace_cannot_stand_for_it(name, path_taken):
    both(FALLBACK_MODELS[name], X)
    assert path_taken == ["eager"]


def test_a_swallowed_fallback_still_falls_back(path_taken):
    def model(x):
        try:
            return scan_stacked(x)
        except Exception:  # noqa: BLE001 - the point of the test
            return x

    both(model, X)
    assert path_taken == ["eager"]


def test_inside_a_callers_jit_no_abstract_pass(path_taken):
    jitted = jax.jit(lambda key: js.init(mlp, key, X))(KEY)
    eager = js.init_with_output(mlp, KEY, X)[1]
    assert_trees_equal(jitted, eager, ordered=False, exact=False)
    assert path_taken == []


def test_under_disable_jit_no_abstract_pass(path_taken):
    with jax.disable_jit():
        tree = js.init(mlp, KEY, X)
        assert_trees_equal(tree, js.init_with_output(mlp, KEY, X)[1])
    assert path_taken == []


# ---------------------------------------------------------------- errors


def _error_of(run):
    with pytest.raises(Exception) as info:  # noqa: PT011 - compared below
        run()
    return info.value


ERROR_MODELS = {
    "exists": lambda: (js.get_variable("w", (2,)), js.get_variable("w", (2,))),
    "not_found": lambda: _reuse_missing(),
    "shape_mismatch": lambda: _share_with_shape((3,)),
    "bad_name": lambda: js.get_variable("a b", (2,)),
    "no_shape": lambda: js.get_variable("w"),
    "bad_initializer": lambda: js.get_variable(
        "w", (2,), initializer=lambda k, s, d: jnp.zeros((3,))
    ),
    "user_type_error": lambda: jnp.ones((2, 3)) @ js.get_variable("w", (2, 2)),
}


def _reuse_missing():
    with js.variable_scope("s", reuse=True):
        return js.get_variable("w", (2,))


def _share_with_shape(shape):
    with js.variable_scope("s", reuse=js.AUTO_REUSE):
        js.get_variable("w", (2,))
        return js.get_variable("w", shape)


@pytest.mark.parametrize("name", sorted(ERROR_MODELS))
def test_errors_are_the_eager_runs(name, path_taken):
    fn = ERROR_MODELS[name]
    fast = _error_of(lambda: js.init(fn, KEY))
    eager = _error_of(lambda: js.init_with_output(fn, KEY))
    assert type(fast) is type(eager)
    assert str(fast) == str(eager)
    assert path_taken == ["eager"]


def test_a_bad_rng_is_the_eager_runs_error(path_taken):
    with pytest.raises(errors.RngTypeError, match="got int 0"):
        js.init(mlp, 0, X)
    with pytest.raises(errors.MissingRngError, match="without a 'params' key"):
        js.init(mlp, {"dropout": KEY}, X)
    assert path_taken == ["eager", "eager"]


def test_narrowing_warning_is_shown_once(path_taken):
    def model():
        return js.get_variable("w", (2,), dtype=jnp.float64)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        js.init(model, KEY)
    assert [str(w.message).split(":")[0] for w in seen] == ["Variable w"]
    assert path_taken == ["fast"]


def test_python_side_effects_see_tracers_on_the_fast_path(path_taken):
    seen = []

    def model(x):
        h = js.layers.dense(x, 2, name="d")
        seen.append(h)
        return h

    js.init(model, KEY, X)
    assert path_taken == ["fast"]
    assert isinstance(seen[0], Tracer)  # docs/design.md, "Cold init"


# --------------------------------------------------------------- compiles


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        found = re.match(r"Compiling (\S+)", record.getMessage())
        if found:
            self.names.append(found.group(1))


def _compiled_names(run) -> list[str]:
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            run()
    finally:
        logger.removeHandler(handler)
    return handler.names


def test_fast_path_compiles_none_of_the_forward_pass(path_taken):
    # Widths no other test uses: nothing of this model is in jax's caches.
    def model(x):
        h = x
        for i, width in enumerate((37, 41, 43)):
            h = js.layers.dense(h, width, name=f"d{i}")
            h = jax.nn.softmax(js.layers.layer_norm(h, name=f"ln{i}"))
        return h

    x = jnp.ones((2, 29))
    names = _compiled_names(lambda: js.init(model, KEY, x))
    assert path_taken == ["fast"]
    forward = {"dot_general", "softmax", "reduce_max", "exp", "div", "add", "sub"}
    assert not [n for n in names if any(f in n for f in forward)], names
    eager = _compiled_names(lambda: js.init_with_output(model, KEY, x))
    assert [n for n in eager if "dot_general" in n], eager  # the eager run does


# ----------------------------------------------------------- random models

LAYERS = ("dense", "norm", "variable", "scope", "data_variable")


@settings(max_examples=15, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(LAYERS), st.integers(1, 6)), min_size=1, max_size=6
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_models_equal_the_eager_run(plan, seed):
    def model(x):
        h = x
        for i, (kind, width) in enumerate(plan):
            if kind == "dense":
                h = jax.nn.relu(js.layers.dense(h, width, name=f"l{i}"))
            elif kind == "norm":
                h = js.layers.layer_norm(h, name=f"l{i}")
            elif kind == "variable":
                h = h + js.Variable(lambda k: jax.random.uniform(k, ()), name=f"l{i}")
            elif kind == "scope":
                with js.variable_scope(f"l{i}"):
                    h = h * js.get_variable("s", (h.shape[-1],))
            else:
                h = h + js.Variable(h.sum(), name=f"l{i}").value
        return h

    both(model, X, rng=jax.random.key(seed))
