"""Layers in the spirit of ``tf.layers``, written with jscope's public API only.

Every layer is a plain function taking ``name=None, reuse=None``; it opens
``js.variable_scope(name, default_name=<kind>, reuse=reuse)``, so variables are
named as TF1 named them (``dense/kernel``, ``dense_1/bias``, ...), and sharing a
layer is calling it again with the same ``name`` and ``reuse=True``.

A bad argument or input raises `jscope.errors.LayerArgumentError` (a
``ValueError``) or `jscope.errors.LayerTypeError` (a ``TypeError``) whose message
starts with the layer's scope path (``Layer net/dense_1: ...``); the checks and
their messages live in ``_checks.py``.

The variants of one layer (``conv1d``/``conv2d``/``conv3d`` and their transposes,
``max_pool1d``/``2d``/``3d``, ``avg_pool*``, ``layer_norm``/``rms_norm``/
``group_norm``, ``lstm_cell``/``gru_cell``) repeat their full TF1 signatures and
docstrings on purpose, each around one shared private implementation: each is read
on its own, in help(), an IDE or the docs, as ``tf.layers`` users know it.

Logical axes. Every layer names the dimensions of its variables with logical
axes, for `js.ShardingRules` to map to mesh axes (DESIGN §8; `js.get_variable`'s
``axes=``). Each variable's names are an argument of its layer, ``<variable>_axes``
(``kernel_axes=``, ``bias_axes=``, ``gamma_axes=``, ...), a tuple of one str or
None per dimension; None for the argument means no names (the variable is
replicated unless a ``paths`` rule matches it). A tuple whose length is not the
variable's rank is a `jscope.errors.LayerArgumentError` naming the variable.
Rules with an ``axes`` table must map every name the model's layers use (to a
mesh axis, or to None to replicate): an unknown name is a
`jscope.errors.ShardingError`. Rules without one ignore the names.
The defaults, in one table (``conv`` is ``conv1d``/``2d``/``3d`` and ``n`` their
spatial axes; a norm over several axes names its last one ``"embed"`` and the
others None; `gru_cell`'s ``kernel_axes`` and ``bias_axes`` name both its
``gates`` and ``candidate`` variables, `multi_head_attention`'s those of
``query``, ``key`` and ``value``, and its ``output_*`` those of ``output``)::

    layer                 argument              default
    dense                 kernel_axes           ("embed", "mlp")
    dense                 bias_axes             ("mlp",)
    conv                  kernel_axes           (None,) * n + ("conv_in", "conv_out")
    conv                  bias_axes             ("conv_out",)
    conv_transpose        kernel_axes           (None,) * n + ("conv_out", "conv_in")
    conv_transpose        bias_axes             ("conv_out",)
    separable_conv2d      depthwise_kernel_axes (None, None, "conv_in", None)
    separable_conv2d      pointwise_kernel_axes (None, None, "conv_in", "conv_out")
    separable_conv2d      bias_axes             ("conv_out",)
    embedding             embedding_axes        ("vocab", "embed")
    embedding_attend      embedding_axes        ("vocab", "embed")
    layer_norm            gamma_axes            ("embed",)
    layer_norm            beta_axes             ("embed",)
    rms_norm              scale_axes            ("embed",)
    group_norm            gamma_axes            ("embed",)
    group_norm            beta_axes             ("embed",)
    batch_norm            gamma_axes            ("embed",)
    batch_norm            beta_axes             ("embed",)
    batch_norm            moving_mean_axes      ("embed",)
    batch_norm            moving_variance_axes  ("embed",)
    batch_normalization   gamma_axes            ("embed",)
    batch_normalization   beta_axes             ("embed",)
    batch_normalization   moving_mean_axes      ("embed",)
    batch_normalization   moving_variance_axes  ("embed",)
    lstm_cell             kernel_axes           ("embed", "mlp")
    lstm_cell             bias_axes             ("mlp",)
    gru_cell              kernel_axes           ("embed", "mlp")
    gru_cell              bias_axes             ("mlp",)
    multi_head_attention  kernel_axes           ("embed", "heads", "kv")
    multi_head_attention  bias_axes             ("heads", "kv")
    multi_head_attention  output_kernel_axes    ("heads", "kv", "embed")
    multi_head_attention  output_bias_axes      ("embed",)

The names are Flax's and MaxText's, chosen so that a GPT-style transformer shards
Megatron-style with ``axes={"batch": "data", "embed": None, "mlp": "model",
"heads": "model", "kv": None, "vocab": "model"}``: the embedding table is split
over its vocabulary (as are the logits of `embedding_attend`), attention over its
heads (query/key/value by output heads, the output projection by input heads), the
first MLP ``dense`` by its outputs, and the norms are replicated. The MLP's second
``dense`` maps ``"mlp"`` back to ``"embed"``: pass it ``kernel_axes=("mlp",
"embed"), bias_axes=("embed",)`` so it is split by its inputs (with the default it
is split by its outputs too, which is correct but moves more data). Convolutions
name their channels ``"conv_in"``/``"conv_out"``, apart from a transformer's
names, so a rule for one family never shards the other by accident.

The layers compute with plain `jax.numpy` and `jax.lax` operations and leave the
sharding of their activations to XLA's propagation, so run them over a mesh whose
axes are `jax.sharding.AxisType.Auto` (``jax.make_mesh(shape, names,
axis_types=(AxisType.Auto,) * len(names))``; jax's default is explicit axes).
Over explicit axes, JAX asks for an ``out_sharding`` that the layers do not pick
for a gather from a vocabulary-sharded `embedding`, for `multi_head_attention`'s
output projection contracting sharded heads, and for a convolution with a
sharded kernel; `js.init` and `js.apply` given ``rules=`` run them over the
mesh's Auto axes for you.
"""

# Each group of layers is re-exported from its private module below.
from jscope.layers._attention import multi_head_attention as multi_head_attention
from jscope.layers._basic import avg_pool as avg_pool
from jscope.layers._basic import avg_pool1d as avg_pool1d
from jscope.layers._basic import avg_pool2d as avg_pool2d
from jscope.layers._basic import avg_pool3d as avg_pool3d
from jscope.layers._basic import dropout as dropout
from jscope.layers._basic import flatten as flatten
from jscope.layers._basic import max_pool as max_pool
from jscope.layers._basic import max_pool1d as max_pool1d
from jscope.layers._basic import max_pool2d as max_pool2d
from jscope.layers._basic import max_pool3d as max_pool3d
from jscope.layers._batch_norm import batch_norm as batch_norm
from jscope.layers._batch_norm import (
    batch_normalization as batch_normalization,
)
from jscope.layers._conv import conv1d as conv1d
from jscope.layers._conv import conv2d as conv2d
from jscope.layers._conv import conv3d as conv3d
from jscope.layers._conv_transpose import conv1d_transpose as conv1d_transpose
from jscope.layers._conv_transpose import conv2d_transpose as conv2d_transpose
from jscope.layers._conv_transpose import conv3d_transpose as conv3d_transpose
from jscope.layers._dense import dense as dense
from jscope.layers._embedding import embedding as embedding
from jscope.layers._embedding import embedding_attend as embedding_attend
from jscope.layers._norm import group_norm as group_norm
from jscope.layers._norm import layer_norm as layer_norm
from jscope.layers._norm import rms_norm as rms_norm
from jscope.layers._recurrent import gru_cell as gru_cell
from jscope.layers._recurrent import gru_zero_state as gru_zero_state
from jscope.layers._recurrent import lstm_cell as lstm_cell
from jscope.layers._recurrent import lstm_zero_state as lstm_zero_state
from jscope.layers._recurrent import rnn as rnn
from jscope.layers._separable import separable_conv2d as separable_conv2d

__all__: list[str] = [
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "batch_norm",
    "batch_normalization",
    "conv1d",
    "conv1d_transpose",
    "conv2d",
    "conv2d_transpose",
    "conv3d",
    "conv3d_transpose",
    "dense",
    "dropout",
    "embedding",
    "embedding_attend",
    "flatten",
    "group_norm",
    "gru_cell",
    "gru_zero_state",
    "layer_norm",
    "lstm_cell",
    "lstm_zero_state",
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "multi_head_attention",
    "rms_norm",
    "rnn",
    "separable_conv2d",
]


# help(), reprs and the API reference name each function by this module, where
# pickle finds it too.
def _set_module() -> None:
    for name in __all__:
        if globals()[name].__module__.startswith("jscope.layers._"):
            globals()[name].__module__ = __name__


_set_module()
