"""The ``.index`` file of a tensor bundle: a LevelDB-style sorted table.

TensorFlow's ``tensorflow/core/lib/io/table`` format: data blocks of
prefix-compressed ``(key, value)`` entries with a restart array, a (here empty)
metaindex block, an index block whose values are block handles, and a 48-byte
footer (two handles, padding, the magic number). Each block is followed by a
type byte (0: uncompressed, 1: snappy) and the masked CRC-32C of the block and
its type. `read_table` reads every entry and checks every block's checksum;
`write_table` writes what TensorFlow's reader reads. Block handles and entry
lengths are varints: the only varint parsing in the format outside protobuf.
Imports nothing from jscope.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import crc32c

MAGIC = 0xDB4775248B80FB57  # kTableMagicNumber
FOOTER_BYTES = 48  # two handles (at most 20 bytes each) padded to 40, the magic
TRAILER_BYTES = 5  # the type byte and the masked CRC-32C
BLOCK_BYTES = 256 << 10  # a data block is closed past this size
RESTART_INTERVAL = 16  # keys between two restart points (LevelDB's default)
_MASK_DELTA = 0xA282EAD8


def mask(crc: int) -> int:
    """TensorFlow's ``crc32c::Mask``: what its files store of a CRC-32C."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    """The masked CRC-32C of a bytes-like object."""
    return mask(crc32c.crc32c(data))


class TableCorrupt(Exception):  # noqa: N818 (turned into CheckpointCorruptError)
    """What is wrong with a table, for `read_table`'s caller to report."""


# ------------------------------------------------------------------- reading


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise TableCorrupt("a length or block handle is cut off")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _block(data: bytes, handle: tuple[int, int], what: str) -> memoryview:
    """The contents of the block at ``handle`` ``(offset, size)``, checked."""
    offset, size = handle
    end = offset + size + TRAILER_BYTES
    if end > len(data) - FOOTER_BYTES:
        raise TableCorrupt(f"the {what} block runs past the end of the file")
    view = memoryview(data)[offset:end]
    kind = view[size]
    (stored,) = struct.unpack_from("<I", view, size + 1)
    if masked_crc32c(view[: size + 1]) != stored:
        raise TableCorrupt(f"the {what} block at offset {offset} fails its CRC-32C")
    if kind != 0:
        name = "snappy" if kind == 1 else f"type {kind}"
        raise TableCorrupt(
            f"the {what} block at offset {offset} is {name}-compressed; TensorFlow "
            "writes bundle indexes uncompressed and jscope reads only those"
        )
    return view[:size]


def _entries(block: memoryview, what: str) -> list[tuple[bytes, memoryview]]:
    """The ``(key, value)`` entries of a block, keys unshared."""
    if len(block) < 4:
        raise TableCorrupt(f"the {what} block is too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (restarts + 1)
    if limit < 0:
        raise TableCorrupt(f"the {what} block's restart array is too long")
    out: list[tuple[bytes, memoryview]] = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + size > limit:
            raise TableCorrupt(f"an entry of the {what} block is cut off")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        out.append((key, block[pos : pos + size]))
        pos += size
    return out


def _handle(value: bytes | memoryview) -> tuple[int, int]:
    offset, pos = _varint(value, 0)
    size, _ = _varint(value, pos)
    return offset, size


def read_table(data: bytes) -> list[tuple[bytes, memoryview]]:
    """Every ``(key, value)`` of a table file's bytes, in key order.

    Raises:
      TableCorrupt: The bytes are not a table, or a block fails its checksum.
    """
    if len(data) < FOOTER_BYTES:
        raise TableCorrupt(f"{len(data)} bytes, shorter than a table's footer")
    footer = memoryview(data)[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != MAGIC:
        raise TableCorrupt("no table magic number at the end of the file")
    _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    index = _handle(footer[pos:])
    out: list[tuple[bytes, memoryview]] = []
    for _, value in _entries(_block(data, index, "index"), "index"):
        out += _entries(_block(data, _handle(value), "data"), "data")
    return out


# ------------------------------------------------------------------- writing


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _encode_block(entries: list[tuple[bytes, bytes]], interval: int) -> bytes:
    out = bytearray()
    restarts = [0]
    last = b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % interval:
            limit = min(len(key), len(last))
            while shared < limit and key[shared] == last[shared]:
                shared += 1
        elif i:
            restarts.append(len(out))
        _put_varint(out, shared)
        _put_varint(out, len(key) - shared)
        _put_varint(out, len(value))
        out += key[shared:]
        out += value
        last = key
    out += struct.pack(f"<{len(restarts)}I", *restarts)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def _append_block(out: bytearray, contents: bytes) -> bytes:
    """Appends a block and its trailer; returns its encoded handle."""
    handle = bytearray()
    _put_varint(handle, len(out))
    _put_varint(handle, len(contents))
    out += contents
    out.append(0)
    out += struct.pack("<I", masked_crc32c(contents + b"\x00"))
    return bytes(handle)


def write_table(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The bytes of a table holding ``entries``, which must be in key order."""
    out = bytearray()
    index: list[tuple[bytes, bytes]] = []
    block: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in entries:
        block.append((key, value))
        size += len(key) + len(value) + 8
        if size >= BLOCK_BYTES:
            index.append(
                (key, _append_block(out, _encode_block(block, RESTART_INTERVAL)))
            )
            block, size = [], 0
    if block or not index:
        last = block[-1][0] if block else b""
        index.append((last, _append_block(out, _encode_block(block, RESTART_INTERVAL))))
    metaindex = _append_block(out, _encode_block([], RESTART_INTERVAL))
    index_handle = _append_block(out, _encode_block(index, 1))
    footer = bytearray(metaindex + index_handle)
    footer += bytes(FOOTER_BYTES - 8 - len(footer))
    footer += struct.pack("<Q", MAGIC)
    return bytes(out + footer)
