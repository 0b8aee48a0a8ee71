"""Reading checkpoints without a `Saver`: `list_variables`, `load_variable`."""

from __future__ import annotations

import os
from typing import Any

import jax

from jscope import errors
from jscope._src.checkpoint.keys import suggest
from jscope._src.checkpoint.layout import checkpoint_path
from jscope._src.checkpoint.orbax_io import (
    orbax_restore,
    plain_checkpointer,
    read_stored,
)

CheckpointMismatchError = errors.CheckpointMismatchError


def list_variables(ckpt_dir_or_file: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """Lists the keys of a checkpoint with their shapes, reading no array.

    Args:
      ckpt_dir_or_file: A checkpoint, or a directory whose latest checkpoint is
        listed.

    Returns:
      Sorted ``(key, shape)`` pairs; keys are the saver's keys, e.g.
      ``"params/n2/W"``.

    Raises:
      CheckpointNotFoundError: The path is not a checkpoint.
    """
    path = checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    stored, _ = read_stored(path)
    return sorted((key, shape) for key, (shape, _) in stored.items())


def load_variable(ckpt_dir_or_file: str | os.PathLike[str], name: str) -> jax.Array:
    """Loads one array from a checkpoint.

    Args:
      ckpt_dir_or_file: A checkpoint, or a directory whose latest checkpoint is
        read.
      name: The checkpoint key, e.g. ``"params/n2/W"`` or ``"my_counter"``.

    Returns:
      The array, on the default device.

    Raises:
      CheckpointNotFoundError: The path is not a checkpoint.
      CheckpointMismatchError: The checkpoint has no key ``name``.
    """
    path = checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    stored, nested = read_stored(path)
    if name not in stored:
        keys = sorted(stored)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise CheckpointMismatchError(
            f"Key {name} not found in checkpoint {path!r}{suggest(name, keys)}. "
            f"It holds: {shown}. js.list_variables lists its keys.",
            name,
        )
    shape, dtype = stored[name]
    leaf = jax.ShapeDtypeStruct(shape, dtype)
    checkpointer = plain_checkpointer()
    restored = orbax_restore(
        checkpointer,
        path,
        {name: (leaf, name)},
        partial=len(stored) > 1,
        nested=nested,
    )
    return restored[name]
