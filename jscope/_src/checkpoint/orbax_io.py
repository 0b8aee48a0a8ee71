"""Orbax I/O: the only jscope module that imports Orbax.

Writes a flat dict ``{key: array}`` as an Orbax PyTree checkpoint with jscope's
index of keys in its custom metadata, reads that index (or Orbax's own metadata
for checkpoints Orbax wrote directly), and restores arrays with the target's
shapes, dtypes and shardings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jscope import errors
from jscope._src import tree
from jscope._src.checkpoint.layout import NOT_VALID_MSG, PYTREE_METADATA

CheckpointNotFoundError = errors.CheckpointNotFoundError
CheckpointTypeError = errors.CheckpointTypeError

_INDEX_KEY = "jscope"  # our {key: shape, dtype} index, in its custom metadata


def read_stored(path: str) -> tuple[dict[str, tuple[tuple[int, ...], Any]], bool]:
    """A checkpoint's ``{key: (shape, dtype)}`` and whether it is nested.

    Only metadata is read: jscope's index when the checkpoint has one, else
    Orbax's metadata (which opens every array's header). jscope writes flat
    dicts; a nested dict (a variable tree saved by Orbax directly) is keyed by
    its slash-joined paths.
    """
    index = _read_index(path)
    if index is not None:
        return index, False
    try:
        metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointNotFoundError(
            f"{NOT_VALID_MSG.format(path=path)} (its metadata cannot be read: {e}).",
            path,
        ) from None
    stored = metadata.tree if isinstance(metadata.tree, Mapping) else {}
    nested = any(isinstance(m, Mapping) for m in stored.values())
    if nested:
        stored = tree.flatten(stored)
    return {
        key: (tuple(getattr(m, "shape", ())), _dtype(getattr(m, "dtype", None)))
        for key, m in stored.items()
    }, nested


def _dtype(dtype: Any) -> Any:
    return None if dtype is None else np.dtype(dtype)


def index(items: Mapping[str, Any]) -> dict[str, Any]:
    """The index of a checkpoint (key: shape, dtype), in Orbax's custom metadata."""
    variables = {
        key: {"shape": list(np.shape(v)), "dtype": jnp.dtype(v.dtype).name}
        for key, v in items.items()
    }
    return {_INDEX_KEY: {"version": 1, "variables": variables}}


def _read_index(path: str) -> dict[str, tuple[tuple[int, ...], Any]] | None:
    """``{key: (shape, dtype)}`` from jscope's index, or None if there is none."""
    try:
        with open(os.path.join(path, PYTREE_METADATA), encoding="utf-8") as f:
            custom = json.load(f).get("custom_metadata") or {}
        variables = custom[_INDEX_KEY]["variables"]
        return {
            key: (tuple(v["shape"]), jnp.dtype(v["dtype"]))
            for key, v in variables.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # not written by jscope: ask Orbax


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _restore_args(leaf: Any, path: str) -> tuple[Any, Any]:
    """Orbax's item and restore args for one target leaf (kept type and sharding)."""
    if isinstance(leaf, jax.core.Tracer):
        raise CheckpointTypeError(
            f"Cannot restore variable {path} into a traced value: restore outside "
            "jax.jit, or pass jax.ShapeDtypeStruct leaves (from jax.eval_shape)."
        )
    if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
        sharding = getattr(leaf, "sharding", None) or _default_sharding()
        shape, dtype = tuple(leaf.shape), leaf.dtype
        item = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        args = ocp.ArrayRestoreArgs(
            restore_type=jax.Array, sharding=sharding, global_shape=shape, dtype=dtype
        )
        return item, args
    if isinstance(leaf, np.ndarray | np.generic):
        return np.empty(0, leaf.dtype), ocp.RestoreArgs(
            restore_type=np.ndarray, dtype=leaf.dtype
        )
    raise CheckpointTypeError(
        f"Variable {path} in the restore target is a {type(leaf).__name__}; "
        "expected an array or a jax.ShapeDtypeStruct."
    )


def shape_dtype(leaf: Any, path: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    except (AttributeError, TypeError):
        raise CheckpointTypeError(
            f"Variable {path} in the restore target is a {type(leaf).__name__}; "
            "expected an array or a jax.ShapeDtypeStruct."
        ) from None


def orbax_restore(
    checkpointer: ocp.AbstractCheckpointer,
    ckpt: str,
    leaves: Mapping[str, tuple[Any, str]],
    *,
    partial: bool,
    nested: bool,
) -> dict[str, Any]:
    """Restores ``{key: (target leaf, path)}`` with Orbax; returns ``{key: array}``."""
    specs = {key: _restore_args(leaf, path) for key, (leaf, path) in leaves.items()}
    item = {key: s[0] for key, s in specs.items()}
    args = {key: s[1] for key, s in specs.items()}
    if nested:
        item, args = tree.unflatten(item), tree.unflatten(args)
    restored = checkpointer.restore(
        epath.Path(os.path.abspath(ckpt)),
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=args, partial_restore=partial
        ),
    )
    return tree.flatten(restored) if nested else restored


def async_checkpointer() -> ocp.AsyncCheckpointer:
    """An Orbax checkpointer that writes in the background."""
    return ocp.AsyncCheckpointer(ocp.PyTreeCheckpointHandler())


def plain_checkpointer() -> ocp.Checkpointer:
    """An Orbax checkpointer for reading."""
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler())


def save_items(
    checkpointer: ocp.AsyncCheckpointer,
    final: str,
    items: Mapping[str, Any],
    *,
    force: bool,
) -> None:
    """Starts writing ``{key: array}`` to the checkpoint ``final``."""
    checkpointer.save(
        epath.Path(final),
        args=ocp.args.PyTreeSave(items, custom_metadata=index(items)),
        force=force,
    )
