"""Checkpoints: TF1's `Saver` vocabulary over Orbax (see README.md here)."""

from jscope._src.checkpoint.layout import latest_checkpoint as latest_checkpoint
from jscope._src.checkpoint.read import list_variables as list_variables
from jscope._src.checkpoint.read import load_variable as load_variable
from jscope._src.checkpoint.read import verify_checkpoint as verify_checkpoint
from jscope._src.checkpoint.saver import Saver as Saver

__all__ = [
    "Saver",
    "latest_checkpoint",
    "list_variables",
    "load_variable",
    "verify_checkpoint",
]
