"""The public TF1 checkpoint functions: list, load, restore into a tree, save.

A TF1 name is a jscope variable's path: ``model/h0/w`` in a TF1 checkpoint is
``params/model/h0/w`` (or ``state/...``) in a variable tree; ``name_map``
renames. Paths resolve as TF1 resolves them: a prefix, the ``.index`` file, or
a directory with a ``checkpoint`` state file (read by `layout.read_state`,
which understands TF1's text format). Everything is read with NumPy; no
TensorFlow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from jscope import errors
from jscope._src import tree
from jscope._src.checkpoint import layout
from jscope._src.tf1 import bundle

if TYPE_CHECKING:
    from jscope._src.checkpoint import read

CheckpointError = errors.CheckpointError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointNotFoundError = errors.CheckpointNotFoundError
CheckpointTypeError = errors.CheckpointTypeError

NameMap = Mapping[str, str | None] | Callable[[str], str | None]
_DATA_FILE = re.compile(r"\.data-\d{5}-of-\d{5}$")


# ------------------------------------------------------------------- paths


def checkpoint_prefix(path: str | os.PathLike[str]) -> str:
    """The prefix of the TF1 checkpoint that ``path`` names.

    ``path`` is a prefix (``model.ckpt-1000``), its ``.index`` or a data file,
    or a directory whose ``checkpoint`` state file names the checkpoint
    (relative paths are joined to the directory; an absolute path that does not
    exist, as when the directory was copied from another machine, is looked up
    in the directory by its last component).

    Raises:
      CheckpointNotFoundError: No TF1 checkpoint is there.
    """
    given = layout.fspath(path, "path")
    prefix = _DATA_FILE.sub("", given.removesuffix(".index"))
    if os.path.isfile(prefix + ".index"):
        return prefix
    if os.path.isdir(given):
        state = layout.read_state(given)
        model = state.get("model_checkpoint_path") if state else None
        if model:
            for candidate in (
                layout.resolve(given, model),
                os.path.join(given, os.path.basename(model)),
            ):
                if os.path.isfile(candidate + ".index"):
                    return candidate
            why = (
                f"its checkpoint state names {model!r}, which has no "
                f"{os.path.basename(model)}.index"
            )
        else:
            found = sorted(n[:-6] for n in os.listdir(given) if n.endswith(".index"))
            why = "it has no checkpoint state file naming a checkpoint" + (
                f"; it holds {found}: pass one of those prefixes" if found else ""
            )
    elif os.path.exists(given):
        why = "it is a file, not a checkpoint prefix or its .index"
    else:
        why = f"neither {given} nor {prefix}.index exists"
    raise CheckpointNotFoundError(
        f"{given} is not a TF1 checkpoint ({why}). Pass the checkpoint prefix "
        "('model.ckpt-1000', the part before .index), its .index file, or the "
        "directory holding TF1's 'checkpoint' state file.",
        given,
    )


def _index(path: str | os.PathLike[str]) -> bundle.Index:
    return bundle.read_index(checkpoint_prefix(path))


def _not_found(index: bundle.Index, name: str) -> CheckpointMismatchError:
    names = sorted(index.entries)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    hint = ""
    if "/" in name and name.split("/", 1)[1] in index.entries:
        short = name.split("/", 1)[1]
        hint = f" (did you mean {short!r}? TF1 names have no collection)"
    return CheckpointMismatchError(
        f"Variable {name} not found in TF1 checkpoint {index.prefix}{hint}. It "
        f"holds: {shown}. js.tf1.list_variables lists its variables.",
        name,
    )


# ----------------------------------------------------------------- reading


def list_variables(
    path: str | os.PathLike[str],
) -> list[tuple[str, tuple[int, ...], Any]]:
    """Lists a TF1 checkpoint's variables, reading no tensor.

    Args:
      path: A checkpoint prefix (``ckpt/model.ckpt-1000``), its ``.index``
        file, or a directory with TF1's ``checkpoint`` state file.

    Returns:
      Sorted ``(name, shape, dtype)``: NumPy dtypes (``ml_dtypes.bfloat16``
      for bfloat16); a tensor that is not numeric (TF2's object graph, a
      string) has dtype ``object``. A partitioned variable is listed once,
      with its full shape.

    Raises:
      CheckpointNotFoundError: No TF1 checkpoint is at ``path``.
      CheckpointCorruptError: Its index is damaged.

    Example:
      >>> import tempfile, numpy as np, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     prefix = js.tf1.save_checkpoint(
      ...         {"params": {"dense": {"kernel": np.ones((2, 3), np.float32)}}},
      ...         f"{d}/model.ckpt-5",
      ...     )
      ...     js.tf1.list_variables(prefix)
      [('dense/kernel', (2, 3), dtype('float32'))]
    """
    index = _index(path)
    return sorted(
        (
            name,
            entry.shape,
            bundle.numpy_dtype(entry.dtype) or np.dtype(object),
        )
        for name, entry in index.entries.items()
    )


def load_variable(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """Loads one variable of a TF1 checkpoint (``tf.train.load_variable``).

    Args:
      path: A checkpoint prefix, its ``.index`` file, or a directory with
        TF1's ``checkpoint`` state file.
      name: The TF1 name, e.g. ``"model/dense/kernel"``.

    Returns:
      A NumPy array, checked against the checksum TensorFlow stored.

    Raises:
      CheckpointNotFoundError: No TF1 checkpoint is at ``path``.
      CheckpointMismatchError: It has no variable ``name``.
      CheckpointTypeError: The variable is not numeric (a string tensor).
      CheckpointCorruptError: Its bytes are not what was saved.

    Example:
      >>> import tempfile, numpy as np, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = js.tf1.save_checkpoint(
      ...         {"params": {"model": {"b": np.zeros(2, np.float16)}}}, f"{d}/m"
      ...     )
      ...     js.tf1.load_variable(d + "/m", "model/b")
      array([0., 0.], dtype=float16)
    """
    index = _index(path)
    if name not in index.entries:
        raise _not_found(index, name)
    return bundle.read_arrays(index, [name])[name]


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Loads every variable of a TF1 checkpoint as ``{tf1_name: np.ndarray}``.

    TF2's object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``, a string) is left
    out; TF2 variables keep their names (``model/kernel/.ATTRIBUTES/VARIABLE_VALUE``).

    Raises:
      CheckpointNotFoundError: No TF1 checkpoint is at ``path``.
      CheckpointTypeError: A variable is not numeric (a string tensor).
      CheckpointCorruptError: A tensor's bytes are not what was saved.

    Example:
      >>> import tempfile, numpy as np, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = js.tf1.save_checkpoint(
      ...         {"params": {"w": np.arange(3.0)}, "state": {"step": np.int64(7)}},
      ...         f"{d}/model.ckpt",
      ...     )
      ...     js.tf1.load_checkpoint(f"{d}/model.ckpt.index")
      {'step': array(7), 'w': array([0., 1., 2.])}
    """
    index = _index(path)
    names = [n for n in sorted(index.entries) if n != bundle.OBJECT_GRAPH]
    return bundle.read_arrays(index, names)


# ----------------------------------------------------------------- names


def tf1_name(path: str, name_map: NameMap | None) -> str | None:
    """The TF1 name of the tree path ``path`` (``params/a/w`` → ``a/w``), or None.

    ``name_map`` gets the variable's path without its collection (``a/w``)
    and gives the TF1 name, or None to leave the variable out; a dict leaves
    paths it does not hold unchanged.
    """
    own = path.split("/", 1)[1] if "/" in path else path
    if name_map is None:
        return own
    if isinstance(name_map, Mapping):
        name = name_map.get(own, own)
    elif callable(name_map):
        name = name_map(own)
    else:
        raise CheckpointTypeError(
            f"name_map must be a dict or a callable (variable path -> TF1 name), "
            f"got {type(name_map).__name__}."
        )
    if name is not None and not isinstance(name, str):
        raise CheckpointTypeError(
            f"name_map gave {name!r} ({type(name).__name__}) for variable {path}; "
            "it must give a TF1 name (str), or None to leave the variable out."
        )
    return name


# ----------------------------------------------------------------- restore


def _convert(value: np.ndarray, leaf: Any, spec: read.Target) -> Any:
    if spec.kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(value), impl=spec.key_impl)
    if spec.kind == "numpy":
        return value
    if spec.kind == "scalar":
        if isinstance(leaf, np.generic):
            return value.astype(leaf.dtype)[()]
        return type(leaf)(value.item())
    if spec.sharding is not None:
        return jax.device_put(value, spec.sharding)
    return jnp.asarray(value)


def _mismatch(
    prefix: str, missing: list[str], wrong: list[str], paths: list[str]
) -> CheckpointMismatchError:
    lines = [
        f"Cannot restore TF1 checkpoint {prefix}: {len(missing)} missing and "
        f"{len(wrong)} mismatched variable(s)."
    ]
    if missing:
        lines += ["  missing from the checkpoint:", *missing]
    if wrong:
        lines += ["  shape or dtype mismatch:", *wrong]
    lines.append(
        "Map jscope paths to TF1 names with name_map (a dict or a callable), "
        "keep variables the checkpoint lacks with strict=False, or build the "
        f"model to match; js.tf1.list_variables({prefix!r}) shows what it holds."
    )
    return CheckpointMismatchError("\n".join(lines), paths[0])


def restore(
    path: str | os.PathLike[str],
    variables: Mapping[str, Any],
    *,
    name_map: NameMap | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Restores a variable tree from a TF1 checkpoint, by TF1 name.

    The variable at ``params/model/h0/w`` (or ``state/...``) is read from the
    TF1 name ``model/h0/w``; ``name_map`` renames. Checkpoint variables that
    no path asks for are ignored (optimizer slots, ``global_step``).

    Args:
      path: A checkpoint prefix, its ``.index`` file, or a directory with
        TF1's ``checkpoint`` state file.
      variables: The tree to restore into (``js.init``'s, or one of
        `jax.ShapeDtypeStruct`): it gives paths, shapes and dtypes. Unchanged.
      name_map: Renames: a dict ``{jscope path: TF1 name}`` (paths without the
        collection; paths it lacks keep their name) or a callable
        ``path -> TF1 name``; a TF1 name of None leaves the variable as it is.
      strict: If True, every variable must be in the checkpoint; if False,
        those it lacks keep their values. Shapes and dtypes must match either way.

    Returns:
      A new tree of the same structure: arrays (with the target's sharding),
      NumPy arrays where the target had NumPy arrays.

    Raises:
      CheckpointNotFoundError: No TF1 checkpoint is at ``path``.
      CheckpointMismatchError: One error listing every missing variable (when
        strict) and every shape or dtype mismatch.
      CheckpointTypeError: A leaf cannot be restored into, or ``name_map`` is
        not a dict or callable.
      CheckpointCorruptError: A tensor's bytes are not what was saved.

    Example:
      >>> import tempfile, numpy as np, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = js.tf1.save_checkpoint(
      ...         {"params": {"bert": {"w": np.full(2, 3.0, np.float32)}}}, f"{d}/m"
      ...     )
      ...     tree = {"params": {"encoder": {"w": np.zeros(2, np.float32)}}}
      ...     js.tf1.restore(
      ...         d + "/m", tree, name_map=lambda p: p.replace("encoder/", "bert/")
      ...     )
      {'params': {'encoder': {'w': array([3., 3.], dtype=float32)}}}
    """
    from jscope._src.checkpoint import read  # Orbax: imported on first use

    index = _index(path)
    leaves = tree.flatten(variables)
    chosen: dict[str, tuple[str, read.Target]] = {}
    missing: list[str] = []
    wrong: list[str] = []
    paths: list[str] = []
    for p, leaf in leaves.items():
        name = tf1_name(p, name_map)
        if name is None:
            continue
        spec = read.target(leaf, p)
        named = p if p.split("/", 1)[-1] == name else f"{p} (TF1 name {name!r})"
        entry = index.entries.get(name)
        if entry is None:
            if strict:
                missing.append(f"    {named}")
                paths.append(p)
            continue
        found = bundle.numpy_dtype(entry.dtype) or bundle.dtype_name(entry.dtype)
        bad = [
            f"    {named}: expected {what} {want} (the tree's), found {what} "
            f"{got} in the checkpoint"
            for what, want, got in (
                ("shape", tuple(spec.shape), entry.shape),
                ("dtype", np.dtype(spec.dtype), found),
            )
            if want != got
        ]
        if bad:
            wrong += bad
            paths.append(p)
        chosen[p] = (name, spec)
    if paths:
        raise _mismatch(index.prefix, missing, wrong, paths)
    arrays = bundle.read_arrays(index, sorted({name for name, _ in chosen.values()}))
    out = {
        p: _convert(arrays[chosen[p][0]], leaf, chosen[p][1]) if p in chosen else leaf
        for p, leaf in leaves.items()
    }
    return tree.unflatten(out)


# -------------------------------------------------------------------- save


def _array(leaf: Any, path: str) -> np.ndarray:
    dtype = getattr(leaf, "dtype", None)
    if isinstance(leaf, Tracer):
        raise CheckpointTypeError(
            f"Variable {path} is a traced value; save outside jax.jit."
        )
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        raise CheckpointTypeError(
            f"Variable {path} is a PRNG key, which TF1 checkpoints cannot hold; "
            "save jax.random.key_data(key) instead, or leave it out with name_map."
        )
    if isinstance(leaf, bool | int | float | complex):  # as JAX would hold it
        from jscope._src.checkpoint import read  # Orbax: imported on first use

        array = np.asarray(leaf, read.scalar_dtype(leaf))
    else:
        array = np.asarray(leaf)
    if bundle.tf_dtype(array.dtype) is None:
        raise CheckpointTypeError(
            f"Variable {path} has dtype {array.dtype}, which TF1 checkpoints do not "
            "hold (they hold float16/32/64, bfloat16, int8-64, uint8-64, bool, "
            "complex64/128); cast it, or leave it out with name_map."
        )
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def save_checkpoint(
    variables: Mapping[str, Any],
    prefix: str | os.PathLike[str],
    *,
    name_map: NameMap | None = None,
) -> str:
    """Writes a variable tree as a TF1 checkpoint that TensorFlow reads.

    ``<prefix>.index`` and ``<prefix>.data-00000-of-00001``, TensorFlow's V2
    format (``tf.train.Saver``, ``tf.train.load_checkpoint``); each variable
    under its TF1 name (``params/a/w`` as ``a/w``), with its dtype (a Python
    scalar with the one JAX gives it: ``int32`` for ``9`` with x64 off). No
    ``checkpoint`` state file is written: pass the prefix to readers.

    Args:
      variables: A variable tree (collections of nested dicts of arrays).
      prefix: The checkpoint prefix, e.g. ``"ckpt/model.ckpt-1000"``; its
        directory is created if needed.
      name_map: As for `restore`: ``{jscope path: TF1 name}`` or a callable;
        None as a name leaves the variable out.

    Returns:
      The prefix, as a str.

    Raises:
      CheckpointTypeError: A leaf is not an array TF1 can hold (a PRNG key, a
        tracer, an unsupported dtype).
      CheckpointError: Two variables map to one TF1 name.
      CheckpointWriteError: The files cannot be written.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, jscope as js
      >>> with tempfile.TemporaryDirectory() as d:
      ...     variables = {"params": {"w": jnp.ones(3)}, "state": {"step": 9}}
      ...     prefix = js.tf1.save_checkpoint(
      ...         variables, f"{d}/ckpt/model.ckpt-9", name_map={"step": "global_step"}
      ...     )
      ...     print(sorted(os.listdir(f"{d}/ckpt")))
      ...     print(js.tf1.list_variables(prefix))
      ['model.ckpt-9.data-00000-of-00001', 'model.ckpt-9.index']
      [('global_step', (), dtype('int32')), ('w', (3,), dtype('float32'))]
    """
    target = layout.fspath(prefix, "prefix")
    arrays: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for p, leaf in tree.flatten(variables).items():
        name = tf1_name(p, name_map)
        if name is None:
            continue
        if not name or name.startswith("\x00"):
            raise CheckpointTypeError(
                f"Variable {p} maps to the TF1 name {name!r}, which TF1 "
                "checkpoints cannot hold; give it a non-empty name."
            )
        if name in owner:
            raise CheckpointError(
                f"Variables {owner[name]} and {p} both map to the TF1 name "
                f"{name!r}; give one another name with name_map.",
                p,
            )
        owner[name] = p
        arrays[name] = _array(leaf, p)
    if os.path.isdir(target):
        raise CheckpointTypeError(
            f"The prefix {target} is a directory; a TF1 prefix names files "
            f"'<prefix>.index', e.g. {os.path.join(target, 'model.ckpt')!r}."
        )
    try:
        with layout.write_errors(target):
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            bundle.write_bundle(target, arrays)
    except OSError as e:
        if isinstance(e, errors.CheckpointWriteError):
            raise
        raise errors.CheckpointWriteError(
            f"Cannot write TF1 checkpoint {target}: {e}. Check that its directory "
            "can be created and written.",
            target,
            e.errno,
        ) from e
    return target
