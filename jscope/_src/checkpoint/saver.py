"""`Saver`: TF1's ``tf.train.Saver`` vocabulary, retention and the background commit."""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jscope import errors
from jscope._src import tree
from jscope._src.checkpoint.keys import (
    flatten_tree,
    parse_var_list,
    step_number,
    suggest,
)
from jscope._src.checkpoint.layout import (
    STATE_FILENAME,
    TMP_SUFFIX,
    checkpoint_path,
    drop_from_state,
    fspath,
    is_checkpoint,
    relative,
    remove_checkpoint,
    write_state,
)
from jscope._src.checkpoint.orbax_io import (
    async_checkpointer,
    orbax_restore,
    read_stored,
    save_items,
    shape_dtype,
)

CheckpointError = errors.CheckpointError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointTypeError = errors.CheckpointTypeError


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
            absent.append(f"    {named}{suggest(path, list(flat))}")
            paths.append(path)
            continue
        if key not in stored:
            missing.append(f"    {named}")
            paths.append(path)
            continue
        shape, dtype = shape_dtype(flat[path], path)
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
        self._keys = parse_var_list(var_list)
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
        self._checkpointer: Any = None
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

    def _orbax(self) -> Any:
        if self._checkpointer is None:
            self._checkpointer = async_checkpointer()
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
        flat = flatten_tree(variables, "variables")
        keys = self._key_map(flat)
        absent = [p for p in keys.values() if p not in flat]
        if absent:
            raise CheckpointError(
                "Cannot save: variables listed in the Saver are not in the tree: "
                + ", ".join(f"{p}{suggest(p, list(flat))}" for p in absent)
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
        save_items(orbax, final, items, force=replace)
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
        path = fspath(save_path, "save_path")
        if global_step is not None:
            step = step_number(global_step)
            path = f"{path}-{step:08d}" if self._pad_step_number else f"{path}-{step}"
        name = os.path.basename(path)
        if not name or name in (STATE_FILENAME, ".", "..") or TMP_SUFFIX in name:
            raise CheckpointError(
                f"Cannot save a checkpoint at {path!r}: save_path must name a "
                f"checkpoint inside a directory, like 'ckpt/model' (the name "
                f"{STATE_FILENAME!r} is the directory's checkpoint state).",
                path,
            )
        return path

    def _prepare_overwrite(self, path: str, final: str, directory: str) -> None:
        if not is_checkpoint(final):
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
        drop_from_state(directory, os.path.basename(final))

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
            paths = [relative(directory, p) for p, _ in last]
            stamps = [t for _, t in last]
        else:  # max_to_keep None: the state names the newest checkpoint only
            paths, stamps = [relative(directory, path)], [now]
        write_state(
            directory,
            {
                "model_checkpoint_path": relative(directory, path),
                "all_model_checkpoint_paths": paths,
                "all_model_checkpoint_timestamps": stamps,
                "last_preserved_timestamp": self._next_keep_time - self._keep_every_s,
            },
        )
        for old in doomed:
            remove_checkpoint(os.path.abspath(old))

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
        ckpt = checkpoint_path(save_path, directory_ok=False)
        flat = flatten_tree(target, "target")
        keys = self._key_map(flat)
        if not keys:
            if self._allow_empty:
                return tree.unflatten(flat)
            raise CheckpointError(
                "No variables to restore: the target tree is empty. Pass the tree "
                "(or jax.eval_shape of js.init) to restore into."
            )
        stored, nested = read_stored(ckpt)
        error = _mismatch_error(ckpt, keys, flat, stored)
        if error is not None:
            raise error
        restored = orbax_restore(
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
