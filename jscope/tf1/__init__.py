"""TF1 checkpoints without TensorFlow: read, restore into a tree, write.

``js.tf1.list_variables``, ``load_variable`` and ``load_checkpoint`` read the
TensorFlow V2 checkpoint format (``model.ckpt-1000.index`` and its data
shards) that ``tf.train.Saver`` and ``tf.train.Checkpoint`` write; ``restore``
reads one into a jscope variable tree by TF1 name (``model/dense/kernel`` is
``params/model/dense/kernel``); ``save_checkpoint`` writes a tree back in the
same format, which TensorFlow reads. Pure Python and NumPy: every tensor is
checked against the CRC-32C TensorFlow stored.
"""

from jscope._src.tf1.api import list_variables as list_variables
from jscope._src.tf1.api import load_checkpoint as load_checkpoint
from jscope._src.tf1.api import load_variable as load_variable
from jscope._src.tf1.api import restore as restore
from jscope._src.tf1.api import save_checkpoint as save_checkpoint

__all__ = [
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "restore",
    "save_checkpoint",
]


# help(), reprs and the API reference name each function by this module, where
# pickle finds it too.
def _set_module() -> None:
    for name in __all__:
        if globals()[name].__module__.startswith("jscope._src."):
            globals()[name].__module__ = __name__


_set_module()
