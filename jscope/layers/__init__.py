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
from jscope.layers._conv import conv1d as conv1d
from jscope.layers._conv import conv1d_transpose as conv1d_transpose
from jscope.layers._conv import conv2d as conv2d
from jscope.layers._conv import conv2d_transpose as conv2d_transpose
from jscope.layers._conv import conv3d as conv3d
from jscope.layers._conv import conv3d_transpose as conv3d_transpose
from jscope.layers._dense import dense as dense
from jscope.layers._embedding import embedding as embedding
from jscope.layers._embedding import embedding_attend as embedding_attend
from jscope.layers._norm import batch_norm as batch_norm
from jscope.layers._norm import group_norm as group_norm
from jscope.layers._norm import layer_norm as layer_norm
from jscope.layers._norm import rms_norm as rms_norm
from jscope.layers._recurrent import gru_cell as gru_cell
from jscope.layers._recurrent import gru_zero_state as gru_zero_state
from jscope.layers._recurrent import lstm_cell as lstm_cell
from jscope.layers._recurrent import lstm_zero_state as lstm_zero_state
from jscope.layers._recurrent import rnn as rnn

__all__: list[str] = [
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "batch_norm",
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
]
