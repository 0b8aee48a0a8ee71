"""Tensor bundles: TensorFlow's V2 checkpoint format, read and written.

A checkpoint ``<prefix>`` is ``<prefix>.index`` (a table, see `table`, mapping
each tensor name to a ``BundleEntryProto``: dtype, shape, shard, offset, size,
masked CRC-32C, slices; the empty key holds the ``BundleHeaderProto``) and the
shards ``<prefix>.data-0000k-of-0000n`` holding the raw little-endian bytes.
A partitioned variable's entry lists its slices; each slice is stored under a
key ``EncodeTensorNameSlice(name, slice)`` (TensorFlow's ``OrderedCode``),
which starts with a zero byte and so never collides with a name.

`read_index` parses an index, `read_arrays` reads tensors (checking each
checksum while the next bytes are read), `write_bundle` writes one shard.
Imports errors and its own modules only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping

import crc32c
import ml_dtypes
import numpy as np

from jscope import errors
from jscope._src.tf1 import protos
from jscope._src.tf1.table import (
    TableCorrupt,
    mask,
    masked_crc32c,
    read_table,
    write_table,
)

CheckpointCorruptError = errors.CheckpointCorruptError
CheckpointTypeError = errors.CheckpointTypeError

HEADER_KEY = b""
BUNDLE_VERSION = 1  # kTensorBundleVersion: what TensorFlow writes and reads
CHUNK_BYTES = 16 << 20  # read (and checksummed) at a time
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"  # TF2's object graph: a string


def data_path(prefix: str, shard: int, num_shards: int) -> str:
    """The file of one shard: ``<prefix>.data-00000-of-00001``."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def numpy_dtype(number: int) -> np.dtype | None:
    """The NumPy dtype of TensorFlow's ``DataType`` number; None if not numeric."""
    name = protos.DTYPES.get(number)
    if name is None:
        return None
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    dtype = np.dtype(name)
    return dtype if dtype == dtype.newbyteorder("<") else dtype.newbyteorder("<")


def dtype_name(number: int) -> str:
    """TensorFlow's name of a ``DataType`` number (``float32``, ``string``, ...)."""
    return protos.DTYPES.get(number) or protos.OTHER_DTYPES.get(number, f"#{number}")


_TF_NUMBER = {numpy_dtype(n): n for n in protos.DTYPES}


def tf_dtype(dtype: np.dtype) -> int | None:
    """TensorFlow's ``DataType`` number for a NumPy dtype; None if it has none."""
    return _TF_NUMBER.get(np.dtype(dtype).newbyteorder("<"))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the index (a ``BundleEntryProto``, in Python types)."""

    name: str
    dtype: int  # TensorFlow's DataType number
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    # Per slice, per dimension: (start, length), length -1 for the whole dim.
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Index:
    """What a bundle's ``.index`` holds."""

    prefix: str
    num_shards: int
    entries: dict[str, Entry]  # by tensor name, slices' own entries left out
    slice_entries: dict[bytes, Entry]  # by encoded slice key


def corrupt(prefix: str, what: str, *, name: str | None = None, file: str):
    """The `CheckpointCorruptError` naming the tensor and the file."""
    named = f"variable {name}, file {file}" if name is not None else f"file {file}"
    return CheckpointCorruptError(
        f"TF1 checkpoint {prefix} is corrupt: {what} ({named}). Its data is not "
        "what TensorFlow saved; use an older checkpoint or save it again.",
        name,
        file,
    )


# ---------------------------------------------------------- slice keys


def _num_increasing(value: int) -> bytes:
    """``OrderedCode::WriteNumIncreasing``: a length byte, then big-endian."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def _signed_num_increasing(value: int) -> bytes:
    """``OrderedCode::WriteSignedNumIncreasing``: n header bits over n bytes."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    n = x.bit_length() // 7 + 1
    out = bytearray(value.to_bytes(10, "big", signed=True)[10 - n :])
    bits = ((1 << n) - 1) << (16 - n)
    out[0] ^= bits >> 8
    out[1] ^= bits & 0xFF
    return bytes(out)


_ESCAPES = {b"\x00": b"\x00\xff", b"\xff": b"\xff\x00"}


def slice_key(name: str, extents: Iterable[tuple[int, int]]) -> bytes:
    """``checkpoint::EncodeTensorNameSlice``: where one slice's bytes are listed."""
    escaped = re.sub(rb"[\x00\xff]", lambda m: _ESCAPES[m[0]], name.encode("utf-8"))
    extents = list(extents)
    out = _num_increasing(0) + escaped + b"\x00\x01" + _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_num_increasing(start) + _signed_num_increasing(length)
    return out


# ------------------------------------------------------------------ reading


def read_index(prefix: str) -> Index:
    """Parses ``<prefix>.index``.

    Raises:
      CheckpointCorruptError: The index cannot be read or parsed.
    """
    file = prefix + ".index"
    try:
        with open(file, "rb") as f:
            data = f.read()
        pairs = read_table(data)
    except TableCorrupt as e:
        raise corrupt(
            prefix, f"its index is not a valid table: {e}", file=file
        ) from None
    if not pairs or pairs[0][0] != HEADER_KEY:
        raise corrupt(prefix, "its index has no bundle header", file=file)
    try:
        header = protos.BundleHeaderProto.FromString(bytes(pairs[0][1]))
    except Exception as e:  # protobuf's DecodeError
        raise corrupt(prefix, f"its header does not parse ({e})", file=file) from None
    if header.endianness != 0:
        raise errors.CheckpointError(
            f"TF1 checkpoint {prefix} was written big-endian; jscope reads "
            "little-endian bundles only. Convert it with TensorFlow on a "
            "little-endian machine.",
            prefix,
        )
    if header.version.min_consumer > BUNDLE_VERSION:
        raise errors.CheckpointError(
            f"TF1 checkpoint {prefix} needs a bundle reader of version "
            f"{header.version.min_consumer}; jscope reads version {BUNDLE_VERSION}.",
            prefix,
        )
    entries: dict[str, Entry] = {}
    slice_entries: dict[bytes, Entry] = {}
    for key, value in pairs[1:]:
        try:
            proto = protos.BundleEntryProto.FromString(bytes(value))
            name = key.decode("utf-8") if key[:1] != b"\x00" else repr(key)
        except Exception as e:  # protobuf's DecodeError, UnicodeDecodeError
            raise corrupt(
                prefix, f"the entry of {key!r} does not parse ({e})", file=file
            ) from None
        entry = Entry(
            name,
            proto.dtype,
            tuple(int(d.size) for d in proto.shape.dim),
            proto.shard_id,
            proto.offset,
            proto.size,
            proto.crc32c,
            tuple(
                tuple(
                    (e.start, e.length if e.HasField("length") else -1)
                    for e in s.extent
                )
                for s in proto.slices
            ),
        )
        if key[:1] == b"\x00":
            slice_entries[key] = entry
        else:
            entries[name] = entry
    return Index(prefix, max(1, header.num_shards), entries, slice_entries)


class _Reader:
    """Reads tensors shard by shard; checksums run in a thread behind the reads."""

    def __init__(self, index: Index):
        self.index = index
        self.files: dict[int, io.FileIO] = {}
        self.stack = contextlib.ExitStack()
        self.pool = concurrent.futures.ThreadPoolExecutor(1)  # in order: one worker
        self.checks: list[tuple[Entry, str, list[concurrent.futures.Future]]] = []

    def file(self, entry: Entry):
        index = self.index
        path = data_path(index.prefix, entry.shard, index.num_shards)
        if entry.shard not in self.files:
            if not 0 <= entry.shard < index.num_shards:
                raise corrupt(
                    index.prefix,
                    f"shard {entry.shard} of {index.num_shards}",
                    name=entry.name,
                    file=index.prefix + ".index",
                )
            try:
                f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the stack)
                self.files[entry.shard] = self.stack.enter_context(f)
            except FileNotFoundError:
                raise corrupt(
                    index.prefix, "its data file is missing", name=entry.name, file=path
                ) from None
        return self.files[entry.shard], path

    def read(self, entry: Entry, name: str, dtype: np.dtype) -> np.ndarray:
        """The array of one (unsliced) entry; its checksum is checked in `finish`."""
        f, path = self.file(entry)
        out = np.empty(entry.shape, dtype)
        flat = out.reshape(-1).view(np.uint8)
        if entry.size != flat.size:
            raise corrupt(
                self.index.prefix,
                f"its index gives {entry.size} bytes for a {dtype_name(entry.dtype)} "
                f"tensor of shape {list(entry.shape)} ({flat.size} bytes)",
                name=name,
                file=self.index.prefix + ".index",
            )
        f.seek(entry.offset)
        crcs: list[concurrent.futures.Future] = []
        state = [0]

        def update(chunk: np.ndarray) -> None:
            state[0] = crc32c.crc32c(chunk.data, state[0])

        for start in range(0, flat.size, CHUNK_BYTES):
            chunk = flat[start : start + CHUNK_BYTES]
            got = 0
            while got < chunk.size:
                n = f.readinto(chunk[got:].data)
                if not n:
                    raise corrupt(
                        self.index.prefix,
                        f"its data file ends before byte {entry.offset + entry.size}",
                        name=name,
                        file=path,
                    )
                got += n
            crcs.append(self.pool.submit(update, chunk))
        self.checks.append((entry, name, [*crcs, self.pool.submit(lambda: state[0])]))
        return out

    def finish(self) -> None:
        """Waits for the checksums and raises for the first that differs."""
        for entry, name, futures in self.checks:
            crc = futures[-1].result()
            for future in futures:
                future.result()
            masked = mask(crc)
            if masked != entry.crc:
                raise corrupt(
                    self.index.prefix,
                    f"the bytes of the tensor fail their CRC-32C (stored "
                    f"{entry.crc:#010x}, computed {masked:#010x})",
                    name=name,
                    file=data_path(
                        self.index.prefix, entry.shard, self.index.num_shards
                    ),
                )

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.stack.close()


def _check_readable(index: Index, entry: Entry) -> np.dtype:
    dtype = numpy_dtype(entry.dtype)
    if dtype is None:
        what = dtype_name(entry.dtype)
        hint = (
            " (TF2's object graph, not a variable)"
            if entry.name == OBJECT_GRAPH
            else ""
        )
        raise CheckpointTypeError(
            f"Variable {entry.name} in TF1 checkpoint {index.prefix} is a {what} "
            f"tensor{hint}; jscope reads numeric tensors only. Leave it out (a "
            "name_map returning None skips a variable), or convert it with "
            "TensorFlow.",
            entry.name,
        )
    return dtype


def _sliced(reader: _Reader, entry: Entry, dtype: np.dtype) -> np.ndarray:
    """Assembles a partitioned variable from its slices."""
    index = reader.index
    out = np.empty(entry.shape, dtype)
    covered = 0
    for extents in entry.slices:
        key = slice_key(entry.name, extents)
        part = index.slice_entries.get(key)
        where = tuple(
            slice(None) if length < 0 else slice(start, start + length)
            for start, length in extents
        )
        want = tuple(
            dim if length < 0 else length
            for dim, (_, length) in zip(entry.shape, extents, strict=False)
        )
        if part is None or len(extents) != len(entry.shape) or part.shape != want:
            why = "is not in its index" if part is None else f"has shape {part.shape}"
            raise corrupt(
                index.prefix,
                f"the slice {list(extents)} of the partitioned variable {why}",
                name=entry.name,
                file=index.prefix + ".index",
            )
        out[where] = reader.read(part, entry.name, dtype)
        covered += math.prod(want)
    if covered != out.size:
        raise errors.CheckpointError(
            f"Variable {entry.name} in TF1 checkpoint {index.prefix} is partitioned "
            f"into slices {[list(s) for s in entry.slices]} that do not cover its "
            f"shape {list(entry.shape)} once; jscope assembles only whole "
            "variables. Load it with TensorFlow.",
            entry.name,
        )
    return out


def read_arrays(index: Index, names: Iterable[str]) -> dict[str, np.ndarray]:
    """``{name: array}`` for tensors of the index, each checked against its CRC.

    Raises:
      CheckpointCorruptError: A data file is missing or short, or a checksum fails.
      CheckpointTypeError: A tensor is not numeric (a string, a resource).
    """
    chosen = [(name, index.entries[name]) for name in names]
    for _, entry in chosen:
        _check_readable(index, entry)
    chosen.sort(key=lambda item: (item[1].shard, item[1].offset))
    out: dict[str, np.ndarray] = {}
    reader = _Reader(index)
    try:
        for name, entry in chosen:
            dtype = _check_readable(index, entry)
            if entry.slices:
                out[name] = _sliced(reader, entry, dtype)
            else:
                out[name] = reader.read(entry, name, dtype)
        reader.finish()
    finally:
        reader.close()
    return out


# ------------------------------------------------------------------ writing


def _replace_atomically(path: str, write) -> None:
    tmp = f"{path}.tempstate{secrets.token_hex(8)}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bundle(prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``{name: array}`` as ``<prefix>.index`` and one data shard.

    The arrays must be numeric NumPy arrays (`tf_dtype` not None); the data file
    is written first and the index last, each to a temporary name then renamed,
    so a crash never leaves an index that points at missing bytes.
    """
    names = sorted(arrays, key=lambda n: n.encode("utf-8"))
    entries: list[tuple[bytes, bytes]] = []

    def write_data(f) -> None:
        offset = 0
        for name in names:
            array = np.asarray(arrays[name], order="C")  # keeps 0-d arrays 0-d
            data = array.reshape(-1).view(np.uint8)
            f.write(data.data)
            proto = protos.BundleEntryProto(
                dtype=tf_dtype(array.dtype),
                shard_id=0,
                offset=offset,
                size=data.size,
                crc32c=masked_crc32c(data.data),
            )
            for dim in array.shape:
                proto.shape.dim.add(size=dim)
            entries.append((name.encode("utf-8"), proto.SerializeToString()))
            offset += data.size

    _replace_atomically(data_path(prefix, 0, 1), write_data)
    header = protos.BundleHeaderProto(num_shards=1, endianness=0)
    header.version.producer = BUNDLE_VERSION
    table = write_table([(HEADER_KEY, header.SerializeToString()), *entries])
    _replace_atomically(prefix + ".index", lambda f: f.write(table))
