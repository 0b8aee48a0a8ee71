"""Integrity: what a checkpoint holds, with checksums, in its ``_CHECKSUMS`` file.

At save, jscope records in each checkpoint (beside Orbax's files) a small file::

    jscope-checksums xxh3_64=<checksum of the rest of the file>
    {"version": 2,
     "variables": {"params/w": {"shape": [4, 3], "dtype": "float32",
                                "xxh3_64": "…", "key_impl": null},
                   "params/big": {"shape": [8, 1024], "dtype": "bfloat16",
                                  "murmur3_sum64": "…", "key_impl": null}, ...},
     "files": {"_METADATA": {"size": 812, "xxh3_64": "…"},
               "ocdbt.process_0/d/…": {"size": 1048576, "xxh3_64": null}, ...}}

An array whole on one device has xxHash's XXH3 (64 bits) of its values in C
order (of its 16 MiB chunks' checksums for a larger array, hashed in parallel);
every file of the checkpoint has its size and, up to `SMALL_FILE` bytes (all of
Orbax's metadata), its checksum. A read checks the file (its own first line),
the files' sizes and small checksums before Orbax opens anything, and each
restored array's checksum after: a flipped bit, a truncated, emptied or deleted
file is a `CheckpointCorruptError` naming the file or the variable, never a
wrong value. Orbax's ``_METADATA`` says that the file exists, so deleting it is
detected too.

An array sharded over several devices (or processes) is never gathered to
check it: it gets a checksum of another kind, ``murmur3_sum64``, that does not
depend on how the array is sharded, computed where its shards live (see
`sum_checksums`). Each variable's entry names its kind by its key
(``"xxh3_64"`` or ``"murmur3_sum64"``); a restore checks it with that kind,
whatever the target's sharding (see `check_arrays`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xxhash

from jscope import errors
from jscope._src.checkpoint.layout import CHECKSUMS

CheckpointCorruptError = errors.CheckpointCorruptError

VERSION = 2
SMALL_FILE = 1 << 20  # files up to this size get a checksum
CHUNK = 1 << 24  # arrays are hashed in chunks of this many bytes
_SMALL_ARRAY = 1 << 18  # restored arrays this small are hashed as they arrive
_HEADER = b"jscope-checksums xxh3_64="
XXH3 = "xxh3_64"  # the kind of an array whole on one device or host
SUM = "murmur3_sum64"  # the kind of an array sharded over several devices
KINDS = (XXH3, SUM)


def kind(value: Any) -> str:
    """The checksum kind of a value to save: `SUM` for a sharded `jax.Array`.

    An array on one device, or replicated over devices all of this process,
    is whole here and gets `XXH3` (hashed on the host, as NumPy, no copy on
    CPU); any other `jax.Array` (sharded, or over several processes) `SUM`.
    """
    if not isinstance(value, jax.Array) or _whole_here(value):
        return XXH3
    return SUM


def _whole_here(value: jax.Array) -> bool:
    sharding = value.sharding
    return len(sharding.device_set) == 1 or (
        value.is_fully_addressable and value.is_fully_replicated
    )


def host_view(value: Any) -> np.ndarray:
    """The values of an array whole here (see `kind`) as NumPy, no copy on CPU."""
    return np.asarray(value)


def host_views(items: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """Host views of the arrays whole here (`host_view`), for their checksums."""
    return {key: host_view(value) for key, value in items.items() if kinds[key] == XXH3}


def _gathered(value: Any) -> np.ndarray:
    """The whole values of a restored array on this host (see `check_arrays`)."""
    if not isinstance(value, jax.Array) or _whole_here(value):
        return np.asarray(value)
    if value.is_fully_replicated:  # replicated over several processes
        return np.asarray(value.addressable_data(0))
    if value.is_fully_addressable:
        return np.asarray(value)
    from jax.experimental import multihost_utils  # noqa: PLC0415 (rare path)

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def _chunks(values: np.ndarray) -> list[Any]:
    data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    return [data[i : i + CHUNK].data for i in range(0, max(len(data), 1), CHUNK)]


def _combine(digests: list[int]) -> str:
    if len(digests) == 1:
        return f"{digests[0]:016x}"
    return xxhash.xxh3_64_hexdigest(np.asarray(digests, "<u8").data)


class Pending:
    """The checksums of ``{key: host view or None}``, computed in the background.

    XXH3-64 of the values in C order; an array over `CHUNK` bytes is hashed a
    chunk at a time, in parallel (xxhash releases the GIL), and its checksum is
    the XXH3-64 of the chunks' checksums (little-endian uint64). Under 4 MiB
    in all, they are computed at once, in this thread. `result` waits for them:
    a save starts them before it waits for Orbax's write, so that they are
    computed while Orbax writes.
    """

    def __init__(self, views: Mapping[str, np.ndarray | None]):
        self._keys = list(views)
        self._parts = {key: _chunks(v) for key, v in views.items() if v is not None}
        flat = [chunk for chunks in self._parts.values() for chunk in chunks]
        self._done: list[int] | None = None
        self._batches: list[concurrent.futures.Future[list[int]]] = []
        if len(flat) > 1 and sum(len(c) for c in flat) >= 1 << 22:
            batch, size = [], 0  # small arrays hashed together, one task each CHUNK
            for chunk in flat:
                batch.append(chunk)
                size += len(chunk)
                if size >= CHUNK:
                    self._batches.append(_pool().submit(_hash_all, batch))
                    batch, size = [], 0
            if batch:
                self._batches.append(_pool().submit(_hash_all, batch))
        else:
            self._done = _hash_all(flat)

    def result(self) -> dict[str, str | None]:
        """``{key: 16 hex digits}`` (None for None); waits for the workers."""
        if self._done is None:
            self._done = [d for batch in self._batches for d in batch.result()]
        digests = iter(self._done)
        out: dict[str, str | None] = dict.fromkeys(self._keys)
        for key, chunks in self._parts.items():
            out[key] = _combine([next(digests) for _ in chunks])
        return out


def _hash_all(chunks: list[Any]) -> list[int]:
    return [xxhash.xxh3_64_intdigest(c) for c in chunks]


def checksums(views: Mapping[str, np.ndarray | None]) -> dict[str, str | None]:
    """The checksum of each array (None for None), 16 hex digits each (`Pending`)."""
    return Pending(views).result()


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
    """Writes the ``_CHECKSUMS`` file of the checkpoint at ``root``.

    Not fsynced here: the Saver flushes the whole new checkpoint next
    (`layout.fsync_tree`, every file at once) before it moves it into place.
    """
    body = json.dumps(
        {"version": VERSION, "variables": variables, "files": files},
        separators=(",", ":"),
    ).encode()
    header = _HEADER + xxhash.xxh3_64_hexdigest(body).encode() + b"\n"
    fd = os.open(
        os.path.join(root, CHECKSUMS), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
    )
    with os.fdopen(fd, "wb") as f:
        f.write(header + body)


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
        if expected is None:
            continue
        try:
            checksum = _file_checksum(path)
        except OSError:  # gone since its size was read: replaced meanwhile
            raise corrupt(ckpt, "a file is missing", file=path) from None
        if checksum != expected:
            raise corrupt(ckpt, "a file does not match its checksum", file=path)


class Early:
    """`XXH3` checksums of restored arrays, started as each one arrives.

    `arrived` (for `orbax_io.restore`) hands each array whose record is `XXH3`
    and that is whole here to a worker thread, so it is hashed while Orbax
    still reads the others (xxhash releases the GIL); `check_arrays` then only
    waits for what is left. An array that `check_arrays` is given and that did
    not arrive here (or arrived as another object) is hashed there, as before.
    """

    def __init__(self, expected: Mapping[str, tuple[str, str] | None]):
        self._wanted = {
            k for k, r in expected.items() if r is not None and r[0] == XXH3
        }
        self._started: dict[str, tuple[Any, concurrent.futures.Future[str]]] = {}

    def arrived(self, key: str, value: Any) -> None:
        if key not in self._wanted or (
            isinstance(value, jax.Array) and not _whole_here(value)
        ):
            return
        if np.size(value) * np.dtype(value.dtype).itemsize < _SMALL_ARRAY:
            future: concurrent.futures.Future[str] = concurrent.futures.Future()
            future.set_result(_checksum_of(value))  # no thread for a small one
        else:
            future = _pool().submit(_checksum_of, value)
        self._started[key] = (value, future)

    def take(self, key: str, value: Any) -> concurrent.futures.Future[str] | None:
        """The started checksum of ``value`` under ``key``, or None."""
        started = self._started.pop(key, None)
        return started[1] if started is not None and started[0] is value else None


def _checksum_of(value: Any) -> str:
    return checksum(np.asarray(value))


def check_arrays(
    ckpt: str,
    values: Mapping[str, Any],
    expected: Mapping[str, tuple[str, str] | None],
    early: Early | None = None,
) -> None:
    """Checks restored arrays against their recorded ``(kind, checksum)``.

    A `SUM` checksum is computed where the restored array lives, whatever its
    sharding (NumPy values on the host). An `XXH3` checksum needs the values in
    C order: an array restored whole here (one device, replicated, NumPy) is
    hashed as at save; one restored sharded is gathered once to this host to
    check it (it was saved whole from one device, so one host held it then).
    Variables without a checksum (written by Orbax directly, or by jscope 0.1)
    are not checked. ``early``: the checksums started as the arrays arrived.
    """
    by_kind: dict[str, dict[str, Any]] = {XXH3: {}, SUM: {}}
    started: dict[str, concurrent.futures.Future[str]] = {}
    for key, value in values.items():
        record = expected.get(key)
        future = None if early is None else early.take(key, value)
        if future is not None:
            started[key] = future
        elif record is not None:
            by_kind[record[0]][key] = value
    views = {key: _gathered(v) for key, v in by_kind[XXH3].items()}
    found: dict[str, str | None] = dict(checksums(views))
    found.update(sum_hex(sum_checksums(by_kind[SUM])))
    found.update({key: future.result() for key, future in started.items()})
    for key, checksum_ in found.items():
        if checksum_ != expected[key][1]:  # type: ignore[index]
            raise corrupt(
                ckpt,
                "the restored values do not match the checksum recorded at save",
                key=key,
                file=ckpt,
            )


def record_of(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ``(kind, checksum)`` of a variable's index entry, or None."""
    for name in KINDS:
        value = entry.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"a {name} checksum is not a string")
            return name, value
    return None


# ------------------------------------------ murmur3_sum64: sharding-independent
#
# For an array ``x`` of any supported dtype, with ``i`` the C-order flat index
# of an element (mod 2**32) and ``w_0, ..., w_{n-1}`` its value's bits as
# uint32 words (bool, ints and floats of up to 32 bits widened bit for bit;
# 64-bit values split low word first; complex as real then imaginary part;
# 2- and 4-bit values through int32 or float32, which hold them exactly):
#
#     h(seed) = fmix32(i ^ seed);  h = fmix32(h ^ w_k) for k = 0 .. n-1
#     s(seed) = sum of h(seed) over the elements, mod 2**32
#
# with fmix32 MurmurHash3's 32-bit finalizer (a bijection of uint32). The
# checksum is ``f"{s(SEED_HI):08x}{s(SEED_LO):08x}"``. A sum mod 2**32 is
# the same in any order, so every device adds up its own shard and one
# reduction gives the same 64 bits whatever the mesh, the sharding or the
# number of processes. Changing one element always changes both sums (each
# step is a bijection); other changes go unseen with a chance near 2**-64.

SEED_LO, SEED_HI = 0x2545F491, 0x9E3779B9
_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35
_NARROW = frozenset({"int2", "int4", "uint2", "uint4"})  # held exactly by int32


def _fmix32(h: Any) -> Any:
    h = h ^ (h >> 16)
    h = h * np.uint32(_M1)
    h = h ^ (h >> 13)
    h = h * np.uint32(_M2)
    return h ^ (h >> 16)


def _words_jax(x: Any) -> list[Any]:
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_:
        return [x.astype(jnp.uint32)]
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return _words_jax(jnp.real(x)) + _words_jax(jnp.imag(x))
    if dtype.name in _NARROW:
        return [jax.lax.bitcast_convert_type(x.astype(jnp.int32), jnp.uint32)]
    if dtype.name == "float4_e2m1fn":
        return [jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)]
    if dtype.itemsize == 8:
        pair = jax.lax.bitcast_convert_type(x, jnp.uint32)
        return [pair[..., 0], pair[..., 1]]
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[dtype.itemsize]
    return [jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)]


def _words_numpy(x: np.ndarray) -> list[np.ndarray]:
    x = x.reshape(-1)
    if x.dtype == np.bool_:
        return [x.astype(np.uint32)]
    if np.issubdtype(x.dtype, np.complexfloating):
        return _words_numpy(np.real(x).copy()) + _words_numpy(np.imag(x).copy())
    if x.dtype.name in _NARROW:
        return [x.astype(np.int32).view(np.uint32)]
    if x.dtype.name == "float4_e2m1fn":
        return [x.astype(np.float32).view(np.uint32)]
    if x.dtype.itemsize == 8:
        pair = np.ascontiguousarray(x).view("<u4").reshape(-1, 2)
        return [pair[:, 0], pair[:, 1]]
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    return [np.ascontiguousarray(x).view(unsigned).astype(np.uint32)]


def _flat_index(shape: tuple[int, ...]) -> Any:
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        step = np.uint32(stride % (1 << 32))
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * step
        stride *= shape[dim]
    return index


def _sum64_jax(x: Any) -> Any:
    index, words, sums = _flat_index(x.shape), _words_jax(x), []
    for seed in (SEED_LO, SEED_HI):
        h = _fmix32(index ^ np.uint32(seed))
        for w in words:
            h = _fmix32(h ^ w)
        sums.append(jnp.sum(h, dtype=jnp.uint32))
    return jnp.stack(sums)


@jax.jit
def _sum64_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {key: _sum64_jax(x) for key, x in tree.items()}


def _sum64_numpy(x: np.ndarray) -> np.ndarray:
    index = np.arange(x.size, dtype=np.uint64).astype(np.uint32)
    words, sums = _words_numpy(np.asarray(x)), []
    for seed in (SEED_LO, SEED_HI):
        h = _fmix32(index ^ np.uint32(seed))
        for w in words:
            h = _fmix32(h ^ w)
        sums.append(np.sum(h, dtype=np.uint32))
    return np.asarray(sums, np.uint32)


def sum_checksums(values: Mapping[str, Any]) -> dict[str, Any]:
    """Starts the `SUM` checksums of ``values``: ``{key: uint32[2] (lo, hi)}``.

    jax arrays are checksummed where they live, one `jax.jit` per set of
    devices (a collective when they span processes: every process calls this
    with the same keys, in the same order); NumPy values on the host. The
    results are not waited for; `sum_hex` turns them into checksums.
    """
    out: dict[str, Any] = {}
    groups: dict[tuple[int, ...], dict[str, Any]] = {}
    for key, value in values.items():
        if isinstance(value, jax.Array):
            devices = tuple(sorted(d.id for d in value.sharding.device_set))
            groups.setdefault(devices, {})[key] = value
        else:
            out[key] = _sum64_numpy(np.asarray(value))
    for group in groups.values():
        out.update(_sum64_tree(group))
    return out


def sum_hex(sums: Mapping[str, Any]) -> dict[str, str]:
    """``{key: 16 hex digits}`` of `sum_checksums`'s results (waits for them)."""
    out = {}
    for key, pair in sums.items():
        if isinstance(pair, jax.Array) and not pair.is_fully_addressable:
            pair = pair.addressable_data(0)  # replicated over the processes
        lo, hi = (int(v) for v in np.asarray(pair))
        out[key] = f"{hi:08x}{lo:08x}"
    return out
