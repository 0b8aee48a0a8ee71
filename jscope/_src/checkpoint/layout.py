"""On-disk layout: checkpoint directories, the checkpoint state file, temp names.

A directory of checkpoints holds one directory per checkpoint and the
*checkpoint state* file named ``checkpoint`` (TF1's name), in JSON::

    ckpt/
      checkpoint          {"model_checkpoint_path": "model-10",
                           "all_model_checkpoint_paths": ["model-9", "model-10"],
                           "all_model_checkpoint_timestamps": [...], ...}
      .checkpoint.lock    the writers' lock (see `lock.py`)
      model-9/  model-10/ checkpoints: Orbax's files and jscope's _CHECKSUMS

Paths in the state are relative to its directory, so a directory of checkpoints
can be moved as a whole. A checkpoint is written under a temporary name unique
to its writer (``.model-10.jscope-tmp-<pid>-<token>``), made durable, then moved
into place by one rename (an atomic exchange when it replaces an old one); a
replaced or deleted checkpoint is first renamed to ``.<name>.jscope-old-...``.
Temporary names are never read, and are removed by the next save in the
directory.

No Orbax import: this module handles names and files only.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from jscope import errors

CheckpointError = errors.CheckpointError
CheckpointNotFoundError = errors.CheckpointNotFoundError
CheckpointTypeError = errors.CheckpointTypeError
CheckpointWriteError = errors.CheckpointWriteError

STATE_FILENAME = "checkpoint"
LOCK_FILENAME = ".checkpoint.lock"
ORBAX_METADATA = "_METADATA"  # the tree metadata Orbax writes in each checkpoint
CHECKSUMS = "_CHECKSUMS"  # jscope's index and checksums, in each checkpoint
ORBAX_TMP = ".orbax-checkpoint-tmp"  # Orbax's unfinished saves: "<name><suffix>"
TMP_MARK = ".jscope-tmp-"  # a checkpoint being written
OLD_MARK = ".jscope-old-"  # a checkpoint being replaced or deleted
_STATE_MAX_BYTES = 1 << 20
_NONE_MSG = "Can't load save_path when it is None."
NOT_VALID_MSG = "The passed save_path is not a valid checkpoint: {path}"


# ------------------------------------------------------------------ names


def is_temporary(name: str) -> bool:
    """True for the name of an unfinished save or of a checkpoint being deleted."""
    return ORBAX_TMP in name or TMP_MARK in name or OLD_MARK in name


def temporary_path(final: str, mark: str = TMP_MARK) -> str:
    """A name beside ``final`` that no other writer uses."""
    directory, name = os.path.split(final)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(directory, f".{name}{mark}{token}")


def is_checkpoint(path: str) -> bool:
    """True for a committed checkpoint directory (jscope's or Orbax's)."""
    return (
        not is_temporary(os.path.basename(path))
        and os.path.isdir(path)
        and (
            os.path.isfile(os.path.join(path, ORBAX_METADATA))
            or os.path.isfile(os.path.join(path, CHECKSUMS))
        )
    )


def inside_checkpoint(directory: str) -> str | None:
    """The checkpoint (or temporary save) that ``directory`` is in, or None."""
    path = os.path.abspath(directory)
    while True:
        if is_checkpoint(path) or is_temporary(os.path.basename(path)):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def fspath(save_path: Any, what: str) -> str:
    """``save_path`` as a str; clear errors for None and non-paths."""
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


def target_path(save_path: Any, step: int | None, pad: bool) -> str:
    """The checkpoint path of a save: ``save_path``, ``-<step>`` appended.

    Raises:
      CheckpointError: The path cannot name a checkpoint (see the messages).
    """
    path = fspath(save_path, "save_path")
    if step is not None:
        path = f"{path}-{step:08d}" if pad else f"{path}-{step}"
    name = os.path.basename(path)
    if (
        not name
        or name in (STATE_FILENAME, LOCK_FILENAME, ".", "..")
        or is_temporary(name)
    ):
        raise CheckpointError(
            f"Cannot save a checkpoint at {path!r}: save_path must name a "
            f"checkpoint inside a directory, like 'ckpt/model' (the name "
            f"{STATE_FILENAME!r} is the directory's checkpoint state).",
            path,
        )
    inside = inside_checkpoint(os.path.dirname(os.path.abspath(path)))
    if inside is not None:
        raise CheckpointError(
            f"Cannot save a checkpoint at {path!r}: its directory is inside the "
            f"checkpoint {inside}, and the checkpoint state written there would "
            "break it. Save beside it instead, e.g. "
            f"{os.path.join(os.path.dirname(inside), 'model')!r}.",
            path,
        )
    return path


def of_save_path(path: str, directory: str, base: str) -> bool:
    """Whether checkpoint ``path`` is ``<directory>/<base>`` or ``...-<step>``."""
    parent, name = os.path.split(path)
    step = name[len(base) + 1 :] if name.startswith(base + "-") else None
    return parent == directory and (name == base or (step or "").isdigit())


def relative(directory: str, path: str) -> str:
    """``path`` as the state records it: its name if it is in ``directory``."""
    parent, name = os.path.split(os.path.abspath(path))
    return name if parent == os.path.abspath(directory) else os.path.abspath(path)


def resolve(directory: str, entry: str) -> str:
    """A state entry as a path (joined to ``directory`` when relative)."""
    return entry if os.path.isabs(entry) else os.path.join(directory, entry)


# ----------------------------------------------------------------- state file


def state_path(directory: str) -> str:
    """The checkpoint state file of ``directory``."""
    return os.path.join(directory, STATE_FILENAME)


def _bad_state(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint state file {path} cannot be read ({why}). jscope writes "
        "it as JSON with 'model_checkpoint_path' and 'all_model_checkpoint_paths'; "
        "delete or fix the file.",
        path,
    )


def read_state(directory: str) -> dict[str, Any] | None:
    """The checkpoint state of ``directory``, or None when it has none.

    Raises:
      CheckpointError: The file is not a state jscope (or TF1 as JSON) wrote.
    """
    path = state_path(directory)
    try:
        with open(path, "rb") as f:
            data = f.read(_STATE_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _bad_state(path, e.strerror or type(e).__name__) from None
    if len(data) > _STATE_MAX_BYTES:
        raise _bad_state(path, f"larger than {_STATE_MAX_BYTES} bytes")
    try:
        state = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        state = _text_state(data)  # TF1 writes the state as a text-format proto
        if state is None:
            raise _bad_state(path, f"not UTF-8 JSON: {type(e).__name__}") from None
    why = _state_problem(state)
    if why:
        raise _bad_state(path, why)
    return state


_TEXT_FIELD = re.compile(r'\s*(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[-+.\w]+)\s*')


def _text_state(data: bytes) -> dict[str, Any] | None:
    """TF1's text-format ``CheckpointState`` as the JSON dict; None if not one."""
    state: dict[str, Any] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        match = _TEXT_FIELD.fullmatch(line)
        if match is None:
            if line.strip():
                return None
            continue
        key, text = match.groups()
        try:
            value = (
                codecs.escape_decode(text[1:-1].encode())[0].decode("utf-8")
                if text.startswith('"')
                else float(text)
            )
        except (ValueError, UnicodeDecodeError):
            return None
        if key.startswith("all_"):
            state.setdefault(key, []).append(value)
        else:
            state[key] = value
    return state or None


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    model = state.get("model_checkpoint_path")
    paths = state.get("all_model_checkpoint_paths", [])
    stamps = state.get("all_model_checkpoint_timestamps", [])
    if model is not None and not isinstance(model, str):
        return "'model_checkpoint_path' is not a string"
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return "'all_model_checkpoint_paths' is not a list of strings"
    if not isinstance(stamps, list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in stamps
    ):
        return "'all_model_checkpoint_timestamps' is not a list of numbers"
    return None


def state_entries(directory: str, state: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``[(absolute checkpoint path, timestamp)]`` of a state, oldest first."""
    paths = state.get("all_model_checkpoint_paths", [])
    stamps = list(state.get("all_model_checkpoint_timestamps", []))
    if len(stamps) != len(paths):
        stamps = [0.0] * len(paths)
    return [
        (os.path.abspath(resolve(directory, p)), float(s))
        for p, s in zip(paths, stamps, strict=True)
    ]


def _umask() -> int:
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii") as f,
    ):
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_state(directory: str, state: Mapping[str, Any]) -> None:
    """Writes the checkpoint state atomically: temp file, fsync, os.replace.

    The file gets mode 0644 (as the umask allows), like the directories.
    """
    path = state_path(directory)
    with write_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILENAME}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1)
                f.write("\n")
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_umask())
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_directory(directory)


# ---------------------------------------------------------------- durability

_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "a file is larger than the process may write",
}

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def write_error(path: str, error: BaseException) -> CheckpointWriteError | None:
    """The `CheckpointWriteError` for a failed write (disk full, read-only, ...).

    Recognises `OSError` and TensorStore's status texts (any error carrying an
    ``os_error_code``); None for other errors.
    """
    code = getattr(error, "errno", None)
    text = str(error)
    match = _OS_ERROR_CODE.search(text)
    if code is None and match:  # TensorStore: any "[os_error_code='27']"
        code = int(match.group(1))
    elif code not in _WRITE_ERRNOS:
        code = next(
            (
                c
                for c, words in (
                    (errno.ENOSPC, ("RESOURCE_EXHAUSTED", "No space left")),
                    (errno.EROFS, ("Read-only file system",)),
                    (errno.EACCES, ("PERMISSION_DENIED", "Permission denied")),
                )
                if any(w in text for w in words)
            ),
            None,
        )
    if code is None:
        return None
    what = _WRITE_ERRNOS.get(code) or "the write failed"
    return CheckpointWriteError(
        f"Cannot write checkpoint {path}: {what} "
        f"([Errno {code}] {os.strerror(code)}; {text.splitlines()[0][:300]}). "
        "The previous checkpoints are unchanged; free space or fix the "
        "permissions, then save again.",
        path,
        code,
    )


@contextlib.contextmanager
def write_errors(path: str):
    """Turns disk-full, read-only and permission errors into `CheckpointWriteError`."""
    try:
        yield
    except errors.JscopeError:
        raise
    except Exception as e:
        error = write_error(path, e)
        if error is None:
            raise
        raise error from e


def fsync_directory(directory: str) -> None:
    """Makes the renames in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        _fsync_file(directory)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Flushes every file and directory under ``root`` to disk.

    The fsyncs run concurrently, so the file system commits them together
    (TensorStore has already synced the arrays' data; Orbax's metadata files
    and the directories are what is left).
    """
    files, directories = [], []
    for parent, _, names in os.walk(root):
        directories.append(parent)
        files += [os.path.join(parent, name) for name in names]
    with concurrent.futures.ThreadPoolExecutor(min(16, len(files) + 1)) as pool:
        list(pool.map(_fsync_file, files))
        list(pool.map(fsync_directory, directories))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), a)


def install(tmp: str, final: str) -> str | None:
    """Moves the complete checkpoint ``tmp`` to ``final``; returns the old one's path.

    When ``final`` exists, the two are exchanged atomically, so ``final`` always
    names a complete checkpoint; the old one is left under a temporary name for
    the caller to delete once the state no longer needs it.
    """
    directory = os.path.dirname(final)
    if not os.path.lexists(final):
        os.rename(tmp, final)
        fsync_directory(directory)
        return None
    old = temporary_path(final, OLD_MARK)
    if _exchange(tmp, final):
        os.rename(tmp, old)
    else:  # no atomic exchange here: a short window without ``final``
        os.rename(final, old)
        os.rename(tmp, final)
    fsync_directory(directory)
    return old


def remove_checkpoint(path: str) -> None:
    """Deletes a checkpoint; renamed first, so a crash never leaves half of one."""
    if not is_checkpoint(path):
        return
    trash = temporary_path(path, OLD_MARK)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale(directory: str) -> list[str]:
    """Removes what dead writers left in ``directory``; returns the names removed.

    Called by a writer that holds the directory's lock, so no other writer is
    using any temporary name there.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if is_temporary(name) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        elif name.startswith(f".{STATE_FILENAME}.") and name != LOCK_FILENAME:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(name)
    return removed


# ------------------------------------------------------------ reading paths


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """The newest checkpoint recorded in a directory's checkpoint state.

    Args:
      checkpoint_dir: The directory that `Saver.save` wrote into.

    Returns:
      The checkpoint's path (joined to ``checkpoint_dir``), or None when the
      directory does not exist, has no checkpoint state, or the recorded
      checkpoint is gone (TF1). A TF1 directory's text-format state is read
      too, and gives the TF1 prefix (``model.ckpt-1000``, see ``js.tf1``).

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
    directory = fspath(checkpoint_dir, "checkpoint_dir")
    state = read_state(directory)
    model = state.get("model_checkpoint_path") if state else None
    if not model:
        return None
    path = resolve(directory, model)
    return path if is_checkpoint(path) or os.path.isfile(path + ".index") else None


def _tf1_prefix(path: str) -> str | None:
    """The TF1 checkpoint (``<prefix>.index``) that ``path`` or its state names."""
    prefix = (latest_checkpoint(path) or "") if os.path.isdir(path) else path
    prefix = prefix.removesuffix(".index")
    return prefix if os.path.isfile(prefix + ".index") else None


def not_a_checkpoint(path: str) -> CheckpointNotFoundError:
    """The error for a ``save_path`` that is not a checkpoint, saying why."""
    tf1 = _tf1_prefix(path)
    if tf1 is not None:
        why = (
            f"{tf1} is a TF1 checkpoint, .index and .data files: read it with "
            "js.tf1.restore, js.tf1.load_checkpoint or js.tf1.list_variables"
        )
    elif is_temporary(os.path.basename(path)):
        why = "it is an unfinished save (a temporary directory)"
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
        f"{NOT_VALID_MSG.format(path=path)} ({why}). Checkpoint paths are what "
        "saver.save returns, e.g. 'ckpt/model-10', or js.latest_checkpoint('ckpt').",
        path,
    )


def checkpoint_path(save_path: Any, *, directory_ok: bool) -> str:
    """Validates a checkpoint path; a directory of checkpoints if ``directory_ok``."""
    path = fspath(save_path, "save_path")
    if is_checkpoint(path):
        return path
    if directory_ok and os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is not None and is_checkpoint(latest):
            return latest
    raise not_a_checkpoint(path)
