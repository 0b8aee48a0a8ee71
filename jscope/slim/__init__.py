"""tf-slim (``tf.contrib.layers``) for jscope: ``import jscope.slim as slim``.

The layers are plain functions with tf-slim's names, signatures, defaults,
variable names (``Conv/weights``, ``fully_connected/biases``,
``BatchNorm/moving_mean``, ``LayerNorm/beta``), creation order and numerics, so
that a TF1 slim model ports by changing its imports and loads its TF1
checkpoint with `jscope.tf1.restore`. ``arg_scope`` sets default arguments of
functions decorated with ``add_arg_scope``, nested as in tf-slim.

What differs from TF1, on purpose:

- No graph collections: ``variables_collections`` and ``outputs_collections``
  must be None (return end points from the model function instead), and
  ``batch_norm`` assigns its moving statistics in place whatever
  ``updates_collections`` says (see `batch_norm`).
- ``is_training`` is a Python bool, fixed when the function is traced.
- An argument given in the call by position wins over the ``arg_scope`` (TF1
  raised ``TypeError``), and ``arg_scope`` checks the argument names when it
  opens (TF1 failed at the call).
- ``dropout`` draws its mask from jax's random keys, not TF1's.
"""

from jscope._src.slim.arg_scope import add_arg_scope as add_arg_scope
from jscope._src.slim.arg_scope import arg_scope as arg_scope
from jscope._src.slim.arg_scope import arg_scope_func_key as arg_scope_func_key
from jscope._src.slim.arg_scope import arg_scoped_arguments as arg_scoped_arguments
from jscope._src.slim.arg_scope import current_arg_scope as current_arg_scope
from jscope._src.slim.arg_scope import has_arg_scope as has_arg_scope
from jscope._src.slim.basic import avg_pool2d as avg_pool2d
from jscope._src.slim.basic import dropout as dropout
from jscope._src.slim.basic import flatten as flatten
from jscope._src.slim.basic import l1_regularizer as l1_regularizer
from jscope._src.slim.basic import l2_regularizer as l2_regularizer
from jscope._src.slim.basic import max_pool2d as max_pool2d
from jscope._src.slim.basic import repeat as repeat
from jscope._src.slim.basic import stack as stack
from jscope._src.slim.basic import (
    variance_scaling_initializer as variance_scaling_initializer,
)
from jscope._src.slim.basic import xavier_initializer as xavier_initializer
from jscope._src.slim.layers import conv2d as conv2d
from jscope._src.slim.layers import conv2d_transpose as conv2d_transpose
from jscope._src.slim.layers import convolution2d as convolution2d
from jscope._src.slim.layers import (
    convolution2d_transpose as convolution2d_transpose,
)
from jscope._src.slim.layers import fully_connected as fully_connected
from jscope._src.slim.layers import separable_conv2d as separable_conv2d
from jscope._src.slim.layers import (
    separable_convolution2d as separable_convolution2d,
)
from jscope._src.slim.norm import batch_norm as batch_norm
from jscope._src.slim.norm import layer_norm as layer_norm

__all__ = [
    "add_arg_scope",
    "arg_scope",
    "arg_scope_func_key",
    "arg_scoped_arguments",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_transpose",
    "convolution2d",
    "convolution2d_transpose",
    "current_arg_scope",
    "dropout",
    "flatten",
    "fully_connected",
    "has_arg_scope",
    "l1_regularizer",
    "l2_regularizer",
    "layer_norm",
    "max_pool2d",
    "repeat",
    "separable_conv2d",
    "separable_convolution2d",
    "stack",
    "variance_scaling_initializer",
    "xavier_initializer",
]


# help(), reprs and the API reference name each function by this module, where
# pickle finds it too.
def _set_module() -> None:
    for name in __all__:
        if globals()[name].__module__.startswith("jscope._src."):
            globals()[name].__module__ = __name__


_set_module()
