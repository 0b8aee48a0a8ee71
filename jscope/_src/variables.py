"""`get_variable`, `Variable`, assignment, regularization and rng keys."""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jscope import errors, initializers
from jscope._src import context, jax_compat, names, tree
from jscope._src.context import GET, VAR
from jscope._src.scope import _wrap_getter

_F32 = np.dtype(np.float32)

_TF1_GLOBAL_COLLECTIONS = frozenset({"variables", "trainable_variables"})

# jax's own initializers that ignore their key: no key is derived for them.
_KEYLESS = (jax.nn.initializers.zeros, jax.nn.initializers.ones)


def path_key(rng: jax.Array, path: str) -> jax.Array:
    """The key of the variable at ``path``: ``fold_in(rng, stable_hash(path))``.

    `jax_compat.fold_in` traces about 3x faster than `jax.random.fold_in` for a
    typed key and gives the same key.
    """
    return jax_compat.fold_in(rng, names.stable_hash(path))


# ---------------------------------------------------------------- dtypes, shapes


@functools.lru_cache(maxsize=256)
def _canon(dtype: Any) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


def canon_dtype(dtype: Any) -> np.dtype:
    """Returns ``dtype`` as a NumPy dtype JAX can hold (float64 → float32 w/o x64)."""
    try:
        return _canon(dtype)
    except TypeError:  # unhashable dtype-like
        return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


@functools.lru_cache(maxsize=256)
def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16" or "float8" in dtype.name


def _fmt_shape(shape: tuple) -> str:
    return str(tuple(shape))


def _shape_ok(requested: tuple | None, found: tuple) -> bool:
    if requested is None or requested == found:
        return True
    if len(requested) != len(found):
        return False
    return all(r is None or r == f for r, f in zip(requested, found, strict=True))


def _as_shape(shape: Any, path: str) -> tuple | None:
    if shape is None:
        return None
    if isinstance(shape, int):
        shape = (shape,)
    try:
        return tuple(None if d is None else operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(
            f"The shape of variable {path} must be a sequence of ints (None for "
            f"any size on reuse), got {shape!r}."
        ) from None


def _value_meta(value: Any) -> tuple[tuple, np.dtype]:
    """Shape and TF1-inferred dtype of a value initializer, without a device copy."""
    if isinstance(value, bool):
        return (), np.dtype(np.bool_)
    if isinstance(value, int):
        return (), np.dtype(np.int32)
    if isinstance(value, float):
        return (), _F32
    if isinstance(value, complex):
        return (), np.dtype(np.complex64)
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        return tuple(value.shape), canon_dtype(value.dtype)
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        return arr.shape, _F32
    if arr.dtype == np.int64:
        return arr.shape, np.dtype(np.int32)
    if arr.dtype == np.complex128:
        return arr.shape, np.dtype(np.complex64)
    return arr.shape, canon_dtype(arr.dtype)


def _is_python_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | complex)


def _convert_value(value: Any, dtype: np.dtype, path: str) -> jax.Array:
    if _is_python_scalar(value) or isinstance(value, list | tuple):
        arr = np.asarray(value)
        try:
            arr = initializers._check_representable(arr, dtype)
        except errors.InitializerError as e:
            raise errors.InitializerError(f"Variable {path}: {e}", path) from None
        return jnp.asarray(arr, dtype)
    return jnp.asarray(value, dtype)


def _default_collection(trainable: bool, dtype: np.dtype) -> str:
    return "params" if trainable and _is_float(dtype) else "state"


# ----------------------------------------------------------------- get_variable


def _check_tf1_kwargs(kwargs: dict[str, Any]) -> Any:
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
            if value is None or set(value) <= _TF1_GLOBAL_COLLECTIONS:
                continue
            raise errors.UnsupportedArgumentError(
                f"get_variable(collections={value!r}) is not supported: jscope keeps "
                "variables in the 'params' and 'state' collections of the tree. Use "
                "collection='name' to put a variable in a collection of its own."
            )
        if key in _TF1_KWARGS_HELP:
            raise errors.UnsupportedArgumentError(
                f"get_variable({key}={value!r}) is not supported: "
                f"{_TF1_KWARGS_HELP[key]}. Leave {key} at its TF1 default."
            )
        raise TypeError(f"get_variable() got an unexpected keyword argument {key!r}.")
    return getter


_TF1_KWARGS_HELP = {
    "validate_shape": "jscope always knows and checks the full shape",
    "use_resource": "every jscope variable is a plain jax.Array",
    "caching_device": "place arrays with jax.device_put or shardings instead",
    "partitioner": "shard variables with jax.sharding (see the Scale section) instead",
    "constraint": "apply the constraint to the value after the optimizer update",
    "synchronization": "replicas are synchronized by jax's SPMD partitioner",
    "aggregation": "gradients are aggregated by jax's SPMD partitioner",
}


def get_variable(
    name: str,
    shape: Any = None,
    dtype: Any = None,
    initializer: Any = None,
    regularizer: Any = None,
    *,
    trainable: bool | None = True,
    collection: str | None = None,
    **tf1_kwargs: Any,
) -> jax.Array:
    """Gets the variable at ``<scope>/name`` or creates it, under the reuse rules.

    With reuse off (None/False) the variable is created and must not exist; with
    ``reuse=True`` it must exist; with `js.AUTO_REUSE` it is created if missing.
    At `js.apply` the same rules are checked and the value is read from the tree.

    Args:
      name: The variable's name, relative to the current variable scope.
      shape: Its shape; None for a value initializer, or (on reuse) to accept any.
      dtype: Its dtype; defaults to the scope's dtype, else float32 (a value
        initializer keeps its own dtype).
      initializer: ``(key, shape, dtype) -> array`` or a concrete value; defaults to
        the scope's initializer, else Glorot uniform (zeros for ints).
      regularizer: ``(value) -> scalar`` added to `js.get_regularization_loss`.
      trainable: Whether it goes to ``params`` (if floating point) or ``state``.
      collection: Overrides the collection.
      **tf1_kwargs: TF1 arguments (``validate_shape``, ``collections``, ...) that
        are accepted at their TF1 defaults, and ``custom_getter``.

    Returns:
      The variable's current value (a `jax.Array`).

    Raises:
      VariableExistsError: It exists and reuse is off ("already exists").
      VariableNotFoundError: It does not exist and ``reuse=True``.
      ShapeMismatchError: On reuse or at apply, the shapes differ.
      DtypeMismatchError: On reuse or at apply, the dtypes differ.
      UninitializedVariableError: At apply, the tree lacks the variable.
      NotInRunError: Called outside `js.init` / `js.apply`.

    Example:
      >>> import jax, jscope as js
      >>> def f():
      ...     return js.get_variable("w", (2,), initializer=js.initializers.ones())
      >>> js.init(f, jax.random.key(0))
      {'params': {'w': Array([1., 1.], dtype=float32)}}
    """
    frame = context.peek()
    if frame is None or not frame.is_run:
        context.current_run("get_variable")
    scope = frame.scope
    getter = scope.custom_getter
    if tf1_kwargs:
        getter = _wrap_getter(getter, _check_tf1_kwargs(dict(tf1_kwargs)))
    if trainable is None:
        trainable = True
    if initializer is None:
        initializer = scope.initializer
    if regularizer is None:
        regularizer = scope.regularizer
    if dtype is None and (initializer is None or callable(initializer)):
        dtype = scope.dtype
    prefix = scope.name
    full = f"{prefix}/{name}" if prefix else name
    trace = jax_compat.trace_state()
    if trace is not frame.trace_state and not jax_compat.same_trace(
        trace, frame.trace_state
    ):
        _check_staged_read(frame, full)
    if getter is None:
        return _get(
            frame, full, shape, dtype, initializer, regularizer, scope.reuse,
            trainable, collection,
        )  # fmt: skip

    def real_getter(
        name, shape=None, dtype=None, initializer=None, regularizer=None,
        reuse=None, trainable=True, collection=None, **unused,
    ):  # fmt: skip
        return _get(
            frame, name, shape, dtype, initializer, regularizer, reuse,
            True if trainable is None else trainable, collection,
        )  # fmt: skip

    return getter(
        real_getter, full, shape=shape, dtype=dtype, initializer=initializer,
        regularizer=regularizer, reuse=scope.reuse, trainable=trainable,
        collection=collection,
    )  # fmt: skip


def _get(frame, path, shape, dtype, initializer, regularizer, reuse, trainable, coll):
    if not isinstance(path, str) or path not in frame.kinds:
        names.validate(path)
        kind = None
    else:
        kind = frame.kinds[path]
    if kind == VAR and reuse is True:
        kind = None  # invisible to get_variable: "does not exist" below
    elif kind == VAR:
        raise errors.VariableExistsError(
            f"Variable {path} already exists as a js.Variable, disallowed: "
            "get_variable cannot share or create a variable at a path a js.Variable "
            "holds (TF1 silently made a second one). Give one of them another name.",
            path,
        )
    if kind is not None:
        if reuse is False:
            raise errors.VariableExistsError(
                f"Variable {path} already exists, disallowed. Did you mean to set "
                "reuse=True or reuse=AUTO_REUSE in VarScope?",
                path,
            )
        value = frame.values[path]
        _check_meta(path, shape, dtype, initializer, value, "share")
        return value
    if reuse is True:
        raise errors.VariableNotFoundError(
            f"Variable {path} does not exist, or was not created with "
            "get_variable(). Did you mean to set reuse=AUTO_REUSE in VarScope?",
            path,
        )
    return _create(frame, path, shape, dtype, initializer, regularizer, trainable, coll)


def _check_meta(path, shape, dtype, initializer, value, verb):
    """Checks a requested shape/dtype against a variable's value."""
    if initializer is not None and not callable(initializer):
        req_shape, req_dtype = _value_meta(initializer)
        if shape is not None:
            req_shape = shape
    else:
        req_shape = _as_shape(shape, path) if shape is not None else None
        req_dtype = _F32 if dtype is None else canon_dtype(dtype)
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


def _resolve_creation(path, shape, dtype, initializer):
    """Returns (shape, dtype, initializer or None, value or None) for a new variable."""
    if initializer is not None and not callable(initializer):
        if shape is not None:
            raise ValueError(
                f"Variable {path}: do not specify a shape with a value initializer "
                f"(got shape={shape!r}); the value's shape is used."
            )
        vshape, vdtype = _value_meta(initializer)
        if dtype is not None:
            want = canon_dtype(dtype)
            if want != vdtype and not _is_python_scalar(initializer):
                raise errors.DtypeMismatchError(
                    f"Variable {path}: dtype={want} disagrees with the initializer "
                    f"value's dtype {vdtype}. Drop dtype=, or cast the value.",
                    path,
                )
            vdtype = want
        return vshape, vdtype, None, initializer
    if shape is None:
        raise ValueError(
            f"Variable {path} did not get an initializer, so its shape argument must "
            "be specified. Pass shape=..., or a value as initializer."
        )
    shape = _as_shape(shape, path)
    if any(d is None for d in shape):
        raise ValueError(
            f"Shape of a new variable ({path}) must be fully defined, but instead "
            f"was {shape}."
        )
    dtype = _F32 if dtype is None else canon_dtype(dtype)
    if initializer is None:
        initializer = initializers.default_initializer(dtype)
        if initializer is None:
            raise errors.InitializerArgumentError(
                f"An initializer for variable {path} of dtype {dtype} is required: "
                "there is no default for it. Pass initializer=...",
                path,
            )
    return shape, dtype, initializer, None


def _check_trace(frame, path, what):
    if not jax_compat.same_trace(jax_compat.trace_state(), frame.trace_state):
        raise errors.JaxTransformError(
            f"{what} {path} is created inside a plain JAX transform (jax.vmap, "
            "jax.lax.scan, jax.checkpoint, jax.jit, ...) opened within the run: it "
            "would be silently shared or duplicated. Use jscope's lifted transforms "
            "(js.scan, js.vmap, js.remat, js.cond, js.while_loop), or create the "
            "variable outside the transform and read it inside.",
            path,
        )


def _check_staged_read(frame, path):
    """Refuses reads inside a staged plain JAX transform opened within the run.

    ``jax.jit``, ``jax.checkpoint``, ``jax.lax.scan`` and friends cache the traced
    function, so a value read from the run by closure would be baked into the
    cache and silently reused by later runs with other variables.
    """
    if jax_compat.is_staged_trace_of_its_own(frame.trace_state):
        raise errors.JaxTransformError(
            f"Variable {path} is read inside a plain staged JAX transform "
            "(jax.jit, jax.checkpoint, jax.lax.scan, jax.lax.cond, ...) opened "
            "within the run. JAX caches the traced function, so the variable's "
            "value would be baked in and reused by later runs. Read the variable "
            "before the transform and pass it in as an argument, or use jscope's "
            "lifted transforms (js.remat, js.scan, js.cond, js.while_loop).",
            path,
        )


def _create(frame, path, shape, dtype, initializer, regularizer, trainable, coll):
    # The same rules at init and apply: a path may not sit above or below another.
    tree.check_no_conflict(path, frame.kinds, frame.inner)
    if frame.initializing:
        _check_trace(frame, path, "Variable")
        shape, dtype, initializer, value = _resolve_creation(
            path, shape, dtype, initializer
        )
        if coll is None:
            coll = _default_collection(trainable, dtype)
        if value is not None:
            init_value = value

            def make(key):
                return _convert_value(init_value, dtype, path)

            keyed = False
        else:
            keyed = not (
                getattr(initializer, "keyless", False) or initializer in _KEYLESS
            )

            def make(key):
                return _call_initializer(initializer, key, shape, dtype, path)

        if frame.lift is None:
            value = make(path_key(frame.rng, path) if keyed else None)
        else:
            value = frame.lift.create(frame, path, coll, make, keyed)
        frame.created[path] = (coll, value)
    elif callable(initializer) and shape is not None:
        value, coll = _read_fast(frame, path, shape, dtype, trainable, coll)
    else:
        # At apply nothing is created: the value comes from the tree, after the
        # same argument checks as at init.
        shape, dtype, _, _ = _resolve_creation(path, shape, dtype, initializer)
        if coll is None:
            coll = _default_collection(trainable, dtype)
        value = _lookup(frame, path, coll)
        _check_meta(path, shape, dtype, None, value, "read")
    tree.add_prefixes(path, frame.inner)
    frame.kinds[path] = GET
    frame.values[path] = value
    frame.collection_of[path] = coll
    frame.names.mark(path)
    if regularizer is not None:
        frame.regularizers.append((path, regularizer))
    _register(frame, value, path)
    return value


def _read_fast(frame, path, shape, dtype, trainable, coll):
    """The apply-time read of a variable with a callable initializer and a shape."""
    dtype = _F32 if dtype is None else canon_dtype(dtype)
    if coll is None:
        coll = "params" if trainable and _is_float(dtype) else "state"
    value = _lookup(frame, path, coll)
    if shape != value.shape:
        shape = _as_shape(shape, path)
        if None in shape:
            _resolve_creation(path, shape, dtype, None)  # raises: not fully defined
        _check_meta(path, shape, dtype, None, value, "read")
    if value.dtype != dtype:
        _check_meta(path, shape, dtype, None, value, "read")
    return value, coll


def _call_initializer(initializer, key, shape, dtype, path):
    try:
        value = initializer(key, shape, dtype)
    except errors.JscopeError as e:
        if e.path is not None:
            raise
        raise type(e)(f"Variable {path}: {e}", path) from None
    vshape = getattr(value, "shape", None)
    vdtype = getattr(value, "dtype", None)
    if vshape is None or vdtype is None:
        value = jnp.asarray(value)
        vshape, vdtype = value.shape, value.dtype
    if tuple(vshape) != shape or vdtype != dtype:
        raise errors.InitializerError(
            f"The initializer of variable {path} returned shape {tuple(vshape)} and "
            f"dtype {vdtype}, expected shape {shape} and dtype {dtype}. An "
            "initializer must honour the shape and dtype it is given.",
            path,
        )
    return value


def _lookup(frame, path, coll):
    flat = frame.source.get(coll)
    value = None if flat is None else flat.get(path)
    if value is None:
        elsewhere = [c for c, f in frame.source.items() if path in f]
        hint = (
            f" It is in collection {elsewhere[0]!r}: check trainable=/collection=."
            if elsewhere
            else " Run js.init on this function to create it, or restore it from a "
            "checkpoint."
        )
        raise errors.UninitializedVariableError(
            f"Variable {path} is uninitialized: the tree given to js.apply has no "
            f"{coll}/{path}.{hint}",
            path,
        )
    return value


def _register(frame, value, path):
    key = id(value)
    seen = frame.returned.get(key)
    if seen is not None and seen[1] != path:
        path = None  # the same array for two variables: ambiguous
    frame.returned[key] = (value, path)


# ---------------------------------------------------------------------- Variable


class Variable:
    """A handle to a variable that is always created (TF1's ``tf.Variable``).

    Its path is the current *name scope* plus ``name``, uniquified in the run
    (``name1``, then ``name1_1``); unnamed ones are ``Variable``, ``Variable_1``.
    It is invisible to `get_variable`. Arithmetic, comparisons, indexing and
    ``jnp.asarray`` act on its value; pass ``v.value`` to other ``jnp`` functions.

    Args:
      initial_value: A value, or a callable ``(key) -> array`` (called at init
        only).
      name: Its name within the current name scope.
      trainable: Whether it goes to ``params`` (if floating point) or ``state``.
      dtype: Casts the initial value to this dtype.
      collection: Overrides the collection.

    Example:
      >>> import jax, jscope as js
      >>> def f():
      ...     v1 = js.Variable(10, name="name1")
      ...     v2 = js.Variable(10, name="name1")
      ...     return v1.name, v2.name
      >>> js.init_with_output(f, jax.random.key(0))[0]
      ('name1', 'name1_1')
    """

    __slots__ = ("_frame", "_path")
    __module__ = "jscope"

    def __init__(
        self,
        initial_value: Any,
        name: str | None = None,
        *,
        trainable: bool = True,
        dtype: Any = None,
        collection: str | None = None,
    ):
        frame = context.current_run("Variable")
        base = "Variable" if name is None else name
        path = names.validate(names.join(frame.name_scope, base))
        path = frame.names.unique(path)
        if path in frame.kinds:  # a get_variable path marked before this one
            path = frame.names.unique(path)
        _check_trace(frame, path, "js.Variable")
        tree.check_no_conflict(path, frame.kinds, frame.inner)
        if frame.initializing:

            def make(key):
                return _initial_value(key, path, initial_value, dtype)

            keyed = callable(initial_value)
            key = path_key(frame.rng, path) if keyed else None
            if frame.lift is None:
                value = make(key)
                coll = collection or _default_collection(trainable, value.dtype)
            else:
                if collection is None:  # the dtype decides: find it without FLOPs
                    dtype_ = jax.eval_shape(lambda: make(key)).dtype
                coll = collection or _default_collection(trainable, np.dtype(dtype_))
                value = frame.lift.create(frame, path, coll, make, keyed)
            frame.created[path] = (coll, value)
        else:
            coll = collection
            if coll is None and not callable(initial_value):
                _, vdtype = _value_meta(initial_value)
                if dtype is not None:
                    vdtype = canon_dtype(dtype)
                coll = _default_collection(trainable, vdtype)
            if coll is None:
                coll = next((c for c, f in frame.source.items() if path in f), "params")
            value = _lookup(frame, path, coll)
        tree.add_prefixes(path, frame.inner)
        frame.kinds[path] = VAR
        frame.values[path] = value
        frame.collection_of[path] = coll
        self._frame = frame
        self._path = path

    def _live(self) -> context.Frame:
        frame = self._frame
        if not frame.alive:
            raise errors.NotInRunError(
                f"Variable {self._path} was used after its run ended. Return "
                "v.value from the function instead of the handle.",
                self._path,
            )
        return frame

    @property
    def value(self) -> jax.Array:
        """The variable's current value in this run."""
        return self._live().values[self._path]

    def read_value(self) -> jax.Array:
        """The variable's current value (TF1's name)."""
        return self.value

    @property
    def name(self) -> str:
        """The variable's full path, e.g. ``n1/Variable``."""
        return self._path

    @property
    def shape(self) -> tuple[int, ...]:
        """The variable's shape."""
        return tuple(self.value.shape)

    @property
    def dtype(self) -> np.dtype:
        """The variable's dtype."""
        return self.value.dtype

    @property
    def collection(self) -> str:
        """The collection holding the variable (``params`` or ``state``)."""
        return self._frame.collection_of[self._path]

    def assign(self, value: Any) -> jax.Array:
        """Sets the variable to ``value``; returns the new value."""
        return assign(self, value)

    def assign_add(self, delta: Any) -> jax.Array:
        """Adds ``delta`` to the variable; returns the new value."""
        return assign_add(self, delta)

    def assign_sub(self, delta: Any) -> jax.Array:
        """Subtracts ``delta`` from the variable; returns the new value."""
        return assign_sub(self, delta)

    def __jax_array__(self) -> jax.Array:
        return self.value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)

    def __repr__(self) -> str:
        if not self._frame.alive:
            return f"<js.Variable {self._path!r} (run ended)>"
        v = self.value
        return f"<js.Variable {self._path!r} shape={tuple(v.shape)} dtype={v.dtype}>"

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return bool(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self):
        return iter(self.value)


def _binary(op):
    def method(self, other):
        if isinstance(other, Variable):
            other = other.value
        return op(self.value, other)

    def rmethod(self, other):
        return op(other, self.value)

    return method, rmethod


for _name, _op in [
    ("add", operator.add),
    ("sub", operator.sub),
    ("mul", operator.mul),
    ("matmul", operator.matmul),
    ("truediv", operator.truediv),
    ("floordiv", operator.floordiv),
    ("mod", operator.mod),
    ("pow", operator.pow),
    ("and", operator.and_),
    ("or", operator.or_),
    ("xor", operator.xor),
]:
    _m, _r = _binary(_op)
    setattr(Variable, f"__{_name}__", _m)
    setattr(Variable, f"__r{_name}__", _r)
for _name, _op in [
    ("lt", operator.lt),
    ("le", operator.le),
    ("gt", operator.gt),
    ("ge", operator.ge),
    ("eq", operator.eq),
    ("ne", operator.ne),
]:
    setattr(Variable, f"__{_name}__", _binary(_op)[0])
for _name, _op in [("neg", operator.neg), ("pos", operator.pos), ("abs", abs)]:
    setattr(Variable, f"__{_name}__", lambda self, _op=_op: _op(self.value))
Variable.__getitem__ = lambda self, idx: self.value[idx]


def _initial_value(key, path, initial_value, dtype):
    if callable(initial_value):
        value = initial_value(key)
        if not hasattr(value, "dtype"):
            value = jnp.asarray(value)
        if dtype is not None:
            value = jnp.asarray(value, canon_dtype(dtype))
        return value
    _, vdtype = _value_meta(initial_value)
    if dtype is not None:
        vdtype = canon_dtype(dtype)
    return _convert_value(initial_value, vdtype, path)


# -------------------------------------------------------------------- assignment


def _target_path(frame, target) -> str:
    if isinstance(target, Variable):
        if target._frame is not frame:
            target._live()
            raise errors.AssignmentTargetError(
                f"Variable {target._path} belongs to another run.", target._path
            )
        return target._path
    if isinstance(target, str):
        prefix = frame.scope.name
        path = f"{prefix}/{target}" if prefix else target
        if frame.kinds.get(path) is None:
            names.validate(path)
            raise errors.VariableNotFoundError(
                f"Cannot assign to variable {path}: it does not exist in this run, or "
                "was not created with get_variable() (a name is resolved in the "
                "current variable scope, as get_variable(name) with reuse=True "
                "would). Create it first, or pass the js.Variable handle.",
                path,
            )
        return path
    seen = frame.returned.get(id(target))
    if seen is not None and seen[0] is target:
        if seen[1] is None:
            raise errors.AssignmentTargetError(
                "This array was returned for more than one variable, so the target "
                "is ambiguous. Pass the variable's name to js.assign instead."
            )
        return seen[1]
    raise errors.AssignmentTargetError(
        f"js.assign got a {type(target).__name__} that is not a variable of this "
        "run. Pass a js.Variable handle, the variable's name (resolved in the "
        "current variable scope), or the very array get_variable returned."
    )


def _scalar(path: str, value: Any, dtype: Any) -> np.ndarray:
    try:
        return initializers._check_representable(np.asarray(value), np.dtype(dtype))
    except errors.InitializerError:
        raise errors.AssignmentDtypeError(
            f"Cannot assign {value!r} to variable {path} of dtype {dtype}: the "
            "value is not representable in it.",
            path,
        ) from None


def _coerce(path: str, old: Any, value: Any) -> jax.Array:
    if isinstance(value, Variable):
        value = value.value
    dtype = old.dtype
    if _is_python_scalar(value):
        new = jnp.asarray(_scalar(path, value, dtype), dtype)
    else:
        new = value if isinstance(value, jax.Array) else jnp.asarray(value)
        if new.dtype != dtype:
            aval = getattr(new, "aval", None)
            weak = aval is not None and aval.weak_type
            kinds_ok = np.dtype(new.dtype).kind in "biu" or _is_float(np.dtype(dtype))
            if not (weak and kinds_ok):
                raise errors.AssignmentDtypeError(
                    f"Cannot assign a value of dtype {new.dtype} to variable {path} "
                    f"of dtype {dtype}. Cast it first, e.g. value.astype("
                    f"jnp.{np.dtype(dtype).name}).",
                    path,
                )
            new = new.astype(dtype)
    if new.shape != old.shape:
        raise errors.AssignmentShapeError(
            f"Cannot assign a value of shape {tuple(new.shape)} to variable {path} "
            f"of shape {tuple(old.shape)}. Reshape the value, or create the variable "
            "with the shape you need.",
            path,
        )
    return new


def _assign(target: Any, value: Any, how: str) -> jax.Array:
    frame = context.current_run(f"js.{how}")
    path = _target_path(frame, target)
    if not jax_compat.same_trace(jax_compat.trace_state(), frame.trace_state):
        raise errors.JaxTransformError(
            f"Cannot {how} variable {path} inside a plain JAX transform (jax.vmap, "
            "jax.jit, jax.lax.scan, jax.checkpoint, ...) opened within the run: the "
            "new value would be a tracer of that transform and leak out of it. "
            "Return the value from the transform and assign it outside, or use "
            "jscope's lifted transforms (js.scan, js.vmap, js.remat).",
            path,
        )
    coll = frame.collection_of[path]
    if not frame.initializing:
        mutable = frame.mutable
        if mutable is not True and coll not in mutable:
            raise errors.NotMutableError(
                f"Cannot {how} variable {path}: collection {coll!r} is not mutable in "
                f"this js.apply. Pass mutable=[{coll!r}] (or mutable=True) to "
                "js.apply to get the updated variables back.",
                path,
            )
    old = frame.values[path]
    if how != "assign" and _is_python_scalar(value):  # a scalar delta broadcasts
        value = jnp.full(old.shape, _scalar(path, value, old.dtype), old.dtype)
    new = _coerce(path, old, value)
    if how == "assign_add":
        new = old + new
    elif how == "assign_sub":
        new = old - new
    frame.values[path] = new
    if not frame.initializing:
        frame.assigned[path] = new
    _register(frame, new, path)
    return new


def assign(target: Any, value: Any) -> jax.Array:
    """Sets a variable to ``value`` for the rest of the run; returns the new value.

    At `js.init` the assignment is visible for the rest of the run but the tree
    keeps the initial values; at `js.apply` the variable's collection must be
    ``mutable`` and the new value comes back in the updated tree.

    Args:
      target: A `Variable` handle; a name, resolved in the current variable scope
        as ``get_variable(name)`` with ``reuse=True`` would; or the very array that
        `get_variable` returned in this run.
      value: The new value: same shape, same dtype (Python scalars are cast).

    Returns:
      The new value.

    Raises:
      NotMutableError: At apply, the collection is not mutable.
      AssignmentShapeError: The shapes differ (a `ValueError`).
      AssignmentDtypeError: The dtypes differ (a `TypeError`).
      AssignmentTargetError: ``target`` is not a variable of this run.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def step():
      ...     c = js.get_variable("c", (), jnp.int32)
      ...     js.assign(c, c + 1)
      >>> v = js.init(step, jax.random.key(0))
      >>> js.apply(step, v, mutable=True)[1]
      {'state': {'c': Array(1, dtype=int32)}}
    """
    return _assign(target, value, "assign")


def assign_add(target: Any, delta: Any) -> jax.Array:
    """Adds ``delta`` to a variable; see `assign`."""
    return _assign(target, delta, "assign_add")


def assign_sub(target: Any, delta: Any) -> jax.Array:
    """Subtracts ``delta`` from a variable; see `assign`."""
    return _assign(target, delta, "assign_sub")


# --------------------------------------------------------- losses, rngs, queries


def get_regularization_loss() -> jax.Array:
    """Sums this run's regularization terms, computed from the current values.

    Returns:
      A float32 scalar (0.0 when no variable has a regularizer).
    """
    frame = context.current_run("get_regularization_loss")
    total = jnp.zeros((), jnp.float32)
    for path, reg in frame.regularizers:
        total = total + reg(frame.values[path])
    return total


def is_initializing() -> bool:
    """Whether the run in progress is `js.init` (True) or `js.apply` (False)."""
    return context.current_run("is_initializing").initializing


def next_rng_key(stream: str = "dropout") -> jax.Array:
    """Returns a fresh random key of ``stream`` for this point of the run.

    Keys depend on the stream's key, the current scope path and how many keys
    this scope has drawn, so adding a layer does not change the others' keys.
    At `js.init` every stream derives from the init rng; at `js.apply` the stream
    must be in ``rngs=``.

    Raises:
      MissingRngError: At apply, ``rngs`` has no key for ``stream``.
    """
    frame = context.current_run("next_rng_key")
    base = _stream_key(frame, stream)
    if frame.lift is not None:
        base = frame.lift.fold_rng(base, stream)
    scope = frame.scope.name
    count_key = (stream, scope)
    n = frame.rng_counts.get(count_key, 0)
    frame.rng_counts[count_key] = n + 1
    return jax.random.fold_in(base, names.stable_hash(f"{scope}#{n}"))


def _stream_key(frame, stream):
    rngs = frame.rngs
    if isinstance(rngs, dict):
        key = rngs.get(stream)
        if key is not None:
            return key
    elif rngs is not None:
        return jax.random.fold_in(rngs, names.stable_hash(f"rng:{stream}"))
    if frame.initializing and frame.rng is not None:
        return jax.random.fold_in(frame.rng, names.stable_hash(f"rng:{stream}"))
    path = frame.scope.name or "<root scope>"
    raise errors.MissingRngError(
        f"No random key for stream {stream!r} (asked in scope {path}). Pass "
        f"rngs={{{stream!r}: key}} to js.apply.",
        path,
    )
