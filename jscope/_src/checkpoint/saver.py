"""`Saver`: TF1's ``tf.train.Saver`` vocabulary, retention and the background commit.

A save runs in two halves. The first, in the caller's thread: flatten the tree,
check the values, take the directory (its in-process mutex, then its writers'
lock), remove what dead writers left, and hand the arrays to Orbax, which
writes them under a temporary name unique to this save. The second, the
*commit*, in the caller's thread for a blocking save and in a background thread
otherwise (a non-blocking save takes the arrays' values, `arrays.Snapshot`, and
the commit hands them to Orbax, so that the caller is held only for the
checks): compute the arrays' checksums while Orbax writes, wait for Orbax,
write ``_CHECKSUMS``, fsync, move the checkpoint into place (an atomic exchange
when it replaces one), write the checkpoint state, then delete what
``max_to_keep`` drops. Until the state is written the previous checkpoints are
untouched, so any failure or kill leaves the last good checkpoint restorable.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import itertools
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jscope import errors
from jscope._src.checkpoint import (
    arrays,
    integrity,
    interrupts,
    keys,
    layout,
    lock,
    orbax_io,
    processes,
    read,
)

CheckpointError = errors.CheckpointError
CheckpointTypeError = errors.CheckpointTypeError

_OWNERS = itertools.count(1)


class Saver:
    """Saves and restores variables, TF1's ``tf.train.Saver`` over Orbax.

    A checkpoint holds the saver's variables as a flat dict ``{key: array}``:
    with ``var_list=None`` every leaf of the tree, keyed by its full path
    (``params/n2/W``); with a list of paths, those variables (a path may name a
    subtree: ``"opt"`` saves every leaf below it); with a dict
    ``{checkpoint_key: path}``, those variables under new keys. The tree may be
    any pytree (an optax state, tuples, typed PRNG keys, NumPy and Python
    scalars): leaves below a non-dict node are keyed by their
    `jax.tree_util` key paths joined by ``/`` (``opt/0/mu/w``).

    Saves are atomic, and an overwrite replaces the old checkpoint only once
    the new one is complete; every array's checksum is recorded, and checked
    when it is read (`verify_checkpoint`). One process writes a directory at a
    time: a Saver holds the directory's lock from its first save there until
    `close` (or its garbage collection, or the end of its process).

    Sharded arrays are saved as they are, each process writing only its
    shards, and restore into whatever shardings the target gives (another
    mesh, one device). Under ``jax.distributed`` every process calls `save`
    and `restore` with the same tree; process 0 writes the shared files and
    the others wait until it has committed.

    Args:
      var_list: None (every variable), a list of full paths such as
        ``"state/counter"``, or a dict ``{checkpoint_key: path}``. A
        `js.Variable` handle (``collection/name``) may stand for a path.
      max_to_keep: How many of the newest checkpoints to keep; older ones are
        deleted after each save. None or 0 keeps every checkpoint (and then
        `last_checkpoints` stays empty, as in TF1). Checkpoints recorded in a
        directory's state under the same save path by an earlier run count
        too (TF1's ``recover_last_checkpoints``, done on the first save there).
      keep_checkpoint_every_n_hours: Of the checkpoints that ``max_to_keep``
        would delete, keep one every this many hours (they leave
        `last_checkpoints` but stay on disk).
      allow_empty: Allow a saver with no variables; its ``save`` writes nothing
        and returns None, its ``restore`` returns a copy of the target.
      pad_step_number: Write ``global_step`` as eight digits (``model-00000010``).
      lock_timeout: Seconds to wait for another process's lock on a directory
        before `CheckpointLockError`; 0 fails at once, None waits forever.

    Raises:
      CheckpointError: ``var_list`` lists a path twice, gives two keys that are
        the same once empty path components are dropped (``"a/b"``, ``"a/b/"``),
        saves one variable under two keys, or is empty (unless
        ``allow_empty``); ``max_to_keep`` is negative.
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
      ...     saver.close()
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
        lock_timeout: float | None = 0.0,
    ):
        self._keys = keys.parse_var_list(var_list)
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
        if lock_timeout is not None and (
            isinstance(lock_timeout, bool)
            or not isinstance(lock_timeout, int | float)
            or not lock_timeout >= 0
        ):
            raise CheckpointError(
                f"Saver lock_timeout must be None (wait forever) or a number of "
                f"seconds >= 0, got {lock_timeout!r}."
            )
        self._max_to_keep = int(max_to_keep or 0)
        self._keep_every_s = float(keep_checkpoint_every_n_hours) * 3600.0
        self._next_keep_time = time.time() + self._keep_every_s
        self._allow_empty = allow_empty
        self._pad_step_number = pad_step_number
        self._lock_timeout = lock_timeout
        # (path as save returned it, absolute path, timestamp), oldest first.
        self._last: list[tuple[str, str, float]] = []
        self._adopted: set[str] = set()  # directories whose state was adopted
        self._lock = threading.Lock()
        self._checkpointer: Any = None
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future | None = None
        self._owner = next(_OWNERS)
        self._held: set[str] = set()  # directories whose writers' lock we hold
        self._release = weakref.finalize(self, _release_all, self._owner, self._held)

    def __repr__(self) -> str:
        keys_ = "every variable" if self._keys is None else f"{len(self._keys)} keys"
        return f"Saver({keys_}, max_to_keep={self._max_to_keep or None})"

    def __enter__(self) -> Saver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Waits for a pending save, then releases the directories' locks."""
        try:
            self.wait_until_finished()
        finally:
            self._release()

    @property
    def last_checkpoints(self) -> list[str]:
        """The checkpoints this saver keeps, oldest first, as `save` returned them.

        Empty when ``max_to_keep`` is None or 0 (TF1). A non-blocking save joins
        the list when it has been committed.
        """
        with self._lock:
            return [p for p, _, _ in self._last]

    def _orbax(self) -> Any:
        if self._checkpointer is None:
            self._checkpointer = orbax_io.async_checkpointer()
        return self._checkpointer

    def save(
        self,
        variables: Any,
        save_path: str | os.PathLike[str],
        global_step: Any = None,
        *,
        blocking: bool = True,
        write_state: bool = True,
    ) -> str | None:
        """Saves the saver's variables of ``variables`` as a checkpoint.

        Missing directories are created. The checkpoint is written under a
        temporary name, checksummed, flushed to disk and moved into place in one
        rename; an existing checkpoint at the path is replaced only then. The
        checkpoint state is replaced atomically after that, so a crash or a
        failure at any point leaves the previous checkpoints readable.

        Args:
          variables: A variable tree (e.g. from `js.init` or `js.apply`) or any
            pytree of arrays. Left unchanged.
          save_path: The checkpoint's path prefix, e.g. ``"ckpt/model"``; its
            directory holds the checkpoint state.
          global_step: An integer (or integer scalar array) appended to the path:
            ``"ckpt/model-10"``. An existing checkpoint at the path is replaced.
          blocking: If False, return once the arrays are taken; the writing,
            the checksums, the state update and the deletion of old checkpoints
            finish in the background (see `wait_until_finished`).
          write_state: Record the checkpoint in the state and in
            `last_checkpoints`, and apply ``max_to_keep``.

        Returns:
          The checkpoint's path, ``save_path`` or ``save_path-<global_step>``;
          None for an empty saver with ``allow_empty=True``.

        Raises:
          CheckpointError: A listed variable is not in ``variables``, two leaves
            have the same key, or the path is taken by something that is not a
            checkpoint, or lies inside a checkpoint.
          CheckpointTypeError: A value is not an array (or is traced), its
            dtype cannot be saved, or ``global_step`` is not an integer.
          CheckpointLockError: Another process writes in the directory.
          CheckpointWriteError: The disk is full, read-only or forbidden.
          Exception: The error of an earlier non-blocking save (as in
            `wait_until_finished`).
        """
        with interrupts.deferred(save_path) as interrupted:
            path = self._save(variables, save_path, global_step, blocking, write_state)
        if interrupted:
            raise KeyboardInterrupt  # the save is complete
        return path

    def _save(
        self,
        variables: Any,
        save_path: Any,
        global_step: Any,
        blocking: bool,
        write_state: bool,
    ) -> str | None:
        self.wait_until_finished()
        leaves, _ = keys.flatten(variables, "variables")
        chosen, absent = keys.select(self._keys, leaves)
        if absent:
            raise CheckpointError(
                "Cannot save: variables listed in the Saver are not in the tree: "
                + ", ".join(f"{p}{keys.suggest(p, list(leaves))}" for _, p in absent)
                + ". Pass the tree that holds them, or build the Saver with "
                "paths from js.flatten(variables).",
                absent[0][1],
            )
        if not chosen:
            if self._allow_empty:
                return None
            raise CheckpointError(
                "No variables to save: the tree is empty. Pass the tree from "
                "js.init, or build the Saver with allow_empty=True."
            )
        items, index = arrays.prepare(chosen, leaves)
        kinds = {key: integrity.kind(value) for key, value in items.items()}
        shared = processes.count() > 1
        # A non-blocking save of one process copies the arrays and leaves
        # Orbax's start to the commit. The copies or the views raise here for a
        # deleted (donated) array. The sharded arrays' checksums are started on
        # their devices here (a collective across processes), fetched later.
        deferred = not blocking and not shared
        taken = arrays.Snapshot(items) if deferred else None
        views = {} if deferred else integrity.host_views(items, kinds)
        sums = integrity.sum_checksums(
            {key: items[key] for key, k in kinds.items() if k == integrity.SUM}
        )
        step_number = None if global_step is None else keys.step_number(global_step)
        path = layout.target_path(save_path, step_number, self._pad_step_number)
        base = os.path.basename(os.fspath(save_path))  # what rotation may delete
        final = os.path.abspath(path)
        directory = os.path.dirname(final)
        with layout.write_errors(directory):
            os.makedirs(directory, exist_ok=True)
        if os.path.lexists(final) and not layout.is_checkpoint(final):
            raise CheckpointError(
                f"Cannot save a checkpoint at {path!r}: the path exists and is not a "
                "checkpoint, so it is not overwritten. Choose another save_path "
                "(a checkpoint is a directory of its own, e.g. 'ckpt/model').",
                path,
            )
        mutex = lock.mutex(directory)
        mutex.acquire()
        tmp = layout.temporary_path(final) if not shared else ""
        step = processes.next_save() if shared else None
        try:
            if step is not None:
                begin = functools.partial(
                    self._begin_primary, path, final, directory, write_state, base
                )
                tmp = processes.begin(step, path, begin)
                if not processes.primary():  # adopts the state, reading only
                    self._adopt(path, directory, write_state, base)
            else:
                self._begin(path, tmp, directory, write_state, base)
            if not deferred:
                self._start_orbax(path, tmp, items, views)
        except BaseException:
            if tmp and (not shared or processes.primary()):
                for leftover in (tmp, tmp + layout.ORBAX_TMP):
                    shutil.rmtree(leftover, ignore_errors=True)
            mutex.release()
            raise
        job = _Save(path, final, directory, tmp, index, views, write_state)
        job.kinds, job.sums, job.step = kinds, sums, step
        job.taken = taken
        commit = functools.partial(self._commit, job, mutex)
        if blocking:
            commit()
            return path
        if self._committer is None:  # one worker, reused: no thread start per save
            self._committer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="jscope-checkpoint-commit"
            )
            _at_thread_exit(functools.partial(_finish_at_exit, weakref.ref(self)))
        self._pending = self._committer.submit(commit)
        return path

    def _begin(
        self, path: str, tmp: str, directory: str, write_state: bool, base: str
    ) -> None:
        """Takes the directory, cleans it, checks that ``tmp`` can be created."""
        if directory not in self._held:
            lock.acquire(directory, self._owner, self._lock_timeout)
            self._held.add(directory)
        layout.remove_stale(directory)
        self._adopt(path, directory, write_state, base)
        with layout.write_errors(path):
            # Orbax creates its temporary directory in a thread of its own and,
            # when that fails, leaves its signalling threads waiting forever
            # (the process never exits): try the same mkdir here first. With one
            # process `_start_orbax` removes it (a slow rmdir, off the caller's
            # path for a non-blocking save).
            os.mkdir(tmp + layout.ORBAX_TMP)
            if processes.count() > 1:
                os.rmdir(tmp + layout.ORBAX_TMP)

    def _begin_primary(
        self, path: str, final: str, directory: str, write_state: bool, base: str
    ) -> str:
        tmp = layout.temporary_path(final)
        self._begin(path, tmp, directory, write_state, base)
        return tmp

    def _start_orbax(self, path: str, tmp: str, items: Any, views: Any) -> None:
        """Hands ``items`` to Orbax, each compressed if worth it (host ``views``)."""
        compress = {k: orbax_io.worth_compressing(v) for k, v in views.items()}
        with layout.write_errors(path):
            if processes.count() == 1:
                os.rmdir(tmp + layout.ORBAX_TMP)  # `_begin`'s probe
            orbax_io.start_save(self._orbax(), tmp, items, compress)

    def _adopt(self, path: str, directory: str, write_state: bool, base: str) -> None:
        """Adds the checkpoints of ``directory``'s state to `last_checkpoints`.

        Once per directory, and only those of save path ``base``: in a shared
        directory another saver's are not this one's to delete (TF1).
        """
        if not (write_state and self._max_to_keep) or directory in self._adopted:
            return
        state = layout.read_state(directory)
        self._adopted.add(directory)
        if state is None:
            return
        shown = os.path.dirname(path)
        with self._lock:
            known = {a for _, a, _ in self._last}
            found = [
                (os.path.join(shown, os.path.basename(a)), a, t)
                for a, t in layout.state_entries(directory, state)
                if a not in known
                and layout.of_save_path(a, directory, base)
                and layout.is_checkpoint(a)
            ]
            self._last = sorted(found + self._last, key=lambda e: e[2])

    def _commit(self, job: _Save, mutex: threading.Lock) -> None:
        """The second half of a save (see the module docstring).

        With several processes every process waits for Orbax (whose own
        barriers see every process's shards written), process 0 alone writes
        ``_CHECKSUMS``, moves the checkpoint into place and updates the state,
        and the others wait for its outcome: no process returns before the
        checkpoint is committed, and an error of process 0 is raised in all.
        """
        writer = job.step is None or processes.primary()
        old: list[str | None] = [None]

        def install() -> None:  # in process 0 only
            with layout.write_errors(job.final):
                for key, entry in job.index.items():
                    entry[job.kinds[key]] = sums[key]
                integrity.write(job.tmp, job.index, integrity.file_table(job.tmp))
                layout.fsync_tree(job.tmp)
                old[0] = layout.install(job.tmp, job.final)
            if job.write_state:
                self._record_and_rotate(job.path, job.final, job.directory)

        try:
            if job.taken is not None:  # a non-blocking save's `arrays.Snapshot`
                items, job.taken = job.taken.items(), None
                job.views = integrity.host_views(items, job.kinds)
                self._start_orbax(job.path, job.tmp, items, job.views)
            try:  # the checksums are computed while Orbax writes
                pending = integrity.Pending(job.views if writer else {})
            finally:
                with layout.write_errors(job.final):
                    orbax_io.finish_save(self._orbax())
            sums = pending.result()
            sums.update(integrity.sum_hex(job.sums))
            if job.step is None:
                install()
            else:
                processes.commit(job.step, job.path, install)
                if not writer and job.write_state:
                    with self._lock:  # process 0 deletes what this drops
                        self._record(job.path, job.final, time.time())
        except BaseException:
            if writer:
                for leftover in (job.tmp, job.tmp + layout.ORBAX_TMP):
                    shutil.rmtree(leftover, ignore_errors=True)
            raise
        finally:
            if old[0] is not None:
                shutil.rmtree(old[0], ignore_errors=True)
            mutex.release()

    def _record_and_rotate(self, path: str, final: str, directory: str) -> None:
        """Records a written checkpoint, updates the state, deletes old ones."""
        now = time.time()
        with self._lock:
            doomed = self._record(path, final, now)
            last = list(self._last)
        if last:
            paths = [layout.relative(directory, a) for _, a, _ in last]
            stamps = [t for _, _, t in last]
        else:  # max_to_keep None: the state names the newest checkpoint only
            paths, stamps = [layout.relative(directory, final)], [now]
        layout.write_state(
            directory,
            {
                "model_checkpoint_path": layout.relative(directory, final),
                "all_model_checkpoint_paths": paths,
                "all_model_checkpoint_timestamps": stamps,
                "last_preserved_timestamp": self._next_keep_time - self._keep_every_s,
            },
        )
        for old in doomed:
            layout.remove_checkpoint(old)

    def _record(self, path: str, final: str, now: float) -> list[str]:
        """Appends ``path`` to `last_checkpoints`; returns absolute paths to delete."""
        if not self._max_to_keep:
            return []
        self._last = [e for e in self._last if e[1] != final]
        self._last.append((path, final, now))
        doomed = []
        while len(self._last) > self._max_to_keep:
            _, old, stamp = self._last.pop(0)
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
        pending = self._pending
        if pending is None:
            return
        try:
            pending.result()
        except BaseException:
            if pending.done():  # the save's own error: raised once
                self._pending = None
            raise  # interrupted while waiting: still pending, waited for at exit
        self._pending = None

    def restore(self, save_path: str | os.PathLike[str] | None, target: Any) -> Any:
        """Restores the saver's variables from a checkpoint into a new tree.

        ``target`` gives the structure, shapes, dtypes and shardings: a variable
        tree or any pytree, or a tree of `jax.ShapeDtypeStruct` (from
        ``jax.eval_shape(lambda k: js.init(fn, k), key)``), so that a model can
        be restored without running its initializers. Variables outside the
        saver's list keep the target's values; extra checkpoint keys are
        ignored. Every array read is checked against its checksum.

        Args:
          save_path: A checkpoint path, as `save` or `latest_checkpoint` returns.
          target: The tree to restore into. Left unchanged.

        Returns:
          A new tree of the target's structure and order; restored arrays have
          the target's sharding (one device when a `jax.ShapeDtypeStruct` has
          none), NumPy leaves come back as NumPy arrays, scalars as the
          target's scalar type, PRNG keys as typed keys.

        Raises:
          CheckpointNotFoundError: ``save_path`` is None or not a checkpoint.
          CheckpointMismatchError: One error listing every variable missing from
            the checkpoint (or from the target) and every shape or dtype
            mismatch, by path.
          CheckpointCorruptError: A file or an array is not what was saved.
        """
        self.wait_until_finished()
        ckpt = layout.checkpoint_path(save_path, directory_ok=False)
        leaves, rebuild = keys.flatten(target, "target")
        chosen, absent = keys.select(self._keys, leaves)
        if not chosen and not absent:
            if self._allow_empty:
                return rebuild(leaves)
            raise CheckpointError(
                "No variables to restore: the target tree is empty. Pass the tree "
                "(or jax.eval_shape of js.init) to restore into."
            )
        targets = {key: read.target(leaves[p], p) for key, p in chosen.items()}

        def restore_checked() -> dict[str, Any]:
            stored = read.describe(ckpt)
            error = read.mismatch_error(
                ckpt, chosen, absent, targets, stored, list(leaves)
            )
            if error is not None:
                raise error
            return read.restore_leaves(
                stored, {key: (leaves[p], targets[key]) for key, p in chosen.items()}
            )

        restored = read.stable_read(ckpt, restore_checked)
        by_path = {path: restored[key] for key, path in chosen.items()}
        return rebuild({p: by_path.get(p, v) for p, v in leaves.items()})


class _Save:
    """What the commit of one save needs."""

    def __init__(self, path, final, directory, tmp, index, views, write_state):
        self.path, self.final, self.directory, self.tmp = path, final, directory, tmp
        self.index, self.views, self.write_state = index, views, write_state
        self.kinds: dict[str, str] = {}
        self.sums: dict[str, Any] = {}  # the started `SUM` checksums
        self.step: int | None = None  # the save's number, with several processes
        self.taken: arrays.Snapshot | None = None  # what Orbax is yet to take


def _release_all(owner: int, held: set[str]) -> None:
    for directory in list(held):
        lock.release(directory, owner)
    held.clear()


def _finish_at_exit(ref: weakref.ref[Saver]) -> None:
    saver = ref()
    if saver is not None:
        try:
            saver.wait_until_finished()
        except Exception as e:  # one line, not a traceback, as the program ends
            print(f"jscope: a checkpoint save failed: {e}", file=sys.stderr)


# A non-blocking save pending when the program ends must finish before the
# interpreter stops its thread pools (Orbax needs them to commit): threading's
# exit hooks run first, in reverse order, so this runs before concurrent.futures
# shuts down.
_at_thread_exit = getattr(threading, "_register_atexit", atexit.register)
