"""What a tree's leaves become on disk: supported dtypes, PRNG keys, scalars.

A leaf is saved as an array: jax and NumPy arrays as they are, a typed PRNG key
as its key data (its implementation's name goes into the index, so restore
rebuilds the key), a NumPy or Python scalar with the dtype jax would give it.
Dtypes that Orbax and TensorStore cannot write and read back bit-exactly are
refused before anything is written, listing the supported ones.

Imports: `jscope.errors`, `read` (the dtype of a scalar, shared with restore).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from jscope import errors
from jscope._src.checkpoint import read

CheckpointTypeError = errors.CheckpointTypeError

# The dtypes Orbax and TensorStore write and read back bit-exactly.
SUPPORTED_DTYPES = (
    "bool, int2, int4, int8, int16, int32, int64, uint8, uint16, uint32, uint64, "
    "float4_e2m1fn, float8_e3m4, float8_e4m3b11fnuz, float8_e4m3fn, "
    "float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz, float8_e8m0fnu, bfloat16, "
    "float16, float32, float64, complex64, complex128"
)
_SUPPORTED = frozenset(SUPPORTED_DTYPES.split(", "))


def save_value(value: Any, path: str) -> tuple[Any, str | None]:
    """``(array to write, PRNG key implementation or None)`` for one leaf."""
    if isinstance(value, Tracer):
        raise CheckpointTypeError(
            f"Cannot save variable {path}: it is a traced value. Call saver.save "
            "outside jax.jit / jax.grad, on the tree the jitted step returns."
        )
    if isinstance(value, jax.Array) and jnp.issubdtype(
        value.dtype, jax.dtypes.prng_key
    ):
        return jax.random.key_data(value), str(jax.random.key_impl(value))
    if isinstance(value, jax.Array | np.ndarray):
        return value, None
    if isinstance(value, np.generic | bool | int | float | complex):
        return np.asarray(value, read.scalar_dtype(value)), None
    raise CheckpointTypeError(
        f"Cannot save variable {path}: expected an array, a NumPy or Python "
        f"scalar, or a PRNG key, got {type(value).__name__}."
    )


def prepare(
    chosen: Mapping[str, str], leaves: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``({key: array}, {key: index entry})``; unsupported dtypes refused at once."""
    items, index, bad = {}, {}, []
    for key, path in chosen.items():
        value, impl = save_value(leaves[path], path)
        dtype = np.dtype(value.dtype).name
        if dtype not in _SUPPORTED:
            bad.append(f"{path} ({dtype})")
        items[key] = value
        index[key] = {"shape": list(np.shape(value)), "dtype": dtype, "key_impl": impl}
    if bad:
        raise CheckpointTypeError(
            f"Cannot save variable(s) {', '.join(bad)}: checkpoints cannot hold "
            f"this dtype. Supported dtypes: {SUPPORTED_DTYPES}. Cast the variable "
            "(e.g. uint4 to uint8) before saving, or leave it out of the var_list.",
            bad[0].split(" ")[0],
        )
    return items, index


def snapshot(items: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of ``{key: array}`` that the caller cannot change or delete.

    For a non-blocking save, whose arrays are written after `Saver.save`
    returns: a `jax.Array` may be deleted by then (donated to a jitted step),
    a NumPy array changed in place. The jax arrays are copied on their devices
    in one asynchronously dispatched `jax.device_put` (microseconds per array;
    the copies are made while the caller goes on), the NumPy arrays at once on
    the host.

    Raises:
      RuntimeError: An array has been deleted (donated).
    """
    jax_keys = [key for key, value in items.items() if isinstance(value, jax.Array)]
    copies = jax.device_put([items[key] for key in jax_keys], may_alias=False)
    copied = dict(zip(jax_keys, copies, strict=True))
    return {
        key: copied[key] if key in copied else np.array(value, copy=True)
        for key, value in items.items()
    }
