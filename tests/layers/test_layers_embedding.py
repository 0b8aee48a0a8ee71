"""`layers.embedding` and `layers.embedding_attend` against Flax's ``nn.Embed``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import path_match
from layer_checks import Tolerance
from layer_checks import numpy_normal as _x

import jscope as js
from jscope import errors, layers

F32 = jnp.float32
BF16 = jnp.bfloat16
KEY = jax.random.key(0)
V, D = 11, 6  # vocabulary and embedding sizes


def _ids(shape, vocab=V, seed=1, dtype=jnp.int32):
    ids = np.random.default_rng(seed).integers(0, vocab, shape)
    return jnp.asarray(ids, dtype)


_tol = Tolerance(bf16=(3e-2, 5e-2), other=(1e-5, 1e-5))
_close = _tol.close


def _init(f, *args):
    return jax.jit(lambda k, *a: js.init(f, k, *a))(KEY, *args)


# ------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    "shape", [(), (7,), (2, 3, 4)], ids=["scalar", "vector", "rank3"]
)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_lookup_matches_flax(shape, dtype):
    ids = _ids(shape)

    def f(ids):
        return layers.embedding(ids, V, D, dtype=dtype)

    v = _init(f, ids)
    table = v["params"]["embedding"]["embeddings"]
    assert table.shape == (V, D)
    assert table.dtype == dtype
    embed = nn.Embed(V, D, dtype=dtype, param_dtype=dtype)
    ct = _x((*shape, D), seed=5)

    @jax.jit
    def both(table):
        ours = lambda t: js.apply(f, {"params": {"embedding": {"embeddings": t}}}, ids)  # noqa: E731
        theirs = lambda t: embed.apply({"params": {"embedding": t}}, ids)  # noqa: E731
        return [
            (g(table), jax.grad(lambda t, g=g: jnp.sum(g(t).astype(F32) * ct))(table))
            for g in (ours, theirs)
        ]

    (y1, g1), (y2, g2) = both(table)
    assert y1.shape == (*shape, D)
    assert y1.dtype == y2.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(y1, np.float32), np.asarray(y2, np.float32)
    )
    _close(g1, g2, dtype)


def test_lookup_is_row_indexing_and_gradient_accumulates_duplicates():
    ids = jnp.array([[1, 3, 1], [0, 1, 10]])
    f = js.transform(lambda ids: layers.embedding(ids, V, D))
    v = f.init(KEY, ids)
    table = np.asarray(v["params"]["embedding"]["embeddings"])
    np.testing.assert_array_equal(f.apply(v, ids), table[np.asarray(ids)])
    grad = jax.grad(lambda v: jnp.sum(f.apply(v, ids)))(v)["params"]["embedding"]
    counts = np.bincount(np.asarray(ids).ravel(), minlength=V).astype(np.float32)
    np.testing.assert_array_equal(grad["embeddings"], np.repeat(counts[:, None], D, 1))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.int16])
def test_integer_id_dtypes(dtype):
    ids = _ids((3,), dtype=dtype)
    f = js.transform(lambda ids: layers.embedding(ids, V, D))
    v = f.init(KEY, ids)
    table = v["params"]["embedding"]["embeddings"]
    np.testing.assert_array_equal(f.apply(v, ids), table[np.asarray(ids, np.int64)])


@pytest.mark.parametrize("runner", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_out_of_range_ids_give_nan_rows(runner):
    ids = jnp.array([0, V - 1, V, -1, V + 5])
    f = js.transform(lambda ids: layers.embedding(ids, V, D))
    v = f.init(KEY, ids)
    y = np.asarray(runner(f.apply)(v, ids))
    table = np.asarray(v["params"]["embedding"]["embeddings"])
    np.testing.assert_array_equal(y[:2], table[[0, V - 1]])
    assert np.all(np.isnan(y[2:]))


@pytest.mark.parametrize("ids", [jnp.ones(3), jnp.array([True, False])])
def test_non_integer_ids_are_type_errors(ids):
    def f(ids):
        with js.variable_scope("lm"):
            return layers.embedding(ids, V, D, name="tok")

    with pytest.raises(TypeError, match=path_match("must be integers", "lm/tok")):
        js.init(f, KEY, ids)


@pytest.mark.parametrize(
    "vocab,dim,error,phrase",
    [
        (0, D, ValueError, "vocab_size must be positive"),
        (V, -1, ValueError, "embed_dim must be positive"),
        (10.0, D, TypeError, "vocab_size must be an int"),
    ],
)
def test_bad_sizes(vocab, dim, error, phrase):
    with pytest.raises(error, match=path_match(phrase, "embedding")):
        js.init(lambda ids: layers.embedding(ids, vocab, dim), KEY, _ids((2,)))


# ---------------------------------------------------------- initial values


def test_default_initializer_is_normal_with_stddev_one_over_sqrt_dim():
    vocab, dim = 2000, 64
    v = js.init(lambda ids: layers.embedding(ids, vocab, dim), KEY, _ids((2,)))
    table = np.asarray(v["params"]["embedding"]["embeddings"])
    np.testing.assert_allclose(table.std(), dim**-0.5, rtol=0.02)
    assert abs(table.mean()) < 0.01 * dim**-0.5 * 10
    # Not truncated: some values lie beyond two standard deviations.
    assert np.mean(np.abs(table) > 2 * dim**-0.5) > 0.03


def test_explicit_and_scope_initializers():
    def f(ids):
        a = layers.embedding(ids, V, D, initializer=js.initializers.constant(0.25))
        with js.variable_scope("s", initializer=js.initializers.ones()):
            b = layers.embedding(ids, V, D)
        return a, b

    ids = _ids((3,))
    v = js.init(f, KEY, ids)
    np.testing.assert_array_equal(
        v["params"]["embedding"]["embeddings"], np.full((V, D), 0.25)
    )
    np.testing.assert_array_equal(
        v["params"]["s"]["embedding"]["embeddings"], np.ones((V, D))
    )
    a, b = js.apply(f, v, ids)
    np.testing.assert_array_equal(a, np.full((3, D), 0.25))
    np.testing.assert_array_equal(b, np.ones((3, D)))


def test_regularizer_and_trainable():
    def f(ids):
        layers.embedding(ids, V, D, regularizer=lambda t: jnp.sum(t**2))
        layers.embedding(ids, V, D, trainable=False)
        return js.get_regularization_loss()

    ids = _ids((3,))
    v = js.init(f, KEY, ids)
    assert list(js.flatten(v)) == [
        "params/embedding/embeddings",
        "state/embedding_1/embeddings",
    ]
    _close(js.apply(f, v, ids), jnp.sum(v["params"]["embedding"]["embeddings"] ** 2))


# --------------------------------------------------------------------- names


def test_default_names_nesting_and_reuse():
    def f(src, tgt):
        a = layers.embedding(src, V, D)
        b = layers.embedding(tgt, V + 1, D)
        with js.variable_scope("dec"):
            c = layers.embedding(tgt, V, D, name="tok")
            d = layers.embedding(src, V, D, name="tok", reuse=True)
        return a, b, c, d

    src, tgt = _ids((2, 3), seed=1), _ids((2, 3), seed=2)
    v = js.init(f, KEY, src, tgt)
    assert {k: a.shape for k, a in js.flatten(v).items()} == {
        "params/embedding/embeddings": (V, D),
        "params/embedding_1/embeddings": (V + 1, D),
        "params/dec/tok/embeddings": (V, D),
    }
    a, b, c, d = js.apply(f, v, src, tgt)
    tok = np.asarray(v["params"]["dec"]["tok"]["embeddings"])
    np.testing.assert_array_equal(c, tok[np.asarray(tgt)])
    np.testing.assert_array_equal(d, tok[np.asarray(src)])


def test_same_name_twice_already_exists():
    def f(ids):
        layers.embedding(ids, V, D, name="tok")
        return layers.embedding(ids, V, D, name="tok")

    with pytest.raises(
        errors.VariableExistsError, match=path_match("already exists", "tok/embeddings")
    ):
        js.init(f, KEY, _ids((2,)))


# ------------------------------------------------------------ tied weights


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_attend_matches_flax_and_ties_the_table(dtype):
    def lm(ids):
        h = layers.embedding(ids, V, D, dtype=dtype)
        h = jnp.tanh(h)
        return layers.embedding_attend(h, V, D, dtype=dtype)

    ids = _ids((2, 5))
    v = _init(lm, ids)
    assert list(js.flatten(v)) == ["params/embedding/embeddings"]
    table = v["params"]["embedding"]["embeddings"]
    embed = nn.Embed(V, D, dtype=dtype, param_dtype=dtype)

    def flax_lm(params, ids):
        def fwd(m, ids):
            return m.attend(jnp.tanh(m(ids)))

        return nn.apply(fwd, embed)({"params": params}, ids)

    ct = _x((2, 5, V), seed=7)

    @jax.jit
    def both(table):
        ours = lambda t: js.apply(lm, {"params": {"embedding": {"embeddings": t}}}, ids)  # noqa: E731
        theirs = lambda t: flax_lm({"embedding": t}, ids)  # noqa: E731
        return [
            (g(table), jax.grad(lambda t, g=g: jnp.sum(g(t).astype(F32) * ct))(table))
            for g in (ours, theirs)
        ]

    (y1, g1), (y2, g2) = both(table)
    assert y1.shape == (2, 5, V)
    assert y1.dtype == y2.dtype == dtype
    _close(y1, y2, dtype)
    _close(g1, g2, dtype)
    # The gradient has both paths: lookup rows and the output projection.
    np.testing.assert_array_less(0, np.abs(np.asarray(g1, np.float32)).sum(1))


def test_attend_equals_matmul_with_the_transposed_table():
    x = _x((3, 4, D))

    def f(ids, x):
        layers.embedding(ids, V, D, name="tok")
        return layers.embedding_attend(x, V, D, name="tok")

    ids = _ids((2,))
    v = js.init(f, KEY, ids, x)
    table = v["params"]["tok"]["embeddings"]
    _close(js.apply(f, v, ids, x), x @ table.T)
    _close(jax.jit(lambda v, i, x: js.apply(f, v, i, x))(v, ids, x), x @ table.T)


def test_attend_finds_the_default_named_table_in_the_current_scope():
    def f(ids):
        with js.variable_scope("model"):
            layers.embedding(ids, V, D)  # model/embedding
            h = layers.embedding(ids, V, D)  # model/embedding_1
            return layers.embedding_attend(h, V, D, name="embedding_1")

    ids = _ids((4,))
    v = js.init(f, KEY, ids)
    assert list(js.flatten(v)) == [
        "params/model/embedding/embeddings",
        "params/model/embedding_1/embeddings",
    ]
    t = v["params"]["model"]["embedding_1"]["embeddings"]
    _close(js.apply(f, v, ids), t[ids] @ t.T)


def test_attend_with_a_captured_scope():
    def f(ids):
        with js.variable_scope("vocab") as scope:
            pass
        h = layers.embedding(ids, V, D, name=scope)
        with js.variable_scope("elsewhere"):
            return layers.embedding_attend(h, V, D, name=scope)

    ids = _ids((4,))
    v = js.init(f, KEY, ids)
    assert list(js.flatten(v)) == ["params/vocab/embeddings"]
    t = v["params"]["vocab"]["embeddings"]
    _close(js.apply(f, v, ids), t[ids] @ t.T)


def test_attend_without_a_table_does_not_exist():
    with pytest.raises(
        errors.VariableNotFoundError,
        match=path_match("does not exist", "embedding/embeddings"),
    ):
        js.init(lambda x: layers.embedding_attend(x, V, D), KEY, jnp.ones((2, D)))


def test_attend_with_auto_reuse_creates_the_table():
    def f(x, ids):
        logits = layers.embedding_attend(x, V, D, reuse=js.AUTO_REUSE)
        return logits, layers.embedding(ids, V, D, name="embedding", reuse=True)

    x, ids = _x((2, D)), _ids((3,))
    v = js.init(f, KEY, x, ids)
    table = v["params"]["embedding"]["embeddings"]
    np.testing.assert_allclose(float(table.std()), D**-0.5, rtol=0.5)
    logits, rows = js.apply(f, v, x, ids)
    _close(logits, x @ table.T)
    np.testing.assert_array_equal(rows, table[ids])


def test_attend_with_a_wrong_vocab_size_is_a_shape_error():
    def f(ids):
        h = layers.embedding(ids, V, D)
        return layers.embedding_attend(h, V + 1, D)

    with pytest.raises(
        errors.ShapeMismatchError,
        match=path_match("Trying to share variable", "embedding/embeddings"),
    ):
        js.init(f, KEY, _ids((3,)))


def test_attend_inputs_must_end_in_embed_dim():
    def f(ids, x):
        layers.embedding(ids, V, D, name="tok")
        return layers.embedding_attend(x, V, D, name="tok")

    with pytest.raises(ValueError, match=path_match("embedding_attend needs", "tok")):
        js.init(f, KEY, _ids((3,)), jnp.ones((2, D + 1)))


# ---------------------------------------------------------------------- scan


def test_embedding_over_time_with_a_shared_table():
    """js.scan without variable_axes: every step reads the one table."""

    def step(h, ids_t):
        e = layers.embedding(ids_t, V, D)
        h = jnp.tanh(h + e)
        return h, layers.embedding_attend(h, V, D)

    def f(h, ids):
        return js.scan(step)(h, ids)

    ids = _ids((5, 2))  # time, batch
    h0 = jnp.zeros((2, D))
    v = js.init(f, KEY, h0, ids)
    assert list(js.flatten(v)) == ["params/embedding/embeddings"]
    t = v["params"]["embedding"]["embeddings"]
    h, logits = js.apply(f, v, h0, ids)
    expected_h = h0
    for i in range(5):
        expected_h = jnp.tanh(expected_h + t[ids[i]])
        _close(logits[i], expected_h @ t.T)
    _close(h, expected_h)


def test_stacked_embeddings_equal_a_loop_over_slices():
    def add(h, _):
        return h + layers.embedding(ids_global, V, D), None

    ids_global = _ids((4,))

    def f(h):
        return js.scan(add, variable_axes={"params": 0}, length=3)(h)[0]

    h0 = jnp.zeros((4, D))
    v = js.init(f, KEY, h0)
    t = v["params"]["embedding"]["embeddings"]
    assert t.shape == (3, V, D)
    _close(js.apply(f, v, h0), sum(t[i][ids_global] for i in range(3)))
