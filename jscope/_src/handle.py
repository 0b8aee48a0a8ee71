"""`js.Variable`, the handle to a variable that is always created, and assignment.

This module owns TF1's ``tf.Variable``: a handle whose path is the current name
scope plus its name, uniquified in the run, invisible to `get_variable`; and
`assign`/`assign_add`/`assign_sub`, which take such a handle, a name, or the
very array `get_variable` returned.

Imports: `jscope.errors`, `jscope.initializers` (its check that a Python scalar
fits a dtype), `context`, `names`, `tree`, `values`, `rng`, `access`,
`sharding`. Only the public API imports it: `get_variable` lives in
`variables.py` and never needs a handle.

No hot path: the handle's operators read ``self.value`` (a property and two
dict lookups) and delegate to `jax.Array`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias, cast

import jax
import jax.numpy as jnp
import numpy as np

from jscope import errors, initializers
from jscope._src import access, context, names, rng, sharding, tree, values
from jscope._src.context import VAR
from jscope.typing import ArrayLike, DTypeLike

InitialValue: TypeAlias = ArrayLike | Callable[[jax.Array], ArrayLike]
"""A `Variable`'s initial value: a value, or ``(key) -> array`` called at init."""

# `Operand` and `AssignTarget` name `Variable`: they follow the class, as
# objects, so that ``typing.get_type_hints`` resolves every annotation.


def _raw(x: Operand) -> ArrayLike:
    return x.value if isinstance(x, Variable) else x


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
      axes: Logical axis names, one per dimension (str, or None for a dimension
        without a name), e.g. ``("embed", "mlp")``: `js.ShardingRules` map them
        to mesh axes.

    Raises:
      ShardingError: ``axes`` has not one entry per dimension.
      ArgumentTypeError: ``axes`` is not a sequence of str or None.
      InitialValueError: ``initial_value`` is ragged or not numeric.
      InitializerError: A callable ``initial_value`` returned no array.
      LeafTypeError: At apply, the tree holds no array at its path.
      JaxTransformError: Created inside a plain JAX transform within the run.
      NotInRunError: Created outside `js.init` / `js.apply`.

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
        initial_value: InitialValue,
        name: str | None = None,
        *,
        trainable: bool = True,
        dtype: DTypeLike | None = None,
        collection: str | None = None,
        axes: Sequence[str | None] | None = None,
    ):
        frame = context.current_run("Variable")
        base = "Variable" if name is None else name
        path = names.validate(names.join(frame.name_scope, base))
        path = frame.used_names.unique(path)
        if path in frame.kind_of:  # a get_variable path marked before this one
            path = frame.used_names.unique(path)
        access.check_trace(frame, path, "js.Variable")
        tree.check_no_conflict(path, frame.kind_of, frame.prefixes)
        if frame.initializing:
            value, coll = _create(
                frame,
                path,
                initial_value,
                dtype=dtype,
                trainable=trainable,
                collection=collection,
            )
        else:
            coll = collection
            if coll is None and not callable(initial_value):
                _, vdtype = values.value_meta(initial_value, path)
                if dtype is not None:
                    vdtype = values.canon_dtype(dtype, path)
                coll = values.default_collection(trainable, vdtype)
            if coll is None:
                given = frame.given_tree
                assert given is not None  # a run at apply has its tree
                coll = next((c for c, f in given.items() if path in f), "params")
            value = access.lookup_array(frame, path, coll)
        tree.add_prefixes(path, frame.prefixes)
        frame.kind_of[path] = VAR
        frame.values[path] = value
        frame.collection_of[path] = coll
        if axes is not None:
            frame.axes_of[path] = sharding.check_axes(axes, value.shape, path)
        self._frame = frame
        self._path = path

    # ------------------------------------------------------------ the variable

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

    def assign(self, value: Operand) -> jax.Array:
        """Sets the variable to ``value``; returns the new value."""
        return assign(self, value)

    def assign_add(self, delta: Operand) -> jax.Array:
        """Adds ``delta`` to the variable; returns the new value."""
        return assign_add(self, delta)

    def assign_sub(self, delta: Operand) -> jax.Array:
        """Subtracts ``delta`` from the variable; returns the new value."""
        return assign_sub(self, delta)

    # ------------------------------------------------- conversions, containers

    def __jax_array__(self) -> jax.Array:
        return self.value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.value, dtype=dtype)

    def __repr__(self) -> str:
        if not self._frame.alive:
            return f"<js.Variable {self._path!r} (run ended)>"
        v = self.value
        return f"<js.Variable {self._path!r} shape={tuple(v.shape)} dtype={v.dtype}>"

    def __hash__(self) -> int:  # by identity, as tf.Variable
        return object.__hash__(self)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Iterator[jax.Array]:
        return iter(self.value)

    def __getitem__(self, idx: Any) -> jax.Array:
        return self.value[idx]

    # ------------------------------------- operators: act on the value, as jnp

    def __neg__(self) -> jax.Array:
        return -self.value

    def __pos__(self) -> jax.Array:
        return +self.value

    def __abs__(self) -> jax.Array:
        return abs(self.value)

    def __add__(self, other: Operand) -> jax.Array:
        return self.value + _raw(other)

    def __radd__(self, other: ArrayLike) -> jax.Array:
        return self.value.__radd__(other)

    def __sub__(self, other: Operand) -> jax.Array:
        return self.value - _raw(other)

    def __rsub__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rsub__(other)

    def __mul__(self, other: Operand) -> jax.Array:
        return self.value * _raw(other)

    def __rmul__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rmul__(other)

    def __matmul__(self, other: Operand) -> jax.Array:
        return self.value @ _raw(other)

    def __rmatmul__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rmatmul__(other)

    def __truediv__(self, other: Operand) -> jax.Array:
        return self.value / _raw(other)

    def __rtruediv__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rtruediv__(other)

    def __floordiv__(self, other: Operand) -> jax.Array:
        return self.value // _raw(other)

    def __rfloordiv__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rfloordiv__(other)

    def __mod__(self, other: Operand) -> jax.Array:
        return self.value % _raw(other)

    def __rmod__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rmod__(other)

    def __pow__(self, other: Operand) -> jax.Array:
        return self.value ** _raw(other)

    def __rpow__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rpow__(other)

    def __and__(self, other: Operand) -> jax.Array:
        return self.value & _raw(other)

    def __rand__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rand__(other)

    def __or__(self, other: Operand) -> jax.Array:
        return self.value | _raw(other)

    def __ror__(self, other: ArrayLike) -> jax.Array:
        return self.value.__ror__(other)

    def __xor__(self, other: Operand) -> jax.Array:
        return self.value ^ _raw(other)

    def __rxor__(self, other: ArrayLike) -> jax.Array:
        return self.value.__rxor__(other)

    def __lt__(self, other: Operand) -> jax.Array:
        return self.value < _raw(other)

    def __le__(self, other: Operand) -> jax.Array:
        return self.value <= _raw(other)

    def __gt__(self, other: Operand) -> jax.Array:
        return self.value > _raw(other)

    def __ge__(self, other: Operand) -> jax.Array:
        return self.value >= _raw(other)

    def __eq__(self, other: Operand) -> jax.Array:  # type: ignore[override]
        return self.value == _raw(other)

    def __ne__(self, other: Operand) -> jax.Array:  # type: ignore[override]
        return self.value != _raw(other)


Operand: TypeAlias = ArrayLike | Variable
"""What a `Variable`'s operators accept on their other side."""

AssignTarget: TypeAlias = Variable | str | jax.Array
"""What `assign` accepts as target: a handle, a name, or a returned array."""


def _create(
    frame: context.Frame,
    path: str,
    initial_value: InitialValue,
    *,
    dtype: DTypeLike | None,
    trainable: bool,
    collection: str | None,
) -> tuple[jax.Array, str]:
    """Makes a `Variable`'s value at init; returns it and its collection."""

    def make(key):
        return values.initial_value(key, path, initial_value, dtype)

    keyed = callable(initial_value)
    key = rng.path_key(cast("jax.Array", frame.rng), path) if keyed else None
    if frame.lift is None:
        value = make(key)
        coll = collection or values.default_collection(trainable, value.dtype)
    else:
        coll = collection
        if coll is None:  # the dtype decides: find it without FLOPs
            found = np.dtype(jax.eval_shape(lambda: make(key)).dtype)
            coll = values.default_collection(trainable, found)
        value = frame.lift.create(frame, path, coll, make, keyed)
    frame.created[path] = (coll, value)
    return value, coll


# -------------------------------------------------------------------- assignment


def _target_path(frame: context.Frame, target: AssignTarget) -> str:
    if isinstance(target, Variable):
        if target._frame is not frame:
            target._live()
            raise errors.AssignmentTargetError(
                f"Variable {target._path} belongs to another run. Assign to it "
                "inside the run that created the handle.",
                target._path,
            )
        return target._path
    if isinstance(target, str):
        prefix = frame.scope.name
        path = f"{prefix}/{target}" if prefix else target
        if frame.kind_of.get(path) is None:
            names.validate(path)
            raise errors.VariableNotFoundError(
                f"Cannot assign to variable {path}: it does not exist in this run, or "
                "was not created with get_variable() (a name is resolved in the "
                "current variable scope, as get_variable(name) with reuse=True "
                "would). Create it first, or pass the js.Variable handle.",
                path,
            )
        return path
    path = access.returned_path(frame, target)
    if path is not None:
        return path
    raise errors.AssignmentTargetError(
        f"js.assign got a {type(target).__name__} that is not a variable of this "
        "run. Pass a js.Variable handle, the variable's name (resolved in the "
        "current variable scope), or the very array get_variable returned."
    )


def _scalar(path: str, value: Any, dtype: Any) -> np.ndarray:
    try:
        return initializers.check_representable(np.asarray(value), np.dtype(dtype))
    except errors.InitializerError:
        raise errors.AssignmentDtypeError(
            f"Cannot assign {value!r} to variable {path} of dtype {dtype}: the "
            "value is not representable in it. Pass a value of that dtype.",
            path,
        ) from None


def _as_array(path: str, old: jax.Array, value: Any) -> jax.Array:
    """``jnp.asarray(value)``; None, strings and ragged lists get a named error."""
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as e:
        try:
            kind = np.asarray(value).dtype.kind
        except ValueError:  # ragged
            raise errors.AssignmentShapeError(
                f"Cannot assign a ragged value {value!r:.60} (rows of different "
                f"lengths) to variable {path} of shape {tuple(old.shape)}. Pass an "
                "array of that shape.",
                path,
            ) from None
        if kind not in values.NOT_NUMERIC:
            raise e
        raise errors.AssignmentDtypeError(
            f"Cannot assign {value!r:.60} ({type(value).__name__}) to variable "
            f"{path} of dtype {old.dtype} and shape {tuple(old.shape)}: it is not "
            "a number or array. Pass an array, e.g. jnp.zeros("
            f"{tuple(old.shape)}, jnp.{old.dtype.name}).",
            path,
        ) from None


def _coerce(path: str, old: jax.Array, value: Any) -> jax.Array:
    if isinstance(value, Variable):
        value = value.value
    dtype = old.dtype
    if values.is_python_scalar(value):
        new = jnp.asarray(_scalar(path, value, dtype), dtype)
    else:
        new = value if isinstance(value, jax.Array) else _as_array(path, old, value)
        if new.dtype != dtype:
            aval = getattr(new, "aval", None)
            weak = aval is not None and aval.weak_type
            kinds_ok = np.dtype(new.dtype).kind in "biu" or values.is_float(
                np.dtype(dtype)
            )
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


def _assign(target: AssignTarget, value: Operand, how: str) -> jax.Array:
    frame = context.current_run(f"js.{how}")
    path = _target_path(frame, target)
    access.check_assign_trace(frame, path)
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
    if how != "assign" and values.is_python_scalar(value):  # a scalar broadcasts
        value = jnp.full(old.shape, _scalar(path, value, old.dtype), old.dtype)
    new = _coerce(path, old, value)
    if how == "assign_add":
        new = old + new
    elif how == "assign_sub":
        new = old - new
    frame.values[path] = new
    if not frame.initializing:
        frame.assigned[path] = new
    access.register(frame, new, path)
    return new


def assign(target: AssignTarget, value: Operand) -> jax.Array:
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
      AssignmentShapeError: The shapes differ, or the value is ragged (a
        `ValueError`).
      AssignmentDtypeError: The dtypes differ, or the value is not a number or
        array (None, a string) (a `TypeError`).
      AssignmentTargetError: ``target`` is not a variable of this run, or an
        array returned for two variables.
      JaxTransformError: Called inside a plain JAX transform within the run.

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


def assign_add(target: AssignTarget, delta: Operand) -> jax.Array:
    """Adds ``delta`` to a variable; see `assign`."""
    return _assign(target, delta, "assign_add")


def assign_sub(target: AssignTarget, delta: Operand) -> jax.Array:
    """Subtracts ``delta`` from a variable; see `assign`."""
    return _assign(target, delta, "assign_sub")
