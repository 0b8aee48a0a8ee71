"""Every argument check of the layers raises a named `jscope.errors` class.

One case per raise site: the bad argument, the class it must raise (a
`LayerArgumentError` is a ``ValueError``, a `LayerTypeError` a ``TypeError``, as
TF1 raised), the layer's scope path the message and ``path`` must name, and a
phrase of the message. The same checks cover the small modules' argument errors
(names, trees, scopes, initializers).
"""

import ast
import builtins
import pathlib
import pickle
import re

import jax
import jax.numpy as jnp
import pytest

import jscope as js
from jscope import errors, layers

KEY = jax.random.key(0)
ARG, TYP = errors.LayerArgumentError, errors.LayerTypeError


def _in_net(fn, *args):
    """Runs ``fn(*args)`` in `js.init` inside the scope ``net``."""

    def body():
        with js.variable_scope("net"):
            return fn(*args)

    return lambda: js.init(body, KEY)


def _x(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _traced_dropout():
    def run(training):
        return js.init(lambda: layers.dropout(_x(2, 3), training=training), KEY)

    return jax.jit(run)(True)


def _mha(x, **kwargs):
    return _in_net(lambda: layers.multi_head_attention(x, **kwargs))


def _attend(x):
    def lm():
        with js.variable_scope("net"):
            layers.embedding(jnp.array([1, 2]), 10, 4)
            return layers.embedding_attend(x, 10, 4)

    return lambda: js.init(lm, KEY)


def _lstm(x, state, units=3):
    return _in_net(lambda: layers.lstm_cell(x, state, units))


def _rnn(xs):
    cell = lambda x, h: layers.gru_cell(x, h, 2)  # noqa: E731
    return _in_net(lambda: layers.rnn(cell, xs, jnp.zeros((2, 2))))


# name: (program, class, builtin, path the error names, phrase of the message)
LAYER_CASES = {
    # _checks.positive_int
    "dense_units_bool": (_in_net(layers.dense, _x(1, 3), True), TYP, TypeError,
                         "net/dense", "units must be an int"),
    "dense_units_float": (_in_net(layers.dense, _x(1, 3), 2.5), TYP, TypeError,
                          "net/dense", "got 2.5 of type float"),
    "dense_units_zero": (_in_net(layers.dense, _x(1, 3), 0), ARG, ValueError,
                         "net/dense", "units must be positive, got 0"),
    # _checks.rank
    "dense_scalar": (_in_net(layers.dense, _x(), 3), ARG, ValueError,
                     "net/dense", "rank >= 1"),
    "flatten_scalar": (_in_net(layers.flatten, _x()), ARG, ValueError,
                       "net/flatten", "batch axis"),
    "conv_rank": (_in_net(layers.conv2d, _x(4, 4, 2), 2, 3), ARG, ValueError,
                  "net/conv2d", "rank 4 (NHWC, channels last)"),
    "pool_rank": (_in_net(layers.max_pool, _x(4, 4), 2), ARG, ValueError,
                  "net/max_pooling", "rank 3, 4 or 5"),
    "cell_inputs_scalar": (_lstm(_x(), (jnp.zeros(3), jnp.zeros(3))), ARG,
                           ValueError, "net/lstm_cell", "rank >= 1"),
    # _checks.ints
    "conv_kernel_size_str": (_in_net(layers.conv2d, _x(1, 4, 4, 2), 2, "3"), TYP,
                             TypeError, "net/conv2d", "kernel_size must be an int"),
    "conv_strides_zero": (
        _in_net(lambda: layers.conv2d(_x(1, 4, 4, 2), 2, 3, strides=0)), ARG,
        ValueError, "net/conv2d", "strides must be an int >= 1"),
    "pool_size_length": (_in_net(layers.avg_pool2d, _x(1, 4, 4, 1), (2, 2, 2)),
                         ARG, ValueError, "net/average_pooling2d", "pool_size"),
    # _checks.padding
    "conv_padding_name": (
        _in_net(lambda: layers.conv2d(_x(1, 4, 4, 2), 2, 3, padding="FULL")), ARG,
        ValueError, "net/conv2d", "unknown padding 'FULL'"),
    "conv_padding_pairs": (
        _in_net(lambda: layers.conv2d(_x(1, 4, 4, 2), 2, 3, padding=((1, 1),))),
        ARG, ValueError, "net/conv2d", "(low, high) pairs"),
    # _checks.rate
    "dropout_rate": (_in_net(lambda: layers.dropout(_x(3), rate=1.0)), ARG,
                     ValueError, "net/dropout", "rate must be in [0, 1)"),
    "mha_dropout_rate": (_mha(_x(2, 3, 8), num_heads=2, dropout_rate=-0.1), ARG,
                         ValueError, "net/multi_head_attention",
                         "dropout_rate must be in [0, 1)"),
    # _attention
    "mha_num_heads": (_mha(_x(2, 3, 8), num_heads=0), ARG, ValueError,
                      "net/multi_head_attention", "num_heads must be positive"),
    "mha_query_rank": (_mha(_x(8), num_heads=2), ARG, ValueError,
                       "net/multi_head_attention", "query must have rank >= 2"),
    "mha_key_value": (_mha(_x(2, 3, 8), key=_x(2, 4, 8), value=_x(2, 5, 8),
                           num_heads=2), ARG, ValueError,
                      "net/multi_head_attention", "key and value must agree"),
    "mha_batch": (_mha(_x(2, 3, 8), key=_x(3, 3, 8), num_heads=2), ARG,
                  ValueError, "net/multi_head_attention", "same batch shape"),
    "mha_split": (_mha(_x(2, 3, 8), num_heads=3), ARG, ValueError,
                  "net/multi_head_attention", "cannot split 8 query features"),
    "mha_mask_dtype": (_mha(_x(2, 3, 8), num_heads=2, mask=_x(2, 3, 3)), TYP,
                       TypeError, "net/multi_head_attention", "mask must be bool"),
    "mha_mask_rank": (_mha(_x(2, 3, 8), num_heads=2, mask=jnp.ones(3, bool)), ARG,
                      ValueError, "net/multi_head_attention", "mask must have"),
    "mha_mask_broadcast": (
        _mha(_x(2, 3, 8), num_heads=2, mask=jnp.ones((2, 3, 3, 4), bool)), ARG,
        ValueError, "net/multi_head_attention", "does not broadcast"),
    # _basic
    "dropout_traced": (_traced_dropout, TYP, TypeError, "dropout",
                       "Python bool `training`"),
    "dropout_int_inputs": (_in_net(lambda: layers.dropout(_x(3, dtype=jnp.int32))),
                           ARG, ValueError, "net/dropout", "floating-point inputs"),
    "dropout_noise_shape": (
        _in_net(lambda: layers.dropout(_x(8, 5), noise_shape=(8, 2))), ARG,
        ValueError, "net/dropout", "noise_shape (8, 2) does not broadcast"),
    # _conv
    "conv_groups": (_in_net(lambda: layers.conv2d(_x(1, 4, 4, 6), 4, 3, groups=4)),
                    ARG, ValueError, "net/conv2d", "groups=4 must divide"),
    "conv_transpose_output_padding": (
        _in_net(lambda: layers.conv2d_transpose(_x(1, 4, 4, 2), 2, 3, strides=2,
                                                output_padding=2)),
        ARG, ValueError, "net/conv2d_transpose", "smaller than the stride"),
    # _embedding
    "embedding_float_ids": (_in_net(layers.embedding, _x(2), 10, 4), TYP,
                            TypeError, "net/embedding", "ids must be integers"),
    "embedding_vocab": (_in_net(layers.embedding, jnp.array([1]), 0, 4), ARG,
                        ValueError, "net/embedding", "vocab_size must be positive"),
    "embedding_attend_features": (_attend(_x(2, 5)), ARG, ValueError,
                                  "net/embedding", "net/embedding/embeddings"),
    # _norm
    "norm_int_inputs": (_in_net(layers.layer_norm, _x(2, 3, dtype=jnp.int32)), TYP,
                        TypeError, "net/layer_normalization",
                        "inputs must be floating point"),
    "norm_axis_type": (_in_net(lambda: layers.rms_norm(_x(2, 3), axis="last")),
                       TYP, TypeError, "net/rms_norm", "axis must be an int"),
    "norm_axis_empty": (_in_net(lambda: layers.layer_norm(_x(2, 3), axis=())), ARG,
                        ValueError, "net/layer_normalization",
                        "at least one axis"),
    "norm_axis_range": (_in_net(lambda: layers.batch_norm(_x(2, 3), axis=3)), ARG,
                        ValueError, "net/batch_normalization",
                        "axis 3 is out of range"),
    "norm_axis_repeat": (_in_net(lambda: layers.layer_norm(_x(2, 3), axis=(1, -1))),
                         ARG, ValueError, "net/layer_normalization",
                         "repeats an axis"),
    "group_norm_rank": (_in_net(lambda: layers.group_norm(_x(6), groups=2)), ARG,
                        ValueError, "net/group_normalization", "rank >= 2"),
    "group_norm_batch_axis": (
        _in_net(lambda: layers.group_norm(_x(2, 6), groups=2, axis=0)), ARG,
        ValueError, "net/group_normalization", "axis 0 is the batch axis"),
    "group_norm_groups_type": (
        _in_net(lambda: layers.group_norm(_x(2, 6), groups=2.0)), TYP, TypeError,
        "net/group_normalization", "groups must be an int"),
    "group_norm_groups_divide": (
        _in_net(lambda: layers.group_norm(_x(2, 6), groups=4)), ARG, ValueError,
        "net/group_normalization", "groups=4 must be positive and divide"),
    "batch_norm_training": (
        _in_net(lambda: layers.batch_norm(_x(4, 3), training=jnp.array(True))),
        TYP, TypeError, "net/batch_normalization", "training must be a Python"),
    # _recurrent
    "cell_state_shape": (_lstm(_x(2, 4), (jnp.zeros((2, 3)), jnp.zeros((2, 5)))),
                         ARG, ValueError, "net/lstm_cell",
                         "state h must have shape (2, 3)"),
    "cell_state_pair": (_lstm(_x(2, 4), jnp.zeros((2, 3))), ARG, ValueError,
                        "net/lstm_cell", "state must be a pair (c, h)"),
    "gru_units": (_in_net(lambda: layers.gru_cell(_x(2, 4), jnp.zeros((2, 3)), 2.5)),
                  TYP, TypeError, "net/gru_cell", "units must be an int"),
    "rnn_time_axis": (_rnn(jnp.zeros(3)), ARG, ValueError, "net/rnn",
                      "time axis ([batch, time, ...])"),
    "rnn_lengths": (_rnn((jnp.zeros((2, 3, 1)), jnp.zeros((2, 4, 1)))), ARG,
                    ValueError, "net/rnn", "disagree on the number of time steps"),
    # _checks.axes: one name per dimension of the variable, each a str or None
    "dense_kernel_axes_length": (
        _in_net(lambda: layers.dense(_x(1, 3), 2, kernel_axes=("embed",))), ARG,
        ValueError, "net/dense",
        "kernel_axes must name each of the 2 dimensions of net/dense/kernel of "
        "shape (3, 2), got ('embed',)"),
    "dense_bias_axes_str": (
        _in_net(lambda: layers.dense(_x(1, 3), 2, bias_axes="mlp")), TYP,
        TypeError, "net/dense", "bias_axes must be a tuple of logical axis names"),
    "dense_kernel_axes_int": (
        _in_net(lambda: layers.dense(_x(1, 3), 2, kernel_axes=("embed", 1))), TYP,
        TypeError, "net/dense", "e.g. kernel_axes=('embed', 'mlp')"),
    "conv_kernel_axes_length": (
        _in_net(lambda: layers.conv2d(_x(1, 4, 4, 2), 2, 3,
                                      kernel_axes=("conv_in", "conv_out"))),
        ARG, ValueError, "net/conv2d",
        "4 dimensions of net/conv2d/kernel of shape (3, 3, 2, 2)"),
    "conv_transpose_bias_axes_empty": (
        _in_net(lambda: layers.conv1d_transpose(_x(1, 4, 2), 2, 3, bias_axes=())),
        ARG, ValueError, "net/conv1d_transpose",
        "e.g. bias_axes=('conv_out',), or bias_axes=None for no names"),
    "embedding_axes_length": (
        _in_net(lambda: layers.embedding(jnp.array([1]), 10, 4,
                                         embedding_axes=("vocab",))),
        ARG, ValueError, "net/embedding", "net/embedding/embeddings of shape"),
    "layer_norm_gamma_axes_length": (
        _in_net(lambda: layers.layer_norm(_x(2, 3), gamma_axes=("a", "b"))), ARG,
        ValueError, "net/layer_normalization",
        "gamma_axes must name each of the 1 dimensions"),
    "layer_norm_explicit_axes_two_axes": (
        _in_net(lambda: layers.layer_norm(_x(2, 3, 4), axis=(1, 2),
                                          beta_axes=("embed",))),
        ARG, ValueError, "net/layer_normalization",
        "e.g. beta_axes=(None, 'embed')"),
    "rms_norm_scale_axes_type": (
        _in_net(lambda: layers.rms_norm(_x(2, 3), scale_axes={"embed"})), TYP,
        TypeError, "net/rms_norm", "scale_axes must be a tuple"),
    "group_norm_beta_axes_type": (
        _in_net(lambda: layers.group_norm(_x(2, 6), groups=2, beta_axes=5)), TYP,
        TypeError, "net/group_normalization", "got 5"),
    "batch_norm_moving_axes_length": (
        _in_net(lambda: layers.batch_norm(_x(2, 3),
                                          moving_variance_axes=(None, None))),
        ARG, ValueError, "net/batch_normalization",
        "net/batch_normalization/moving_variance"),
    "lstm_kernel_axes_length": (
        _in_net(lambda: layers.lstm_cell(_x(2, 4), layers.lstm_zero_state(2, 3), 3,
                                         kernel_axes=("embed",))),
        ARG, ValueError, "net/lstm_cell", "net/lstm_cell/kernel of shape (7, 12)"),
    "gru_bias_axes_length": (
        _in_net(lambda: layers.gru_cell(_x(2, 4), jnp.zeros((2, 3)), 3,
                                        bias_axes=("mlp", None))),
        ARG, ValueError, "net/gru_cell", "net/gru_cell/gates/bias of shape (6,)"),
    "mha_kernel_axes_length": (
        _mha(_x(2, 3, 8), num_heads=2, kernel_axes=("embed", "heads")), ARG,
        ValueError, "net/multi_head_attention",
        "net/multi_head_attention/query/kernel of shape (8, 2, 4)"),
    "mha_output_kernel_axes_length": (
        _mha(_x(2, 3, 8), num_heads=2, output_kernel_axes=("heads", "embed")), ARG,
        ValueError, "net/multi_head_attention",
        "output_kernel_axes must name each of the 3 dimensions of "
        "net/multi_head_attention/output/kernel"),
    "mha_output_bias_axes_type": (
        _mha(_x(2, 3, 8), num_heads=2, output_bias_axes=[("embed",)]), TYP,
        TypeError, "net/multi_head_attention", "output_bias_axes must be a tuple"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_error_is_named_class_naming_the_layer(case):
    run, cls, builtin, path, phrase = LAYER_CASES[case]
    with pytest.raises(cls) as info:
        run()
    e = info.value
    assert type(e) is cls
    assert isinstance(e, builtin) and isinstance(e, errors.JscopeError)
    message = str(e)
    assert message.startswith(f"Layer {path}: "), message
    assert e.path == path
    assert phrase in message
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == message and back.path == path


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_builtin_except_still_catches_layer_errors(case):
    """Ported ``except ValueError:`` / ``except TypeError:`` code keeps working."""
    run, cls, builtin, _, _ = LAYER_CASES[case]
    try:
        run()
    except builtin as e:
        caught = e
    else:
        pytest.fail(f"{case} raised nothing")
    assert isinstance(caught, cls)


def test_layer_errors_are_separate_from_the_other_builtin():
    assert issubclass(TYP, errors.ArgumentTypeError)
    assert not issubclass(ARG, TypeError) and not issubclass(TYP, ValueError)


# A fix is an imperative sentence: "Pass an int >= 1.", "Cast them first, ..."
_VERBS = "Pass|pass|Cast|Use|Reshape|Make|Add|Give|Mark|Choose|Name|Pad|Project"
_FIX = re.compile(rf"\b({_VERBS}|Broadcast)\b")


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_layer_message_says_how_to_fix_it(case):
    run, cls, *_ = LAYER_CASES[case]
    with pytest.raises(cls) as info:
        run()
    message = str(info.value)
    assert _FIX.search(message), message


# --------------------------------------------------- the small modules' errors

SMALL_CASES = {
    "name_not_str": (lambda: js.init(lambda: js.get_variable(3, (1,)), KEY),
                     errors.ArgumentTypeError, TypeError, "must be a str"),
    "tree_not_dict": (lambda: js.flatten([jnp.ones(2)]), errors.ArgumentTypeError,
                      TypeError, "nested dict"),
    "scope_neither": (lambda: js.variable_scope(None), errors.ArgumentTypeError,
                      TypeError, "name_or_scope or default_name"),
    "scope_type": (lambda: js.variable_scope(3), errors.ArgumentTypeError,
                   TypeError, "a str, a VariableScope or None"),
    "variance_scale": (lambda: js.initializers.variance_scaling(0.0),
                       errors.InitializerArgumentError, ValueError,
                       "positive scale, got 0.0"),
    "variance_mode": (lambda: js.initializers.variance_scaling(mode="fan"),
                      errors.InitializerArgumentError, ValueError,
                      "Invalid mode 'fan'"),
    "variance_distribution": (
        lambda: js.initializers.variance_scaling(distribution="cauchy"),
        errors.InitializerArgumentError, ValueError,
        "Invalid distribution 'cauchy'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
def test_small_module_errors_are_named_classes(case):
    run, cls, builtin, phrase = SMALL_CASES[case]
    with pytest.raises(builtin) as info:
        run()
    e = info.value
    assert type(e) is cls and isinstance(e, errors.JscopeError)
    assert phrase in str(e)
    assert "." in str(e).split(phrase, 1)[1]  # a fix follows what was found
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e)


# ------------------------------------------------------ no bare builtin raises

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMED_ONLY = [
    *sorted((ROOT / "jscope" / "layers").glob("*.py")),
    *(ROOT / "jscope" / f for f in ("initializers.py", "errors.py")),
    *(ROOT / "jscope" / "_src" / f for f in ("names.py", "tree.py", "summary.py")),
    ROOT / "jscope" / "_src" / "scope.py",
]


def _bare_raises(path):
    """``raise Name(...)`` / ``raise Name`` of a builtin exception, by line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and isinstance(
            getattr(builtins, exc.id, None), type
        ):
            found.append(f"{path.name}:{node.lineno} raise {exc.id}")
    return found


@pytest.mark.parametrize("path", NAMED_ONLY, ids=lambda p: p.name)
def test_no_bare_builtin_raise(path):
    """Each raise names a jscope.errors class (that is also the builtin)."""
    assert _bare_raises(path) == []


def test_bare_raise_finder_finds_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    if x:\n        raise ValueError('no')\n")
    assert _bare_raises(bad) == ["bad.py:3 raise ValueError"]
