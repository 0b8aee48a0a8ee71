"""The writers' lock of a checkpoint directory.

One process writes a directory of checkpoints at a time. A `Saver` takes the
directory's lock on its first save there and keeps it until `Saver.close`, its
garbage collection or the end of its process (the kernel releases the lock of a
dead process, so a killed writer never blocks its restart). The lock is an
``fcntl`` lock (``flock`` and ``lockf`` both, so either kind held by another
process is seen) on ``<directory>/.checkpoint.lock``; the file names its holder
(pid, host), for the error a second writer gets.

Inside one process the lock is shared by every `Saver`, and a per-directory
mutex lets one save at a time write there (held from the start of a save until
its background commit ends), so Savers in several threads never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time

from jscope import errors
from jscope._src.checkpoint.layout import LOCK_FILENAME, write_error

CheckpointLockError = errors.CheckpointLockError

_GUARD = threading.Lock()


class _Directory:
    """This process's hold on one directory."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()  # one save at a time in the directory
        self.fd: int | None = None  # the lock file, locked while owners is not empty
        self.owners: set[int] = set()


_DIRECTORIES: dict[str, _Directory] = {}


def _key(directory: str) -> str:
    return os.path.realpath(directory)


def mutex(directory: str) -> threading.Lock:
    """The in-process mutex of ``directory``: held by the save writing there."""
    with _GUARD:
        return _DIRECTORIES.setdefault(_key(directory), _Directory()).mutex


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        fcntl.flock(fd, fcntl.LOCK_UN)
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _holder(path: str) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        with open(path, "rb") as f:
            holder = json.loads(f.read(4096).decode("utf-8"))
        return holder if isinstance(holder, dict) else None
    return None


def _lock_file(directory: str) -> int | None:
    """Opens and locks the lock file; None while another process holds it."""
    path = os.path.join(directory, LOCK_FILENAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise (write_error(directory, e) or e) from None
    try:
        if not _try_lock(fd):
            os.close(fd)
            return None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def acquire(directory: str, owner: int, timeout: float | None) -> None:
    """Takes the lock of ``directory`` for ``owner`` (a Saver's id).

    Args:
      directory: The checkpoint directory (it exists).
      owner: Who holds it in this process; `release` with the same id.
      timeout: Seconds to wait for another process's lock; 0 fails at once,
        None waits forever.

    Raises:
      CheckpointLockError: Another process held the lock for ``timeout`` seconds.
      CheckpointWriteError: The lock file cannot be created (read-only, ...).
    """
    key = _key(directory)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.01
    while True:
        with _GUARD:
            entry = _DIRECTORIES.setdefault(key, _Directory())
            if entry.fd is None:
                entry.fd = _lock_file(directory)
            if entry.fd is not None:
                entry.owners.add(owner)
                return
        if deadline is not None and time.monotonic() >= deadline:
            raise _held(directory, timeout)
        time.sleep(
            pause if deadline is None else min(pause, deadline - time.monotonic())
        )
        pause = min(pause * 2, 0.5)


def _held(directory: str, timeout: float | None) -> CheckpointLockError:
    path = os.path.join(directory, LOCK_FILENAME)
    holder = _holder(path)
    who = (
        f"process {holder.get('pid')} on host {holder.get('host')!r}"
        if holder
        else "another process"
    )
    waited = f" (waited {timeout:g} s)" if timeout else ""
    return CheckpointLockError(
        f"Cannot save in {directory}: {who} is writing checkpoints there "
        f"(it holds {path}){waited}. Two writers in one directory would mix their "
        "checkpoints. Stop the other job, save elsewhere, or pass "
        "js.Saver(lock_timeout=seconds) (None waits forever) to wait for it.",
        directory,
        holder,
    )


def release(directory: str, owner: int) -> None:
    """Drops ``owner``'s hold; the lock file is unlocked when no owner is left."""
    with _GUARD:
        entry = _DIRECTORIES.get(_key(directory))
        if entry is None or owner not in entry.owners:
            return
        entry.owners.discard(owner)
        if not entry.owners and entry.fd is not None:
            with contextlib.suppress(OSError):
                os.close(entry.fd)  # closing releases both kinds of lock
            entry.fd = None


def holds(directory: str, owner: int) -> bool:
    """Whether ``owner`` holds the lock of ``directory``."""
    with _GUARD:
        entry = _DIRECTORIES.get(_key(directory))
        return entry is not None and owner in entry.owners
