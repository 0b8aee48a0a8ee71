"""Checkpoints: TF1's `Saver` vocabulary over Orbax.

A checkpoint is an Orbax PyTree checkpoint directory holding a flat dict
``{key: array}``; the keys are the saver's keys (full paths such as
``params/n2/W``, or the names a ``{key: path}`` var list gives). Beside the
checkpoints, each directory holds a *checkpoint state* file named ``checkpoint``
(TF1's name), written atomically, in JSON::

    ckpt/
      checkpoint     {"model_checkpoint_path": "model-10",
                      "all_model_checkpoint_paths": ["model-8", "model-9", "model-10"],
                      "all_model_checkpoint_timestamps": [...],
                      "last_preserved_timestamp": ...}
      model-8/  model-9/  model-10/      Orbax checkpoints

Paths in the state are relative to its directory, so a directory of checkpoints
can be moved as a whole. Orbax writes each checkpoint to ``<name>.orbax-checkpoint-tmp``
and renames it when complete; old checkpoints are renamed the same way before they
are deleted. A process killed mid-save can leave such a temporary directory behind:
it is never read, and the next save under the same name replaces it.

This is the only jscope module that imports Orbax.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jscope import errors
from jscope._src import tree

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointTypeError",
    "Saver",
    "latest_checkpoint",
    "list_variables",
    "load_variable",
]

STATE_FILENAME = "checkpoint"
_PYTREE_METADATA = "_METADATA"  # the tree metadata Orbax writes in each checkpoint
_INDEX_KEY = "jscope"  # our {key: shape, dtype} index, in its custom metadata
_TMP_SUFFIX = ocp.utils.TMP_DIR_SUFFIX  # Orbax's unfinished saves: "<name><suffix>"
_NONE_MSG = "Can't load save_path when it is None."
_NOT_VALID_MSG = "The passed save_path is not a valid checkpoint: {path}"


# ----------------------------------------------------------------------- errors


CheckpointError = errors.CheckpointError
CheckpointNotFoundError = errors.CheckpointNotFoundError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointTypeError = errors.CheckpointTypeError


# --------------------------------------------------------------------- var list


def _handle_path(entry: Any) -> str | None:
    """The full path of a `js.Variable` handle (``collection/name``), else None."""
    name = getattr(entry, "name", None)
    collection = getattr(entry, "collection", None)
    if isinstance(name, str) and isinstance(collection, str):
        return f"{collection}/{name}"
    return None


def _as_path(entry: Any, where: str) -> str:
    if isinstance(entry, str):
        if not entry:
            raise CheckpointError(f"Saver {where} is an empty path.", entry)
        return entry
    path = _handle_path(entry)
    if path is None:
        raise CheckpointTypeError(
            f"Saver {where} must be a variable path such as 'params/n2/W' (or a "
            f"js.Variable handle), got {type(entry).__name__}: {entry!r}."
        )
    return path


def _parse_var_list(var_list: Any) -> dict[str, str] | None:
    """Returns ``{checkpoint_key: path}``, or None for every variable."""
    if var_list is None:
        return None
    if isinstance(var_list, Mapping):
        keys: dict[str, str] = {}
        for key, entry in var_list.items():
            if not isinstance(key, str) or not key:
                raise CheckpointTypeError(
                    f"Saver var_list keys are checkpoint keys (non-empty strings), "
                    f"got {key!r}."
                )
            keys[key] = _as_path(entry, f"var_list[{key!r}]")
        _check_one_key_per_path(keys)
        return keys
    if isinstance(var_list, str | bytes) or not isinstance(var_list, Sequence | set):
        raise CheckpointTypeError(
            "Saver var_list must be None (every variable), a list of variable "
            "paths such as ['params/n2/W'], or a dict {checkpoint_key: path}; "
            f"got {type(var_list).__name__}: {var_list!r}."
        )
    paths = [_as_path(e, f"var_list[{i}]") for i, e in enumerate(var_list)]
    twice = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
    if twice:
        raise CheckpointError(
            f"At least two variables have the same name: {', '.join(twice)}. "
            "Saver var_list lists each of these paths more than once; list every "
            "variable once.",
            twice[0],
        )
    return {p: p for p in paths}


def _check_one_key_per_path(keys: Mapping[str, str]) -> None:
    by_path: dict[str, list[str]] = {}
    for key, path in keys.items():
        by_path.setdefault(path, []).append(key)
    twice = {p: ks for p, ks in by_path.items() if len(ks) > 1}
    if twice:
        lines = "; ".join(
            f"{p} under keys {', '.join(map(repr, ks))}" for p, ks in twice.items()
        )
        raise CheckpointError(
            f"At least two variables have the same name: Saver var_list saves one "
            f"variable under several checkpoint keys: {lines}. Keep one key per "
            "variable.",
            next(iter(twice)),
        )


def _suggest(path: str, available: Sequence[str]) -> str:
    near = [p for p in available if p.endswith("/" + path)]
    if near:
        return f" (did you mean {near[0]!r}? paths start with the collection)"
    return ""


# ----------------------------------------------------------------- state file


def _state_path(directory: str) -> str:
    return os.path.join(directory, STATE_FILENAME)


def _read_state(directory: str) -> dict[str, Any] | None:
    """The checkpoint state of ``directory``, or None when it has none."""
    path = _state_path(directory)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        text = "a directory"
    try:
        state = json.loads(text)
        if not isinstance(state, dict) or not isinstance(
            state.get("all_model_checkpoint_paths", []), list
        ):
            raise ValueError("not a JSON object with a list of paths")
    except ValueError as e:
        raise CheckpointError(
            f"The checkpoint state file {path} cannot be read ({e}). jscope writes "
            "it as JSON with 'model_checkpoint_path' and "
            "'all_model_checkpoint_paths'; delete or fix the file.",
            path,
        ) from None
    return state


def _write_state(directory: str, state: Mapping[str, Any]) -> None:
    """Writes the checkpoint state atomically: temp file, fsync, os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILENAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _state_path(directory))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _relative(directory: str, path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return name if parent == directory else os.path.abspath(path)


def _resolve(directory: str, entry: str) -> str:
    return entry if os.path.isabs(entry) else os.path.join(directory, entry)


def _drop_from_state(directory: str, name: str) -> None:
    """Removes checkpoint ``name`` from ``directory``'s state before overwriting it."""
    state = _read_state(directory)
    if state is None:
        return
    paths = state.get("all_model_checkpoint_paths", [])
    stamps = state.get("all_model_checkpoint_timestamps", [])
    target = os.path.join(directory, name)
    keep = [
        (p, s)
        for p, s in zip(paths, stamps or [None] * len(paths), strict=False)
        if os.path.abspath(_resolve(directory, p)) != target
    ]
    model = state.get("model_checkpoint_path")
    if model and os.path.abspath(_resolve(directory, model)) == target:
        model = keep[-1][0] if keep else None
    elif len(keep) == len(paths):
        return
    new = dict(state, model_checkpoint_path=model)
    new["all_model_checkpoint_paths"] = [p for p, _ in keep]
    if stamps:
        new["all_model_checkpoint_timestamps"] = [s for _, s in keep]
    _write_state(directory, new)


# ---------------------------------------------------------------- checkpoints


def _is_checkpoint(path: str) -> bool:
    """True for a committed Orbax checkpoint directory."""
    return (
        _TMP_SUFFIX not in os.path.basename(path)
        and os.path.isdir(path)
        and os.path.isfile(os.path.join(path, _PYTREE_METADATA))
    )


def _fspath(save_path: Any, what: str) -> str:
    if save_path is None:
        raise CheckpointNotFoundError(
            f"{_NONE_MSG} js.latest_checkpoint(directory) returns None when the "
            "directory holds no checkpoint (or does not exist): check the "
            "directory, or start from js.init instead of restoring."
        )
    try:
        return os.fspath(save_path)
    except TypeError:
        raise CheckpointTypeError(
            f"{what} must be a path (str or os.PathLike), got "
            f"{type(save_path).__name__}: {save_path!r}."
        ) from None


def _not_a_checkpoint(path: str) -> CheckpointNotFoundError:
    if _TMP_SUFFIX in os.path.basename(path):
        why = "it is an unfinished save (Orbax's temporary directory)"
    elif not os.path.exists(path):
        why = "no such file or directory"
    elif not os.path.isdir(path):
        why = "it is a file; a checkpoint is a directory written by js.Saver"
    else:
        latest = latest_checkpoint(path)
        why = "it is a directory without Orbax checkpoint metadata"
        if latest is not None:
            why += (
                f"; it holds checkpoints, the latest being {latest!r}: pass "
                f"js.latest_checkpoint({path!r})"
            )
    return CheckpointNotFoundError(
        f"{_NOT_VALID_MSG.format(path=path)} ({why}). Checkpoint paths are what "
        "saver.save returns, e.g. 'ckpt/model-10', or js.latest_checkpoint('ckpt').",
        path,
    )


def _checkpoint_path(save_path: Any, *, directory_ok: bool) -> str:
    """Validates a checkpoint path; a directory of checkpoints if ``directory_ok``."""
    path = _fspath(save_path, "save_path")
    if _is_checkpoint(path):
        return path
    if directory_ok and os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
    raise _not_a_checkpoint(path)


def _stored(path: str) -> tuple[dict[str, tuple[tuple[int, ...], Any]], bool]:
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
            f"{_NOT_VALID_MSG.format(path=path)} (its metadata cannot be read: {e}).",
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


def _index(items: Mapping[str, Any]) -> dict[str, Any]:
    """The index of a checkpoint (key: shape, dtype), in Orbax's custom metadata."""
    variables = {
        key: {"shape": list(np.shape(v)), "dtype": jnp.dtype(v.dtype).name}
        for key, v in items.items()
    }
    return {_INDEX_KEY: {"version": 1, "variables": variables}}


def _read_index(path: str) -> dict[str, tuple[tuple[int, ...], Any]] | None:
    """``{key: (shape, dtype)}`` from jscope's index, or None if there is none."""
    try:
        with open(os.path.join(path, _PYTREE_METADATA), encoding="utf-8") as f:
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


def _shape_dtype(leaf: Any, path: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    except (AttributeError, TypeError):
        raise CheckpointTypeError(
            f"Variable {path} in the restore target is a {type(leaf).__name__}; "
            "expected an array or a jax.ShapeDtypeStruct."
        ) from None


def _mismatch_error(
    ckpt: str,
    keys: Mapping[str, str],
    flat: Mapping[str, Any],
    stored: Mapping[str, tuple[tuple[int, ...], Any]],
) -> CheckpointMismatchError | None:
    """One error listing every missing or mismatched variable, or None."""
    missing, absent, wrong, paths = [], [], [], []
    for key, path in keys.items():
        named = path if key == path else f"{path} (checkpoint key {key!r})"
        if path not in flat:
            absent.append(f"    {named}{_suggest(path, list(flat))}")
            paths.append(path)
            continue
        if key not in stored:
            missing.append(f"    {named}")
            paths.append(path)
            continue
        shape, dtype = _shape_dtype(flat[path], path)
        found_shape, found_dtype = stored[key]
        bad = [
            f"    {named}: expected {what} {want} (the target's), found {what} "
            f"{found} in the checkpoint"
            for what, want, found in (
                ("shape", shape, found_shape),
                ("dtype", dtype, found_dtype),
            )
            if want != found
        ]
        if bad:
            wrong += bad
            paths.append(path)
    if not paths:
        return None
    lines = [
        f"Cannot restore checkpoint {ckpt!r}: {len(missing) + len(absent)} missing "
        f"and {len(paths) - len(missing) - len(absent)} mismatched variable(s)."
    ]
    if missing:
        lines += ["  missing from the checkpoint (not found):", *missing]
    if absent:
        lines += ["  listed in the Saver but not in the target tree:", *absent]
    if wrong:
        lines += ["  shape or dtype mismatch:", *wrong]
    lines.append(
        "Restore into a target built by the same model, or restore a subset with "
        "js.Saver([paths]) or js.Saver({checkpoint_key: path}); "
        f"js.list_variables({ckpt!r}) shows what the checkpoint holds."
    )
    return CheckpointMismatchError("\n".join(lines), paths[0])


def _save_value(value: Any, path: str) -> Any:
    if isinstance(value, jax.core.Tracer):
        raise CheckpointTypeError(
            f"Cannot save variable {path}: it is a traced value. Call saver.save "
            "outside jax.jit / jax.grad, on the tree the jitted step returns."
        )
    if isinstance(value, jax.Array | np.ndarray):
        return value
    if isinstance(value, np.generic | int | float | complex | bool):
        return np.asarray(value)
    raise CheckpointTypeError(
        f"Cannot save variable {path}: expected an array, got {type(value).__name__}."
    )


def _remove_checkpoint(path: str) -> None:
    """Deletes a checkpoint; renamed first, so a crash never leaves half of one."""
    if not _is_checkpoint(path):
        return
    trash = path + _TMP_SUFFIX
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------- Saver


class Saver:
    """Saves and restores variables, TF1's ``tf.train.Saver`` over Orbax.

    A checkpoint holds the saver's variables as a flat dict ``{key: array}``:
    with ``var_list=None`` every variable of the tree, keyed by its full path
    (``params/n2/W``); with a list of paths, those variables; with a dict
    ``{checkpoint_key: path}``, those variables under new keys.

    Args:
      var_list: None (every variable), a list of full paths such as
        ``"state/counter"``, or a dict ``{checkpoint_key: path}``. A
        `js.Variable` handle (``collection/name``) may stand for a path.
      max_to_keep: How many of the newest checkpoints to keep; older ones are
        deleted after each save. None or 0 keeps every checkpoint (and then
        `last_checkpoints` stays empty, as in TF1).
      keep_checkpoint_every_n_hours: Of the checkpoints that ``max_to_keep``
        would delete, keep one every this many hours (they leave
        `last_checkpoints` but stay on disk).
      allow_empty: Allow a saver with no variables; its ``save`` writes nothing
        and returns None, its ``restore`` returns a copy of the target.
      pad_step_number: Write ``global_step`` as eight digits (``model-00000010``).

    Raises:
      CheckpointError: ``var_list`` lists a path twice, saves one variable under
        two keys, or is empty (unless ``allow_empty``); ``max_to_keep`` is
        negative.
      CheckpointTypeError: ``var_list`` is not None, a list or a dict.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, jscope as js
      >>> variables = {"params": {"w": jnp.ones(2)}, "state": {"step": jnp.array(3)}}
      >>> saver = js.Saver({"my_step": "state/step"})
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = saver.save(variables, f"{d}/model", global_step=3)
      ...     print(js.list_variables(path))
      ...     fresh = {"params": {"w": jnp.zeros(2)}, "state": {"step": jnp.array(0)}}
      ...     restored = saver.restore(js.latest_checkpoint(d), fresh)
      [('my_step', ())]
      >>> restored["state"]["step"], restored["params"]["w"]  # w is not in the list
      (Array(3, dtype=int32), Array([0., 0.], dtype=float32))
    """

    __module__ = "jscope"

    def __init__(
        self,
        var_list: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        max_to_keep: int | None = 5,
        keep_checkpoint_every_n_hours: float = 10000.0,
        allow_empty: bool = False,
        pad_step_number: bool = False,
    ):
        self._keys = _parse_var_list(var_list)
        if self._keys is not None and not self._keys and not allow_empty:
            raise CheckpointError(
                "No variables to save: the Saver's var_list is empty. Pass the "
                "paths to save, None for every variable, or allow_empty=True."
            )
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool)
            or not isinstance(max_to_keep, int | np.integer)
            or max_to_keep < 0
        ):
            raise CheckpointError(
                f"Saver max_to_keep must be None or an integer >= 0, got "
                f"{max_to_keep!r}. None and 0 keep every checkpoint."
            )
        self._max_to_keep = int(max_to_keep or 0)
        self._keep_every_s = float(keep_checkpoint_every_n_hours) * 3600.0
        self._next_keep_time = time.time() + self._keep_every_s
        self._allow_empty = allow_empty
        self._pad_step_number = pad_step_number
        self._last: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._checkpointer: ocp.AsyncCheckpointer | None = None
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future | None = None

    def __repr__(self) -> str:
        keys = "every variable" if self._keys is None else f"{len(self._keys)} keys"
        return f"Saver({keys}, max_to_keep={self._max_to_keep or None})"

    @property
    def last_checkpoints(self) -> list[str]:
        """The checkpoints this saver keeps, oldest first, as `save` returned them.

        Empty when ``max_to_keep`` is None or 0 (TF1). A non-blocking save joins
        the list when it has been committed.
        """
        with self._lock:
            return [p for p, _ in self._last]

    def _key_map(self, flat: Mapping[str, Any]) -> dict[str, str]:
        return {p: p for p in flat} if self._keys is None else self._keys

    def _orbax(self) -> ocp.AsyncCheckpointer:
        if self._checkpointer is None:
            self._checkpointer = ocp.AsyncCheckpointer(ocp.PyTreeCheckpointHandler())
        return self._checkpointer

    def save(
        self,
        variables: Mapping[str, Any],
        save_path: str | os.PathLike[str],
        global_step: Any = None,
        *,
        blocking: bool = True,
        write_state: bool = True,
    ) -> str | None:
        """Saves the saver's variables of ``variables`` as an Orbax checkpoint.

        Missing directories are created. The checkpoint is written to a temporary
        directory and renamed when complete, and the checkpoint state is replaced
        atomically, so a crash leaves the previous checkpoints readable.

        Args:
          variables: A variable tree (e.g. from `js.init` or `js.apply`). Left
            unchanged.
          save_path: The checkpoint's path prefix, e.g. ``"ckpt/model"``; its
            directory holds the checkpoint state.
          global_step: An integer (or integer scalar array) appended to the path:
            ``"ckpt/model-10"``. An existing checkpoint at the path is replaced.
          blocking: If False, return once the arrays are copied; the writing,
            the state update and the deletion of old checkpoints finish in the
            background (see `wait_until_finished`).
          write_state: Record the checkpoint in the state and in
            `last_checkpoints`, and apply ``max_to_keep``.

        Returns:
          The checkpoint's path, ``save_path`` or ``save_path-<global_step>``;
          None for an empty saver with ``allow_empty=True``.

        Raises:
          CheckpointError: A listed variable is not in ``variables``, or the path
            is taken by something that is not a checkpoint.
          CheckpointTypeError: A value is not an array (or is traced), or
            ``global_step`` is not an integer.
          Exception: The error of an earlier non-blocking save (as in
            `wait_until_finished`).
        """
        self.wait_until_finished()
        flat = _flatten(variables, "variables")
        keys = self._key_map(flat)
        absent = [p for p in keys.values() if p not in flat]
        if absent:
            raise CheckpointError(
                "Cannot save: variables listed in the Saver are not in the tree: "
                + ", ".join(f"{p}{_suggest(p, list(flat))}" for p in absent)
                + ". Pass the tree that holds them, or build the Saver with "
                "paths from js.flatten(variables).",
                absent[0],
            )
        if not keys:
            if self._allow_empty:
                return None
            raise CheckpointError(
                "No variables to save: the tree is empty. Pass the tree from "
                "js.init, or build the Saver with allow_empty=True."
            )
        items = {key: _save_value(flat[path], path) for key, path in keys.items()}
        path = self._target_path(save_path, global_step)
        final = os.path.abspath(path)
        directory = os.path.dirname(final)
        os.makedirs(directory, exist_ok=True)
        replace = os.path.lexists(final)
        if replace:
            self._prepare_overwrite(path, final, directory)
        orbax = self._orbax()
        orbax.save(
            epath.Path(final),
            args=ocp.args.PyTreeSave(items, custom_metadata=_index(items)),
            force=replace,
        )
        if blocking:
            orbax.wait_until_finished()
            if write_state:
                self._commit(path, directory)
        else:
            if self._committer is None:  # one worker, reused: no thread start per save
                self._committer = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="jscope-checkpoint-commit"
                )
                _at_thread_exit(functools.partial(_finish_at_exit, weakref.ref(self)))
            self._pending = self._committer.submit(
                self._finish, path, directory, write_state
            )
        return path

    def _target_path(self, save_path: Any, global_step: Any) -> str:
        path = _fspath(save_path, "save_path")
        if global_step is not None:
            step = _step_number(global_step)
            path = f"{path}-{step:08d}" if self._pad_step_number else f"{path}-{step}"
        name = os.path.basename(path)
        if not name or name in (STATE_FILENAME, ".", "..") or _TMP_SUFFIX in name:
            raise CheckpointError(
                f"Cannot save a checkpoint at {path!r}: save_path must name a "
                f"checkpoint inside a directory, like 'ckpt/model' (the name "
                f"{STATE_FILENAME!r} is the directory's checkpoint state).",
                path,
            )
        return path

    def _prepare_overwrite(self, path: str, final: str, directory: str) -> None:
        if not _is_checkpoint(final):
            raise CheckpointError(
                f"Cannot save a checkpoint at {path!r}: the path exists and is not a "
                "checkpoint, so it is not overwritten. Choose another save_path "
                "(a checkpoint is a directory of its own, e.g. 'ckpt/model').",
                path,
            )
        # Forget the old checkpoint before Orbax deletes it, so that the state
        # never names a checkpoint that is being rewritten.
        with self._lock:
            self._last = [(p, t) for p, t in self._last if os.path.abspath(p) != final]
        _drop_from_state(directory, os.path.basename(final))

    def _finish(self, path: str, directory: str, write_state: bool) -> None:
        self._orbax().wait_until_finished()  # errors surface in wait_until_finished
        if write_state:
            self._commit(path, directory)

    def _commit(self, path: str, directory: str) -> None:
        """Records a written checkpoint, updates the state, deletes old ones."""
        now = time.time()
        with self._lock:
            doomed = self._record(path, now)
            last = list(self._last)
        if last:
            paths = [_relative(directory, p) for p, _ in last]
            stamps = [t for _, t in last]
        else:  # max_to_keep None: the state names the newest checkpoint only
            paths, stamps = [_relative(directory, path)], [now]
        _write_state(
            directory,
            {
                "model_checkpoint_path": _relative(directory, path),
                "all_model_checkpoint_paths": paths,
                "all_model_checkpoint_timestamps": stamps,
                "last_preserved_timestamp": self._next_keep_time - self._keep_every_s,
            },
        )
        for old in doomed:
            _remove_checkpoint(os.path.abspath(old))

    def _record(self, path: str, now: float) -> list[str]:
        """Appends ``path`` to `last_checkpoints`; returns the paths to delete."""
        if not self._max_to_keep:
            return []
        final = os.path.abspath(path)
        self._last = [(p, t) for p, t in self._last if os.path.abspath(p) != final]
        self._last.append((path, now))
        doomed = []
        while len(self._last) > self._max_to_keep:
            old, stamp = self._last.pop(0)
            if stamp > self._next_keep_time:  # TF1's keep_checkpoint_every_n_hours
                self._next_keep_time += self._keep_every_s
            else:
                doomed.append(old)
        return doomed

    def wait_until_finished(self) -> None:
        """Blocks until a non-blocking save has been written and recorded.

        `save` and `restore` call it first, so a later save or restore waits for
        the pending one.

        Raises:
          Exception: The error of a failed non-blocking save (raised once).
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def restore(
        self, save_path: str | os.PathLike[str] | None, target: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Restores the saver's variables from a checkpoint into a new tree.

        ``target`` gives the structure, shapes, dtypes and shardings: a variable
        tree, or a tree of `jax.ShapeDtypeStruct` (from
        ``jax.eval_shape(lambda k: js.init(fn, k), key)``), so that a model can
        be restored without running its initializers. Variables outside the
        saver's list keep the target's values; extra checkpoint keys are ignored.

        Args:
          save_path: A checkpoint path, as `save` or `latest_checkpoint` returns.
          target: The tree to restore into. Left unchanged.

        Returns:
          A new tree, in the target's order; restored arrays have the target's
          sharding (one device when a `jax.ShapeDtypeStruct` has none), NumPy
          leaves come back as NumPy arrays.

        Raises:
          CheckpointNotFoundError: ``save_path`` is None or not a checkpoint.
          CheckpointMismatchError: One error listing every variable missing from
            the checkpoint (or from the target) and every shape or dtype
            mismatch, by path.
        """
        self.wait_until_finished()
        ckpt = _checkpoint_path(save_path, directory_ok=False)
        flat = _flatten(target, "target")
        keys = self._key_map(flat)
        if not keys:
            if self._allow_empty:
                return tree.unflatten(flat)
            raise CheckpointError(
                "No variables to restore: the target tree is empty. Pass the tree "
                "(or jax.eval_shape of js.init) to restore into."
            )
        stored, nested = _stored(ckpt)
        error = _mismatch_error(ckpt, keys, flat, stored)
        if error is not None:
            raise error
        restored = _orbax_restore(
            self._orbax(),
            ckpt,
            {key: (flat[path], path) for key, path in keys.items()},
            partial=len(keys) < len(stored),
            nested=nested,
        )
        by_path = {path: restored[key] for key, path in keys.items()}
        return tree.unflatten({p: by_path.get(p, v) for p, v in flat.items()})


def _finish_at_exit(ref: weakref.ref[Saver]) -> None:
    saver = ref()
    if saver is not None:
        saver.wait_until_finished()


# A non-blocking save pending when the program ends must finish before the
# interpreter stops its thread pools (Orbax needs them to commit): threading's
# exit hooks run first, in reverse order, so this runs before concurrent.futures
# shuts down.
_at_thread_exit = getattr(threading, "_register_atexit", atexit.register)


def _orbax_restore(
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


def _flatten(variables: Any, what: str) -> dict[str, Any]:
    if not isinstance(variables, Mapping):
        raise CheckpointTypeError(
            f"The {what} must be a variable tree (a nested dict such as js.init "
            f"returns), got {type(variables).__name__}."
        )
    return tree.flatten(variables)


def _step_number(global_step: Any) -> int:
    value = np.asarray(global_step) if not isinstance(global_step, int) else None
    if isinstance(global_step, bool) or (
        value is not None
        and (value.shape != () or not np.issubdtype(value.dtype, np.integer))
    ):
        raise CheckpointTypeError(
            f"global_step must be an integer (or an integer scalar array), got "
            f"{global_step!r}."
        )
    return int(global_step)


# ------------------------------------------------------------ module functions


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """The newest checkpoint recorded in a directory's checkpoint state.

    Args:
      checkpoint_dir: The directory that `Saver.save` wrote into.

    Returns:
      The checkpoint's path (joined to ``checkpoint_dir``), or None when the
      directory does not exist, has no checkpoint state, or the recorded
      checkpoint is gone (TF1).

    Raises:
      CheckpointError: The checkpoint state file cannot be parsed.

    Example:
      >>> import tempfile, jax.numpy as jnp, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(js.latest_checkpoint(d))
      ...     path = js.Saver().save({"params": {"w": jnp.ones(2)}}, f"{d}/m", 7)
      ...     print(js.latest_checkpoint(d) == f"{d}/m-7")
      None
      True
    """
    directory = _fspath(checkpoint_dir, "checkpoint_dir")
    state = _read_state(directory)
    model = state.get("model_checkpoint_path") if state else None
    if not model:
        return None
    path = _resolve(directory, model)
    return path if _is_checkpoint(path) else None


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
    path = _checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    stored, _ = _stored(path)
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
    path = _checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    stored, nested = _stored(path)
    if name not in stored:
        keys = sorted(stored)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise CheckpointMismatchError(
            f"Key {name} not found in checkpoint {path!r}{_suggest(name, keys)}. "
            f"It holds: {shown}. js.list_variables lists its keys.",
            name,
        )
    shape, dtype = stored[name]
    leaf = jax.ShapeDtypeStruct(shape, dtype)
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    restored = _orbax_restore(
        checkpointer,
        path,
        {name: (leaf, name)},
        partial=len(stored) > 1,
        nested=nested,
    )
    return restored[name]
