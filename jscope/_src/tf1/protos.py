"""The protocol buffers of TensorFlow's tensor bundle, built from descriptors.

`BundleHeaderProto` and `BundleEntryProto` (``tensor_bundle.proto``) with the
messages they use (``TensorShapeProto``, ``TensorSliceProto``, ``VersionDef``),
declared field for field as TensorFlow declares them, so the ``protobuf`` runtime
parses and writes them; TensorFlow itself is not needed. ``DataType`` is kept as
its number (`DTYPES`). Imports nothing from jscope.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_PACKAGE = "jscope.tf1.bundle"


def _message(file, name, fields, oneofs=()):
    """Adds a message to ``file``; fields: (name, number, type, label, extra)."""
    msg = file.message_type.add(name=name)
    for oneof in oneofs:
        msg.oneof_decl.add(name=oneof)
    for field_name, number, kind, label, *rest in fields:
        field = msg.field.add(name=field_name, number=number, type=kind, label=label)
        if kind == _F.TYPE_MESSAGE:
            field.type_name = f".{_PACKAGE}.{rest[0]}"
        elif rest:  # a oneof member: its index, and proto3 presence
            field.oneof_index = rest[0]
    return msg


def _build():
    file = descriptor_pb2.FileDescriptorProto(
        name="jscope_tf1_bundle.proto", package=_PACKAGE, syntax="proto3"
    )
    _message(
        file,
        "VersionDef",
        [
            ("producer", 1, _F.TYPE_INT32, _OPTIONAL),
            ("min_consumer", 2, _F.TYPE_INT32, _OPTIONAL),
            ("bad_consumers", 3, _F.TYPE_INT32, _REPEATED),
        ],
    )
    _message(
        file,
        "Dim",  # TensorShapeProto.Dim
        [
            ("size", 1, _F.TYPE_INT64, _OPTIONAL),
            ("name", 2, _F.TYPE_STRING, _OPTIONAL),
        ],
    )
    _message(
        file,
        "TensorShapeProto",
        [
            ("dim", 2, _F.TYPE_MESSAGE, _REPEATED, "Dim"),
            ("unknown_rank", 3, _F.TYPE_BOOL, _OPTIONAL),
        ],
    )
    _message(
        file,
        "Extent",  # TensorSliceProto.Extent; ``length`` is in oneof has_length
        [
            ("start", 1, _F.TYPE_INT64, _OPTIONAL),
            ("length", 2, _F.TYPE_INT64, _OPTIONAL, 0),
        ],
        oneofs=("has_length",),
    )
    _message(
        file,
        "TensorSliceProto",
        [("extent", 1, _F.TYPE_MESSAGE, _REPEATED, "Extent")],
    )
    _message(
        file,
        "BundleHeaderProto",  # endianness: LITTLE = 0, BIG = 1
        [
            ("num_shards", 1, _F.TYPE_INT32, _OPTIONAL),
            ("endianness", 2, _F.TYPE_INT32, _OPTIONAL),
            ("version", 3, _F.TYPE_MESSAGE, _OPTIONAL, "VersionDef"),
        ],
    )
    _message(
        file,
        "BundleEntryProto",
        [
            ("dtype", 1, _F.TYPE_INT32, _OPTIONAL),  # the DataType enum's number
            ("shape", 2, _F.TYPE_MESSAGE, _OPTIONAL, "TensorShapeProto"),
            ("shard_id", 3, _F.TYPE_INT32, _OPTIONAL),
            ("offset", 4, _F.TYPE_INT64, _OPTIONAL),
            ("size", 5, _F.TYPE_INT64, _OPTIONAL),
            ("crc32c", 6, _F.TYPE_FIXED32, _OPTIONAL),
            ("slices", 7, _F.TYPE_MESSAGE, _REPEATED, "TensorSliceProto"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        )
        for name in ("BundleHeaderProto", "BundleEntryProto")
    }


_CLASSES = _build()
BundleHeaderProto: Any = _CLASSES["BundleHeaderProto"]  # fields as declared above
BundleEntryProto: Any = _CLASSES["BundleEntryProto"]

#: TensorFlow's ``DataType`` numbers (``types.proto``) and their NumPy names.
DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
DT_STRING = 7
#: The names of the types TensorFlow stores that are not numeric arrays.
OTHER_DTYPES = {
    7: "string",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
}
