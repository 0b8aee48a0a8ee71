"""`get_variable`: TF1's reuse rules, creation at init, reads at apply.

This module owns `get_variable` and what hangs on it: custom getters and the
TF1-only keyword arguments it accepts at their defaults, regularizers
(`get_regularization_loss`), and `is_initializing`. A call resolves the full
path in the current variable scope, applies the reuse rules against the paths
this run has seen, then creates the variable (at `js.init`) or reads it from the
tree (at `js.apply`). Values, shapes and dtypes are checked by `values`; keys
come from `rng`; tree reads and plain-transform checks from `access`.

Imports: `jscope.errors`, `context`, `names`, `tree`, `scope` (custom getters),
`values`, `rng`, `access`, `sharding` (``axes=``).
`scope.VariableScope.get_variable` imports this module lazily.

Hot path: `get_variable` reading a path new in the run at apply runs for every
variable of every un-jitted step (benchmarks/bench_core.py measures it, per
call too); it does `read_at_apply`'s work inline, so keep both to dict lookups and
attribute reads, and the same (`read_at_apply` serves custom getters and `_defaults`).
It runs only in a plain scope (`scope._is_plain`: no default but a function
initializer, no ``reuse=True``); `_defaults` resolves another scope's defaults.
`_general` → `_get` → `_create` is the general path: init, reuse, custom
getters, value initializers, TF1 keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from jscope import errors
from jscope._src import access, context, jax_compat, names, rng, sharding, tree, values
from jscope._src.access import lookup, register  # bound names: the hot path
from jscope._src.context import GET, PLAN_READ, VAR, peek
from jscope._src.jax_compat import ARRAY_IMPL, TRACE_REF
from jscope._src.names import SCOPE_OF, valid_path_scope
from jscope._src.scope import wrap_getter
from jscope._src.values import F32, canon_dtype, is_float, same_int_list
from jscope.typing import DTypeLike, InitializerLike, Regularizer, Shape

JNP_F32 = jnp.float32  # hashed by a Python method: compared by identity


# ----------------------------------------------------------------- get_variable


def get_variable(
    name: str,
    shape: Shape | int | None = None,
    dtype: DTypeLike | None = None,
    initializer: InitializerLike | None = None,
    regularizer: Regularizer | None = None,
    *,
    trainable: bool | None = True,
    collection: str | None = None,
    axes: Sequence[str | None] | None = None,
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
      axes: Logical axis names, one per dimension (str, or None for a dimension
        without a name), e.g. ``("embed", "mlp")``: `js.ShardingRules` map them
        to mesh axes. A reuse may repeat them (each dimension both name must
        agree) or omit them; the axes given at creation stay the variable's.
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
      LeafTypeError: At apply, the tree holds no array there (None, a float).
      InvalidShapeError: A new variable's shape is missing, not fully defined, or
        has a negative size.
      ShapeTypeError: ``shape`` is not a sequence of ints.
      InvalidDtypeError: ``dtype`` is not a numeric dtype.
      InitialValueError: A value initializer is ragged or not numeric.
      InitializerError: The initializer returned no array, or a wrong one.
      JaxTransformError: Created, or read in a staged one, inside a plain JAX
        transform opened within the run.
      ShardingError: ``axes`` has not one entry per dimension, or names a
        dimension otherwise than at creation.
      ArgumentTypeError: ``axes`` is not a sequence of str or None.
      NotInRunError: Called outside `js.init` / `js.apply`.

    Example:
      >>> import jax, jscope as js
      >>> def f():
      ...     return js.get_variable("w", (2,), initializer=js.initializers.ones())
      >>> js.init(f, jax.random.key(0))
      {'params': {'w': Array([1., 1.], dtype=float32)}}
    """
    frame = peek()
    # An eager apply's plan (`plans`; only a run has one): a match replays inline.
    if frame is not None and (plan := frame.plan_mode) is not None:
        # The event: (kind, name, dtype, trainable, collection, path,
        # collection found, seen, dict number, leaf, index, next) (`plans`).
        if (
            (event := plan.next)[0] is PLAN_READ
            and (name is event[1] or (type(name) is str and name == event[1]))
            and (type(shape) is tuple or type(shape) is list)  # checked below
            and dtype is event[2]  # None or float32: a plan records no other
            and trainable is event[3]
            and (
                collection is event[4]
                or (type(collection) is str and collection == event[4])
            )
            and regularizer is axes is None
            and not tf1_kwargs
            and (initializer is None or callable(initializer))
            and TRACE_REF.value is frame.trace_state
        ):
            # The leaf in its dict (`plans._nodes` found the dicts and checked
            # their keys), shared or not: the run's values are set at the end
            # of the plan, if it ends before the run (`context.LAZY`).
            value = plan.nodes[event[8]][event[9]]
            if type(value) is ARRAY_IMPL:
                meta = value.aval
                if ((vdtype := meta.dtype) is F32 or vdtype == F32) and (
                    shape == meta.shape or same_int_list(shape, meta.shape)
                ):
                    plan.next = event[11]
                    return value
        return plan.read(
            frame, name, shape, dtype, initializer, regularizer, trainable,
            collection, axes, tf1_kwargs,
        )  # fmt: skip
    if frame is None or not frame.is_run:
        frame = context.current_run("get_variable")  # raises NotInRunError
    scope = frame.scope
    prefix = scope._name
    full = f"{prefix}/{name}" if prefix else name
    trace = TRACE_REF.value  # every call: a jax.jit may open inside any scope
    if trace is not frame.trace_state and not jax_compat.same_trace(
        trace, frame.trace_state
    ):
        access.check_staged_read(frame, full)
    kind_of = frame.kind_of
    # A plain scope (`scope._is_plain`) has no default but a function initializer
    # and no reuse=True, so the hot path needs none of its defaults.
    if (
        scope._plain is not True
        or frame.initializing
        or shape is None
        or tf1_kwargs
        or type(full) is not str
        or (
            # the default initializer (`scope._initializer` or the built-in one)
            # with a dtype, or a value initializer: the general path's checks
            (dtype is not None and scope._initializer is None)
            if initializer is None
            else not callable(initializer)
        )
        or (
            (seen := full in kind_of)
            and not shared_read(frame, scope, full, shape, dtype, axes)
        )
    ):
        return _defaults(
            frame, scope, full, shape, dtype, initializer, regularizer, trainable,
            collection, axes, tf1_kwargs,
        )  # fmt: skip
    if seen:  # shared: `shared_read` found it a plain reuse
        return frame.values[full]
    # The hot path: a new path read at apply, with a callable initializer or the
    # default one for float32 (`_get`'s rules reduce to these).
    parent = SCOPE_OF.get(full)
    if parent is None:
        parent = valid_path_scope(full)  # raises: an invalid name
    prefixes = frame.prefixes
    if full in prefixes:
        tree.check_no_conflict(full, kind_of, prefixes)  # raises
    if not parent or parent in prefixes:  # a recorded prefix's own are recorded
        parents = None
    elif "/" not in parent and parent not in kind_of:  # a new top-level scope
        parents = (parent,)
    else:  # the first variable of a nested scope
        parents = _new_parents(full, kind_of, prefixes)
    coll = collection
    if dtype is None or dtype is F32 or dtype is JNP_F32:  # float32, x64 or not
        dtype = F32
        if coll is None:
            coll = "params" if trainable or trainable is None else "state"
    else:
        dtype = canon_dtype(dtype, full)
        if coll is None:
            trained = trainable or trainable is None
            coll = "params" if trained and is_float(dtype) else "state"
    try:
        value = frame.given_tree[coll][full]  # pyright: ignore[reportOptionalSubscript]
    except (KeyError, TypeError):
        value = None
    if value is None:
        value = lookup(frame, full, coll)  # raises: missing, or None
    if type(value) is ARRAY_IMPL:  # its shape and dtype without two calls
        meta = value.aval
        vdtype = meta.dtype
        found = meta.shape
        if (shape != found and not same_int_list(shape, found)) or (
            vdtype is not dtype and vdtype != dtype
        ):
            values.check_read(full, shape, dtype, value)
    else:
        values.check_leaf(full, shape, dtype, value, coll)
    if parents:
        prefixes.update(parents)
    kind_of[full] = GET
    frame.values[full] = value
    frame.collection_of[full] = coll
    if axes is not None:
        frame.axes_of[full] = sharding.check_axes(axes, value.shape, full)
    if regularizer is not None:
        frame.regularizers.append((full, regularizer))
    return value  # `js.assign` finds it in the given tree (access.returned_path)


def _defaults(
    frame, scope, full, shape, dtype, initializer, regularizer, trainable,
    collection, axes, tf1_kwargs,
):  # fmt: skip
    """`get_variable` off its hot path: the scope's defaults, then the rules.

    A read new in the run or a plain reuse is still read here (a scope with a
    regularizer, a dtype or ``reuse=True`` is common); the rest is `_general`'s.
    """
    if initializer is None:
        initializer = scope._initializer
    made = callable(initializer)  # else a value (or None: the default)
    if regularizer is None:
        regularizer = scope._regularizer
    if dtype is None and (made or initializer is None):
        dtype = scope._dtype
    if (
        frame.initializing
        or shape is None
        or (not made and (initializer is not None or dtype is not None))
        or tf1_kwargs
        or scope._custom_getter is not None
        or type(full) is not str
        or (
            ((seen := full in frame.kind_of) or scope._reuse is True)
            and not shared_read(frame, scope, full, shape, dtype, axes)
        )
    ):
        return _general(
            frame, scope, full, shape, dtype, initializer, regularizer, trainable,
            collection, axes, tf1_kwargs,
        )  # fmt: skip
    if seen:  # shared: `shared_read` found it a plain reuse
        return frame.values[full]
    return read_at_apply(
        frame, full, shape, dtype, regularizer, trainable, collection, axes
    )


def _general(
    frame, scope, full, shape, dtype, initializer, regularizer, trainable,
    collection, axes, tf1_kwargs,
):  # fmt: skip
    """`get_variable` off the hot path: init, reuse, custom getters, TF1 kwargs."""
    if trainable is None:
        trainable = True
    getter = scope._custom_getter
    if tf1_kwargs:
        getter = wrap_getter(getter, values.check_tf1_kwargs(dict(tf1_kwargs), full))
    if getter is None:
        return _get(
            frame, full, shape, dtype, initializer, regularizer, scope.reuse,
            trainable, collection, axes,
        )  # fmt: skip
    reuse = scope.reuse

    def real_getter(
        name, shape=None, dtype=None, initializer=None, regularizer=None,
        reuse=None, trainable=True, collection=None, axes=axes, **unused,
    ):  # fmt: skip
        return _get(
            frame, name, shape, dtype, initializer, regularizer, reuse,
            True if trainable is None else trainable, collection, axes,
        )  # fmt: skip

    # A getter sees axes= only when given: TF1 getters predate it.
    more = {} if axes is None else {"axes": axes}
    return getter(
        real_getter, full, shape=shape, dtype=dtype, initializer=initializer,
        regularizer=regularizer, reuse=reuse, trainable=trainable,
        collection=collection, **more,
    )  # fmt: skip


def _get(
    frame, path, shape, dtype, initializer, regularizer, reuse, trainable, coll, axes
):
    if not isinstance(path, str) or path not in frame.kind_of:
        names.validate(path)
        kind = None
    else:
        kind = frame.kind_of[path]
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
        values.check_meta(path, shape, dtype, initializer, value, "share")
        if axes is not None:
            sharding.check_reuse_axes(frame.axes_of.get(path), axes, value.shape, path)
        return value
    if reuse is True:
        raise errors.VariableNotFoundError(
            f"Variable {path} does not exist, or was not created with "
            "get_variable(). Did you mean to set reuse=AUTO_REUSE in VarScope?",
            path,
        )
    if not frame.initializing and shape is not None and callable(initializer):
        return read_at_apply(
            frame, path, shape, dtype, regularizer, trainable, coll, axes
        )
    return _create(
        frame, path, shape, dtype, initializer, regularizer, trainable, coll, axes
    )


def _create(
    frame: context.Frame,
    path: str,
    shape: Any,
    dtype: Any,
    initializer: Any,
    regularizer: Any,
    trainable: bool,
    coll: str | None,
    axes: Any,
) -> Any:
    # The same rules at init and apply: a path may not sit above or below another.
    tree.check_no_conflict(path, frame.kind_of, frame.prefixes)
    if frame.initializing:
        access.check_trace(frame, path, "Variable")
        shape, dtype, initializer, value = values.resolve_creation(
            path, shape, dtype, initializer
        )
        if coll is None:
            coll = values.default_collection(trainable, dtype)
        if value is not None:
            init_value = value

            def make(key):
                return values.convert_value(init_value, dtype, path)

            keyed = False
        else:
            keyed = rng.needs_key(initializer)

            def make(key):
                return values.call_initializer(initializer, key, shape, dtype, path)

        if frame.lift is None:
            value = make(
                rng.path_key(cast("jax.Array", frame.rng), path) if keyed else None
            )
        else:
            value = frame.lift.create(frame, path, coll, make, keyed)
        frame.created[path] = (coll, value)
    else:
        # At apply nothing is created: the value comes from the tree, after the
        # same argument checks as at init.
        shape, dtype, _, _ = values.resolve_creation(path, shape, dtype, initializer)
        if coll is None:
            coll = values.default_collection(trainable, dtype)
        value = access.lookup_array(frame, path, coll)
        values.check_meta(path, shape, dtype, None, value, "read")
    tree.add_prefixes(path, frame.prefixes)
    frame.kind_of[path] = GET
    frame.values[path] = value
    frame.collection_of[path] = coll
    if axes is not None:
        frame.axes_of[path] = sharding.check_axes(axes, value.shape, path)
    if regularizer is not None:
        frame.regularizers.append((path, regularizer))
    register(frame, value, path)
    return value


def read_at_apply(frame, full, shape, dtype, regularizer, trainable, coll, axes):
    """At apply, reads a variable new in the run (callable initializer, a shape).

    `get_variable`'s hot path, line for line (it runs inline there, saving a
    call per read); here for a custom getter's `real_getter`, through `_get`.
    The path rule (no variable above or below another), the read with its
    shape and dtype check, and the run's records, as `_create` keeps them.
    """
    kind_of = frame.kind_of
    parent = SCOPE_OF.get(full)
    if parent is None:
        parent = valid_path_scope(full)  # raises: an invalid name
    prefixes = frame.prefixes
    if full in prefixes:
        tree.check_no_conflict(full, kind_of, prefixes)  # raises
    if not parent or parent in prefixes:  # a recorded prefix's own are recorded
        parents = None
    elif "/" not in parent and parent not in kind_of:  # a new top-level scope
        parents = (parent,)
    else:  # the first variable of a nested scope
        parents = _new_parents(full, kind_of, prefixes)
    if dtype is None or dtype is F32 or dtype is JNP_F32:  # float32, x64 or not
        dtype = F32
        if coll is None:
            coll = "params" if trainable or trainable is None else "state"
    else:
        dtype = canon_dtype(dtype, full)
        if coll is None:
            trained = trainable or trainable is None
            coll = "params" if trained and is_float(dtype) else "state"
    try:
        value = frame.given_tree[coll][full]  # pyright: ignore[reportOptionalSubscript]
    except (KeyError, TypeError):
        value = None
    if value is None:
        value = lookup(frame, full, coll)  # raises: missing, or None
    if type(value) is ARRAY_IMPL:  # its shape and dtype without two calls
        meta = value.aval
        vdtype = meta.dtype
        found = meta.shape
        if (shape != found and not same_int_list(shape, found)) or (
            vdtype is not dtype and vdtype != dtype
        ):
            values.check_read(full, shape, dtype, value)
    else:
        values.check_leaf(full, shape, dtype, value, coll)
    if parents:
        prefixes.update(parents)
    kind_of[full] = GET
    frame.values[full] = value
    frame.collection_of[full] = coll
    if axes is not None:
        frame.axes_of[full] = sharding.check_axes(axes, value.shape, full)
    if regularizer is not None:
        frame.regularizers.append((full, regularizer))
    return value  # `js.assign` finds it in the given tree (access.returned_path)


def _new_parents(path: str, kind_of: dict, prefixes: set) -> list[str]:
    """The proper prefixes of ``path`` not in ``prefixes``; raises if one is a path.

    Raises:
      PathConflictError: A prefix of ``path`` holds a variable.
    """
    parents = []
    cut = path.rfind("/")
    while cut > 0:
        parent = path[:cut]
        if parent in prefixes:
            break
        if parent in kind_of:
            tree.check_no_conflict(path, kind_of, prefixes)  # raises
        parents.append(parent)
        cut = path.rfind("/", 0, cut)
    return parents


def shared_read(frame, scope, full, shape, dtype, axes):
    """Whether a reuse at apply is plain: `_get` would return the value unchecked.

    That is a `get_variable` path of the run under ``reuse=True`` or
    `js.AUTO_REUSE`, without ``axes``, asking float32 (None, `F32` or
    ``jnp.float32``: `values.check_meta`'s default) and the shape it has.
    Everything else, errors included, is `_get`'s.
    """
    if scope._reuse is False or axes is not None or frame.kind_of.get(full) is not GET:
        return False
    if not (dtype is None or dtype is F32 or dtype is JNP_F32):
        return False
    value = frame.values[full]
    if type(value) is not ARRAY_IMPL:
        return False
    meta = value.aval
    found = meta.shape
    return meta.dtype == F32 and (shape == found or same_int_list(shape, found))


# ----------------------------------------------------------- regularizers, queries


def get_regularization_loss() -> jax.Array:
    """Sums this run's regularization terms, computed from the current values.

    Returns:
      A float32 scalar (0.0 when no variable has a regularizer).

    Raises:
      NotInRunError: Called outside `js.init` / `js.apply`.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f():
      ...     js.get_variable("w", initializer=jnp.full(2, 3.0), regularizer=jnp.sum)
      ...     return js.get_regularization_loss()
      >>> js.init_with_output(f, jax.random.key(0))[0]
      Array(6., dtype=float32)
    """
    frame = context.current_run("get_regularization_loss")
    total = jnp.zeros((), jnp.float32)
    for path, reg in frame.regularizers:
        total = total + reg(frame.values[path])
    return total


def is_initializing() -> bool:
    """Whether the run in progress is `js.init` (True) or `js.apply` (False).

    Raises:
      NotInRunError: Called outside `js.init` / `js.apply`.
    """
    return context.current_run("is_initializing").initializing
