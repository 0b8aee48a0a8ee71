"""Normalization layers against Flax linen and hand-written jax.numpy."""

import copy
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import Tolerance, check_every_argument
from layer_checks import init_fast as _init

import jscope as js
from jscope import layers

F32 = jnp.float32
BF16 = jnp.bfloat16
RANDN = js.initializers.random_normal(mean=0.5, stddev=1.0)


def _x(shape, dtype=F32, seed=0, scale=2.0, shift=0.3):
    x = jax.random.normal(jax.random.key(seed), shape, F32) * scale + shift
    return x.astype(dtype)


def _check_against(ours, theirs, args, dtype=F32):
    check_every_argument(ours, theirs, args, _tol(dtype), same="dtype")


_tol = Tolerance(bf16=(3e-2, 6e-2), other=(2e-5, 2e-5))
_close = _tol.close
_tree_close = _tol.tree_close


def _no_mutation(fn):
    """Checks that ``fn(tree, ...)`` leaves its tree unchanged."""

    @functools.wraps(fn)
    def wrapped(tree, *args, **kwargs):
        before = copy.deepcopy(tree)
        out = fn(tree, *args, **kwargs)
        jax.tree.map(np.testing.assert_array_equal, tree, before)
        return out

    return wrapped


# ------------------------------------------------------------------ layer_norm


LN_CASES = [
    ((4, 6), -1, True, True, F32),
    ((4, 6), -1, True, True, BF16),
    ((2, 3, 5), -1, False, True, F32),
    ((2, 3, 5), (1, 2), True, True, F32),
    ((2, 3, 5), 1, True, False, BF16),
    ((3, 4, 2, 5), (-1, -3), True, True, F32),
]


@pytest.mark.parametrize("shape,axis,center,scale,dtype", LN_CASES)
def test_layer_norm_matches_flax(shape, axis, center, scale, dtype):
    x = _x(shape, dtype)
    eps = 1e-3

    def fn(x):
        return layers.layer_norm(
            x, axis=axis, epsilon=eps, center=center, scale=scale, dtype=dtype,
            gamma_initializer=RANDN, beta_initializer=RANDN,
        )  # fmt: skip

    v = _init(fn, x, seed=1)
    params = v["params"]["layer_normalization"] if (center or scale) else {}
    pshape = tuple(
        shape[a] for a in sorted(a % len(shape) for a in np.atleast_1d(axis))
    )
    for leaf in jax.tree.leaves(params):
        assert leaf.shape == pshape and leaf.dtype == dtype
    flax_ln = nn.LayerNorm(
        epsilon=eps, use_bias=center, use_scale=scale, reduction_axes=axis,
        feature_axes=axis, param_dtype=dtype, use_fast_variance=False,
    )  # fmt: skip

    def ours(p, x):
        tree = {"params": {"layer_normalization": p}} if p else {}
        return js.apply(fn, tree, x)

    def theirs(p, x):
        mapped = {}
        if scale:
            mapped["scale"] = p["gamma"]
        if center:
            mapped["bias"] = p["beta"]
        return flax_ln.apply({"params": mapped}, x)

    _check_against(ours, theirs, (params, x), dtype)


@pytest.mark.parametrize("axis", [-1, (1, 2), 0])
def test_layer_norm_matches_jnp_with_default_epsilon(axis):
    # Small variance, so that the default epsilon (Keras's 1e-3) matters.
    x = _x((3, 4, 5), scale=0.05)
    v = _init(layers.layer_norm, x, axis=axis)
    v = jax.tree.map(lambda a: a + 0.25, v)  # not the identity affine map
    y = js.apply(layers.layer_norm, v, x, axis=axis)
    mean = jnp.mean(x, axis=axis, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=axis, keepdims=True)
    axes = sorted(np.atleast_1d(axis) % 3)
    shape = [x.shape[a] if a in axes else 1 for a in range(3)]
    p = v["params"]["layer_normalization"]
    want = (x - mean) / jnp.sqrt(var + 1e-3) * p["gamma"].reshape(shape)
    want = want + p["beta"].reshape(shape)
    _close(y, want)
    with pytest.raises(AssertionError):  # epsilon 1e-6 would give another result
        _close(y, ((x - mean) / jnp.sqrt(var + 1e-6)) * 1.25 + 0.25)


def test_layer_norm_bfloat16_inputs_with_float32_variables():
    x = _x((2, 8), BF16)
    v = _init(layers.layer_norm, x)
    y = js.apply(layers.layer_norm, v, x)
    assert v["params"]["layer_normalization"]["gamma"].dtype == F32
    assert y.dtype == F32  # the variables' dtype, as dense computes in its kernel's
    xf = x.astype(F32)
    mean = xf.mean(-1, keepdims=True)
    want = (xf - mean) / jnp.sqrt(((xf - mean) ** 2).mean(-1, keepdims=True) + 1e-3)
    _close(y, want)


def test_layer_norm_scope_dtype_and_no_variables():
    x = _x((2, 4))

    def fn(x):
        with js.variable_scope("half", dtype=BF16):
            a = layers.layer_norm(x)
        b = layers.layer_norm(x, center=False, scale=False)
        return a, b

    (a, b), v = js.init_with_output(fn, jax.random.key(0), x)
    assert js.flatten(v).keys() == {
        "params/half/layer_normalization/gamma",
        "params/half/layer_normalization/beta",
    }
    assert v["params"]["half"]["layer_normalization"]["gamma"].dtype == BF16
    assert a.dtype == BF16 and b.dtype == F32
    _close(a, b, BF16)


def test_layer_norm_names_and_reuse():
    x = _x((2, 3))

    def fn(x):
        a = layers.layer_norm(x)
        b = layers.layer_norm(x)
        with js.variable_scope("block"):
            c = layers.layer_norm(x, name="ln")
        d = layers.layer_norm(x, name="layer_normalization", reuse=True)
        return a, b, c, d

    (a, b, c, d), v = js.init_with_output(fn, jax.random.key(0), x)
    assert list(js.flatten(v)) == [
        "params/layer_normalization/gamma",
        "params/layer_normalization/beta",
        "params/layer_normalization_1/gamma",
        "params/layer_normalization_1/beta",
        "params/block/ln/gamma",
        "params/block/ln/beta",
    ]
    v = jax.tree.map(lambda t: t * 1.5 + 0.1, v)
    v["params"]["layer_normalization_1"]["gamma"] = -v["params"][
        "layer_normalization_1"
    ]["gamma"]
    a, b, c, d = _no_mutation(lambda v, x: js.apply(fn, v, x))(v, x)
    np.testing.assert_array_equal(a, d)  # shared variables, same output
    np.testing.assert_allclose(a, -b + 0.2, rtol=1e-6, atol=1e-6)


def test_layer_norm_reuse_without_variables_is_an_error():
    def fn(x):
        return layers.layer_norm(x, name="missing", reuse=True)

    with pytest.raises(ValueError, match="missing/gamma does not exist"):
        js.init(fn, jax.random.key(0), _x((2, 3)))


def test_layer_norm_regularizers():
    x = _x((2, 3))

    def fn(x):
        layers.layer_norm(
            x, gamma_regularizer=lambda g: jnp.sum(g**2),
            beta_regularizer=lambda b: 2.0 * jnp.sum(jnp.abs(b)),
        )  # fmt: skip
        return js.get_regularization_loss()

    init = js.initializers.constant([1.0, 2.0, 3.0])

    def fn_init(x):
        return layers.layer_norm(x, gamma_initializer=init, beta_initializer=init)

    v = _init(fn_init, x)
    assert float(js.apply(fn, v, x)) == pytest.approx(14.0 + 12.0)


@pytest.mark.parametrize(
    "layer", [layers.layer_norm, layers.rms_norm, layers.batch_norm]
)
@pytest.mark.parametrize("axis,msg", [(3, "axis 3 is out of range"), ((1, -1), "")])
def test_norm_axis_errors(layer, axis, msg):
    def fn(x):
        with js.variable_scope("net"):
            return layer(x, axis=axis)

    match = msg or "repeats an axis"
    kind = {
        layers.layer_norm: "layer_normalization",
        layers.rms_norm: "rms_norm",
        layers.batch_norm: "batch_normalization",
    }[layer]
    with pytest.raises(ValueError, match=f"net/{kind}.*{match}"):
        js.init(fn, jax.random.key(0), _x((2, 3)))


@pytest.mark.parametrize("layer", [layers.layer_norm, layers.rms_norm])
def test_norm_type_errors(layer):
    with pytest.raises(TypeError, match="inputs must be floating point"):
        js.init(layer, jax.random.key(0), jnp.ones((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="axis must be an int"):
        js.init(layer, jax.random.key(0), _x((2, 3)), axis="last")


# -------------------------------------------------------------------- rms_norm


@pytest.mark.parametrize(
    "shape,axis,dtype",
    [((4, 6), -1, F32), ((2, 3, 5), (1, 2), F32), ((2, 3, 5), 1, BF16)],
)
def test_rms_norm_matches_flax(shape, axis, dtype):
    x = _x(shape, dtype)

    def fn(x):
        return layers.rms_norm(x, axis=axis, dtype=dtype, scale_initializer=RANDN)

    v = _init(fn, x, seed=3)
    assert list(js.flatten(v)) == ["params/rms_norm/scale"]
    flax_rms = nn.RMSNorm(
        reduction_axes=axis, feature_axes=axis, param_dtype=dtype
    )  # default epsilon 1e-6, as ours

    def ours(p, x):
        return js.apply(fn, {"params": {"rms_norm": p}}, x)

    def theirs(p, x):
        return flax_rms.apply({"params": {"scale": p["scale"]}}, x)

    _check_against(ours, theirs, (v["params"]["rms_norm"], x), dtype)


def test_rms_norm_without_scale_and_names():
    x = _x((3, 4), scale=0.01, shift=0.0)

    def fn(x):
        a = layers.rms_norm(x, scale=False)
        b = layers.rms_norm(x)
        c = layers.rms_norm(x, name="rms_norm_1", reuse=True)
        return a, b, c

    (a, b, c), v = js.init_with_output(fn, jax.random.key(0), x)
    # The first call opened ``rms_norm`` (without variables), so the second is _1.
    assert list(js.flatten(v)) == ["params/rms_norm_1/scale"]
    want = x / jnp.sqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6)
    a, b, c = js.apply(fn, v, x)
    _close(a, want)
    _close(b, want)
    np.testing.assert_array_equal(b, c)


# ------------------------------------------------------------------ group_norm


@pytest.mark.parametrize(
    "shape,groups,dtype",
    [
        ((2, 8), 4, F32),
        ((2, 5, 6), 3, BF16),
        ((2, 3, 4, 8), 2, F32),
        ((2, 4, 6), 6, F32),
    ],
)
def test_group_norm_matches_flax(shape, groups, dtype):
    x = _x(shape, dtype)

    def fn(x):
        return layers.group_norm(
            x, groups=groups, epsilon=1e-5, dtype=dtype,
            gamma_initializer=RANDN, beta_initializer=RANDN,
        )  # fmt: skip

    v = _init(fn, x, seed=4)
    flax_gn = nn.GroupNorm(
        num_groups=groups, epsilon=1e-5, param_dtype=dtype, use_fast_variance=False
    )

    def ours(p, x):
        return js.apply(fn, {"params": {"group_normalization": p}}, x)

    def theirs(p, x):
        return flax_gn.apply({"params": {"scale": p["gamma"], "bias": p["beta"]}}, x)

    _check_against(ours, theirs, (v["params"]["group_normalization"], x), dtype)


def _group_norm_ref(x, groups, axis, gamma, beta, eps):
    xt = jnp.moveaxis(x, axis, -1)
    n, c = xt.shape[0], xt.shape[-1]
    g = xt.reshape(n, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + eps)).reshape(xt.shape) * gamma + beta
    return jnp.moveaxis(y, -1, axis)


@pytest.mark.parametrize("axis", [1, -2])
def test_group_norm_channel_axis_matches_jnp(axis):
    x = _x((2, 6, 3, 5), scale=0.05)
    kwargs = {"groups": 3, "axis": axis}
    init = {"gamma_initializer": RANDN, "beta_initializer": RANDN}
    v = _init(layers.group_norm, x, **kwargs, **init, seed=5)
    p = v["params"]["group_normalization"]
    c = x.shape[axis]
    assert p["gamma"].shape == p["beta"].shape == (c,)

    def ours(p, x):
        return js.apply(layers.group_norm, {"params": {"group_normalization": p}}, x,
                        **kwargs)  # fmt: skip

    def ref(p, x):
        return _group_norm_ref(x, 3, axis, p["gamma"], p["beta"], 1e-3)

    _check_against(ours, ref, (p, x))


def test_group_norm_one_group_is_layer_norm_over_non_batch_axes():
    x = _x((3, 4, 6))
    v = _init(layers.group_norm, x, groups=1)
    y = js.apply(layers.group_norm, v, x, groups=1)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    _close(y, (x - mean) / jnp.sqrt(var + 1e-3))


@pytest.mark.parametrize(
    "shape,kwargs,err,msg",
    [
        (
            (2, 6),
            {"groups": 4},
            ValueError,
            "groups=4 must be positive and divide the 6",
        ),
        ((2, 6), {"groups": 0}, ValueError, "groups=0 must be positive"),
        ((2, 6), {"groups": 2.0}, TypeError, "groups must be an int"),
        ((2, 6), {"groups": 2, "axis": 0}, ValueError, "axis 0 is the batch axis"),
        ((6,), {"groups": 2}, ValueError, "rank >= 2"),
        ((2, 6), {"groups": 2, "axis": 2}, ValueError, "out of range"),
    ],
)
def test_group_norm_errors(shape, kwargs, err, msg):
    def fn(x):
        with js.variable_scope("net"):
            return layers.group_norm(x, **kwargs)

    with pytest.raises(err, match=f"Layer net/group_normalization: .*{msg}"):
        js.init(fn, jax.random.key(0), _x(shape))


def test_group_norm_default_groups_and_names():
    x = _x((2, 64))

    def fn(x):
        return layers.group_norm(layers.group_norm(x), name="gn")

    v = js.init(fn, jax.random.key(0), x)  # eager: jit sorts dict keys
    assert list(js.flatten(v)) == [
        "params/group_normalization/gamma",
        "params/group_normalization/beta",
        "params/gn/gamma",
        "params/gn/beta",
    ]
    y = js.apply(layers.group_norm, {"params": {"group_normalization": v["params"][
        "group_normalization"]}}, x)  # fmt: skip
    _close(y, _group_norm_ref(x, 32, -1, 1.0, 0.0, 1e-3))  # 32 groups by default


# ------------------------------------------------------------------ batch_norm


def _bn_vars(c, seed=7, dtype=F32):
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "params": {
            "batch_normalization": {
                "gamma": (jax.random.normal(k[0], (c,)) + 1.0).astype(dtype),
                "beta": jax.random.normal(k[1], (c,)).astype(dtype),
            }
        },
        "state": {
            "batch_normalization": {
                "moving_mean": jax.random.normal(k[2], (c,)),
                "moving_variance": jax.random.uniform(k[3], (c,)) + 0.5,
            }
        },
    }


def _to_flax(v):
    p = v["params"]["batch_normalization"]
    s = v["state"]["batch_normalization"]
    return {
        "params": {"scale": p["gamma"], "bias": p["beta"]},
        "batch_stats": {"mean": s["moving_mean"], "var": s["moving_variance"]},
    }


def test_batch_norm_variables_and_collections():
    x = _x((4, 3))
    v = js.init(lambda x: layers.batch_norm(x, dtype=BF16), jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v) == {
        "params": {
            "batch_normalization": {"gamma": ((3,), BF16), "beta": ((3,), BF16)}
        },
        "state": {
            "batch_normalization": {
                "moving_mean": ((3,), F32),
                "moving_variance": ((3,), F32),
            }
        },
    }
    s = v["state"]["batch_normalization"]
    np.testing.assert_array_equal(s["moving_mean"], np.zeros(3))
    np.testing.assert_array_equal(s["moving_variance"], np.ones(3))


@pytest.mark.parametrize(
    "shape,dtype", [((5, 3), F32), ((2, 4, 3), BF16), ((2, 3, 2, 4), F32)]
)
def test_batch_norm_inference_matches_flax(shape, dtype):
    x = _x(shape, dtype)
    v = _bn_vars(shape[-1], dtype=dtype)
    init = _init(layers.batch_norm, x, dtype=dtype)
    meta = functools.partial(jax.tree.map, lambda a: (a.shape, a.dtype))
    assert meta(init) == meta(v)
    flax_bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3, param_dtype=dtype)

    def ours(p, x):
        return js.apply(
            layers.batch_norm, {**v, "params": p}, x, training=False, dtype=dtype
        )

    def theirs(p, x):
        return flax_bn.apply(_to_flax({**v, "params": p}), x)

    _check_against(ours, theirs, (v["params"], x), dtype)


@pytest.mark.parametrize(
    "shape,dtype", [((6, 3), F32), ((2, 4, 5), BF16), ((3, 2, 2, 4), F32)]
)
def test_batch_norm_training_matches_flax(shape, dtype):
    x = _x(shape, dtype)
    v = _bn_vars(shape[-1], dtype=dtype)
    flax_bn = nn.BatchNorm(
        use_running_average=False, momentum=0.9, epsilon=1e-3, param_dtype=dtype,
        use_fast_variance=False,
    )  # fmt: skip

    def ours_full(p, x):
        # fused=False: the biased batch variance, as Flax (TF1's fused kernel,
        # jscope's default for 4-D inputs, takes the unbiased one).
        return js.apply(
            layers.batch_norm, {**v, "params": p}, x, training=True, momentum=0.9,
            dtype=dtype, mutable=["state"], fused=False,
        )  # fmt: skip

    def theirs_full(p, x):
        y, upd = flax_bn.apply(_to_flax({**v, "params": p}), x, mutable=["batch_stats"])
        stats = upd["batch_stats"]
        state = {"moving_mean": stats["mean"], "moving_variance": stats["var"]}
        return y, {"params": p, "state": {"batch_normalization": state}}

    # Outputs, updated statistics and gradients through the batch statistics.
    _check_against(ours_full, theirs_full, (v["params"], x), dtype)
    # The rule itself: momentum * moving + (1 - momentum) * batch statistics.
    y, new = _no_mutation(lambda v, x: ours_full(v["params"], x))(v, x)
    jax.tree.map(np.testing.assert_array_equal, new["params"], v["params"])
    xf = x.astype(F32).reshape(-1, shape[-1])
    old = v["state"]["batch_normalization"]
    s = new["state"]["batch_normalization"]
    _close(s["moving_mean"], 0.9 * old["moving_mean"] + 0.1 * xf.mean(0), dtype)
    want_var = 0.9 * old["moving_variance"] + 0.1 * xf.var(0)
    _close(s["moving_variance"], want_var, dtype)


def test_batch_norm_several_steps_match_flax():
    x0 = _x((8, 4))
    v = _init(layers.batch_norm, x0)
    fv = {"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
          "batch_stats": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}  # fmt: skip
    flax_bn = nn.BatchNorm(use_running_average=False, epsilon=1e-3,
                           use_fast_variance=False)  # fmt: skip
    step = jax.jit(
        lambda v, x: js.apply(layers.batch_norm, v, x, training=True, mutable=["state"])
    )
    for i in range(3):
        x = _x((8, 4), seed=10 + i, shift=float(i))
        y, v = step(v, x)
        fy, upd = flax_bn.apply(fv, x, mutable=["batch_stats"])
        fv = {**fv, **upd}
        _close(y, fy)
    s = v["state"]["batch_normalization"]
    _close(s["moving_mean"], fv["batch_stats"]["mean"])
    _close(s["moving_variance"], fv["batch_stats"]["var"])
    # Inference with the learnt statistics matches too.
    y = js.apply(layers.batch_norm, v, x0)
    _close(y, nn.BatchNorm(use_running_average=True, epsilon=1e-3).apply(fv, x0))


def test_batch_norm_init_does_not_update_and_uses_batch_statistics():
    x = _x((6, 3), shift=5.0)
    y, v = js.init_with_output(
        lambda x: layers.batch_norm(x, training=True), jax.random.key(0), x
    )
    s = v["state"]["batch_normalization"]
    np.testing.assert_array_equal(s["moving_mean"], np.zeros(3))
    np.testing.assert_array_equal(s["moving_variance"], np.ones(3))
    mean, var = x.mean(0), x.var(0)
    _close(y, (x - mean) / jnp.sqrt(var + 1e-3))


@pytest.mark.parametrize("scope", [None, "net"])
def test_batch_norm_training_needs_mutable_state(scope):
    x = _x((4, 3))

    def fn(x, training=True):
        with js.variable_scope(scope, default_name="net"):
            return layers.batch_norm(x, training=training)

    v = js.init(fn, jax.random.key(0), x)
    path = "net/batch_normalization/moving_mean"
    with pytest.raises(
        js.errors.NotMutableError, match=rf"{path}.*mutable=\['state'\]"
    ):
        js.apply(fn, v, x)
    with pytest.raises(ValueError, match="training=False"):
        js.apply(fn, v, x, mutable=["params"])
    # Without training the statistics are only read: no mutable collection needed.
    y = js.apply(fn, v, x, False)
    _close(y, x / jnp.sqrt(1.0 + 1e-3))


def test_batch_norm_training_must_be_a_python_bool():
    x = _x((4, 3))
    with pytest.raises(TypeError, match="batch_normalization: .*training must be a"):
        js.init(layers.batch_norm, jax.random.key(0), x, training=jnp.array(True))


@pytest.mark.parametrize("axis", [1, (1, 3)])
def test_batch_norm_other_axes_match_jnp(axis):
    x = _x((4, 3, 2, 5))
    red = tuple(a for a in range(4) if a not in np.atleast_1d(axis))
    v = _init(layers.batch_norm, x, axis=axis)
    v = jax.tree.map(lambda a: a + 0.5, v)
    (y, upd) = js.apply(layers.batch_norm, v, x, training=True, axis=axis,
                        momentum=0.5, mutable=True)  # fmt: skip
    p = v["params"]["batch_normalization"]
    pshape = tuple(x.shape[a] for a in np.atleast_1d(axis))
    assert p["gamma"].shape == pshape
    bshape = [x.shape[a] if a not in red else 1 for a in range(4)]
    mean = x.mean(red, keepdims=True)
    var = ((x - mean) ** 2).mean(red, keepdims=True)
    want = (x - mean) / jnp.sqrt(var + 1e-3) * p["gamma"].reshape(bshape)
    _close(y, want + p["beta"].reshape(bshape))
    s = upd["state"]["batch_normalization"]
    _close(s["moving_mean"], 0.5 * 0.5 + 0.5 * mean.reshape(pshape))
    # Axis 1 of 4-D inputs is what TF1 fused: the unbiased variance (DESIGN §5.6).
    n = np.prod([x.shape[a] for a in red])
    stat = var * n / (n - 1) if axis == 1 else var
    _close(s["moving_variance"], 0.5 * 1.5 + 0.5 * stat.reshape(pshape))
    assert upd["params"] == v["params"]


def test_batch_norm_state_is_carried_through_scan():
    """In js.scan the statistics are shared and updated from step to step."""
    xs = jnp.stack([_x((6, 3), seed=i, shift=float(i)) for i in range(4)])

    def scanned(xs):
        def body(c, x):
            return c, layers.batch_norm(x, training=True, momentum=0.8)

        return js.scan(body)(0, xs)[1]

    def looped(xs):
        ys = []
        for i in range(xs.shape[0]):
            ys.append(layers.batch_norm(
                xs[i], training=True, momentum=0.8, name="batch_normalization",
                reuse=True if i else None,
            ))  # fmt: skip
        return jnp.stack(ys)

    v1 = _init(scanned, xs)
    v2 = _init(looped, xs)
    jax.tree.map(np.testing.assert_array_equal, v1, v2)
    v1 = jax.tree.map(lambda a: a + 0.3, v1)
    y1, u1 = js.apply(scanned, v1, xs, mutable=["state"])
    y2, u2 = js.apply(looped, v1, xs, mutable=["state"])
    _close(y1, y2)
    _tree_close(u1, u2)
    mm = 0.3
    for i in range(4):
        mm = 0.8 * mm + 0.2 * xs[i].mean(0)
    _close(u1["state"]["batch_normalization"]["moving_mean"], mm)
    # Gradients flow through the scanned batch statistics as through the loop.
    ct = jax.random.normal(jax.random.key(1), xs.shape)

    def loss(f):
        return lambda p: jnp.sum(js.apply(f, {**v1, "params": p}, xs,
                                          mutable=["state"])[0] * ct)  # fmt: skip

    _tree_close(jax.grad(loss(scanned))(v1["params"]),
                jax.grad(loss(looped))(v1["params"]))  # fmt: skip


def test_batch_norm_names_and_reuse():
    x = _x((4, 3))

    def fn(x, training):
        a = layers.batch_norm(x, training=training)
        b = layers.batch_norm(x, training=training)
        c = layers.batch_norm(x, training=training, name="batch_normalization",
                              reuse=True)  # fmt: skip
        return a, b, c

    v = js.init(fn, jax.random.key(0), x, False)
    assert list(js.flatten(v)) == [
        "params/batch_normalization/gamma",
        "params/batch_normalization/beta",
        "params/batch_normalization_1/gamma",
        "params/batch_normalization_1/beta",
        "state/batch_normalization/moving_mean",
        "state/batch_normalization/moving_variance",
        "state/batch_normalization_1/moving_mean",
        "state/batch_normalization_1/moving_variance",
    ]
    (a, b, c), upd = js.apply(fn, v, x, True, mutable=["state"])
    np.testing.assert_array_equal(a, c)
    # The shared layer is updated twice (its second call sees the first update).
    m = v["state"]["batch_normalization"]["moving_mean"]
    m = 0.99 * (0.99 * m + 0.01 * x.mean(0)) + 0.01 * x.mean(0)
    _close(upd["state"]["batch_normalization"]["moving_mean"], m)
    m1 = 0.01 * x.mean(0)
    _close(upd["state"]["batch_normalization_1"]["moving_mean"], m1)


def _cast_all(getter, name, *args, **kwargs):
    return getter(name, *args, **kwargs).astype(BF16)


def _cast_trainable(getter, name, *args, trainable=True, **kwargs):
    """TF1's mixed-precision getter: float32 storage, trainable ones cast."""
    value = getter(name, *args, trainable=trainable, **kwargs)
    return value.astype(BF16) if trainable else value


@pytest.mark.parametrize("getter,tol", [(_cast_trainable, 1e-6), (_cast_all, 1e-2)])
def test_batch_norm_with_a_casting_custom_getter(getter, tol):
    """Mixed precision: the getter casts to bfloat16; the statistics stay float32."""

    def fn(x):
        with js.variable_scope("mp", custom_getter=getter):
            return layers.batch_norm(x, training=True)

    x = _x((8, 4))
    v = js.init(fn, jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(v)} == {np.dtype(F32)}
    for _ in range(2):
        y, v = js.apply(fn, v, x, mutable=["state"])
    assert y.dtype == BF16  # the dtype gamma and beta are read in
    s = v["state"]["mp"]["batch_normalization"]
    assert s["moving_mean"].dtype == s["moving_variance"].dtype == F32
    # Two updates: 1 - 0.99**2 of the batch statistics. Statistics read in
    # float32 keep float32 precision; read in bfloat16 they are rounded.
    np.testing.assert_allclose(s["moving_mean"], 0.0199 * x.mean(0), rtol=tol)
    want_var = 0.9801 + 0.0199 * x.var(0)
    np.testing.assert_allclose(s["moving_variance"], want_var, rtol=tol)
    _close((x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-3), y, BF16)
