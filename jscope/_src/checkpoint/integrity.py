"""Integrity: what a checkpoint holds, with checksums, in its ``_CHECKSUMS`` file.

At save, jscope records in each checkpoint (beside Orbax's files) a small file::

    jscope-checksums xxh3_64=<checksum of the rest of the file>
    {"version": 2,
     "variables": {"params/w": {"shape": [4, 3], "dtype": "float32",
                                "xxh3_64": "…", "key_impl": null}, ...},
     "files": {"_METADATA": {"size": 812, "xxh3_64": "…"},
               "ocdbt.process_0/d/…": {"size": 1048576, "xxh3_64": null}, ...}}

Every array's checksum is xxHash's XXH3 (64 bits) of its values in C order
(of its 16 MiB chunks' checksums for a larger array, hashed in parallel);
every file of the checkpoint has its size and, up to `SMALL_FILE` bytes (all of
Orbax's metadata), its checksum. A read checks the file (its own first line),
the files' sizes and small checksums before Orbax opens anything, and each
restored array's checksum after: a flipped bit, a truncated, emptied or deleted
file is a `CheckpointCorruptError` naming the file or the variable, never a
wrong value. Orbax's ``_METADATA`` says that the file exists, so deleting it is
detected too.

Arrays whose values this process cannot see whole (sharded over several
processes) get no array checksum; their files' sizes are still checked.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import xxhash

from jscope import errors
from jscope._src.checkpoint.layout import CHECKSUMS

CheckpointCorruptError = errors.CheckpointCorruptError

VERSION = 2
SMALL_FILE = 1 << 20  # files up to this size get a checksum
CHUNK = 1 << 24  # arrays are hashed in chunks of this many bytes
_HEADER = b"jscope-checksums xxh3_64="


def host_view(value: Any) -> np.ndarray | None:
    """The values of an array as NumPy (no copy on CPU), or None if not all here."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return None
    return np.asarray(value)


def _chunks(values: np.ndarray) -> list[Any]:
    data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    return [data[i : i + CHUNK].data for i in range(0, max(len(data), 1), CHUNK)]


def _combine(digests: list[int]) -> str:
    if len(digests) == 1:
        return f"{digests[0]:016x}"
    return xxhash.xxh3_64_hexdigest(np.asarray(digests, "<u8").data)


def checksums(views: Mapping[str, np.ndarray | None]) -> dict[str, str | None]:
    """The checksum of each array (None for None), 16 hex digits each.

    XXH3-64 of the values in C order; an array over `CHUNK` bytes is hashed a
    chunk at a time, in parallel (xxhash releases the GIL), and its checksum is
    the XXH3-64 of the chunks' checksums (little-endian uint64).
    """
    parts = {key: _chunks(v) for key, v in views.items() if v is not None}
    flat = [chunk for chunks in parts.values() for chunk in chunks]
    if len(flat) > 1 and sum(len(c) for c in flat) >= 1 << 22:
        digests = iter(_pool().map(xxhash.xxh3_64_intdigest, flat))
    else:
        digests = iter(map(xxhash.xxh3_64_intdigest, flat))
    out: dict[str, str | None] = {key: None for key in views}
    for key, chunks in parts.items():
        out[key] = _combine([next(digests) for _ in chunks])
    return out


def checksum(values: np.ndarray) -> str:
    """The checksum of one array (see `checksums`)."""
    return _combine([xxhash.xxh3_64_intdigest(c) for c in _chunks(values)])


_POOL: list[concurrent.futures.ThreadPoolExecutor] = []


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    if not _POOL:
        workers = min(8, os.cpu_count() or 1)
        _POOL.append(
            concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="jscope-checksum"
            )
        )
    return _POOL[0]


def _file_checksum(path: str) -> str:
    hasher = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def file_table(root: str) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "xxh3_64"}}`` of every file under ``root``."""
    table = {}
    for parent, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, root)
            if rel == CHECKSUMS:
                continue
            size = os.path.getsize(path)
            small = size <= SMALL_FILE
            table[rel] = {
                "size": size,
                "xxh3_64": _file_checksum(path) if small else None,
            }
    return table


def write(root: str, variables: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    """Writes the ``_CHECKSUMS`` file of the checkpoint at ``root``, fsynced."""
    body = json.dumps(
        {"version": VERSION, "variables": variables, "files": files},
        separators=(",", ":"),
    ).encode()
    header = _HEADER + xxhash.xxh3_64_hexdigest(body).encode() + b"\n"
    fd = os.open(
        os.path.join(root, CHECKSUMS), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
    )
    try:
        os.write(fd, header + body)
        os.fsync(fd)
    finally:
        os.close(fd)


def corrupt(ckpt: str, what: str, *, key: str | None = None, file: str | None = None):
    """The `CheckpointCorruptError` for ``ckpt``, naming the key and the file."""
    named = []
    if key is not None:
        named.append(f"variable {key}")
    if file is not None:
        named.append(f"file {file}")
    return CheckpointCorruptError(
        f"Checkpoint {ckpt} is corrupt: {what} ({', '.join(named) or 'its files'}). "
        "Its data is not what was saved; restore an older checkpoint "
        "(saver.last_checkpoints, or the checkpoint state's "
        "all_model_checkpoint_paths) or save again.",
        key,
        file,
    )


def read(ckpt: str) -> dict[str, Any] | None:
    """The parsed ``_CHECKSUMS`` of ``ckpt``, or None if it has none.

    Raises:
      CheckpointCorruptError: The file is unreadable, truncated or altered.
    """
    path = os.path.join(ckpt, CHECKSUMS)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise corrupt(ckpt, f"cannot read it ({e.strerror})", file=path) from None
    head, _, body = data.partition(b"\n")
    if not head.startswith(_HEADER) or head[len(_HEADER) :] != (
        xxhash.xxh3_64_hexdigest(body).encode()
    ):
        raise corrupt(ckpt, "its checksum file does not match its checksum", file=path)
    try:
        table = json.loads(body)
        variables, files = table["variables"], table["files"]
        if not isinstance(variables, dict) or not isinstance(files, dict):
            raise TypeError("not a table")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise corrupt(ckpt, "its checksum file cannot be parsed", file=path) from None
    return table


def check_files(ckpt: str, files: Mapping[str, Any]) -> None:
    """Checks every recorded file's presence, size and (small files) checksum."""
    for rel, entry in files.items():
        path = os.path.join(ckpt, rel)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise corrupt(ckpt, "a file is missing", file=path) from None
        if size != entry.get("size"):
            raise corrupt(
                ckpt,
                f"a file has {size} bytes, {entry.get('size')} were written",
                file=path,
            )
        expected = entry.get("xxh3_64")
        if expected is not None and _file_checksum(path) != expected:
            raise corrupt(ckpt, "a file does not match its checksum", file=path)


def check_arrays(
    ckpt: str, values: Mapping[str, Any], expected: Mapping[str, str | None]
) -> None:
    """Checks restored arrays against their recorded checksums."""
    views = {k: host_view(v) for k, v in values.items() if expected.get(k)}
    for key, found in checksums(views).items():
        if found is not None and found != expected[key]:
            raise corrupt(
                ckpt,
                "the restored values do not match the checksum recorded at save",
                key=key,
                file=ckpt,
            )
