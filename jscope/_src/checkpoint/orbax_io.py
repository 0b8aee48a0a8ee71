"""Orbax I/O: the only jscope module that imports Orbax.

Writes a flat dict ``{key: array}`` as an Orbax PyTree checkpoint, reads the
metadata of checkpoints Orbax wrote directly, and restores arrays with the
target's shapes, dtypes and shardings.

Orbax's asynchronous machinery is not safe to drive from several threads at
once (two checkpointers saving in two threads can deadlock in
``wait_until_finished`` or collide on temporary directories), so every Orbax
call in the process runs under one lock, `_ORBAX`; a save holds it from
`start_save` until `finish_save` (which may run on another thread).

A failed write ends a save, and a failed read a restore, only once every
other write or read of it has ended (`_every_task_ended`): Orbax would
otherwise close its event loop under writes and reads still in flight.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler import (
    BasePyTreeCheckpointHandler,
)
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import jax_array_handlers

from jscope import errors
from jscope._src.checkpoint.layout import NOT_VALID_MSG, ORBAX_METADATA

CheckpointNotFoundError = errors.CheckpointNotFoundError

MARKER = "jscope"  # in Orbax's custom metadata: jscope's version, _CHECKSUMS exists
_ORBAX = threading.Lock()


async def _every_task_ended(call: Any) -> Any:
    """Awaits ``call`` (a coroutine); on failure, first awaits what it started.

    Orbax gathers the arrays' writes or reads (``asyncio.gather``) in an event
    loop of its own and returns at the first failure, then closes the loop
    while TensorStore still writes or reads the other arrays; each of those,
    when it ends, calls into the closed loop (``RuntimeError: Event loop is
    closed`` through `sys.unraisablehook`, long after the call raised). Here
    the tasks that ``call`` started are awaited before its error is raised, so
    nothing is left in flight when the loop closes.
    """
    before = asyncio.all_tasks()
    try:
        return await call
    except Exception:
        started = asyncio.all_tasks() - before - {asyncio.current_task()}
        if started:
            await asyncio.wait(started)
        raise


# Called as each array of a restore arrives, with its key and value (set by
# `restore`, seen by the reads, which run in the caller's thread).
_ARRIVED: contextvars.ContextVar[Callable[[str, Any], None]] = contextvars.ContextVar(
    "jscope_arrived"
)


async def _each_as_it_arrives(deserialize: Any, infos: Any, args: Any) -> list[Any]:
    """``deserialize(infos, args)``, one array at a time, all at once.

    Each array goes to `_ARRIVED` as soon as it is read, while the others are
    still being read: its checksum starts then (see `restore`). Without an
    `_ARRIVED` callback, Orbax's own batch.
    """
    arrived = _ARRIVED.get(None)
    if arrived is None or len(infos) < 2:
        values = await deserialize(infos, args)
        if arrived is not None:
            for info, value in zip(infos, values, strict=True):
                arrived(_key_of(info), value)
        return values

    async def one(i: int) -> Any:
        [value] = await deserialize([infos[i]], None if args is None else [args[i]])
        arrived(_key_of(infos[i]), value)
        return value

    return list(await asyncio.gather(*(one(i) for i in range(len(infos)))))


def _key_of(info: Any) -> str:
    """The slash-joined key path of an Orbax ParamInfo (a flat dict: its key)."""
    return "/".join(str(getattr(k, "key", k)) for k in info.keypath or ())


class _NumpyHandler(ocp.type_handlers.NumpyHandler):
    """Orbax's NumPy handler, but a failed write waits for the others.

    A restore hands each array on as it arrives (`_each_as_it_arrives`).
    """

    async def _background_serialize(self, values, infos, args=None):
        await _every_task_ended(super()._background_serialize(values, infos, args))

    async def deserialize(self, infos, args=None):
        return await _each_as_it_arrives(super().deserialize, infos, args)


class _ArrayHandler(ocp.type_handlers.ArrayHandler):
    """Orbax's jax.Array handler; a restore hands each array on as it arrives."""

    async def deserialize(self, infos, args=None):
        return await _each_as_it_arrives(super().deserialize, infos, args)


def _restore_handlers() -> Any:
    """Orbax's type handlers for restoring, with `_NumpyHandler`, `_ArrayHandler`."""
    default = ocp.type_handlers.get_type_handler
    kinds = (int, float, bytes, np.number, str, type(...))  # `...`: a placeholder
    return ocp.type_handlers.create_type_handler_registry(
        *((t, default(t)) for t in kinds),
        (np.ndarray, _NumpyHandler()),
        (jax.Array, _ArrayHandler(array_metadata_store=array_metadata_store.Store())),
    )


_ORBAX_GATHER = jax_array_handlers._async_serialize_replica_slices


async def _serialize_replica_slices(*args: Any, **kwargs: Any) -> Any:
    """Orbax's writer of jax.Array values, but a failed write waits for the others.

    Orbax's `ArrayHandler` calls this module-level function from the thread
    that writes a save's arrays, so it is replaced in Orbax's module (see
    `_save_handlers`); it only changes what happens after a write fails.
    """
    return await _every_task_ended(_ORBAX_GATHER(*args, **kwargs))


class _Reader(BasePyTreeCheckpointHandler):
    """Orbax's PyTree reader, but a failed read waits for the others.

    The same as `_every_task_ended` for writes: Orbax gathers the arrays'
    reads in an event loop that it closes as soon as one fails.
    """

    async def _maybe_deserialize(self, *args: Any, **kwargs: Any) -> Any:
        return await _every_task_ended(super()._maybe_deserialize(*args, **kwargs))


def _save_handlers() -> Any:
    """Orbax's type handlers for saving, with `_NumpyHandler` for NumPy arrays.

    Also makes Orbax's jax.Array writer wait for every write of a failed save
    (`_serialize_replica_slices`).
    """
    jax_array_handlers._async_serialize_replica_slices = _serialize_replica_slices
    default = ocp.type_handlers.get_type_handler
    pairs = [(t, default(t)) for t in (int, float, bytes, np.number, jax.Array)]
    return ocp.type_handlers.create_type_handler_registry(
        *pairs, (np.ndarray, _NumpyHandler())
    )


class _Writer(BasePyTreeCheckpointHandler):
    """Orbax's PyTree writer, each array compressed or not as ``compress`` says.

    ``compress``: ``{key: bool}`` for the save under way (set by `start_save`,
    under `_ORBAX`); Orbax's default (zstd) for any other key. Orbax writes
    the choice into each array's zarr metadata, and every reader follows it.
    """

    compress: Mapping[str, bool] = {}

    def _get_param_infos(self, item: Any, directory: Any, **kwargs: Any) -> Any:
        infos = super()._get_param_infos(item, directory, **kwargs)
        if isinstance(infos, Mapping):
            for key, info in infos.items():
                if key in self.compress:
                    info.use_compression = self.compress[key]
        return infos


_SAMPLE = 2048  # elements of an array looked at to decide its compression
_SMALL = 1 << 16  # bytes: smaller arrays are compressed (Orbax's default)


def worth_compressing(values: np.ndarray) -> bool:
    """Whether zstd is worth its time on ``values`` (a host array).

    Not for floating-point values that vary: their mantissas do not compress
    (zstd saved nothing on random float32, at a third of a save's CPU time).
    Decided on up to `_SAMPLE` evenly spaced elements: if three quarters of
    them are distinct values, the array is written raw. Constant arrays (zeros,
    fresh optimizer moments), integers, booleans and small arrays are
    compressed, as Orbax does by default. Either way the values written and
    read back are the same; only the files' size and the time differ.
    """
    itemsize = values.dtype.itemsize
    if (
        values.nbytes < _SMALL
        or not jax.numpy.issubdtype(values.dtype, jax.numpy.inexact)
        or itemsize not in (2, 4, 8)
        or not values.flags.c_contiguous
    ):
        return True
    flat = values.reshape(-1)
    sample = flat[:: max(1, flat.size // _SAMPLE)].view(f"u{itemsize}")
    return 4 * len(np.unique(sample)) < 3 * len(sample)


def async_checkpointer() -> ocp.AsyncCheckpointer:
    """An Orbax checkpointer that writes in the background."""
    handlers = _save_handlers()
    return ocp.AsyncCheckpointer(
        ocp.PyTreeCheckpointHandler(
            type_handler_registry=handlers,
            handler_impl=_Writer(type_handler_registry=handlers),
        )
    )


def start_save(
    checkpointer: ocp.AsyncCheckpointer,
    path: str,
    items: Mapping[str, Any],
    compress: Mapping[str, bool] | None = None,
) -> None:
    """Starts writing ``{key: array}`` to the new directory ``path``.

    ``compress``: ``{key: whether to compress it}`` (`worth_compressing`),
    Orbax's default (compressed) for the keys it leaves out. Takes the
    process's Orbax lock; `finish_save` releases it. The arrays have been
    taken by Orbax (copied to host where needed) when this returns.
    """
    _ORBAX.acquire()
    try:
        _Writer.compress = dict(compress or {})
        checkpointer.save(
            epath.Path(path),
            args=ocp.args.PyTreeSave(
                dict(items), custom_metadata={MARKER: {"version": 2}}
            ),
        )
    except BaseException:
        _ORBAX.release()
        raise


def finish_save(checkpointer: ocp.AsyncCheckpointer) -> None:
    """Waits until the save `start_save` began is written; releases the lock."""
    try:
        checkpointer.wait_until_finished()
    finally:
        _ORBAX.release()


def jscope_version(path: str) -> int | None:
    """The jscope version in a checkpoint's Orbax metadata, or None."""
    try:
        with open(os.path.join(path, ORBAX_METADATA), encoding="utf-8") as f:
            custom = json.load(f).get("custom_metadata") or {}
        return int(custom[MARKER]["version"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def legacy_index(path: str) -> dict[str, tuple[tuple[int, ...], Any]] | None:
    """``{key: (shape, dtype)}`` of a checkpoint jscope 0.1 wrote, else None."""
    try:
        with open(os.path.join(path, ORBAX_METADATA), encoding="utf-8") as f:
            custom = json.load(f).get("custom_metadata") or {}
        variables = custom[MARKER]["variables"]
        return {
            key: (tuple(v["shape"]), np.dtype(_dtype_of(v["dtype"])))
            for key, v in variables.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _dtype_of(name: str) -> Any:
    return jax.numpy.dtype(name)


def orbax_metadata(path: str) -> tuple[dict[str, tuple[tuple[int, ...], Any]], bool]:
    """``({key: (shape, dtype)}, nested)`` from Orbax's metadata of ``path``.

    For checkpoints Orbax wrote directly: a nested dict is keyed by its
    slash-joined paths.
    """
    try:
        with _ORBAX:
            metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointNotFoundError(
            f"{NOT_VALID_MSG.format(path=path)} (its metadata cannot be read: {e}).",
            path,
        ) from None
    stored = metadata.tree if isinstance(metadata.tree, Mapping) else {}
    nested = any(isinstance(m, Mapping) for m in stored.values())
    if nested:
        stored = _flatten_nested(stored)
    return {
        key: (
            tuple(getattr(m, "shape", ())),
            None if getattr(m, "dtype", None) is None else np.dtype(m.dtype),
        )
        for key, m in stored.items()
    }, nested


def _flatten_nested(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten_nested(value, path))
        else:
            out[path] = value
    return out


def _unflatten_nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = root
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root


def restore_spec(
    shape: tuple[int, ...], dtype: Any, sharding: Any, *, numpy: bool
) -> tuple[Any, Any]:
    """Orbax's item and restore args for one array (NumPy, or jax with a sharding)."""
    if numpy:
        return np.empty(0, dtype), ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    args = ocp.ArrayRestoreArgs(
        restore_type=jax.Array, sharding=sharding, global_shape=shape, dtype=dtype
    )
    return item, args


def restore(
    ckpt: str,
    specs: Mapping[str, tuple[Any, Any]],
    *,
    partial: bool,
    nested: bool,
    local: bool = False,
    arrived: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Restores ``{key: (item, restore_args)}`` from ``ckpt``; ``{key: array}``.

    ``local``: no array spans other processes, so this process reads alone
    (Orbax would otherwise wait for every process at the end of a restore).
    ``arrived``: called with each key and array as soon as it is read, while
    Orbax reads the others (in Orbax's event loop: it must not block).

    Raises:
      Exception: Orbax's or TensorStore's own error (the caller names it).
    """
    item = {key: s[0] for key, s in specs.items()}
    args = {key: s[1] for key, s in specs.items()}
    if nested:
        item, args = _unflatten_nested(item), _unflatten_nested(args)
    options = ocp.options.MultiprocessingOptions()
    if local and jax.process_count() > 1:
        me = jax.process_index()
        options = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    handlers = _restore_handlers()
    reader = _Reader(multiprocessing_options=options, type_handler_registry=handlers)
    checkpointer = ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(
            multiprocessing_options=options,
            type_handler_registry=handlers,
            handler_impl=reader,
        ),
        multiprocessing_options=options,
    )
    token = _ARRIVED.set(arrived) if arrived is not None else None
    try:
        with _ORBAX:
            restored = checkpointer.restore(
                epath.Path(os.path.abspath(ckpt)),
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=args, partial_restore=partial
                ),
            )
    finally:
        if token is not None:
            _ARRIVED.reset(token)
    return _flatten_nested(restored) if nested else dict(restored)
