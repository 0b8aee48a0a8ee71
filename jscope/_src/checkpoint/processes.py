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
from typing import Any

import jax

TIMEOUT_S = 1800  # how long a process waits for process 0 (a large save's commit)

_SAVES = itertools.count()


def count() -> int:
    """The number of processes (1 without `jax.distributed`)."""
    return jax.process_count()


def primary() -> bool:
    """Whether this process is process 0, the one that writes shared files."""
    return jax.process_index() == 0


def next_save() -> int:
    """The number of this process's next multi-process save.

    Every process saves in the same order, so the n-th save has the same
    number everywhere: the keys of its steps are unique and agreed on.
    """
    return next(_SAVES)


def describe(error: BaseException) -> str:
    """An error as one line for the other processes."""
    return f"{type(error).__name__}: {error}"


def _client() -> Any:
    from jax._src import distributed  # noqa: PLC0415 (jax's coordination client)

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(
            "jax reports several processes but jax.distributed is not initialized"
        )
    return client


def share(step: int, name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """Process 0's ``value`` for the step ``name`` of save ``step``, everywhere.

    Process 0 passes the value and gets it back; the other processes pass
    None and wait (at most `TIMEOUT_S`) until process 0 has published it.
    """
    key = f"jscope/checkpoint/save-{step}/{name}"
    client = _client()
    if primary():
        assert value is not None
        client.key_value_set(key, json.dumps(value))
        return value
    return json.loads(client.blocking_key_value_get(key, TIMEOUT_S * 1000))
