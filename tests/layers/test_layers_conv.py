"""Convolutions against Flax linen's ``nn.Conv``/``nn.ConvTranspose`` and `jax.lax`.

A transposed convolution is checked against its definition in TF1: the gradient
(`jax.vjp`) of the forward convolution whose input has the output's size, with
that size from Keras's ``deconv_output_length``.
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import path_match
from jax import lax
from layer_checks import Tolerance, check_params_and_input
from layer_checks import numpy_normal as _x

import jscope as js
from jscope import errors, layers

F32 = jnp.float32
BF16 = jnp.bfloat16
KEY = jax.random.key(0)
NORMAL = js.initializers.random_normal(stddev=0.5)
SPATIAL = {1: "W", 2: "HW", 3: "DHW"}
CONV = {1: layers.conv1d, 2: layers.conv2d, 3: layers.conv3d}
TRANSPOSE = {
    1: layers.conv1d_transpose,
    2: layers.conv2d_transpose,
    3: layers.conv3d_transpose,
}


def _check_against(ours, theirs, params, x, dtype):
    return check_params_and_input(ours, theirs, params, x, _tol(dtype))


_tol = Tolerance(bf16=(4e-2, 1e-1), other=(2e-5, 2e-5))
_close = _tol.close
_tree_close = _tol.tree_close


def _init(f, *args):
    return jax.jit(lambda k, *a: js.init(f, k, *a))(KEY, *args)


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _dn(n, kernel="IO"):
    s = SPATIAL[n]
    return f"N{s}C", f"{s}{kernel}", f"N{s}C"


# -------------------------------------------------------------- convolutions

# (n, input shape, filters, kernel_size, strides, padding, dilation, groups)
CONV_CASES = [
    (1, (2, 9, 3), 4, 3, 1, "VALID", 1, 1),
    (1, (2, 10, 4), 6, 4, 2, "SAME", 1, 2),
    (1, (2, 9, 3), 4, 3, 1, ((2, 1),), 2, 1),
    (2, (2, 7, 8, 3), 5, (3, 2), (2, 1), "SAME", 1, 1),
    (2, (2, 8, 8, 4), 4, 3, 1, "same", (2, 1), 4),
    (2, (1, 6, 7, 2), 3, 2, 3, ((1, 0), (2, 2)), 1, 1),
    (2, (2, 9, 9, 2), 3, 3, 2, "SAME", 2, 1),
    (3, (1, 5, 6, 4, 2), 3, (2, 3, 1), (1, 2, 1), "SAME", 1, 1),
    (3, (1, 4, 4, 4, 4), 2, 2, 1, "valid", 1, 2),
]
CONV_IDS = [
    "1d-valid",
    "1d-same-stride-groups",
    "1d-explicit-dilated",
    "2d-same-strided",
    "2d-depthwise-dilated",
    "2d-explicit-stride3",
    "2d-stride-and-dilation",
    "3d-same",
    "3d-groups",
]


def _flax_padding(padding):
    return padding.upper() if isinstance(padding, str) else padding


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_flax(case):
    n, shape, filters, ks, strides, padding, dilation, groups = case
    x = _x(shape)

    def f(x):
        return CONV[n](
            x, filters, ks, strides=strides, padding=padding, dilation_rate=dilation,
            groups=groups, bias_initializer=NORMAL, activation=jax.nn.relu,
        )  # fmt: skip

    kind = f"conv{n}d"
    v = _init(f, x)
    p = v["params"][kind]
    assert p["kernel"].shape == (*_tuple(ks, n), shape[-1] // groups, filters)
    assert p["bias"].shape == (filters,)
    flax_conv = nn.Conv(
        filters, _tuple(ks, n), strides=_tuple(strides, n),
        padding=_flax_padding(padding), kernel_dilation=_tuple(dilation, n),
        feature_group_count=groups,
    )  # fmt: skip

    def ours(p, x):
        return js.apply(f, {"params": {kind: p}}, x)

    def theirs(p, x):
        return jax.nn.relu(flax_conv.apply({"params": p}, x))

    _check_against(ours, theirs, p, x, F32)


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[4]], ids=CONV_IDS[1:5:3])
def test_conv_bfloat16_matches_flax(case):
    n, shape, filters, ks, strides, padding, dilation, groups = case
    x = _x(shape, BF16)

    def f(x):
        return CONV[n](
            x, filters, ks, strides=strides, padding=padding, dilation_rate=dilation,
            groups=groups, dtype=BF16, bias_initializer=NORMAL,
        )  # fmt: skip

    kind = f"conv{n}d"
    v = _init(f, x)
    p = v["params"][kind]
    assert p["kernel"].dtype == p["bias"].dtype == BF16
    flax_conv = nn.Conv(
        filters, _tuple(ks, n), strides=_tuple(strides, n),
        padding=_flax_padding(padding), kernel_dilation=_tuple(dilation, n),
        feature_group_count=groups, dtype=BF16, param_dtype=BF16,
    )  # fmt: skip
    y = _check_against(
        lambda p, x: js.apply(f, {"params": {kind: p}}, x),
        lambda p, x: flax_conv.apply({"params": p}, x),
        p, x, BF16,
    )  # fmt: skip
    assert y.dtype == BF16


def _tf_same_pads(size, k, s, d):
    """TF1's "SAME" rule, written out: output ceil(size / s), odd pad at the end."""
    k = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(
    "size,k,s,d", [(7, 2, 1, 1), (8, 4, 3, 1), (9, 3, 2, 2), (5, 6, 2, 1)]
)
def test_same_padding_follows_tf1(size, k, s, d):
    x = _x((2, size, size + 1, 3))

    def f(x):
        return layers.conv2d(x, 2, k, strides=s, padding="SAME", dilation_rate=d)

    v = _init(f, x)
    w = v["params"]["conv2d"]["kernel"]
    pads = [_tf_same_pads(size, k, s, d), _tf_same_pads(size + 1, k, s, d)]
    expected = lax.conv_general_dilated(
        x, w, (s, s), pads, rhs_dilation=(d, d), dimension_numbers=_dn(2)
    )
    y = js.apply(f, v, x)
    assert y.shape[1:3] == (-(-size // s), -(-(size + 1) // s))
    _close(y, expected)


def test_causal_conv1d():
    x = _x((2, 8, 3))

    def f(x):
        return layers.conv1d(x, 4, 3, padding="CAUSAL", dilation_rate=2)

    v = _init(f, x)
    p = v["params"]["conv1d"]
    y = js.apply(f, v, x)
    assert y.shape == (2, 8, 4)
    flax_conv = nn.Conv(4, (3,), padding="CAUSAL", kernel_dilation=(2,))
    _close(y, flax_conv.apply({"params": p}, x))
    # Output step 4 sees inputs 0..4 only.
    g = jax.grad(lambda x: jnp.sum(js.apply(f, v, x)[:, 4]))(x)
    assert np.all(np.asarray(g[:, 5:]) == 0)
    assert np.all(np.abs(np.asarray(g[:, [0, 2, 4]])) > 0)


def test_conv_matches_numpy_loop():
    """A 1-D VALID convolution written as an explicit sum."""
    x = _x((2, 6, 3))
    f = js.transform(lambda x: layers.conv1d(x, 4, 3, bias_initializer=NORMAL))
    v = f.init(KEY, x)
    w = np.asarray(v["params"]["conv1d"]["kernel"])
    b = np.asarray(v["params"]["conv1d"]["bias"])
    xn = np.asarray(x)
    expected = np.stack(
        [sum(xn[:, t + j] @ w[j] for j in range(3)) + b for t in range(4)], axis=1
    )
    np.testing.assert_allclose(f.apply(v, x), expected, rtol=1e-5, atol=1e-5)


def test_default_kernel_init_is_glorot_with_tf1_conv_fans():
    x = jnp.ones((1, 8, 8, 32))
    v = js.init(lambda x: layers.conv2d(x, 64, (3, 5), groups=2), KEY, x)
    k, b = v["params"]["conv2d"]["kernel"], v["params"]["conv2d"]["bias"]
    assert k.shape == (3, 5, 16, 64)
    fan_in, fan_out = 3 * 5 * 16, 3 * 5 * 64
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert float(jnp.max(jnp.abs(k))) <= limit
    assert float(jnp.max(jnp.abs(k))) > 0.95 * limit
    np.testing.assert_allclose(float(jnp.std(k)), limit / math.sqrt(3.0), rtol=0.03)
    np.testing.assert_array_equal(b, np.zeros(64, np.float32))


def test_conv_without_bias_and_with_regularizers():
    def f(x):
        y = layers.conv2d(
            x, 3, 2, use_bias=False, kernel_regularizer=lambda w: jnp.sum(w**2)
        )
        return y, js.get_regularization_loss()

    x = _x((1, 4, 4, 2))
    v = js.init(f, KEY, x)
    assert list(v["params"]["conv2d"]) == ["kernel"]
    w = v["params"]["conv2d"]["kernel"]
    y, reg = js.apply(f, v, x)
    _close(reg, jnp.sum(w**2))
    _close(y, lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_dn(2)))


# ---------------------------------------------------- transposed convolutions


def deconv_output_length(size, k, padding, output_padding, stride, dilation):
    """Keras's ``conv_utils.deconv_output_length``; pairs are forward padding."""
    k = k + (k - 1) * (dilation - 1)
    if output_padding is None:
        if padding == "VALID":
            return size * stride + max(k - stride, 0)
        if padding == "SAME":
            return size * stride
    pad = {"SAME": k // 2, "VALID": 0}
    if isinstance(padding, str):
        lo = hi = pad[padding]
    else:
        lo, hi = padding
    return (size - 1) * stride + k - lo - hi + (output_padding or 0)


def _transpose_ref(n, x, w, b, ks, strides, padding, out_pad, dilation):
    """TF1's conv_transpose: the input gradient of the forward convolution."""
    ks, strides = _tuple(ks, n), _tuple(strides, n)
    dilation = _tuple(dilation, n)
    out_pads = (None,) * n if out_pad is None else _tuple(out_pad, n)
    sizes = [
        deconv_output_length(
            x.shape[1 + i],
            ks[i],
            padding if isinstance(padding, str) else padding[i],
            out_pads[i],
            strides[i],
            dilation[i],
        )  # fmt: skip
        for i in range(n)
    ]
    z = jnp.zeros((x.shape[0], *sizes, w.shape[-2]), x.dtype)

    def forward(z):
        return lax.conv_general_dilated(
            z, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_dn(n)
        )

    y, vjp = jax.vjp(forward, z)
    assert y.shape == x.shape  # the forward convolution maps the output back
    return vjp(x)[0] + b


# (n, input shape, filters, kernel_size, strides, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    (2, (2, 5, 6, 3), 4, 3, 2, "SAME", None, 1),
    (2, (2, 5, 6, 3), 4, (2, 4), (2, 3), "VALID", None, 1),
    (2, (1, 4, 4, 2), 3, 3, 2, "SAME", 1, 1),
    (2, (1, 4, 5, 2), 3, 4, 2, "VALID", (1, 0), 1),
    (2, (1, 4, 4, 2), 3, 3, 1, "SAME", None, 2),
    (2, (1, 4, 4, 2), 3, 2, 3, "SAME", None, 1),
    (2, (1, 4, 4, 2), 3, 3, 2, ((1, 1), (0, 2)), None, 1),
    (2, (1, 4, 4, 2), 3, 3, 2, ((1, 1), (0, 2)), 1, 1),
    (1, (2, 7, 3), 2, 4, 2, "SAME", None, 1),
    (1, (2, 7, 3), 2, 3, 3, "VALID", 2, 1),
    (3, (1, 3, 2, 3, 2), 2, 2, 2, "SAME", None, 1),
    (3, (1, 2, 3, 2, 2), 2, (3, 2, 1), (1, 2, 2), "VALID", None, 1),
]
TRANSPOSE_IDS = [
    "2d-same",
    "2d-valid-rect",
    "2d-same-outpad",
    "2d-valid-outpad",
    "2d-same-dilated",
    "2d-same-kernel-lt-stride",
    "2d-explicit",
    "2d-explicit-outpad",
    "1d-same-even-kernel",
    "1d-valid-outpad",
    "3d-same",
    "3d-valid",
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=TRANSPOSE_IDS)
def test_conv_transpose_is_the_gradient_of_conv(case):
    n, shape, filters, ks, strides, padding, out_pad, dilation = case
    x = _x(shape)

    def f(x):
        return TRANSPOSE[n](
            x, filters, ks, strides=strides, padding=padding, output_padding=out_pad,
            dilation_rate=dilation, bias_initializer=NORMAL,
        )  # fmt: skip

    kind = f"conv{n}d_transpose"
    v = _init(f, x)
    p = v["params"][kind]
    assert p["kernel"].shape == (*_tuple(ks, n), filters, shape[-1])
    y = _check_against(
        lambda p, x: js.apply(f, {"params": {kind: p}}, x),
        lambda p, x: _transpose_ref(
            n, x, p["kernel"], p["bias"], ks, strides, padding, out_pad, dilation
        ),
        p, x, F32,
    )  # fmt: skip
    assert y.shape[-1] == filters


@pytest.mark.parametrize(
    "case",
    [c for c in TRANSPOSE_CASES if isinstance(c[5], str) and c[6] is None],
    ids=[
        i
        for c, i in zip(TRANSPOSE_CASES, TRANSPOSE_IDS, strict=True)
        if isinstance(c[5], str) and c[6] is None
    ],
)
def test_conv_transpose_matches_flax(case):
    n, shape, filters, ks, strides, padding, _, dilation = case
    x = _x(shape, seed=3)
    kind = f"conv{n}d_transpose"

    def f(x):
        return TRANSPOSE[n](
            x, filters, ks, strides=strides, padding=padding, dilation_rate=dilation
        )

    v = _init(f, x)
    flax_conv = nn.ConvTranspose(
        filters, _tuple(ks, n), strides=_tuple(strides, n), padding=padding,
        kernel_dilation=_tuple(dilation, n), transpose_kernel=True,
    )  # fmt: skip
    y = js.apply(f, v, x)
    _close(y, flax_conv.apply({"params": v["params"][kind]}, x))


def test_conv2d_transpose_bfloat16():
    x = _x((2, 4, 5, 3), BF16)

    def f(x):
        return layers.conv2d_transpose(
            x, 4, 3, strides=2, padding="SAME", dtype=BF16, bias_initializer=NORMAL
        )

    v = _init(f, x)
    p = v["params"]["conv2d_transpose"]
    assert p["kernel"].dtype == BF16
    flax_conv = nn.ConvTranspose(
        4, (3, 3), strides=(2, 2), padding="SAME", transpose_kernel=True,
        dtype=BF16, param_dtype=BF16,
    )  # fmt: skip
    y = _check_against(
        lambda p, x: js.apply(f, {"params": {"conv2d_transpose": p}}, x),
        lambda p, x: flax_conv.apply({"params": p}, x),
        p, x, BF16,
    )  # fmt: skip
    assert y.shape == (2, 8, 10, 4)
    assert y.dtype == BF16


def test_conv2d_transpose_inverts_conv2d_shapes():
    """The transpose of a strided conv2d restores the input's spatial shape."""

    def autoencoder(x):
        h = layers.conv2d(x, 8, 3, strides=2, padding="SAME")
        return layers.conv2d_transpose(h, 3, 3, strides=2, padding="SAME")

    x = _x((2, 8, 6, 3))
    v = js.init(autoencoder, KEY, x)
    assert {k: a.shape for k, a in js.flatten(v).items()} == {
        "params/conv2d/kernel": (3, 3, 3, 8),
        "params/conv2d/bias": (8,),
        "params/conv2d_transpose/kernel": (3, 3, 3, 8),
        "params/conv2d_transpose/bias": (3,),
    }
    assert js.apply(autoencoder, v, x).shape == x.shape


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_output_padding_must_be_below_the_stride(padding):
    def f(x):
        with js.variable_scope("dec"):
            return layers.conv2d_transpose(x, 2, 3, strides=2, padding=padding,
                                           output_padding=2)  # fmt: skip

    with pytest.raises(
        ValueError,
        match=path_match("must be smaller than the stride", "dec/conv2d_transpose"),
    ):
        js.init(f, KEY, jnp.ones((1, 4, 4, 2)))


def test_transpose_size_without_a_forward_conv_is_refused():
    """SAME, even kernel, stride 1, output_padding 0: TF1 has no such shape."""
    with pytest.raises(ValueError, match=path_match("maps back", "conv2d_transpose")):
        js.init(
            lambda x: layers.conv2d_transpose(
                x, 2, 2, padding="SAME", output_padding=0
            ),
            KEY,
            jnp.ones((1, 4, 4, 2)),
        )


# --------------------------------------------------------------------- names


def test_default_names_and_golden_paths():
    def cnn(x):
        h = layers.conv2d(x, 4, 3, padding="SAME")
        h = layers.conv2d(h, 4, 3, padding="SAME")
        with js.variable_scope("up"):
            h = layers.conv2d_transpose(h, 2, 2, strides=2)
        return layers.conv1d(h[:, 0], 3, 1, name="mix")

    x = _x((1, 4, 4, 2))
    v = js.init(cnn, KEY, x)
    assert list(js.flatten(v)) == [
        "params/conv2d/kernel",
        "params/conv2d/bias",
        "params/conv2d_1/kernel",
        "params/conv2d_1/bias",
        "params/up/conv2d_transpose/kernel",
        "params/up/conv2d_transpose/bias",
        "params/mix/kernel",
        "params/mix/bias",
    ]
    assert js.apply(cnn, v, x).shape == (1, 8, 3)


@pytest.mark.parametrize("fn", [layers.conv2d, layers.conv2d_transpose])
def test_reuse_shares_the_kernel(fn):
    def f(a, b):
        return fn(a, 3, 2, name="c"), fn(b, 3, 2, name="c", reuse=True)

    a, b = _x((1, 4, 4, 2), seed=1), _x((1, 4, 4, 2), seed=2)
    v = js.init(f, KEY, a, b)
    assert list(js.flatten(v)) == ["params/c/kernel", "params/c/bias"]
    ya, yb = js.apply(f, v, a, b)
    np.testing.assert_array_equal(ya, js.apply(lambda x: fn(x, 3, 2, name="c"), v, a))
    np.testing.assert_array_equal(yb, js.apply(lambda x: fn(x, 3, 2, name="c"), v, b))


def test_reuse_with_other_channels_is_a_shape_error():
    def f(a, b):
        layers.conv2d(a, 3, 2, name="c")
        return layers.conv2d(b, 3, 2, name="c", reuse=True)

    with pytest.raises(
        errors.ShapeMismatchError,
        match=path_match("Trying to share variable", "c/kernel"),
    ):
        js.init(f, KEY, jnp.ones((1, 4, 4, 2)), jnp.ones((1, 4, 4, 5)))


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn,shape,phrase",
    [
        (lambda x: layers.conv2d(x, 2, 3), (4, 4, 2), "rank 4"),
        (lambda x: layers.conv1d(x, 2, 3), (1, 4, 4, 2), "rank 3"),
        (lambda x: layers.conv3d(x, 2, 3), (1, 4, 4, 2), "rank 5"),
        (lambda x: layers.conv2d_transpose(x, 2, 3), (4, 4, 2), "rank 4"),
        (lambda x: layers.conv2d(x, 2, 3, padding="FULL"), (1, 4, 4, 2), "padding"),
        (lambda x: layers.conv2d(x, 2, 3, padding="CAUSAL"), (1, 4, 4, 2), "padding"),
        (
            lambda x: layers.conv2d(x, 2, 3, padding=((1, 1),)),
            (1, 4, 4, 2),
            "(low, high) pairs",
        ),
        (
            lambda x: layers.conv2d(x, 2, 3, padding=((1, -1), (0, 0))),
            (1, 4, 4, 2),
            "(low, high) pairs",
        ),
        (lambda x: layers.conv2d(x, 4, 3, groups=3), (1, 4, 4, 6), "must divide"),
        (lambda x: layers.conv2d(x, 4, 3, groups=4), (1, 4, 4, 6), "must divide"),
        (lambda x: layers.conv2d(x, 2, (3,)), (1, 4, 4, 2), "kernel_size"),
        (lambda x: layers.conv2d(x, 2, 3, strides=0), (1, 4, 4, 2), "strides"),
        (lambda x: layers.conv2d(x, 0, 3), (1, 4, 4, 2), "filters must be positive"),
        (
            lambda x: layers.conv2d(x, 2, 3, dilation_rate=(1, 0)),
            (1, 4, 4, 2),
            "dilation",
        ),
        (
            lambda x: layers.conv2d_transpose(x, 2, 3, padding="CAUSAL"),
            (1, 4, 4, 2),
            "padding",
        ),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_layer(fn, shape, phrase):
    def f(x):
        with js.variable_scope("net"):
            return fn(x)

    with pytest.raises(ValueError, match=r"(?s)Layer net/conv.*" + re.escape(phrase)):
        js.init(f, KEY, jnp.ones(shape))


@pytest.mark.parametrize(
    "kwargs", [{"filters": 2.5}, {"kernel_size": "3"}, {"strides": 1.0}]
)
def test_non_int_sizes_are_type_errors(kwargs):
    args = {"filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(TypeError, match=r"Layer conv2d: "):
        js.init(lambda x: layers.conv2d(x, **args), KEY, jnp.ones((1, 4, 4, 2)))


# ---------------------------------------------------------------------- scan


def test_stacked_conv_blocks_equal_a_loop_over_slices():
    depth = 3

    def block(h, _):
        return layers.conv2d(h, 4, 3, padding="SAME", activation=jnp.tanh), None

    def f(h):
        stack = js.scan(block, variable_axes={"params": 0}, length=depth)
        return stack(h)[0]

    x = _x((2, 5, 5, 4))
    v = js.init(f, KEY, x)
    p = v["params"]["conv2d"]
    assert p["kernel"].shape == (depth, 3, 3, 4, 4)
    got = jax.jit(lambda v, x: js.apply(f, v, x))(v, x)
    h = x
    for i in range(depth):
        layer = {"params": {"conv2d": {k: a[i] for k, a in p.items()}}}
        h = js.apply(lambda h: block(h, None)[0], layer, h)
    _close(got, h)
