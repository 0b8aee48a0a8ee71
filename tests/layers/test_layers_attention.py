"""multi_head_attention against Flax's MultiHeadDotProductAttention and jax.numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import Tolerance
from layer_checks import init_fast as _init
from layer_checks import jit_fast as _jit

import jscope as js
from jscope import layers

F32 = jnp.float32
BF16 = jnp.bfloat16
RANDN = js.initializers.random_normal(stddev=0.5)
MHA = "multi_head_attention"


def _x(shape, seed=0, dtype=F32):
    return jax.random.normal(jax.random.key(seed), shape, F32).astype(dtype)


_tol = Tolerance(bf16=(5e-2, 5e-2), other=(2e-5, 2e-5), same="shape")
_close = _tol.close
_tree_close = _tol.tree_close


def _check_against(ours, theirs, args, dtype=F32):
    """Outputs and gradients w.r.t. every argument of two ``f(*args)``.

    The loss is the output's dot product with a fixed random cotangent; both
    sides run in one `jax.jit`.
    """
    shape = jax.eval_shape(ours, *args).shape
    argnums = tuple(range(len(args)))

    def value_and_grads(f, args):
        def loss(*args):
            ct = jax.random.normal(jax.random.key(77), shape)
            return jnp.sum(f(*args).astype(F32) * ct)

        return f(*args), jax.grad(loss, argnums=argnums)(*args)

    both = _jit(lambda *a: (value_and_grads(ours, a), value_and_grads(theirs, a)))
    (y1, g1), (y2, g2) = both(*args)
    assert y1.shape == y2.shape and y1.dtype == y2.dtype
    _close(y1, y2, dtype)
    _tree_close(g1, g2, dtype)


def _to_flax(p):
    return {
        "query": p["query"],
        "key": p["key"],
        "value": p["value"],
        "out": p["output"],
    }


def _ref(p, q, k, v, mask=None, drop=None):
    """Multi-head attention written out in jax.numpy (TF/Keras equations)."""

    def proj(x, name):
        y = jnp.einsum("...tf,fhd->...thd", x, p[name]["kernel"])
        return y + p[name]["bias"] if "bias" in p[name] else y

    qh, kh, vh = proj(q, "query"), proj(k, "key"), proj(v, "value")
    logits = jnp.einsum("...qhd,...khd->...hqk", qh / np.sqrt(qh.shape[-1]), kh)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(F32).min)
    w = jax.nn.softmax(logits, axis=-1)
    if drop is not None:
        key, rate = drop
        keep = jax.random.bernoulli(key, 1.0 - rate, w.shape)
        w = jnp.where(keep, w / (1.0 - rate), 0.0)
    o = jnp.einsum("...hqk,...khd->...qhd", w, vh)
    y = jnp.einsum("...qhd,hdo->...qo", o, p["output"]["kernel"])
    return y + p["output"]["bias"] if "bias" in p["output"] else y


def _random_mask(shape, seed=5):
    m = jax.random.bernoulli(jax.random.key(seed), 0.7, shape)
    return m.at[..., 0].set(True)  # every query attends to at least one key


CASES = [
    # q shape, k shape (None: self), v shape (None: = k), heads, key_dim, out,
    # mask kind, causal, use_bias, dtype
    ((2, 4, 6), (2, 7, 10), None, 3, 4, 5, "heads1", False, True, F32),
    ((2, 3, 4), (2, 6, 5), (2, 6, 7), 2, 3, None, "per_head", False, False, F32),
    ((2, 3, 4, 6), None, None, 2, None, None, "no_heads", True, True, F32),
    ((5, 8), None, None, 2, None, None, None, True, True, BF16),
]


@pytest.mark.parametrize(
    "qs,ks,vs,heads,key_dim,out,mask_kind,causal,bias,dtype", CASES
)
def test_mha_matches_flax(
    qs, ks, vs, heads, key_dim, out, mask_kind, causal, bias, dtype
):
    q = _x(qs, 1, dtype)
    k = None if ks is None else _x(ks, 2, dtype)
    v = None if vs is None else _x(vs, 3, dtype)
    k_len = qs[-2] if ks is None else ks[-2]
    batch = qs[:-2]
    mask = None
    if mask_kind == "heads1":
        mask = _random_mask((*batch, 1, qs[-2], k_len))
    elif mask_kind == "per_head":
        mask = _random_mask((*batch, heads, qs[-2], k_len))
    elif mask_kind == "no_heads":
        mask = _random_mask((*batch, qs[-2], k_len))
    opts = {"num_heads": heads, "key_dim": key_dim, "output_dim": out, "mask": mask,
            "causal": causal, "use_bias": bias, "dtype": dtype,
            "bias_initializer": RANDN}  # fmt: skip

    def fn(q, k, v):
        return layers.multi_head_attention(q, k, v, **opts)

    var = _init(fn, q, k, v)
    p = var["params"][MHA]
    d = key_dim or qs[-1] // heads
    assert p["query"]["kernel"].shape == (qs[-1], heads, d)
    assert p["output"]["kernel"].shape == (heads, d, out or qs[-1])
    assert all(a.dtype == dtype for a in jax.tree.leaves(p))

    flax_mask = mask
    if mask_kind == "no_heads":
        flax_mask = mask[..., None, :, :]
    if causal:
        tri = jnp.tril(jnp.ones((qs[-2], k_len), bool))
        flax_mask = tri if flax_mask is None else flax_mask & tri
    flax_mha = nn.MultiHeadDotProductAttention(
        num_heads=heads, qkv_features=heads * d, out_features=out, use_bias=bias,
        dtype=dtype, param_dtype=dtype, deterministic=True, force_fp32_for_softmax=True,
    )  # fmt: skip

    def ours(p, *inputs):
        return js.apply(fn, {"params": {MHA: p}}, *inputs, *[None] * (3 - len(inputs)))

    def theirs(p, *inputs):
        return flax_mha.apply({"params": _to_flax(p)}, *inputs, mask=flax_mask)

    inputs = tuple(a for a in (q, k, v) if a is not None)
    _check_against(ours, theirs, (p, *inputs), dtype)


def test_mha_value_dim_and_output_dim_match_jnp():
    q, k, v = _x((2, 3, 4), 1), _x((2, 5, 6), 2), _x((2, 5, 3), 3)
    mask = _random_mask((2, 1, 3, 5))

    def fn(q, k, v):
        return layers.multi_head_attention(
            q, k, v, num_heads=3, key_dim=2, value_dim=5, output_dim=7, mask=mask,
            bias_initializer=RANDN,
        )  # fmt: skip

    p = _init(fn, q, k, v)["params"][MHA]
    assert jax.tree.map(jnp.shape, p) == {
        "query": {"kernel": (4, 3, 2), "bias": (3, 2)},
        "key": {"kernel": (6, 3, 2), "bias": (3, 2)},
        "value": {"kernel": (3, 3, 5), "bias": (3, 5)},
        "output": {"kernel": (3, 5, 7), "bias": (7,)},
    }
    _check_against(
        lambda p, q, k, v: js.apply(fn, {"params": {MHA: p}}, q, k, v),
        lambda p, q, k, v: _ref(p, q, k, v, mask),
        (p, q, k, v),
    )


def test_mha_attention_scores_respect_masks():
    x = _x((2, 4, 6))
    mask = jnp.array([[1, 1, 0, 0]] * 4, bool)  # [q, k]: the same for every row

    def fn(x, causal):
        return layers.multi_head_attention(
            x, num_heads=3, mask=jnp.broadcast_to(mask, (2, 4, 4)), causal=causal,
            return_attention_scores=True,
        )  # fmt: skip

    v = _init(fn, x, False)
    for causal in (False, True):
        y, w = js.apply(fn, v, x, causal)
        assert y.shape == (2, 4, 6) and w.shape == (2, 3, 4, 4)
        allowed = mask & jnp.tril(jnp.ones((4, 4), bool)) if causal else mask
        np.testing.assert_array_equal(np.asarray(w)[..., ~allowed], 0.0)
        _close(w.sum(-1), np.ones((2, 3, 4)))
        p = v["params"][MHA]
        _close(y, _ref(p, x, x, x, allowed))
    # The first query, causal, attends only to itself.
    np.testing.assert_array_equal(w[..., 0, 0], 1.0)


def test_mha_causal_with_fewer_queries_than_keys_is_top_left_aligned():
    q, kv = _x((1, 2, 4), 1), _x((1, 3, 4), 2)

    def fn(q, kv):
        return layers.multi_head_attention(
            q, kv, num_heads=1, causal=True, return_attention_scores=True
        )

    v = _init(fn, q, kv)
    y, w = js.apply(fn, v, q, kv)
    tri = jnp.tril(jnp.ones((2, 3), bool))
    np.testing.assert_array_equal(np.asarray(w[0, 0]) > 0, np.asarray(tri))
    _close(y, _ref(v["params"][MHA], q, kv, kv, tri))


def test_mha_int_mask_is_boolean():
    x = _x((1, 3, 4))
    mask_int = jnp.array([[[1, 0, 1]] * 3])

    def fn(x, mask):
        return layers.multi_head_attention(x, num_heads=2, mask=mask)

    v = _init(fn, x, mask_int)
    np.testing.assert_array_equal(
        js.apply(fn, v, x, mask_int), js.apply(fn, v, x, mask_int > 0)
    )


def test_mha_dropout():
    x = _x((2, 4, 6))

    def fn(x, training):
        return layers.multi_head_attention(
            x, num_heads=2, dropout_rate=0.4, training=training,
            bias_initializer=RANDN, return_attention_scores=True,
        )  # fmt: skip

    v = _init(fn, x, True)  # init draws its own keys
    p = v["params"][MHA]
    y_eval, w = js.apply(fn, v, x, False)  # no rng needed without training
    _close(y_eval, _ref(p, x, x, x))
    with pytest.raises(
        js.errors.MissingRngError, match="'dropout'.*multi_head_attention"
    ):
        js.apply(fn, v, x, True)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    y1, w1 = js.apply(fn, v, x, True, rngs={"dropout": k1})
    np.testing.assert_array_equal(w1, w)  # the scores are those before dropout
    np.testing.assert_array_equal(y1, js.apply(fn, v, x, True, rngs={"dropout": k1})[0])
    assert not np.allclose(y1, js.apply(fn, v, x, True, rngs={"dropout": k2})[0])
    assert not np.allclose(y1, y_eval)

    # The documented keep mask: bernoulli(next_rng_key("dropout"), 1 - rate).
    def layer_key():
        with js.variable_scope(MHA):
            return js.next_rng_key("dropout")

    key = js.apply(layer_key, {}, rngs={"dropout": k1})
    _close(y1, _ref(p, x, x, x, drop=(key, 0.4)))


def test_mha_names_defaults_and_reuse():
    x, mem = _x((2, 3, 8)), _x((2, 5, 4), 1)

    def fn(x, mem):
        a = layers.multi_head_attention(x, num_heads=2)
        b = layers.multi_head_attention(x, num_heads=2)
        with js.variable_scope("decoder"):
            c = layers.multi_head_attention(x, mem, num_heads=4, name="cross")
        d = layers.multi_head_attention(x, num_heads=2, name=MHA, reuse=True)
        return a, b, c, d

    v = js.init(fn, jax.random.key(0), x, mem)
    paths = list(js.flatten(v))
    names = ["query/kernel", "query/bias", "key/kernel", "key/bias", "value/kernel",
             "value/bias", "output/kernel", "output/bias"]  # fmt: skip
    assert paths == [
        f"params/{scope}/{n}"
        for scope in (MHA, f"{MHA}_1", "decoder/cross")
        for n in names
    ]
    p = v["params"][MHA]
    for n in ("query", "key", "value", "output"):
        np.testing.assert_array_equal(p[n]["bias"], 0.0)
        kernel = p[n]["kernel"]
        a, b, c = kernel.shape  # TF1's fans of a 3-D shape: a*b in, a*c out
        limit = np.sqrt(6.0 / (a * b + a * c))
        assert 0.5 * limit < np.abs(kernel).max() <= limit
    assert v["params"]["decoder"]["cross"]["key"]["kernel"].shape == (4, 4, 2)
    a, b, c, d = _jit(lambda v, x, mem: js.apply(fn, v, x, mem))(v, x, mem)
    np.testing.assert_array_equal(a, d)
    assert not np.allclose(a, b)
    assert c.shape == (2, 3, 8)


def test_mha_scope_dtype_and_float32_inputs():
    x = _x((1, 3, 4))

    def fn(x):
        with js.variable_scope("half", dtype=BF16):
            return layers.multi_head_attention(x, num_heads=2)

    y, v = js.init_with_output(fn, jax.random.key(0), x)
    assert y.dtype == BF16  # computed in the kernels' dtype
    p = jax.tree.map(lambda a: a.astype(F32), v["params"]["half"][MHA])
    _close(js.apply(fn, v, x), _ref(p, x, x, x), BF16)


def test_mha_stacked_in_scan_with_layer_norm():
    """A stack of attention blocks: js.scan with stacked params equals a loop."""
    x = _x((2, 4, 6))

    def block(h, _):
        return h + layers.multi_head_attention(layers.layer_norm(h), num_heads=2), None

    def stack(x):
        return js.scan(block, variable_axes={"params": 0}, length=3)(x)[0]

    v = _init(stack, x)
    assert v["params"][MHA]["query"]["kernel"].shape == (3, 6, 2, 3)
    assert v["params"]["layer_normalization"]["gamma"].shape == (3, 6)
    w = v["params"][MHA]["query"]["kernel"]
    assert not np.allclose(w[0], w[1])  # per-layer initial values
    v = jax.tree.map(lambda a: a + 0.1 * _x(a.shape, a.size), v)
    one = _jit(lambda v, h: js.apply(lambda h: block(h, None)[0], v, h))
    want = x
    for i in range(3):
        layer = jax.tree.map(lambda a, i=i: a[i], v)
        want = one(layer, want)
    _close(_jit(lambda v, x: js.apply(stack, v, x))(v, x), want)


_BAD_MASK_SHAPE = r"mask of shape \(2, 3, 3, 4\) does not broadcast to .*\(2, 2, 3, 3\)"


@pytest.mark.parametrize(
    "kwargs,err,msg",
    [
        ({"num_heads": 0}, ValueError, "num_heads must be positive, got 0"),
        ({"num_heads": 3}, ValueError, "cannot split 8 query features into"),
        ({"num_heads": 2, "key_dim": 2.5}, TypeError, "key_dim must be an int"),
        ({"num_heads": 2, "value_dim": 0}, ValueError, "value_dim must be positive"),
        ({"num_heads": 2, "dropout_rate": 1.0}, ValueError, r"dropout_rate .*\[0, 1\)"),
        ({"num_heads": 2, "mask": jnp.ones((2, 3, 3))}, TypeError, "mask must be bool"),
        ({"num_heads": 2, "mask": jnp.ones((3,), bool)}, ValueError, "mask must have"),
        ({"num_heads": 2, "mask": jnp.ones((2, 3, 3, 4), bool)}, ValueError,
         _BAD_MASK_SHAPE),
        ({"num_heads": 2, "key": jnp.ones((2, 4, 8)), "value": jnp.ones((2, 5, 8))},
         ValueError, "key and value must agree on"),
        ({"num_heads": 2, "key": jnp.ones((3, 4, 8))}, ValueError, "same batch shape"),
    ],
)  # fmt: skip
def test_mha_errors(kwargs, err, msg):
    def fn(x):
        with js.variable_scope("net"):
            return layers.multi_head_attention(x, **kwargs)

    with pytest.raises(err, match=f"Layer net/{MHA}: multi_head_attention .*{msg}"):
        js.init(fn, jax.random.key(0), _x((2, 3, 8)))


def test_mha_rank_error():
    with pytest.raises(
        ValueError, match=r"query must have rank >= 2 .* got shape \(8,\)"
    ):
        js.init(lambda x: layers.multi_head_attention(x, num_heads=2),
                jax.random.key(0), _x((8,)))  # fmt: skip
