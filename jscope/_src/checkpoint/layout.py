"""On-disk layout: checkpoint directories, the checkpoint state file, paths.

A directory of checkpoints holds one directory per checkpoint (written by Orbax)
and the *checkpoint state* file named ``checkpoint`` (TF1's name), written
atomically, in JSON. No Orbax import: this module reads names and files only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from jscope import errors

CheckpointError = errors.CheckpointError
CheckpointNotFoundError = errors.CheckpointNotFoundError
CheckpointTypeError = errors.CheckpointTypeError

STATE_FILENAME = "checkpoint"
PYTREE_METADATA = "_METADATA"  # the tree metadata Orbax writes in each checkpoint
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's unfinished saves: "<name><suffix>"
_NONE_MSG = "Can't load save_path when it is None."
NOT_VALID_MSG = "The passed save_path is not a valid checkpoint: {path}"

# ----------------------------------------------------------------- state file


def state_path(directory: str) -> str:
    return os.path.join(directory, STATE_FILENAME)


def read_state(directory: str) -> dict[str, Any] | None:
    """The checkpoint state of ``directory``, or None when it has none."""
    path = state_path(directory)
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


def write_state(directory: str, state: Mapping[str, Any]) -> None:
    """Writes the checkpoint state atomically: temp file, fsync, os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILENAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_path(directory))
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


def relative(directory: str, path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return name if parent == directory else os.path.abspath(path)


def resolve(directory: str, entry: str) -> str:
    return entry if os.path.isabs(entry) else os.path.join(directory, entry)


def drop_from_state(directory: str, name: str) -> None:
    """Removes checkpoint ``name`` from ``directory``'s state before overwriting it."""
    state = read_state(directory)
    if state is None:
        return
    paths = state.get("all_model_checkpoint_paths", [])
    stamps = state.get("all_model_checkpoint_timestamps", [])
    target = os.path.join(directory, name)
    keep = [
        (p, s)
        for p, s in zip(paths, stamps or [None] * len(paths), strict=False)
        if os.path.abspath(resolve(directory, p)) != target
    ]
    model = state.get("model_checkpoint_path")
    if model and os.path.abspath(resolve(directory, model)) == target:
        model = keep[-1][0] if keep else None
    elif len(keep) == len(paths):
        return
    new = dict(state, model_checkpoint_path=model)
    new["all_model_checkpoint_paths"] = [p for p, _ in keep]
    if stamps:
        new["all_model_checkpoint_timestamps"] = [s for _, s in keep]
    write_state(directory, new)


# ---------------------------------------------------------------- checkpoints


def is_checkpoint(path: str) -> bool:
    """True for a committed Orbax checkpoint directory."""
    return (
        TMP_SUFFIX not in os.path.basename(path)
        and os.path.isdir(path)
        and os.path.isfile(os.path.join(path, PYTREE_METADATA))
    )


def fspath(save_path: Any, what: str) -> str:
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


def not_a_checkpoint(path: str) -> CheckpointNotFoundError:
    if TMP_SUFFIX in os.path.basename(path):
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
        if latest is not None:
            return latest
    raise not_a_checkpoint(path)


def remove_checkpoint(path: str) -> None:
    """Deletes a checkpoint; renamed first, so a crash never leaves half of one."""
    if not is_checkpoint(path):
        return
    trash = path + TMP_SUFFIX
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


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
    directory = fspath(checkpoint_dir, "checkpoint_dir")
    state = read_state(directory)
    model = state.get("model_checkpoint_path") if state else None
    if not model:
        return None
    path = resolve(directory, model)
    return path if is_checkpoint(path) else None
