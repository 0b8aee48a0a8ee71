"""Reading checkpoints: what one holds, checked restores, the public readers.

`describe` reads a checkpoint's index (jscope's ``_CHECKSUMS``, after checking
its files; else Orbax's metadata), `restore_leaves` restores arrays into target
leaves (arrays, `jax.ShapeDtypeStruct`, NumPy arrays and scalars, typed PRNG
keys) and checks each against its checksum. `list_variables`, `load_variable`
and `verify_checkpoint` are the public functions over them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from jscope import errors
from jscope._src.checkpoint import integrity, orbax_io, processes
from jscope._src.checkpoint.keys import canonical, suggest
from jscope._src.checkpoint.layout import CHECKSUMS, checkpoint_path

CheckpointCorruptError = errors.CheckpointCorruptError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointTypeError = errors.CheckpointTypeError

_BATCH_BYTES = 512 << 20  # verify_checkpoint reads at most this much at once
_T = TypeVar("_T")
_READ_TRIES = 8  # reads of a checkpoint that another process keeps replacing


@dataclasses.dataclass
class Stored:
    """What a checkpoint holds, by checkpoint key."""

    path: str
    shapes: dict[str, tuple[tuple[int, ...], Any]]  # {key: (shape, dtype)}
    checksums: dict[str, tuple[str, str] | None]  # {key: (kind, checksum)}
    key_impls: dict[str, str | None]  # PRNG key implementation, for keys
    nested: bool = False  # a nested dict written by Orbax directly


def describe(ckpt: str) -> Stored:
    """The index of ``ckpt``; checks its files first when it has checksums.

    Raises:
      CheckpointCorruptError: A file is missing, truncated or altered.
      CheckpointNotFoundError: Orbax's metadata cannot be read (not jscope's).
    """
    table = integrity.read(ckpt)
    if table is not None:
        integrity.check_files(ckpt, table["files"])
        try:
            shapes = {
                key: (tuple(int(n) for n in v["shape"]), jnp.dtype(v["dtype"]))
                for key, v in table["variables"].items()
            }
            sums = {k: integrity.record_of(v) for k, v in table["variables"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise integrity.corrupt(ckpt, "its index cannot be parsed") from None
        return Stored(
            ckpt,
            shapes,
            sums,
            {k: v.get("key_impl") for k, v in table["variables"].items()},
        )
    version = orbax_io.jscope_version(ckpt)
    if version is not None and version >= 2:
        raise integrity.corrupt(
            ckpt,
            "its checksum file is missing",
            file=os.path.join(ckpt, "_CHECKSUMS"),
        )
    legacy = orbax_io.legacy_index(ckpt)
    if legacy is not None:
        shapes, nested = legacy, False
    else:
        shapes, nested = orbax_io.orbax_metadata(ckpt)
    return Stored(ckpt, shapes, {}, {}, nested)


def _identity(ckpt: str) -> tuple[Any, ...] | None:
    """What changes when ``ckpt`` is replaced: its directory's and index's inodes."""
    try:
        d = os.stat(ckpt)
        try:
            c = os.stat(os.path.join(ckpt, CHECKSUMS))
            index = (c.st_ino, c.st_size, c.st_mtime_ns)
        except FileNotFoundError:
            index = None
        return d.st_dev, d.st_ino, index
    except OSError:
        return None


def stable_read(ckpt: str, read: Callable[[], _T]) -> _T:
    """``read()`` of ``ckpt``, again if the checkpoint was replaced meanwhile.

    Files are opened by path, so a read that overlaps a writer replacing the
    checkpoint (a save to the same path) can see pieces of both and fail its
    checks. Such a read is retried; only a checkpoint that stays in place
    while it fails its checks is reported corrupt. Once it is gone the retry
    raises `CheckpointNotFoundError`. With several processes it is read once.
    """
    # With several processes a read is not retried: each process would decide
    # alone, and their collectives (the checks) would no longer match.
    tries = _READ_TRIES if processes.count() == 1 else 1
    for _ in range(tries - 1):
        before = _identity(ckpt)
        try:
            return read()
        except CheckpointCorruptError:
            after = _identity(ckpt)
            if before is not None and after == before:
                raise
    return read()


# ------------------------------------------------------------- target leaves


@dataclasses.dataclass
class Target:
    """How one target leaf is restored."""

    kind: str  # "array", "numpy", "scalar" or "key"
    shape: tuple[int, ...]  # of the stored array (key data for keys)
    dtype: Any  # of the stored array
    sharding: Any = None
    key_impl: str | None = None


def _key_impl(leaf: Any) -> str:
    try:
        return str(jax.random.key_impl(leaf))
    except TypeError:  # a jax.ShapeDtypeStruct of keys
        return str(leaf.dtype._impl.name)


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def scalar_dtype(value: Any) -> np.dtype:
    """The dtype jax gives a Python or NumPy scalar (float32 with x64 off)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.asarray(value).dtype))


def target(leaf: Any, path: str) -> Target:
    """How to restore into ``leaf``, the target tree's leaf at ``path``."""
    if isinstance(leaf, Tracer):
        raise CheckpointTypeError(
            f"Cannot restore variable {path} into a traced value: restore outside "
            "jax.jit, or pass jax.ShapeDtypeStruct leaves (from jax.eval_shape)."
        )
    if _is_key(leaf) and isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
        data = jax.eval_shape(jax.random.key_data, leaf)
        sharding = _key_data_sharding(getattr(leaf, "sharding", None), data.ndim)
        return Target(
            "key", tuple(data.shape), np.dtype(data.dtype), sharding, _key_impl(leaf)
        )
    if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
        sharding = getattr(leaf, "sharding", None)
        return Target("array", tuple(leaf.shape), np.dtype(leaf.dtype), sharding)
    if isinstance(leaf, np.ndarray):
        return Target("numpy", leaf.shape, leaf.dtype)
    if isinstance(leaf, np.generic | bool | int | float | complex):
        return Target("scalar", (), scalar_dtype(leaf))
    raise CheckpointTypeError(
        f"Variable {path} in the restore target is a {type(leaf).__name__}; "
        "expected an array, a jax.ShapeDtypeStruct, a NumPy or Python scalar, "
        "or a PRNG key."
    )


def _key_data_sharding(sharding: Any, ndim: int) -> Any:
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
        return jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(*spec)
        )
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    return None


def _convert(raw: Any, leaf: Any, spec: Target, impl: str | None) -> Any:
    if spec.kind == "key":
        return jax.random.wrap_key_data(raw, impl=impl or spec.key_impl)
    if spec.kind == "scalar":
        if isinstance(leaf, np.generic):
            return np.asarray(raw).astype(leaf.dtype)[()]
        return type(leaf)(np.asarray(raw).item())
    return raw


# ------------------------------------------------------------------ restore


def _sharding_problem(spec: Target) -> str | None:
    """Why the target's sharding cannot hold its shape, or None."""
    if spec.sharding is None:
        return None
    try:
        spec.sharding.shard_shape(spec.shape)
    except ValueError as e:
        return (str(e).splitlines() or [""])[0][:300]
    return None


def mismatch_error(
    ckpt: str,
    chosen: Mapping[str, str],
    absent: Sequence[tuple[str, str]],
    targets: Mapping[str, Target],
    stored: Stored,
    available: Sequence[str],
) -> CheckpointMismatchError | None:
    """One error listing every missing or mismatched variable, or None."""
    missing, gone, wrong, paths = [], [], [], []
    for key, path in absent:
        named = path if key == path else f"{path} (checkpoint key {key!r})"
        gone.append(f"    {named}{suggest(path, available)}")
        paths.append(path)
    for key, path in chosen.items():
        named = path if key == path else f"{path} (checkpoint key {key!r})"
        if key not in stored.shapes:
            missing.append(f"    {named}")
            paths.append(path)
            continue
        spec = targets[key]
        found_shape, found_dtype = stored.shapes[key]
        bad = [
            f"    {named}: expected {what} {want} (the target's), found {what} "
            f"{found} in the checkpoint"
            for what, want, found in (
                ("shape", spec.shape, found_shape),
                ("dtype", spec.dtype, found_dtype),
            )
            if want != found
        ]
        unfit = _sharding_problem(spec)
        if unfit is not None:
            bad.append(
                f"    {named}: the target's sharding {spec.sharding} does not fit "
                f"its shape {spec.shape} ({unfit})"
            )
        impl = stored.key_impls.get(key)
        if spec.kind == "key" and impl is not None and impl != spec.key_impl:
            bad.append(
                f"    {named}: expected a {spec.key_impl} PRNG key (the target's), "
                f"found a {impl} key in the checkpoint"
            )
        if bad:
            wrong += bad
            paths.append(path)
    if not paths:
        return None
    lines = [
        f"Cannot restore checkpoint {ckpt!r}: {len(missing) + len(gone)} missing "
        f"and {len(paths) - len(missing) - len(gone)} mismatched variable(s)."
    ]
    if missing:
        lines += ["  missing from the checkpoint (not found):", *missing]
    if gone:
        lines += ["  listed in the Saver but not in the target tree:", *gone]
    if wrong:
        lines += ["  shape, dtype or sharding mismatch:", *wrong]
    lines.append(
        "Restore into a target built by the same model, or restore a subset with "
        "js.Saver([paths]) or js.Saver({checkpoint_key: path}); "
        f"js.list_variables({ckpt!r}) shows what the checkpoint holds."
    )
    return CheckpointMismatchError("\n".join(lines), paths[0])


def restore_raw(stored: Stored, specs: Mapping[str, Target]) -> dict[str, Any]:
    """Restores ``{key: Target}`` with Orbax and checks every array's checksum."""
    ckpt = stored.path
    orbax_specs = {
        key: orbax_io.restore_spec(
            s.shape, s.dtype, s.sharding, numpy=s.kind in ("numpy", "scalar")
        )
        for key, s in specs.items()
    }
    spans = processes.count() > 1 and any(
        processes.spans(s.sharding) for s in specs.values()
    )
    failure: BaseException | None = None
    raw: dict[str, Any] = {}
    # The arrays' checksums start as each one arrives, while Orbax reads the
    # rest; all are checked before this returns.
    early = integrity.Early(stored.checksums) if stored.checksums else None
    number = processes.next_read() if spans else 0
    if spans:
        # Orbax's restore ends at a barrier of its own that waits for ever: a
        # process that never comes must be found here, where the wait has an end.
        processes.gather("restore", number, None, ckpt, verb="begin")
    try:
        raw = orbax_io.restore(
            ckpt,
            orbax_specs,
            partial=len(specs) < len(stored.shapes),
            nested=stored.nested,
            local=not spans,
            arrived=None if early is None else early.arrived,
        )
    except errors.JscopeError as e:
        failure = e
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:300]
        failure = integrity.corrupt(
            ckpt, f"Orbax cannot read it ({type(e).__name__}: {first})", file=ckpt
        )
    if spans:
        # Each process reads its own shards: all agree that every read worked
        # before the checks (collectives), or all raise. A read of arrays of
        # this process only (`load_variable`, `verify_checkpoint`, targets on
        # local devices) involves no other process.
        failure = _agreed(ckpt, failure, number)
    if failure is not None:
        raise failure from None
    integrity.check_arrays(
        ckpt, {key: raw[key] for key in specs}, stored.checksums, early
    )
    return raw


def _agreed(
    ckpt: str, failure: BaseException | None, number: int
) -> BaseException | None:
    """This process's read error, else another process's, else None."""
    others = processes.gather("restore", number, failure, ckpt)
    if failure is not None or not others:
        return failure
    process, text = others[0]
    return integrity.corrupt(ckpt, f"process {process} cannot read it ({text})")


def restore_leaves(
    stored: Stored, leaves: Mapping[str, tuple[Any, Target]]
) -> dict[str, Any]:
    """``{key: restored leaf}`` for ``{key: (target leaf, Target)}``."""
    raw = restore_raw(stored, {key: spec for key, (_, spec) in leaves.items()})
    return {
        key: _convert(raw[key], leaf, spec, stored.key_impls.get(key))
        for key, (leaf, spec) in leaves.items()
    }


# --------------------------------------------------------- public functions


def list_variables(ckpt_dir_or_file: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """Lists the keys of a checkpoint with their shapes, reading no array.

    Args:
      ckpt_dir_or_file: A checkpoint, or a directory whose latest checkpoint is
        listed.

    Returns:
      Sorted ``(key, shape)`` pairs; keys are the saver's keys, e.g.
      ``"params/n2/W"``. A PRNG key's shape is that of its key data.

    Raises:
      CheckpointNotFoundError: The path is not a checkpoint.
      CheckpointCorruptError: Its files are not what was written.
    """
    path = checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    stored = stable_read(path, lambda: describe(path))
    return sorted((key, shape) for key, (shape, _) in stored.shapes.items())


def load_variable(ckpt_dir_or_file: str | os.PathLike[str], name: str) -> jax.Array:
    """Loads one array from a checkpoint, checked against its checksum.

    Args:
      ckpt_dir_or_file: A checkpoint, or a directory whose latest checkpoint is
        read.
      name: The checkpoint key, e.g. ``"params/n2/W"`` or ``"my_counter"``.

    Returns:
      The array, on the default device (a typed PRNG key array for a key).

    Raises:
      CheckpointNotFoundError: The path is not a checkpoint.
      CheckpointMismatchError: The checkpoint has no key ``name``.
      CheckpointCorruptError: The array or a file is not what was written.
    """
    path = checkpoint_path(ckpt_dir_or_file, directory_ok=True)
    return stable_read(path, lambda: _load_variable(path, name))


def _load_variable(path: str, name: str) -> jax.Array:
    stored = describe(path)
    key = canonical(name) if isinstance(name, str) else name
    if key not in stored.shapes:
        keys = sorted(stored.shapes)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise CheckpointMismatchError(
            f"Key {name} not found in checkpoint {path!r}{suggest(name, keys)}. "
            f"It holds: {shown}. js.list_variables lists its keys.",
            name,
        )
    shape, dtype = stored.shapes[key]
    raw = restore_raw(stored, {key: Target("array", shape, dtype)})[key]
    impl = stored.key_impls.get(key)
    return raw if impl is None else jax.random.wrap_key_data(raw, impl=impl)


def verify_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Checks every array's checksum and the metadata of a checkpoint.

    Reads every array (a batch at a time, into host memory) without building a
    tree, and compares it with the checksum recorded when it was saved; checks
    every file's size and every metadata file's checksum.

    Args:
      path: A checkpoint, or a directory whose latest checkpoint is checked.

    Returns:
      The checkpoint's keys, sorted, all verified.

    Raises:
      CheckpointNotFoundError: The path is not a checkpoint.
      CheckpointCorruptError: A file or an array is not what was written.

    Example:
      >>> import tempfile, jax.numpy as jnp, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     ckpt = js.Saver().save({"params": {"w": jnp.ones(2)}}, f"{d}/m")
      ...     js.verify_checkpoint(ckpt)
      ['params/w']
    """
    ckpt = checkpoint_path(path, directory_ok=True)
    return stable_read(ckpt, lambda: _verify(ckpt))


def _verify(ckpt: str) -> list[str]:
    stored = describe(ckpt)
    batch: dict[str, Target] = {}
    size = 0
    for key in sorted(stored.shapes):
        shape, dtype = stored.shapes[key]
        batch[key] = Target("numpy", shape, dtype)
        size += int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size >= _BATCH_BYTES:
            restore_raw(stored, batch)
            batch, size = {}, 0
    if batch:
        restore_raw(stored, batch)
    return sorted(stored.shapes)
