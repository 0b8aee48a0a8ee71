"""Checkpoints: TF1's `Saver` vocabulary over Orbax (see README.md here)."""

import importlib
from typing import TYPE_CHECKING, Any

from jscope._src.checkpoint.layout import latest_checkpoint as latest_checkpoint

# `layout` (the state file, paths) needs no Orbax; the rest is imported on first use,
# so that `jscope._src.checkpoint.layout` can be imported without Orbax.
_LAZY = {
    "Saver": "jscope._src.checkpoint.saver",
    "list_variables": "jscope._src.checkpoint.read",
    "load_variable": "jscope._src.checkpoint.read",
    "verify_checkpoint": "jscope._src.checkpoint.read",
}

if TYPE_CHECKING:
    from jscope._src.checkpoint.read import list_variables as list_variables
    from jscope._src.checkpoint.read import load_variable as load_variable
    from jscope._src.checkpoint.read import verify_checkpoint as verify_checkpoint
    from jscope._src.checkpoint.saver import Saver as Saver


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Saver",
    "latest_checkpoint",
    "list_variables",
    "load_variable",
    "verify_checkpoint",
]
