"""jscope: TensorFlow 1's variable model for JAX, as pure functions.

``get_variable``, ``variable_scope(reuse=...)``, ``Variable`` and ``assign`` over an
explicit variable tree of plain nested dicts, run by `init` and `apply`.
"""

import importlib
import types
from typing import TYPE_CHECKING, Any

from jscope import errors as errors
from jscope import initializers as initializers
from jscope._src.checkpoint.layout import latest_checkpoint as latest_checkpoint
from jscope._src.ema import ExponentialMovingAverage as ExponentialMovingAverage
from jscope._src.handle import Variable as Variable
from jscope._src.handle import assign as assign
from jscope._src.handle import assign_add as assign_add
from jscope._src.handle import assign_sub as assign_sub
from jscope._src.name_scopes import name_scope as name_scope
from jscope._src.rng import next_rng_key as next_rng_key
from jscope._src.run import apply as apply
from jscope._src.run import init as init
from jscope._src.run import init_with_output as init_with_output
from jscope._src.run import partition_specs as partition_specs
from jscope._src.scope import AUTO_REUSE as AUTO_REUSE
from jscope._src.scope import VariableScope as VariableScope
from jscope._src.scope import get_variable_scope as get_variable_scope
from jscope._src.scope import variable_scope as variable_scope
from jscope._src.sharding import ShardingRules as ShardingRules
from jscope._src.sharding import constrain as constrain
from jscope._src.sharding import shardings as shardings
from jscope._src.summary import Summary as Summary
from jscope._src.summary import summary as summary
from jscope._src.templates import Transformed as Transformed
from jscope._src.templates import make_template as make_template
from jscope._src.templates import transform as transform
from jscope._src.transforms import cond as cond
from jscope._src.transforms import remat as remat
from jscope._src.transforms import scan as scan
from jscope._src.transforms import vmap as vmap
from jscope._src.transforms import while_loop as while_loop
from jscope._src.tree import VariableTree as VariableTree
from jscope._src.tree import flatten as flatten
from jscope._src.tree import unflatten as unflatten
from jscope._src.variables import get_regularization_loss as get_regularization_loss
from jscope._src.variables import get_variable as get_variable
from jscope._src.variables import is_initializing as is_initializing
from jscope.errors import CheckpointCorruptError as CheckpointCorruptError
from jscope.errors import CheckpointError as CheckpointError
from jscope.errors import CheckpointLockError as CheckpointLockError
from jscope.errors import CheckpointMismatchError as CheckpointMismatchError
from jscope.errors import CheckpointNotFoundError as CheckpointNotFoundError
from jscope.errors import CheckpointTypeError as CheckpointTypeError
from jscope.errors import CheckpointWriteError as CheckpointWriteError

# Orbax (and TensorStore behind it) takes longer to import than JAX itself, so the
# names that need it are imported on first use: a program that never saves does
# not pay for it. `import jscope.tf1` and `js.tf1` work the same way.
_LAZY = {
    "Saver": "jscope._src.checkpoint.saver",
    "list_variables": "jscope._src.checkpoint.read",
    "load_variable": "jscope._src.checkpoint.read",
    "verify_checkpoint": "jscope._src.checkpoint.read",
    "tf1": "jscope.tf1",
}

if TYPE_CHECKING:
    from jscope import tf1 as tf1
    from jscope._src.checkpoint.read import list_variables as list_variables
    from jscope._src.checkpoint.read import load_variable as load_variable
    from jscope._src.checkpoint.read import verify_checkpoint as verify_checkpoint
    from jscope._src.checkpoint.saver import Saver as Saver


def _set_module(module: str, names: dict[str, Any]) -> None:
    """Names each public function and class by its public module, not `_src`.

    So that help(), reprs and tracebacks say `jscope.apply`, as the API reference
    does; pickle finds each under that name (the lazy ones through `__getattr__`).
    The errors keep `jscope.errors`, where all of them live.
    """
    for value in names.values():
        if isinstance(value, type | types.FunctionType) and (
            value.__module__.startswith("jscope._src.")
        ):
            value.__module__ = module


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jscope' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if name == "tf1" else getattr(imported, name)
    globals()[name] = value
    _set_module("jscope", {name: value})
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# isort: split
# Last: the layers are written with the public API above.
from jscope import layers as layers  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AUTO_REUSE",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointLockError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointTypeError",
    "CheckpointWriteError",
    "ExponentialMovingAverage",
    "Saver",
    "ShardingRules",
    "Summary",
    "Transformed",
    "Variable",
    "VariableScope",
    "VariableTree",
    "apply",
    "assign",
    "assign_add",
    "assign_sub",
    "cond",
    "constrain",
    "errors",
    "flatten",
    "get_regularization_loss",
    "get_variable",
    "get_variable_scope",
    "init",
    "init_with_output",
    "initializers",
    "is_initializing",
    "layers",
    "latest_checkpoint",
    "list_variables",
    "load_variable",
    "make_template",
    "name_scope",
    "next_rng_key",
    "partition_specs",
    "remat",
    "scan",
    "shardings",
    "summary",
    "tf1",
    "transform",
    "unflatten",
    "verify_checkpoint",
    "variable_scope",
    "vmap",
    "while_loop",
]

_set_module("jscope", {name: globals()[name] for name in __all__ if name in globals()})
