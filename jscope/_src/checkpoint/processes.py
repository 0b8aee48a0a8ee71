"""Several processes (`jax.distributed`): who writes, and agreeing on a save.

Under ``jax.distributed.initialize`` every process calls `Saver.save` with the
same tree, in the same order. Process 0 (the *primary*) takes the directory's
lock, chooses the temporary name, writes ``_CHECKSUMS`` and the checkpoint
state, and renames and deletes; every process writes its own shards through
Orbax. The processes agree through the coordination service's key-value store
(`jax.distributed`'s client; thread-safe, so a background commit can use it
too): process 0 publishes each step's outcome under a key named by the save's
number (`next_save`), the others wait for it, so no process goes on before
process 0 is done, and an error of process 0 is raised in every process.

With one process nothing here runs, and nothing is waited for.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax

from jscope import errors
from jscope._src import jax_compat

CheckpointError = errors.CheckpointError

TIMEOUT_S = 1800  # how long a process waits for process 0 (a large save's commit)
TIMEOUT_ENV = "JSCOPE_BARRIER_TIMEOUT_S"  # overrides it, read at every wait


def timeout_s() -> float:
    """Seconds a process waits for the others at a save's or restore's steps.

    ``JSCOPE_BARRIER_TIMEOUT_S`` from the environment when set, else
    `TIMEOUT_S` (30 minutes: a large save's commit). Read at every wait.

    Raises:
      CheckpointError: The variable is not a finite number of seconds > 0.
    """
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return float(TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise CheckpointError(
            f"{TIMEOUT_ENV}={text!r}: expected the seconds a process waits for the "
            f"others at a checkpoint step, a number > 0 (default {TIMEOUT_S}). Set "
            "it to e.g. 600, or unset it."
        )
    return seconds


_SAVES = itertools.count()
_READS = itertools.count()


def count() -> int:
    """The number of processes (1 without `jax.distributed`)."""
    return jax.process_count()


def primary() -> bool:
    """Whether this process is process 0, the one that writes shared files."""
    return jax.process_index() == 0


def spans(sharding: Any) -> bool:
    """Whether a sharding has devices of other processes."""
    if sharding is None:
        return False
    me = jax.process_index()
    return any(d.process_index != me for d in sharding.device_set)


def next_save() -> int:
    """The number of this process's next multi-process save.

    Every process saves in the same order, so the n-th save has the same
    number everywhere: the keys of its steps are unique and agreed on.
    """
    return next(_SAVES)


def next_read() -> int:
    """The number of this process's next multi-process read (as `next_save`)."""
    return next(_READS)


def describe(error: BaseException) -> str:
    """An error as one line for the other processes."""
    return f"{type(error).__name__}: {error}"


def _timeout_ms(seconds: float) -> int:
    """``seconds`` (from `timeout_s`) in whole milliseconds, at least 1."""
    return max(1, round(seconds * 1000))


def _client() -> Any:
    client = jax_compat.distributed_client()
    if client is None:
        raise RuntimeError(
            "jax reports several processes but jax.distributed is not initialized"
        )
    return client


def _wait(client: Any, key: str, waiting_for: str, path: str) -> str:
    """The value of ``key`` once published (at most `timeout_s`).

    Raises:
      CheckpointError: It was not published in time: a process never got to
        that step (it saves or restores in another order, or is stuck), or is
        slower than the timeout allows.
    """
    seconds = timeout_s()
    try:
        return client.blocking_key_value_get(key, _timeout_ms(seconds))
    except Exception as e:  # jax's runtime error, whose class moves between versions
        if "DEADLINE_EXCEEDED" not in str(e):
            raise
        raise CheckpointError(
            f"Process {jax.process_index()} waited {seconds:g} s for {waiting_for} "
            f"at {path!r} and gave up. Every process must save and restore the same "
            "checkpoints in the same order; if the other process is only slow (a "
            f"large save's commit), set {TIMEOUT_ENV} to more seconds (default "
            f"{TIMEOUT_S}).",
            path,
        ) from e


def share(
    step: int, name: str, value: dict[str, Any] | None, path: str
) -> dict[str, Any]:
    """Process 0's ``value`` for the step ``name`` of save ``step``, everywhere.

    Process 0 passes the value and gets it back; the other processes pass
    None and wait (at most `timeout_s`) until process 0 has published it.
    ``path``: the checkpoint, for the error message.

    Raises:
      CheckpointError: Process 0 did not publish it in time (`_wait`).
    """
    key = f"jscope/checkpoint/save-{step}/{name}"
    client = _client()
    if primary():
        assert value is not None
        client.key_value_set(key, json.dumps(value))
        return value
    waiting_for = f"process 0 to {name} multi-process save number {step}"
    return json.loads(_wait(client, key, waiting_for, path))


def gather(
    what: str, step: int, error: BaseException | None, path: str, verb: str = "finish"
) -> list[tuple[int, str]]:
    """Every other process's error at step ``step`` of ``what``, after all got there.

    Each process publishes its outcome (``error`` or success) and waits (at most
    `timeout_s`) for every other's: ``[(process, error text), ...]``. ``path``:
    the checkpoint, and ``verb`` (what the others must do: "finish", "begin"),
    for the error message.

    Raises:
      CheckpointError: Another process did not get there in time (`_wait`).
    """
    client = _client()
    me = jax.process_index()
    prefix = f"jscope/checkpoint/{what}-{verb}-{step}"
    text = "" if error is None else describe(error)
    client.key_value_set(f"{prefix}/{me}", json.dumps(text))
    failed = []
    for other in range(count()):
        if other != me:
            waiting_for = f"process {other} to {verb} {what} number {step}"
            found = _wait(client, f"{prefix}/{other}", waiting_for, path)
            if json.loads(found):
                failed.append((other, json.loads(found)))
    return failed


def begin(step: int, path: str, start: Callable[[], str]) -> str:
    """The start of save ``step``: process 0 runs ``start``, all get its result.

    ``start`` takes the directory and returns the temporary name that every
    process passes to Orbax. An error of process 0 is raised in every process.
    """
    if primary():
        try:
            tmp = start()
        except BaseException as e:
            share(step, "begin", {"error": describe(e)}, path)
            raise
        share(step, "begin", {"tmp": tmp}, path)
        return tmp
    begun = share(step, "begin", None, path)
    if "error" in begun:
        raise CheckpointError(
            f"Cannot save a checkpoint at {path!r}: process 0, which writes the "
            f"checkpoint's directory, failed to start it: {begun['error']}",
            path,
        )
    return str(begun["tmp"])


def commit(step: int, path: str, install: Callable[[], None]) -> None:
    """The end of save ``step``: process 0 runs ``install``, the others wait.

    No process returns before process 0 has committed the checkpoint, and an
    error of process 0 is raised in every process.
    """
    if primary():
        try:
            install()
        except BaseException as e:
            share(step, "commit", {"error": describe(e)}, path)
            raise
        share(step, "commit", {}, path)
        return
    committed = share(step, "commit", None, path)
    if "error" in committed:
        raise CheckpointError(
            f"Cannot save a checkpoint at {path!r}: process 0 failed to commit "
            f"it: {committed['error']}",
            path,
        )
