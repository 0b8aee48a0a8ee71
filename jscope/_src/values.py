"""Values of variables: dtypes, shapes, value initializers and initializer calls.

This module owns what a variable's value must be, and knows nothing of runs: it
turns the ``shape``/``dtype``/``initializer`` arguments into a checked shape, a
NumPy dtype JAX can hold and an initializer or concrete value
(`resolve_creation`), calls initializers and checks what they return
(`call_initializer`, `initial_value`), infers a value initializer's shape and
dtype as TF1 did (`value_meta`), and compares a requested shape/dtype with a
stored value (`check_meta`), and accepts TF1-only keyword arguments of
`get_variable` at their defaults (`check_tf1_kwargs`).

Imports: `jscope.errors`, `jscope.initializers`, `jax_compat`, JAX and NumPy.

Hot paths: `canon_dtype` and `is_float` run for every `get_variable` and are
cached by dtype (`canon_dtype` also by JAX's x64 flag, `jax_compat.X64`);
everything else runs once per variable at init, or at apply only when a check
fails or a value initializer is given.
"""

from __future__ import annotations

import functools
import inspect
import operator
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jscope import errors, initializers
from jscope._src.jax_compat import X64
from jscope.typing import CustomGetter, DTypeLike, Initializer, InitializerLike, Shape

F32 = np.dtype(np.float32)

# Kinds NumPy gives values JAX cannot hold: object, strings, bytes, datetimes.
NOT_NUMERIC = frozenset("OUSMm")


def _holdable(dtype: np.dtype) -> bool:
    """Whether a jax.Array can hold ``dtype`` (bool, ints, floats, complex, ...)."""
    if dtype.kind in "biufc":
        return True
    # ml_dtypes (bfloat16, float8_*, int4) are kind "V", like structured dtypes.
    return dtype.kind == "V" and bool(jnp.issubdtype(dtype, np.number))


@functools.lru_cache(maxsize=256)
def _canon(dtype: Any, x64: bool) -> np.dtype:
    # x64 (JAX's flag) is part of the key: it decides what float64 becomes.
    canon = np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))
    if not _holdable(canon):
        raise TypeError(canon)  # reported with its path by `canon_dtype`
    return canon


def canon_dtype(dtype: DTypeLike, path: str | None = None) -> np.dtype:
    """Returns ``dtype`` as a NumPy dtype JAX can hold (float64 → float32 w/o x64).

    Raises:
      InvalidDtypeError: ``dtype`` is not a dtype, or not a numeric one.
    """
    try:
        return _canon(dtype, X64.value)
    except TypeError:  # unhashable dtype-like, or not a dtype a jax.Array holds
        pass
    try:
        canon = np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))
    except TypeError:
        canon = None
    if canon is None or not _holdable(canon):
        where = f"variable {path}" if path is not None else "a variable"
        raise errors.InvalidDtypeError(
            f"The dtype of {where} must be a numeric dtype a jax.Array can hold "
            f"(bool, int, float, complex), got dtype={dtype!r}. Pass one such as "
            "jnp.float32, jnp.int32 or 'bfloat16'.",
            path,
        )
    return canon


@functools.lru_cache(maxsize=256)
def is_float(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating-point dtype (bfloat16 and float8 included)."""
    return dtype.kind == "f" or dtype.name == "bfloat16" or "float8" in dtype.name


def default_collection(trainable: bool, dtype: np.dtype) -> str:
    """``params`` for a trainable floating-point variable, else ``state``."""
    return "params" if trainable and is_float(dtype) else "state"


def is_python_scalar(value: Any) -> bool:
    """Whether ``value`` is a Python bool, int, float or complex."""
    return isinstance(value, bool | int | float | complex)


def _fmt_shape(shape: tuple) -> str:
    return str(tuple(shape))


def _shape_ok(requested: tuple | None, found: tuple) -> bool:
    if requested is None or requested == found:
        return True
    if len(requested) != len(found):
        return False
    return all(r is None or r == f for r, f in zip(requested, found, strict=True))


def as_shape(shape: Shape | int, path: str) -> tuple:
    """Returns ``shape`` as a tuple of ints and Nones (None: any size on reuse).

    Raises:
      ShapeTypeError: A dimension is not an int or None.
      InvalidShapeError: A dimension is negative.
    """
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dims = tuple(None if d is None else operator.index(d) for d in shape)
    except TypeError:
        raise errors.ShapeTypeError(
            f"The shape of variable {path} must be a sequence of ints (None for "
            f"any size on reuse), got {shape!r}. Pass e.g. shape=(3, 4).",
            path,
        ) from None
    for d in dims:  # a loop, not any(): no generator per variable at init
        if d is not None and d < 0:
            raise errors.InvalidShapeError(
                f"The shape of variable {path} has a negative size: {dims}. Every "
                "dimension must be >= 0 (None for any size on reuse).",
                path,
            )
    return dims


def _not_an_array(path: str, value: Any, why: str) -> errors.InitialValueError:
    return errors.InitialValueError(
        f"The initial value of variable {path} is {why}: {value!r:.80}. Give a "
        "number, a rectangular (nested) list of numbers or an array, or a callable "
        "initializer.",
        path,
    )


def value_meta(value: Any, path: str) -> tuple[tuple, np.dtype]:
    """Shape and TF1-inferred dtype of a value initializer, without a device copy.

    Raises:
      InitialValueError: The value is ragged, or not numeric (None, a string).
    """
    if isinstance(value, bool):
        return (), np.dtype(np.bool_)
    if isinstance(value, int):
        return (), np.dtype(np.int32)
    if isinstance(value, float):
        return (), F32
    if isinstance(value, complex):
        return (), np.dtype(np.complex64)
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        canon = canon_dtype(value.dtype, path)
        warn_if_narrowed(value.dtype, canon, path)
        return tuple(value.shape), canon
    try:
        arr = np.asarray(value)
    except ValueError:  # NumPy: "inhomogeneous shape"
        raise _not_an_array(path, value, "ragged (rows of different lengths)") from None
    if arr.dtype.kind in NOT_NUMERIC:
        raise _not_an_array(path, value, f"not numeric (NumPy makes it {arr.dtype})")
    if arr.dtype == np.float64:
        return arr.shape, F32
    if arr.dtype == np.int64:
        return arr.shape, np.dtype(np.int32)
    if arr.dtype == np.complex128:
        return arr.shape, np.dtype(np.complex64)
    return arr.shape, canon_dtype(arr.dtype, path)


def convert_value(value: Any, dtype: np.dtype, path: str) -> jax.Array:
    """A value initializer as an array of ``dtype`` (Python values must fit it)."""
    if is_python_scalar(value) or isinstance(value, list | tuple):
        arr = np.asarray(value)
        try:
            arr = initializers.check_representable(arr, dtype)
        except errors.InitializerError as e:
            raise errors.InitializerError(f"Variable {path}: {e}", path) from None
        return jnp.asarray(arr, dtype)
    return jnp.asarray(value, dtype)


def check_meta(
    path: str,
    shape: Shape | None,
    dtype: DTypeLike | None,
    initializer: InitializerLike | None,
    value: Any,
    verb: str,
) -> None:
    """Checks a requested shape/dtype against a variable's value.

    Raises:
      ShapeMismatchError: The shapes differ (None dimensions match any size).
      DtypeMismatchError: The dtypes differ.
    """
    req_shape: Any
    if initializer is not None and not callable(initializer):
        req_shape, req_dtype = value_meta(initializer, path)
        if shape is not None:
            req_shape = shape
    else:
        req_shape = as_shape(shape, path) if shape is not None else None
        req_dtype = F32 if dtype is None else canon_dtype(dtype, path)
    found_shape = value.shape
    if not _shape_ok(req_shape, found_shape):
        raise errors.ShapeMismatchError(
            f"Trying to {verb} variable {path}, but specified shape "
            f"{_fmt_shape(req_shape)} and found shape {_fmt_shape(found_shape)}. "
            "Request the stored shape (or None to accept any), or use another name.",
            path,
        )
    if value.dtype != req_dtype:
        raise errors.DtypeMismatchError(
            f"Trying to {verb} variable {path}, but specified dtype {req_dtype} and "
            f"found dtype {value.dtype}. Pass dtype={value.dtype.name} (the "
            "requested dtype is the argument, else the scope's, else float32).",
            path,
        )


def resolve_creation(
    path: str,
    shape: Shape | None,
    dtype: DTypeLike | None,
    initializer: InitializerLike | None,
) -> tuple[tuple, np.dtype, Initializer | None, Any]:
    """Returns (shape, dtype, initializer or None, value or None) for a new variable.

    Raises:
      InvalidShapeError: No shape without a value initializer, a shape with one,
        or a shape not fully defined.
      DtypeMismatchError: ``dtype`` disagrees with a value initializer's dtype.
      InitializerArgumentError: ``dtype`` has no default initializer.
    """
    if initializer is not None and not callable(initializer):
        if shape is not None:
            raise errors.InvalidShapeError(
                f"Variable {path}: do not specify a shape with a value initializer "
                f"(got shape={shape!r}); the value's shape is used.",
                path,
            )
        vshape, vdtype = value_meta(initializer, path)
        if dtype is not None:
            want = canon_dtype(dtype, path)
            if want != vdtype and not is_python_scalar(initializer):
                raise errors.DtypeMismatchError(
                    f"Variable {path}: dtype={want} disagrees with the initializer "
                    f"value's dtype {vdtype}. Drop dtype=, or cast the value.",
                    path,
                )
            vdtype = want
        return vshape, vdtype, None, initializer
    if shape is None:
        raise errors.InvalidShapeError(
            f"Variable {path} did not get an initializer, so its shape argument must "
            "be specified. Pass shape=..., or a value as initializer.",
            path,
        )
    shape = as_shape(shape, path)
    if any(d is None for d in shape):
        raise errors.InvalidShapeError(
            f"Shape of a new variable ({path}) must be fully defined, but instead "
            f"was {shape}. Give every dimension a size.",
            path,
        )
    if dtype is None:
        dtype = F32
    else:
        asked, dtype = dtype, canon_dtype(dtype, path)
        warn_if_narrowed(asked, dtype, path)
    if initializer is None:
        initializer = initializers.default_initializer(dtype)
        if initializer is None:
            raise errors.InitializerArgumentError(
                f"An initializer for variable {path} of dtype {dtype} is required: "
                "there is no default for it. Pass initializer=...",
                path,
            )
    return shape, dtype, initializer, None


def _as_returned_array(value: Any, path: str, expected: str) -> jax.Array:
    """What an initializer returned, as an array; refuses None, strings, ..."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        arr = None
    if value is None or arr is None or arr.dtype.kind in NOT_NUMERIC:
        raise errors.InitializerError(
            f"The initializer of variable {path} returned {value!r:.80} "
            f"({type(value).__name__}), expected an array of {expected}. An "
            "initializer must return an array, e.g. jnp.zeros(shape, dtype).",
            path,
        )
    return jnp.asarray(value)


def call_initializer(
    initializer: Initializer, key: Any, shape: tuple, dtype: np.dtype, path: str
) -> jax.Array:
    """Calls ``initializer(key, shape, dtype)`` and checks what it returns.

    Raises:
      InitializerError: It returned no array, or one of another shape or dtype.
    """
    try:
        value = initializer(key, shape, dtype)
    except errors.JscopeError as e:
        if e.path is not None:
            raise
        raise type(e)(f"Variable {path}: {e}", path) from None
    except Exception as e:
        if _tf1_signature(initializer):
            raise _tf1_initializer_error(initializer, path) from e
        raise
    vshape = getattr(value, "shape", None)
    vdtype = getattr(value, "dtype", None)
    if vshape is None or vdtype is None:
        if _tf1_signature(initializer):
            raise _tf1_initializer_error(initializer, path)
        value = _as_returned_array(value, path, f"shape {shape} and dtype {dtype}")
        vshape, vdtype = value.shape, value.dtype
    if tuple(vshape) != shape or vdtype != dtype:
        if _tf1_signature(initializer):
            raise _tf1_initializer_error(initializer, path)
        raise errors.InitializerError(
            f"The initializer of variable {path} returned shape {tuple(vshape)} and "
            f"dtype {vdtype}, expected shape {shape} and dtype {dtype}. An "
            "initializer must honour the shape and dtype it is given.",
            path,
        )
    return value


def _tf1_signature(initializer: Any) -> bool:
    """Whether ``initializer`` takes TF1's ``(shape, dtype=None, partition_info=None)``.

    Asked only after a call failed or returned a wrong value, so the signature
    is never inspected for an initializer that works.
    """
    try:
        params = list(inspect.signature(initializer).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "partition_info" in params or params[:1] == ["shape"]


def _tf1_initializer_error(initializer: Any, path: str) -> errors.InitializerError:
    name = getattr(initializer, "__qualname__", type(initializer).__name__)
    try:
        sig = str(inspect.signature(initializer))
    except (TypeError, ValueError):
        sig = "(...)"
    return errors.InitializerError(
        f"The initializer of variable {path} has TF1's signature, {name}{sig}, "
        "but jscope calls initializer(key, shape, dtype): expected the signature "
        "(key, shape, dtype), a random key first. Wrap it: "
        "initializer=lambda key, shape, dtype: tf1_init(shape, dtype), or use the "
        "same initializer from js.initializers (e.g. js.initializers.ones()).",
        path,
    )


def warn_if_narrowed(asked: Any, canon: np.dtype, path: str) -> None:
    """Warns (once per path) that a float64/complex128 dtype became a 32-bit one.

    JAX without ``jax_enable_x64`` holds no 64-bit values, so `canon_dtype`
    narrows them. Python's warning registry shows each message once per place,
    and the message names the path: one warning per variable.
    """
    if canon.kind not in "fc":
        return
    try:
        wide = np.dtype(asked)
    except TypeError:
        return
    if wide.kind in "fc" and wide.itemsize > canon.itemsize:
        warnings.warn(
            f"Variable {path}: dtype {wide} becomes {canon}, as jax_enable_x64 is "
            f"off (JAX's default), so the variable holds {canon}. Turn it on "
            "first thing, jax.config.update('jax_enable_x64', True), for 64-bit "
            f"variables, or ask for {canon} to silence this.",
            UserWarning,
            stacklevel=2,
        )


def initial_value(
    key: Any, path: str, value: Any, dtype: DTypeLike | None
) -> jax.Array:
    """A `js.Variable`'s initial value: ``value(key)`` or ``value``, cast to dtype."""
    if callable(value):
        out: Any = value(key)
        if not hasattr(out, "dtype"):
            out = _as_returned_array(out, path, "any shape and dtype")
        if dtype is not None:
            canon = canon_dtype(dtype, path)
            warn_if_narrowed(dtype, canon, path)
            out = jnp.asarray(out, canon)
        else:
            warn_if_narrowed(out.dtype, canon_dtype(out.dtype, path), path)
        return out
    _, vdtype = value_meta(value, path)
    if dtype is not None:
        vdtype = canon_dtype(dtype, path)
        warn_if_narrowed(dtype, vdtype, path)
    return convert_value(value, vdtype, path)


def leaf_error(path: str, coll: str, value: Any) -> errors.LeafTypeError:
    """The error for a tree leaf at ``coll/path`` that is not an array."""
    return errors.LeafTypeError(
        f"Variable {path} is not an array in the tree given to js.apply: "
        f"{coll}/{path} holds {value!r:.60} ({type(value).__name__}). Every leaf "
        "must be a jax or NumPy array, e.g. from js.init; convert Python values "
        "with jnp.asarray.",
        path,
    )


# ------------------------------------------------- the checks of a read at apply


def same_int_list(shape, found):
    """Whether ``shape`` is a list of plain ints equal to the tuple ``found``.

    TF1 code writes shapes as lists (``[784, 10]``), which are never ``==`` a
    tuple; this spares them `check_read`. Any other element (a float, a NumPy
    int) takes the full check, as at init.
    """
    if type(shape) is not list or tuple(shape) != found:
        return False
    for dim in shape:  # noqa: SIM110 (no generator per read); 2.0 == 2, so types too
        if type(dim) is not int:
            return False
    return True


def check_leaf(path, shape, dtype, value, coll):
    """A read's check of a leaf other than a jax.Array (NumPy array, float, ...).

    Raises:
      LeafTypeError: The leaf has no shape or dtype (a float, list or string).
    """
    try:  # costs nothing unless it raises
        vdtype = value.dtype
        if shape != value.shape or (vdtype is not dtype and vdtype != dtype):
            check_read(path, shape, dtype, value)
    except AttributeError:
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            raise
        # a Python float, list or string in the tree
        raise leaf_error(path, coll, value) from None


def check_read(path, shape, dtype, value):
    """A read's check when the requested shape or dtype is not the value's."""
    shape = as_shape(shape, path)
    if None in shape:  # raises: not fully defined
        resolve_creation(path, shape, dtype, None)
    check_meta(path, shape, dtype, None, value, "read")


# ------------------------------------------- TF1 arguments of get_variable


TF1_GLOBAL_COLLECTIONS = frozenset({"variables", "trainable_variables"})


def check_tf1_kwargs(kwargs: dict[str, Any], path: str) -> CustomGetter | None:
    """Accepts TF1-only keyword arguments at their defaults; returns custom_getter."""
    getter = kwargs.pop("custom_getter", None)
    for key, value in kwargs.items():
        if key == "validate_shape" and value is True:
            continue
        if key == "use_resource" and value in (None, True):
            continue
        if key in ("caching_device", "partitioner", "constraint") and value is None:
            continue
        if key in ("synchronization", "aggregation"):
            label = str(getattr(value, "name", value)).lower()
            if value is None or label.rsplit(".", 1)[-1] in ("auto", "none"):
                continue
        if key == "collections":
            if value is None or set(value) <= TF1_GLOBAL_COLLECTIONS:
                continue
            raise errors.UnsupportedArgumentError(
                f"get_variable(collections={value!r}) is not supported: jscope keeps "
                "variables in the 'params' and 'state' collections of the tree. Use "
                "collection='name' to put a variable in a collection of its own "
                f"(variable {path}).",
                path,
            )
        if key in TF1_KWARGS_HELP:
            raise errors.UnsupportedArgumentError(
                f"get_variable({key}={value!r}) is not supported: "
                f"{TF1_KWARGS_HELP[key]}. Leave {key} at its TF1 default "
                f"(variable {path}).",
                path,
            )
        raise errors.UnknownArgumentError(
            f"get_variable() got an unexpected keyword argument {key!r} (variable "
            f"{path}). Check its spelling; the arguments are those of TF1's "
            "tf.compat.v1.get_variable.",
            path,
        )
    return getter


TF1_KWARGS_HELP = {
    "validate_shape": "jscope always knows and checks the full shape",
    "use_resource": "every jscope variable is a plain jax.Array",
    "caching_device": "place arrays with jax.device_put or shardings instead",
    "partitioner": "shard variables with js.ShardingRules (path rules, or axes=)",
    "constraint": "apply the constraint to the value after the optimizer update",
    "synchronization": "replicas are synchronized by jax's SPMD partitioner",
    "aggregation": "gradients are aggregated by jax's SPMD partitioner",
}
