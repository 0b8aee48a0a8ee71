"""The logical axes of every layer's variables: the table, defaults, overrides.

The table in ``jscope.layers``' docstring is the one place the defaults are
written; the signatures must agree with it. What a layer records is read back
through `js.partition_specs`: over an `AbstractMesh` with one size-1 mesh axis
per logical name and rules mapping each name to its own axis, a variable's
spec *is* its logical axes. Over a ``(2, 4)`` ``("data", "model")`` mesh, the
GPT rules of the table's note shard a transformer block Megatron-style.
"""

import ast
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh

import jscope as js
from jscope import layers

KEY = jax.random.key(0)
NAMES = ("embed", "mlp", "heads", "kv", "vocab", "conv_in", "conv_out")
# Each logical name to a mesh axis of its own name: the spec shows the names.
IDENTITY = js.ShardingRules(
    AbstractMesh((1,) * len(NAMES), NAMES), axes={n: n for n in NAMES}
)
GPT_AXES = {
    "batch": "data",
    "embed": None,
    "mlp": "model",
    "heads": "model",
    "kv": None,
    "vocab": "model",
}
GPT = js.ShardingRules(AbstractMesh((2, 4), ("data", "model")), axes=GPT_AXES)


def _x(*shape):
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)


def _names(spec, rank):
    """A spec as a tuple of ``rank`` entries (trailing Nones made explicit)."""
    entries = tuple(spec)
    return entries + (None,) * (rank - len(entries))


def _specs(fn, *args, rules=IDENTITY):
    """``{path without collection: spec entries}`` of ``fn``'s variables."""
    specs = js.flatten(js.partition_specs(fn, KEY, *args, rules=rules))
    shapes = js.flatten(jax.eval_shape(lambda: js.init(fn, KEY, *args)))
    assert specs.keys() == shapes.keys()
    return {
        path.split("/", 1)[1]: _names(spec, len(shapes[path].shape))
        for path, spec in specs.items()
    }


# ------------------------------------------------------------------ the table


def _table():
    """The table of ``jscope.layers``' docstring: ``{(layer, argument): default}``."""
    doc = layers.__doc__
    block = doc.split("layer                 argument              default\n")[1]
    rows = {}
    for line in block.split("\n\n")[0].splitlines():
        layer, argument, default = line.split(None, 2)
        rows[layer, argument] = default
    return rows


def _defaults(default, n):
    """A table entry as a tuple; ``n`` is a convolution's spatial axes."""
    if "* n" in default:
        _, tail = default.split(" + ")
        return (None,) * n + ast.literal_eval(tail)
    return ast.literal_eval(default)


def _functions(layer):
    """The functions a table row stands for, with their ``n``."""
    if layer == "conv":
        return [(getattr(layers, f"conv{n}d"), n) for n in (1, 2, 3)]
    if layer == "conv_transpose":
        return [(getattr(layers, f"conv{n}d_transpose"), n) for n in (1, 2, 3)]
    return [(getattr(layers, layer), 0)]


def test_the_table_is_each_signature_default():
    rows = _table()
    assert len(rows) == 32
    for (layer, argument), default in rows.items():
        for fn, n in _functions(layer):
            got = inspect.signature(fn).parameters[argument].default
            assert got == _defaults(default, n), (fn.__name__, argument)


def test_every_axes_argument_is_in_the_table_and_referenced():
    rows = _table()
    listed = {(fn.__name__, a) for (layer, a) in rows for fn, _ in _functions(layer)}
    found = set()
    for name in layers.__all__:
        fn = getattr(layers, name)
        params = inspect.signature(fn).parameters
        axes = [p for p in params if p.endswith("_axes")]
        found |= {(name, a) for a in axes}
        if axes:
            assert "`jscope.layers`" in fn.__doc__, name
            assert list(params)[-len(axes) :] == axes, name  # last: no shifts
    assert found == listed


# ------------------------------------------------- recorded axes: the defaults


def _gru(x, **kw):
    return layers.gru_cell(x, layers.gru_zero_state(2, 4), 4, **kw)


def _lstm(x, **kw):
    return layers.lstm_cell(x, layers.lstm_zero_state(2, 4), 4, **kw)


def _tied(ids, **kw):
    h = layers.embedding(ids, 16, 8, **kw)
    return layers.embedding_attend(h, 16, 8, **kw)


CONV_IO = (None, "conv_in", "conv_out")
CONV_OI = (None, "conv_out", "conv_in")
MHA = "multi_head_attention"

# name: (layer, program(x, **axes arguments), x, {variable: default axes})
CASES = {
    "dense": ("dense", lambda x, **kw: layers.dense(x, 4, **kw), _x(2, 8),
              {"dense/kernel": ("embed", "mlp"), "dense/bias": ("mlp",)}),
    "conv1d": ("conv1d", lambda x, **kw: layers.conv1d(x, 4, 3, **kw), _x(1, 5, 2),
               {"conv1d/kernel": CONV_IO, "conv1d/bias": ("conv_out",)}),
    "conv2d": ("conv2d", lambda x, **kw: layers.conv2d(x, 4, 3, **kw),
               _x(1, 5, 5, 2),
               {"conv2d/kernel": (None, *CONV_IO), "conv2d/bias": ("conv_out",)}),
    "conv3d": ("conv3d", lambda x, **kw: layers.conv3d(x, 4, 2, **kw),
               _x(1, 3, 3, 3, 2),
               {"conv3d/kernel": (None, None, *CONV_IO),
                "conv3d/bias": ("conv_out",)}),
    "conv1d_transpose": (
        "conv1d_transpose",
        lambda x, **kw: layers.conv1d_transpose(x, 4, 3, **kw), _x(1, 5, 2),
        {"conv1d_transpose/kernel": CONV_OI,
         "conv1d_transpose/bias": ("conv_out",)}),
    "conv2d_transpose": (
        "conv2d_transpose",
        lambda x, **kw: layers.conv2d_transpose(x, 4, 3, **kw), _x(1, 5, 5, 2),
        {"conv2d_transpose/kernel": (None, *CONV_OI),
         "conv2d_transpose/bias": ("conv_out",)}),
    "conv3d_transpose": (
        "conv3d_transpose",
        lambda x, **kw: layers.conv3d_transpose(x, 4, 2, **kw), _x(1, 3, 3, 3, 2),
        {"conv3d_transpose/kernel": (None, None, *CONV_OI),
         "conv3d_transpose/bias": ("conv_out",)}),
    "embedding": ("embedding",
                  lambda ids, **kw: layers.embedding(ids, 16, 8, **kw),
                  jnp.array([[1, 2]]), {"embedding/embeddings": ("vocab", "embed")}),
    "embedding_attend": (
        "embedding_attend",
        lambda x, **kw: layers.embedding_attend(x, 16, 8, reuse=js.AUTO_REUSE, **kw),
        _x(2, 8), {"embedding/embeddings": ("vocab", "embed")}),
    "embedding_tied": ("embedding_attend", _tied, jnp.array([[1, 2]]),
                       {"embedding/embeddings": ("vocab", "embed")}),
    "layer_norm": ("layer_norm", layers.layer_norm, _x(2, 8),
                   {"layer_normalization/gamma": ("embed",),
                    "layer_normalization/beta": ("embed",)}),
    "layer_norm_two_axes": (
        "layer_norm", lambda x, **kw: layers.layer_norm(x, axis=(1, 2), **kw),
        _x(2, 3, 8),
        {"layer_normalization/gamma": (None, "embed"),
         "layer_normalization/beta": (None, "embed")}),
    "rms_norm": ("rms_norm", layers.rms_norm, _x(2, 8),
                 {"rms_norm/scale": ("embed",)}),
    "rms_norm_three_axes": (
        "rms_norm", lambda x, **kw: layers.rms_norm(x, axis=(0, 1, 2), **kw),
        _x(2, 3, 8), {"rms_norm/scale": (None, None, "embed")}),
    "group_norm": ("group_norm",
                   lambda x, **kw: layers.group_norm(x, groups=2, **kw), _x(2, 8),
                   {"group_normalization/gamma": ("embed",),
                    "group_normalization/beta": ("embed",)}),
    "batch_norm": ("batch_norm", layers.batch_norm, _x(2, 8),
                   {"batch_normalization/gamma": ("embed",),
                    "batch_normalization/beta": ("embed",),
                    "batch_normalization/moving_mean": ("embed",),
                    "batch_normalization/moving_variance": ("embed",)}),
    "batch_normalization": (
        "batch_normalization", layers.batch_normalization, _x(2, 8),
        {"batch_normalization/gamma": ("embed",),
         "batch_normalization/beta": ("embed",),
         "batch_normalization/moving_mean": ("embed",),
         "batch_normalization/moving_variance": ("embed",)}),
    "separable_conv2d": (
        "separable_conv2d",
        lambda x, **kw: layers.separable_conv2d(x, 4, 3, depth_multiplier=2, **kw),
        _x(1, 5, 5, 2),
        {"separable_conv2d/depthwise_kernel": (None, None, "conv_in", None),
         "separable_conv2d/pointwise_kernel": (None, None, "conv_in", "conv_out"),
         "separable_conv2d/bias": ("conv_out",)}),
    "lstm_cell": ("lstm_cell", _lstm, _x(2, 4),
                  {"lstm_cell/kernel": ("embed", "mlp"),
                   "lstm_cell/bias": ("mlp",)}),
    "gru_cell": ("gru_cell", _gru, _x(2, 4),
                 {"gru_cell/gates/kernel": ("embed", "mlp"),
                  "gru_cell/gates/bias": ("mlp",),
                  "gru_cell/candidate/kernel": ("embed", "mlp"),
                  "gru_cell/candidate/bias": ("mlp",)}),
    "multi_head_attention": (
        MHA, lambda x, **kw: layers.multi_head_attention(x, num_heads=2, **kw),
        _x(2, 3, 8),
        {f"{MHA}/{p}/{v}": axes
         for p in ("query", "key", "value")
         for v, axes in (("kernel", ("embed", "heads", "kv")),
                         ("bias", ("heads", "kv")))}
        | {f"{MHA}/output/kernel": ("heads", "kv", "embed"),
           f"{MHA}/output/bias": ("embed",)}),
}  # fmt: skip


def _argument(variable):
    """The argument that names ``variable``'s axes."""
    parent, _, leaf = variable.rpartition("/")
    if leaf == "embeddings":
        return "embedding_axes"
    if parent.endswith("/output"):
        return f"output_{leaf}_axes"
    return f"{leaf}_axes"


def _arguments(layer):
    params = inspect.signature(getattr(layers, layer)).parameters
    return [p for p in params if p.endswith("_axes")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_variable_records_its_default_axes(case):
    _, program, x, expected = CASES[case]
    assert _specs(program, x) == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_variable_records_the_axes_passed(case):
    layer, program, x, expected = CASES[case]
    rank = {_argument(v): len(axes) for v, axes in expected.items()}
    assert sorted(rank) == sorted(_arguments(layer))
    # Other names than the defaults', distinct within each variable.
    given = {arg: tuple(reversed(NAMES))[:n] for arg, n in rank.items()}
    got = _specs(functools.partial(program, **given), x)
    assert got == {v: given[_argument(v)] for v in expected}


@pytest.mark.parametrize("case", sorted(CASES))
def test_none_records_no_names_and_the_same_variables(case):
    layer, program, x, expected = CASES[case]
    unnamed = functools.partial(program, **dict.fromkeys(_arguments(layer)))
    got = _specs(unnamed, x)
    assert got == {v: (None,) * len(axes) for v, axes in expected.items()}
    # The axes change no variable: same paths, dtypes and values, bit for bit.
    a, b = js.init(program, KEY, x), js.init(unnamed, KEY, x)
    assert list(js.flatten(a)) == list(js.flatten(b))
    for u, w in zip(js.flatten(a).values(), js.flatten(b).values(), strict=True):
        assert u.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))


def test_every_layer_with_variables_has_a_case():
    with_axes = {name for name in layers.__all__ if _arguments(name)}
    assert with_axes == {layer for layer, *_ in CASES.values()}


# ------------------------------------------------- a GPT block on a (2, 4) mesh


def _gpt_block(ids):
    """Embedding, attention and MLP blocks with pre-norms, and tied logits."""
    h = layers.embedding(ids, 16, 8)
    a = layers.multi_head_attention(layers.layer_norm(h), num_heads=4, causal=True)
    h = h + a
    m = layers.dense(layers.rms_norm(h), 32, activation=jax.nn.gelu)
    h = h + layers.dense(m, 8, kernel_axes=("mlp", "embed"), bias_axes=("embed",))
    return layers.embedding_attend(layers.layer_norm(h), 16, 8)


def test_the_gpt_rules_shard_a_transformer_block_megatron_style():
    got = _specs(_gpt_block, jnp.ones((2, 5), jnp.int32), rules=GPT)
    model = "model"
    expected = {
        "embedding/embeddings": (model, None),  # vocabulary-parallel
        "layer_normalization/gamma": (None,),
        "layer_normalization/beta": (None,),
        **{f"{MHA}/{p}/kernel": (None, model, None) for p in ("query", "key", "value")},
        **{f"{MHA}/{p}/bias": (model, None) for p in ("query", "key", "value")},
        f"{MHA}/output/kernel": (model, None, None),  # by input heads
        f"{MHA}/output/bias": (None,),
        "rms_norm/scale": (None,),
        "dense/kernel": (None, model),  # column-parallel
        "dense/bias": (model,),
        "dense_1/kernel": (model, None),  # row-parallel
        "dense_1/bias": (None,),
        "layer_normalization_1/gamma": (None,),
        "layer_normalization_1/beta": (None,),
    }
    assert got == expected


# ------------------------------------------------------------------ sharing


def test_a_shared_layer_repeats_its_axes_or_omits_them():
    def shared(x, **kw):
        layers.dense(x, 4, name="d")
        layers.dense(x, 4, name="d", reuse=True)  # the same defaults
        return layers.dense(x, 4, name="d", reuse=True, kernel_axes=None, **kw)

    x = _x(2, 8)
    assert _specs(shared, x) == {"d/kernel": ("embed", "mlp"), "d/bias": ("mlp",)}
    other = functools.partial(shared, bias_axes=("embed",))
    with pytest.raises(
        js.errors.ShardingError, match="Trying to share variable d/bias"
    ):
        js.init(other, KEY, x)


def test_a_custom_getter_sees_the_layers_axes():
    seen = {}

    def getter(next_getter, name, *args, **kwargs):
        seen[name] = kwargs.get("axes")
        return next_getter(name, *args, **kwargs)

    def fn(x):
        with js.variable_scope("net", custom_getter=getter):
            return layers.dense(x, 4, bias_axes=None)

    js.init(fn, KEY, _x(2, 8))
    assert seen == {"net/dense/kernel": ("embed", "mlp"), "net/dense/bias": None}
