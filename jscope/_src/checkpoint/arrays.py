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


class Snapshot:
    """The values of ``{key: array}`` now, for a save that writes them later.

    A non-blocking save's arrays are written after `Saver.save` returns, when
    the caller may have deleted a `jax.Array` (donated it to a jitted step) or
    changed a NumPy array in place. So, at once:

    - a `jax.Array` on one CPU device whose value is computed is *pinned*: its
      host view (no copy) holds its buffer, which XLA then neither frees nor
      donates (a donating call copies instead), and Orbax is handed a new
      `jax.Array` over the same memory, which the caller cannot delete;
    - any other `jax.Array` is copied on its devices, all in one
      asynchronously dispatched `jax.device_put` (the copies are made while
      the caller goes on);
    - a NumPy array is copied on the host.

    Raises:
      RuntimeError: An array has been deleted (donated).
    """

    def __init__(self, items: Mapping[str, Any]):
        self._pins: dict[str, tuple[np.ndarray, Any]] = {}
        copied = []
        for key, value in items.items():
            if not isinstance(value, jax.Array):
                continue
            if _on_one_cpu(value) and value.is_ready():  # pyright: ignore[reportAttributeAccessIssue]
                self._pins[key] = (np.asarray(value), value.sharding)
            else:
                copied.append(key)
        copies = jax.device_put([items[key] for key in copied], may_alias=False)
        taken = dict(zip(copied, copies, strict=True))
        self._items = {
            key: taken.get(key) if isinstance(value, jax.Array) else np.array(value)
            for key, value in items.items()
        }

    def items(self) -> dict[str, Any]:
        """``{key: array}`` to write, the values at the snapshot (in the commit)."""
        return {
            key: jax.device_put(*self._pins[key], may_alias=True)
            if key in self._pins
            else value
            for key, value in self._items.items()
        }


def _on_one_cpu(value: jax.Array) -> bool:
    devices = value.sharding.device_set
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"
