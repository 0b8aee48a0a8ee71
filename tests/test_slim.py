"""jscope.slim against tf-slim: names, creation order and numbers (DESIGN §5).

``tests/data/slim/cases.npz`` holds, for each case of
``tests/data/slim/make_fixtures.py``, what TF1 with tf-slim 1.1.0 created and
computed: variable names in creation order, their values, the input, the
outputs and the variables after one run (moving statistics of a training-mode
batch norm). Each case below is the same network written with jscope.slim: it
must create the same names in the same order, and from the same values compute
the same outputs and moving statistics (within 1e-5).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
import jscope.slim as slim

DATA = pathlib.Path(__file__).resolve().parent / "data" / "slim"
FIXTURES = np.load(DATA / "cases.npz")
RTOL = ATOL = 1e-5


def bn_in_place(**kw):
    return {"is_training": True, "updates_collections": None, **kw}


def net(x):
    with (
        js.variable_scope("model"),
        slim.arg_scope(
            [slim.conv2d, slim.fully_connected],
            weights_regularizer=slim.l2_regularizer(0.01),
            normalizer_fn=slim.batch_norm,
            normalizer_params=bn_in_place(decay=0.9, scale=True),
        ),
    ):
        with slim.arg_scope([slim.conv2d], padding="VALID", stride=1):
            h = slim.conv2d(x, 4, [3, 3], scope="conv1")
            h = slim.max_pool2d(h, [2, 2], scope="pool1")
            h = slim.conv2d(h, 6, [1, 1], padding="SAME", scope="conv2")
        h = slim.flatten(h)
        h = slim.fully_connected(h, 5, scope="fc1")
        h = slim.dropout(h, 0.5, is_training=False)
        return slim.fully_connected(
            h, 3, activation_fn=None, normalizer_fn=None, scope="logits"
        )


# The cases of make_fixtures.py, written with jscope.slim.
CASES = {
    "conv_default": lambda x: slim.conv2d(x, 4, [3, 3]),
    "conv_valid_stride": lambda x: slim.conv2d(
        x, 5, 3, stride=2, padding="VALID", activation_fn=None, scope="c"
    ),
    "conv_same_stride": lambda x: slim.conv2d(x, 2, [3, 2], stride=2),
    "conv_rate": lambda x: slim.conv2d(x, 4, [3, 2], rate=2, activation_fn=jnp.tanh),
    "conv_nobias": lambda x: slim.conv2d(x, 4, 1, biases_initializer=None),
    "conv_bn": lambda x: slim.conv2d(
        x,
        4,
        3,
        normalizer_fn=slim.batch_norm,
        normalizer_params=bn_in_place(scale=True, decay=0.9),
    ),
    "conv_transpose_same": lambda x: slim.conv2d_transpose(x, 2, 3, stride=2),
    "conv_transpose_valid": lambda x: slim.conv2d_transpose(
        x, 2, [3, 2], stride=2, padding="VALID", activation_fn=None
    ),
    "conv_transpose_k1": lambda x: slim.conv2d_transpose(
        x, 3, 1, stride=3, padding="VALID"
    ),
    "separable": lambda x: slim.separable_conv2d(x, 5, 3, depth_multiplier=2),
    "separable_depthwise": lambda x: slim.separable_conv2d(
        x, None, 3, depth_multiplier=2, stride=2, activation_fn=None
    ),
    "separable_rate": lambda x: slim.separable_conv2d(x, 4, 3, rate=2, padding="VALID"),
    "fc": lambda x: slim.fully_connected(x, 5),
    "fc_linear": lambda x: slim.fully_connected(
        x, 3, activation_fn=None, scope="logits"
    ),
    "fc_rank3": lambda x: slim.fully_connected(x, 4),
    "bn_4d_eval": lambda x: slim.batch_norm(x, is_training=False, scale=True),
    "bn_4d_in_place": lambda x: slim.batch_norm(x, **bn_in_place(decay=0.9)),
    "bn_4d_default": lambda x: slim.batch_norm(x, scale=True, decay=0.9),
    "bn_2d_default": lambda x: slim.batch_norm(x, center=False, scale=True, decay=0.9),
    "bn_3d_default": lambda x: slim.batch_norm(x, scale=True, decay=0.9),
    "bn_3d_in_place": lambda x: slim.batch_norm(x, **bn_in_place(decay=0.9)),
    "bn_small_eps": lambda x: slim.batch_norm(
        0.01 * x, **bn_in_place(epsilon=1e-6, decay=0.5)
    ),
    "bn_3d_small_eps": lambda x: slim.batch_norm(
        0.01 * x, **bn_in_place(epsilon=1e-6, decay=0.5)
    ),
    "ln_default": lambda x: slim.layer_norm(x),
    "ln_axes": lambda x: slim.layer_norm(x, begin_norm_axis=-1, begin_params_axis=1),
    "ln_noscale": lambda x: slim.layer_norm(x, scale=False, activation_fn=jax.nn.relu),
    "pools": lambda x: (
        slim.max_pool2d(x, 3, stride=2, padding="SAME"),
        slim.avg_pool2d(x, 3, stride=2, padding="SAME"),
        slim.max_pool2d(x, [2, 2]),
        slim.avg_pool2d(x, [2, 3], stride=1),
    ),
    "flatten": lambda x: slim.flatten(x),
    "dropout_eval": lambda x: slim.dropout(x, 0.5, is_training=False),
    "repeat": lambda x: slim.repeat(x, 3, slim.conv2d, 4, [3, 3], scope="c1"),
    "repeat_noscope": lambda x: slim.repeat(x, 2, slim.conv2d, 3, 3),
    "stack": lambda x: slim.stack(x, slim.fully_connected, [8, 6], scope="fc"),
    "stack_conv": lambda x: slim.stack(x, slim.conv2d, [(4, [3, 3]), (5, [1, 1])]),
    "conv_bn_default": lambda x: slim.conv2d(
        x,
        4,
        3,
        normalizer_fn=slim.batch_norm,
        normalizer_params={"scale": True, "decay": 0.9},
    ),
    "conv_transpose_k4": lambda x: slim.conv2d_transpose(x, 2, 4, stride=2),
    "conv_transpose_k5s3": lambda x: slim.conv2d_transpose(
        x, 2, [5, 2], stride=3, activation_fn=None
    ),
    "fc_ln": lambda x: slim.fully_connected(x, 5, normalizer_fn=slim.layer_norm),
    "bn_4d_unfused": lambda x: slim.batch_norm(x, scale=True, decay=0.9, fused=False),
    "bn_2d_unfused_in_place": lambda x: slim.batch_norm(
        x, fused=False, scale=True, **bn_in_place(decay=0.9)
    ),
    "bn_params": lambda x: slim.batch_norm(
        x,
        scale=True,
        param_initializers={"moving_variance": js.initializers.constant(2.0)},
        param_regularizers={"gamma": slim.l2_regularizer(0.5)},
        activation_fn=jax.nn.relu,
        is_training=False,
    ),
    "net": net,
}


def fixture(case: str, key: str):
    return FIXTURES[f"{case}/{key}"]


def tf_names(case: str) -> list[str]:
    return [str(n) for n in fixture(case, "names")]


def outputs(case: str) -> list[np.ndarray]:
    out, i = [], 0
    while f"{case}/y{i}" in FIXTURES.files:
        out.append(fixture(case, f"y{i}"))
        i += 1
    return out


def recording(fn, order):
    """``fn`` run under a custom getter that records each variable's path."""

    def getter(next_getter, name, *args, **kwargs):
        if name not in order:
            order.append(name)
        return next_getter(name, *args, **kwargs)

    def run(x):
        with js.variable_scope(js.get_variable_scope(), custom_getter=getter):
            return fn(x)

    return run


def tf_tree(variables, case: str, key: str = "var"):
    """``variables`` with every value replaced by TF1's (``var`` or ``after``)."""
    flat = {}
    for path, value in js.flatten(variables).items():
        name = path.split("/", 1)[1]
        flat[path] = jnp.asarray(fixture(case, f"{key}/{name}"), value.dtype)
    return js.unflatten(flat)


def test_every_fixture_case_has_a_jscope_twin():
    recorded = {k.split("/")[0] for k in FIXTURES.files}
    assert recorded == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_and_creation_order_match_tf_slim(case):
    order: list[str] = []
    x = fixture(case, "x")
    variables = js.init(recording(CASES[case], order), jax.random.key(0), x)
    assert order == tf_names(case)
    assert sorted(p.split("/", 1)[1] for p in js.flatten(variables)) == sorted(order)
    for path, value in js.flatten(variables).items():
        coll, name = path.split("/", 1)
        moving = name.rsplit("/", 1)[-1].startswith("moving_")
        assert coll == ("state" if moving else "params"), path
        assert value.shape == fixture(case, f"var/{name}").shape, path


# Every case runs eagerly; these also under jax.jit (one of each kind of layer).
JITTED = ["conv_bn", "conv_transpose_same", "separable", "fc_ln", "bn_4d_default"]
JITTED += ["bn_3d_in_place", "ln_axes", "pools", "stack_conv", "net"]
RUNS = [(case, False) for case in sorted(CASES)] + [(case, True) for case in JITTED]


@pytest.mark.parametrize(
    ("case", "jit"), RUNS, ids=[f"{c}-{'jit' if j else 'eager'}" for c, j in RUNS]
)
def test_outputs_and_moving_statistics_match_tf_slim(case, jit):
    fn, x = CASES[case], fixture(case, "x")
    variables = tf_tree(js.init(fn, jax.random.key(0), x), case)

    def with_loss(x):
        return fn(x), js.get_regularization_loss()

    def run(v, x):
        return js.apply(with_loss, v, x, mutable=["state"])

    (got, reg), updated = (jax.jit(run) if jit else run)(variables, x)
    if f"{case}/reg" in FIXTURES.files:
        np.testing.assert_allclose(reg, fixture(case, "reg"), rtol=RTOL)
    else:
        assert float(reg) == 0.0
    got = got if isinstance(got, tuple) else (got,)
    want = outputs(case)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g), w, rtol=RTOL, atol=ATOL)
    after = js.flatten(tf_tree(updated, case, "after"))
    for path, value in js.flatten(updated).items():
        np.testing.assert_allclose(
            np.asarray(value), after[path], rtol=RTOL, atol=ATOL, err_msg=path
        )
